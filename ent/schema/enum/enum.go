// Package enum holds the enumerations shared by several entities of the data
// model (SPEC.md names them). Each type is an ent enum (Values) and a gqlgen
// enum (MarshalGQL/UnmarshalGQL), so one Go type serves the database, the
// rules in desk/ and the GraphQL API.
package enum

import (
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Role of an operator (R32).
type Role string

const (
	RoleAdmin      Role = "ADMIN"
	RoleSupervisor Role = "SUPERVISOR"
	RoleOperator   Role = "OPERATOR"
)

func (Role) Values() []string { return []string{"ADMIN", "SUPERVISOR", "OPERATOR"} }

// ApiKeyRole says what an integrator's API key may do.
type ApiKeyRole string

const (
	// ApiKeyAdmin may administer Parley like an administrator.
	ApiKeyAdmin ApiKeyRole = "ADMIN"
	// ApiKeyIntegration may drive the API channel and read data.
	ApiKeyIntegration ApiKeyRole = "INTEGRATION"
)

func (ApiKeyRole) Values() []string { return []string{"ADMIN", "INTEGRATION"} }

// OperatorStatus is the status an operator chooses (R4–R6).
type OperatorStatus string

const (
	StatusActive   OperatorStatus = "ACTIVE"
	StatusInactive OperatorStatus = "INACTIVE"
)

func (OperatorStatus) Values() []string { return []string{"ACTIVE", "INACTIVE"} }

// StatusChangeReason records why an operator's status changed (R6).
type StatusChangeReason string

const (
	ReasonManual         StatusChangeReason = "MANUAL"
	ReasonLogin          StatusChangeReason = "LOGIN"
	ReasonLogout         StatusChangeReason = "LOGOUT"
	ReasonSessionExpired StatusChangeReason = "SESSION_EXPIRED"
	ReasonAcceptTimeout  StatusChangeReason = "ACCEPT_TIMEOUT"
	ReasonAdmin          StatusChangeReason = "ADMIN"
)

func (StatusChangeReason) Values() []string {
	return []string{"MANUAL", "LOGIN", "LOGOUT", "SESSION_EXPIRED", "ACCEPT_TIMEOUT", "ADMIN"}
}

// RoutingRule of a queue (R8).
type RoutingRule string

const (
	RuleToAll       RoutingRule = "TO_ALL"
	RuleToAvailable RoutingRule = "TO_AVAILABLE"
	RuleRoundRobin  RoutingRule = "ROUND_ROBIN"
)

func (RoutingRule) Values() []string { return []string{"TO_ALL", "TO_AVAILABLE", "ROUND_ROBIN"} }

// AcceptTimeoutAction is what happens to an operator who lets an offer expire (R8).
type AcceptTimeoutAction string

const (
	TimeoutSetInactive AcceptTimeoutAction = "SET_INACTIVE"
	TimeoutCountMissed AcceptTimeoutAction = "COUNT_MISSED"
)

func (AcceptTimeoutAction) Values() []string { return []string{"SET_INACTIVE", "COUNT_MISSED"} }

// WaitingOrder is the order in which waiting chats are handed out (R9).
type WaitingOrder string

const (
	OldestFirst WaitingOrder = "OLDEST_FIRST"
	NewestFirst WaitingOrder = "NEWEST_FIRST"
)

func (WaitingOrder) Values() []string { return []string{"OLDEST_FIRST", "NEWEST_FIRST"} }

// Provider of a channel and of a contact identity.
type Provider string

const (
	ProviderTelegram  Provider = "TELEGRAM"
	ProviderWhatsApp  Provider = "WHATSAPP"
	ProviderMessenger Provider = "MESSENGER"
	// ProviderAPI is the integrators' channel: messages arrive through GraphQL.
	ProviderAPI Provider = "API"
)

func (Provider) Values() []string { return []string{"TELEGRAM", "WHATSAPP", "MESSENGER", "API"} }

// BotMode of a Messenger channel (R27–R29).
type BotMode string

const (
	BotNone      BotMode = "NONE"
	BotFirstLine BotMode = "FIRST_LINE"
	BotFull      BotMode = "FULL"
)

func (BotMode) Values() []string { return []string{"NONE", "FIRST_LINE", "FULL"} }

// ChatStatus is the lifecycle state of a chat.
type ChatStatus string

const (
	ChatBotProcessing ChatStatus = "BOT_PROCESSING"
	ChatWaiting       ChatStatus = "WAITING"
	ChatInProgress    ChatStatus = "IN_PROGRESS"
	ChatCompleted     ChatStatus = "COMPLETED"
)

func (ChatStatus) Values() []string {
	return []string{"BOT_PROCESSING", "WAITING", "IN_PROGRESS", "COMPLETED"}
}

// CompletionReason says why a chat was completed (R17, R18, R20, R28, R29).
type CompletionReason string

const (
	CompletedByOperator  CompletionReason = "OPERATOR"
	CompletedByTimeout   CompletionReason = "COMPLETION_TIMEOUT"
	CompletedByTransfer  CompletionReason = "TRANSFERRED"
	CompletedByHandover  CompletionReason = "BOT_HANDOVER"
	CompletedByBotTimout CompletionReason = "BOT_TIMEOUT"
	CompletedBySystem    CompletionReason = "SYSTEM"
)

func (CompletionReason) Values() []string {
	return []string{"OPERATOR", "COMPLETION_TIMEOUT", "TRANSFERRED", "BOT_HANDOVER", "BOT_TIMEOUT", "SYSTEM"}
}

// Direction of a message.
type Direction string

const (
	Inbound  Direction = "INBOUND"
	Outbound Direction = "OUTBOUND"
)

func (Direction) Values() []string { return []string{"INBOUND", "OUTBOUND"} }

// AuthorKind says who wrote a message.
type AuthorKind string

const (
	AuthorCustomer AuthorKind = "CUSTOMER"
	AuthorOperator AuthorKind = "OPERATOR"
	AuthorSystem   AuthorKind = "SYSTEM"
	AuthorBot      AuthorKind = "BOT"
	// AuthorExternal: someone outside Parley wrote to the customer on the
	// channel (the Page Inbox, another app), seen as a Messenger echo.
	AuthorExternal AuthorKind = "EXTERNAL"
)

func (AuthorKind) Values() []string {
	return []string{"CUSTOMER", "OPERATOR", "SYSTEM", "BOT", "EXTERNAL"}
}

// MessageKind is the content type of a message; nothing is dropped silently,
// an unknown content is stored as UNSUPPORTED.
type MessageKind string

const (
	KindText        MessageKind = "TEXT"
	KindPhoto       MessageKind = "PHOTO"
	KindDocument    MessageKind = "DOCUMENT"
	KindAudio       MessageKind = "AUDIO"
	KindVoice       MessageKind = "VOICE"
	KindVideo       MessageKind = "VIDEO"
	KindSticker     MessageKind = "STICKER"
	KindLocation    MessageKind = "LOCATION"
	KindContact     MessageKind = "CONTACT"
	KindInteractive MessageKind = "INTERACTIVE"
	KindReaction    MessageKind = "REACTION"
	KindUnsupported MessageKind = "UNSUPPORTED"
)

func (MessageKind) Values() []string {
	return []string{"TEXT", "PHOTO", "DOCUMENT", "AUDIO", "VOICE", "VIDEO", "STICKER", "LOCATION",
		"CONTACT", "INTERACTIVE", "REACTION", "UNSUPPORTED"}
}

// DeliveryStatus of an outbound message (R14); applied monotonically.
type DeliveryStatus string

const (
	DeliveryPending   DeliveryStatus = "PENDING"
	DeliverySent      DeliveryStatus = "SENT"
	DeliveryDelivered DeliveryStatus = "DELIVERED"
	DeliveryRead      DeliveryStatus = "READ"
	DeliveryFailed    DeliveryStatus = "FAILED"
)

func (DeliveryStatus) Values() []string {
	return []string{"PENDING", "SENT", "DELIVERED", "READ", "FAILED"}
}

// Rank orders delivery statuses so that a late "delivered" never overwrites "read".
func (s DeliveryStatus) Rank() int {
	switch s {
	case DeliveryPending:
		return 0
	case DeliverySent:
		return 1
	case DeliveryDelivered:
		return 2
	case DeliveryRead:
		return 3
	case DeliveryFailed:
		return 4
	}
	return -1
}

// AttachmentStatus tells whether a file is in Parley's storage yet.
type AttachmentStatus string

const (
	AttachmentPending AttachmentStatus = "PENDING"
	AttachmentStored  AttachmentStatus = "STORED"
	AttachmentFailed  AttachmentStatus = "FAILED"
)

func (AttachmentStatus) Values() []string { return []string{"PENDING", "STORED", "FAILED"} }

// OfferStatus of one offer of a chat to one operator.
type OfferStatus string

const (
	OfferOpen      OfferStatus = "OPEN"
	OfferAccepted  OfferStatus = "ACCEPTED"
	OfferWithdrawn OfferStatus = "WITHDRAWN"
	OfferExpired   OfferStatus = "EXPIRED"
)

func (OfferStatus) Values() []string { return []string{"OPEN", "ACCEPTED", "WITHDRAWN", "EXPIRED"} }

// ChatActionKind is what a chat action runs (R25).
type ChatActionKind string

const (
	ActionCreateCase ChatActionKind = "CREATE_CASE"
	ActionWebhook    ChatActionKind = "WEBHOOK"
)

func (ChatActionKind) Values() []string { return []string{"CREATE_CASE", "WEBHOOK"} }

// DuplicateField is the contact field a duplicate rule compares (R22).
type DuplicateField string

const (
	DuplicateName  DuplicateField = "NAME"
	DuplicatePhone DuplicateField = "PHONE"
	DuplicateEmail DuplicateField = "EMAIL"
)

func (DuplicateField) Values() []string { return []string{"NAME", "PHONE", "EMAIL"} }

// JobStatus of a durable background job (timers, outbox, downloads).
type JobStatus string

const (
	JobPending JobStatus = "PENDING"
	JobDone    JobStatus = "DONE"
	JobFailed  JobStatus = "FAILED"
)

func (JobStatus) Values() []string { return []string{"PENDING", "DONE", "FAILED"} }

// The gqlgen marshalling of every enum above.

func marshal(w io.Writer, s string) { _, _ = io.WriteString(w, strconv.Quote(s)) }

func unmarshal[T ~string](v any, values []string, dst *T) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("enum must be a string, got %T", v)
	}
	if !slices.Contains(values, s) {
		return fmt.Errorf("%q is not a valid value", s)
	}
	*dst = T(s)
	return nil
}

func (e Role) MarshalGQL(w io.Writer)                  { marshal(w, string(e)) }
func (e *Role) UnmarshalGQL(v any) error               { return unmarshal(v, e.Values(), e) }
func (e ApiKeyRole) MarshalGQL(w io.Writer)            { marshal(w, string(e)) }
func (e *ApiKeyRole) UnmarshalGQL(v any) error         { return unmarshal(v, e.Values(), e) }
func (e OperatorStatus) MarshalGQL(w io.Writer)        { marshal(w, string(e)) }
func (e *OperatorStatus) UnmarshalGQL(v any) error     { return unmarshal(v, e.Values(), e) }
func (e StatusChangeReason) MarshalGQL(w io.Writer)    { marshal(w, string(e)) }
func (e *StatusChangeReason) UnmarshalGQL(v any) error { return unmarshal(v, e.Values(), e) }
func (e RoutingRule) MarshalGQL(w io.Writer)           { marshal(w, string(e)) }
func (e *RoutingRule) UnmarshalGQL(v any) error        { return unmarshal(v, e.Values(), e) }
func (e AcceptTimeoutAction) MarshalGQL(w io.Writer)   { marshal(w, string(e)) }
func (e *AcceptTimeoutAction) UnmarshalGQL(v any) error {
	return unmarshal(v, e.Values(), e)
}
func (e WaitingOrder) MarshalGQL(w io.Writer)        { marshal(w, string(e)) }
func (e *WaitingOrder) UnmarshalGQL(v any) error     { return unmarshal(v, e.Values(), e) }
func (e Provider) MarshalGQL(w io.Writer)            { marshal(w, string(e)) }
func (e *Provider) UnmarshalGQL(v any) error         { return unmarshal(v, e.Values(), e) }
func (e BotMode) MarshalGQL(w io.Writer)             { marshal(w, string(e)) }
func (e *BotMode) UnmarshalGQL(v any) error          { return unmarshal(v, e.Values(), e) }
func (e ChatStatus) MarshalGQL(w io.Writer)          { marshal(w, string(e)) }
func (e *ChatStatus) UnmarshalGQL(v any) error       { return unmarshal(v, e.Values(), e) }
func (e CompletionReason) MarshalGQL(w io.Writer)    { marshal(w, string(e)) }
func (e *CompletionReason) UnmarshalGQL(v any) error { return unmarshal(v, e.Values(), e) }
func (e Direction) MarshalGQL(w io.Writer)           { marshal(w, string(e)) }
func (e *Direction) UnmarshalGQL(v any) error        { return unmarshal(v, e.Values(), e) }
func (e AuthorKind) MarshalGQL(w io.Writer)          { marshal(w, string(e)) }
func (e *AuthorKind) UnmarshalGQL(v any) error       { return unmarshal(v, e.Values(), e) }
func (e MessageKind) MarshalGQL(w io.Writer)         { marshal(w, string(e)) }
func (e *MessageKind) UnmarshalGQL(v any) error      { return unmarshal(v, e.Values(), e) }
func (e DeliveryStatus) MarshalGQL(w io.Writer)      { marshal(w, string(e)) }
func (e *DeliveryStatus) UnmarshalGQL(v any) error   { return unmarshal(v, e.Values(), e) }
func (e AttachmentStatus) MarshalGQL(w io.Writer)    { marshal(w, string(e)) }
func (e *AttachmentStatus) UnmarshalGQL(v any) error { return unmarshal(v, e.Values(), e) }
func (e OfferStatus) MarshalGQL(w io.Writer)         { marshal(w, string(e)) }
func (e *OfferStatus) UnmarshalGQL(v any) error      { return unmarshal(v, e.Values(), e) }
func (e ChatActionKind) MarshalGQL(w io.Writer)      { marshal(w, string(e)) }
func (e *ChatActionKind) UnmarshalGQL(v any) error   { return unmarshal(v, e.Values(), e) }
func (e DuplicateField) MarshalGQL(w io.Writer)      { marshal(w, string(e)) }
func (e *DuplicateField) UnmarshalGQL(v any) error   { return unmarshal(v, e.Values(), e) }
func (e JobStatus) MarshalGQL(w io.Writer)           { marshal(w, string(e)) }
func (e *JobStatus) UnmarshalGQL(v any) error        { return unmarshal(v, e.Values(), e) }
