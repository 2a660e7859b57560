// Package channels is the contract between Parley and its provider adapters
// (channels/telegram, channels/whatsapp, channels/messenger): the normalised
// values an adapter produces from a webhook delivery, what it is asked to
// send, and the errors it reports. It knows neither graph nor desk; desk uses
// these types and server wires the adapters in.
package channels

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Provider names, as enum.Provider spells them.
const (
	Telegram  = "TELEGRAM"
	WhatsApp  = "WHATSAPP"
	Messenger = "MESSENGER"
)

// Channel is what an adapter knows of one configured channel.
type Channel struct {
	ID       int
	Provider string
	// ExternalID is the provider's id of the account: the WhatsApp
	// phone_number_id, the Facebook page id, the Telegram bot id (optional).
	ExternalID string
	// Token is the Telegram bot token, the WhatsApp system-user token or
	// the Messenger page access token.
	Token string
	// AppSecret signs Meta webhooks (X-Hub-Signature-256).
	AppSecret string
	// VerifyToken answers Meta's GET handshake.
	VerifyToken string
	// WebhookSecret is Telegram's secret_token.
	WebhookSecret string
	// AppID is our Meta app id: echoes of our own sends are ignored.
	AppID string
}

// Delivery is one webhook body, parsed.
type Delivery struct {
	// Key deduplicates redeliveries of the whole body: Telegram's update_id;
	// for Meta, a hash of the body (per-message ids deduplicate the rest).
	Key string
	// Updates are every event of the body, in order (Meta batches: every
	// entry, change, messaging, message and status).
	Updates []Update
}

// UpdateKind says what an Update is.
type UpdateKind string

const (
	// UpdateMessage is a customer message.
	UpdateMessage UpdateKind = "MESSAGE"
	// UpdateEdit is a customer's edit of an earlier message (Telegram).
	UpdateEdit UpdateKind = "EDIT"
	// UpdateStatus is a delivery status of one of our outbound messages.
	UpdateStatus UpdateKind = "STATUS"
	// UpdateReachability says the customer blocked or unblocked us.
	UpdateReachability UpdateKind = "REACHABILITY"
	// UpdateEcho is a message sent to the customer by another app or the
	// Page Inbox (Messenger echo of another app_id).
	UpdateEcho UpdateKind = "ECHO"
	// UpdateIgnored is an event Parley deliberately does not act on (our
	// own echoes, handover notices); Reason says what it was.
	UpdateIgnored UpdateKind = "IGNORED"
)

// Message kinds, as enum.MessageKind spells them.
const (
	KindText        = "TEXT"
	KindPhoto       = "PHOTO"
	KindDocument    = "DOCUMENT"
	KindAudio       = "AUDIO"
	KindVoice       = "VOICE"
	KindVideo       = "VIDEO"
	KindSticker     = "STICKER"
	KindLocation    = "LOCATION"
	KindContact     = "CONTACT"
	KindInteractive = "INTERACTIVE"
	KindReaction    = "REACTION"
	KindUnsupported = "UNSUPPORTED"
)

// Delivery statuses, as enum.DeliveryStatus spells them.
const (
	StatusSent      = "SENT"
	StatusDelivered = "DELIVERED"
	StatusRead      = "READ"
	StatusFailed    = "FAILED"
)

// Identity is a customer as the provider describes them.
type Identity struct {
	// ExternalID is the stable key of the customer on this provider:
	// Telegram chat id (= user id in a private chat), WhatsApp BSUID
	// (user_id) or, for payloads without one, wa_id; Messenger PSID.
	ExternalID string
	Name       string
	Username   string
	Phone      string
	// PhotoRef locates a profile photo the adapter can Download, when the
	// delivery carries one (most don't: see Profile).
	PhotoRef string
}

// Attachment is a file of an inbound message; Ref is what Download takes
// (Telegram file_id, WhatsApp media id, Messenger CDN URL).
type Attachment struct {
	Kind     string
	Ref      string
	FileName string
	MimeType string
	Size     int64
}

// Update is one normalised event of a delivery.
type Update struct {
	Kind UpdateKind
	// AccountRef is the provider account the event was sent to (WhatsApp
	// phone_number_id, Messenger page id); empty when the URL says it.
	AccountRef string
	Sender     Identity
	// MessageID is the provider's id of the message (Telegram
	// "<chat id>:<message id>", WhatsApp wamid, Messenger mid); for
	// statuses, the id of our outbound message.
	MessageID string
	Time      time.Time

	// Messages and echoes.
	MessageKind string
	Text        string
	// Content holds structured content: location {latitude, longitude,
	// name, address}, interactive {id, title}, reaction {messageId, emoji},
	// unsupported {code, title}.
	Content     map[string]any
	Attachments []Attachment

	// Statuses.
	Status     string
	ErrorCode  string
	ErrorTitle string

	// Reachability.
	Reachable bool

	// Reason explains an ignored update, for the log.
	Reason string
}

// Outbound is a message to send.
type Outbound struct {
	// To is the customer's ExternalID on the provider.
	To string
	// Phone is the customer's phone when known (WhatsApp sends to it when
	// To is not a BSUID).
	Phone string
	Text  string
	File  *OutboundFile
	// Tag asks Messenger for the HUMAN_AGENT tag (replies up to 7 days).
	HumanAgentTag bool
}

// OutboundFile is a file to send with a message.
type OutboundFile struct {
	Kind     string // KindPhoto or KindDocument (or audio, video)
	Name     string
	MimeType string
	Data     []byte
}

// SendResult is what the provider answered to a send.
type SendResult struct {
	MessageID string
}

// SendError is a failed send, classified so that the outbox knows what to do.
type SendError struct {
	// Permanent failures are not retried: the message is FAILED.
	Permanent bool
	// Code and Reason are the provider's (e.g. "403", "Forbidden: bot was
	// blocked by the user"; "131047", "Re-engagement message").
	Code   string
	Reason string
	// RetryAfter is the provider's requested delay (Telegram retry_after,
	// Meta rate limits); zero means the outbox's own backoff.
	RetryAfter time.Duration
	// Unreachable says the customer blocked us (or cannot be written to).
	Unreachable bool
	// WindowClosed says the reply window had closed (WhatsApp 131047,
	// Messenger 10/2018278).
	WindowClosed bool
}

func (e *SendError) Error() string {
	kind := "transient"
	if e.Permanent {
		kind = "permanent"
	}
	return fmt.Sprintf("%s send failure %s: %s", kind, e.Code, e.Reason)
}

// AsSendError returns the *SendError in err's chain; any other error is a
// transient failure (network, 5xx).
func AsSendError(err error) *SendError {
	var se *SendError
	if errors.As(err, &se) {
		return se
	}
	return &SendError{Code: "TRANSPORT", Reason: err.Error()}
}

// Profile is what the provider tells about a customer on request.
type Profile struct {
	Name     string
	Username string
	Phone    string
	// PhotoRef is what Download takes to fetch the photo; empty if none.
	PhotoRef string
}

// File is a downloaded file; the caller closes Body.
type File struct {
	Body     io.ReadCloser
	MimeType string
	Name     string
	Size     int64
}

// ErrUnsupported is returned by operations a provider does not have.
var ErrUnsupported = errors.New("not supported by this provider")

// ErrMalformed wraps parse failures of a webhook body (answered 400).
var ErrMalformed = errors.New("malformed delivery")

// Adapter is one provider's client and parser.
type Adapter interface {
	// Provider is the provider's name (Telegram, WhatsApp, Messenger).
	Provider() string
	// Parse turns a verified webhook body into updates. A body that is not
	// the provider's JSON fails with an error wrapping ErrMalformed.
	Parse(ch Channel, body []byte) (Delivery, error)
	// Send sends one message; failures are *SendError (or transport errors,
	// which are transient).
	Send(ctx context.Context, ch Channel, out Outbound) (SendResult, error)
	// Profile fetches a customer's profile (Telegram getUserProfilePhotos;
	// Messenger user profile API; WhatsApp has none: ErrUnsupported).
	Profile(ctx context.Context, ch Channel, externalID string) (Profile, error)
	// Download fetches a file by reference (an attachment's Ref, a PhotoRef).
	Download(ctx context.Context, ch Channel, ref string) (File, error)
	// RegisterWebhook tells the provider where to deliver (Telegram
	// setWebhook with the channel's secret); ErrUnsupported for Meta, whose
	// webhooks are set in the App Dashboard.
	RegisterWebhook(ctx context.Context, ch Channel, url string) error
}

// ProfileSupport is implemented by adapters that can tell whether their
// provider has a profile API; an adapter that does not implement it is
// assumed to have one.
type ProfileSupport interface {
	// SupportsProfiles reports whether Profile can ever succeed.
	SupportsProfiles() bool
}

// HasProfiles reports whether fetching a customer's profile through a is
// worth a job: WhatsApp, for one, has no profile API (the name comes with
// every delivery).
func HasProfiles(a Adapter) bool {
	p, ok := a.(ProfileSupport)
	return !ok || p.SupportsProfiles()
}

// Config locates the providers' APIs; tests point them at local fakes.
type Config struct {
	// TelegramBaseURL defaults to https://api.telegram.org (also for files).
	TelegramBaseURL string
	// GraphBaseURL defaults to https://graph.facebook.com.
	GraphBaseURL string
	// GraphVersion defaults to v25.0.
	GraphVersion string
	// HTTPTimeout bounds each provider call (default 30s).
	HTTPTimeout time.Duration
	// UserAgent is sent on media downloads (Meta's lookaside host refuses
	// some defaults).
	UserAgent string
}

// WithDefaults fills the zero fields.
func (c Config) WithDefaults() Config {
	if c.TelegramBaseURL == "" {
		c.TelegramBaseURL = "https://api.telegram.org"
	}
	if c.GraphBaseURL == "" {
		c.GraphBaseURL = "https://graph.facebook.com"
	}
	if c.GraphVersion == "" {
		c.GraphVersion = "v25.0"
	}
	if c.HTTPTimeout <= 0 {
		c.HTTPTimeout = 30 * time.Second
	}
	if c.UserAgent == "" {
		c.UserAgent = "Parley/1.0"
	}
	return c
}
