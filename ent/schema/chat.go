package schema

import (
	"entgo.io/contrib/entgql"
	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	entschema "entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"

	"github.com/parleydesk/parley/ent/schema/enum"
)

// Chat is one conversation episode between a contact and the company on one
// channel. Every field is owned by the rules in desk/.
type Chat struct{ ent.Schema }

func (Chat) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("status").GoType(enum.ChatStatus("")).Annotations(entgql.Type("ChatStatus")).Annotations(entgql.OrderField("STATUS")),
		field.Time("created_at").Immutable().Annotations(entgql.OrderField("CREATED_AT")),
		field.Time("offered_at").Optional().Nillable(),
		field.Time("accepted_at").Optional().Nillable(),
		field.Time("first_response_at").Optional().Nillable(),
		field.Time("completed_at").Optional().Nillable(),
		field.Enum("completion_reason").GoType(enum.CompletionReason("")).Annotations(entgql.Type("CompletionReason")).Optional().Nillable(),
		// completion_due_at: when customer silence completes the chat (R18).
		field.Time("completion_due_at").Optional().Nillable(),
		// reply_window_ends_at: when the provider's 24-hour window closes (R21).
		field.Time("reply_window_ends_at").Optional().Nillable(),
		field.Time("last_message_at").Annotations(entgql.OrderField("LAST_MESSAGE_AT")),
		field.Time("last_inbound_at").Optional().Nillable(),
		// owner_read_at: the owner has read every message before it (unread counts).
		field.Time("owner_read_at").Optional().Nillable(),
		// first_response_seconds and duration_seconds are recorded at completion (R31).
		field.Int("first_response_seconds").Optional().Nillable(),
		field.Int("duration_seconds").Optional().Nillable(),
		field.String("transfer_note").Optional().MaxLen(2000),
		// duplicates_found: similar contacts found when the chat arrived (R22).
		field.Int("duplicates_found").Default(0),
		// route_pending: a new chat whose first routing was handed to the
		// queue's release job because another transaction was routing a new
		// chat of the same queue at that instant (desk.Ingest on PostgreSQL).
		field.Bool("route_pending").Default(false).Annotations(hidden()),
		// Edge fields, so that the rules read ids without a join.
		field.Int("channel_id").Immutable().Annotations(hidden()),
		field.Int("contact_id").Annotations(hidden()),
		field.Int("queue_id").Annotations(hidden()),
		field.Int("owner_id").Optional().Nillable().Annotations(hidden()),
		field.Int("parent_id").Optional().Nillable().Immutable().Annotations(hidden()),
	}
}

func (Chat) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("channel", Channel.Type).Ref("chats").Unique().Required().Immutable().Field("channel_id"),
		edge.From("contact", Contact.Type).Ref("chats").Unique().Required().Field("contact_id"),
		edge.From("queue", Queue.Type).Ref("chats").Unique().Required().Field("queue_id"),
		edge.To("owner", Operator.Type).Unique().Field("owner_id"),
		edge.To("offers", ChatOffer.Type),
		edge.To("children", Chat.Type).From("parent").Unique().Immutable().Field("parent_id"),
		// messages is served by schema.graphql (Chat.messages, Chat.history),
		// which applies R24 before anything is read.
		edge.To("messages", Message.Type).Annotations(entgql.Skip(entgql.SkipType)),
		edge.To("routing_decisions", RoutingDecision.Type),
		edge.To("cases", SupportCase.Type),
	}
}

func (Chat) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("status", "created_at"),
		// The open chats by creation, either way (the chat list: `statusIn:
		// [WAITING, IN_PROGRESS]` by CREATED_AT): a page is the first rows of
		// this index and totalCount an index-only count of it, however many
		// chats are completed. PostgreSQL uses it when the query's status
		// condition implies the predicate (the same two statuses, or one).
		index.Fields("created_at", "id").StorageKey("chat_open_created_at_id").
			Annotations(entsql.IndexWhere("status IN ('WAITING', 'IN_PROGRESS')")),
		// Every chat by creation: SQLite takes a partial index only when the
		// statement's text implies its predicate, not with the statuses as
		// bound parameters; once ANALYZE has counted how many chats are open,
		// it scanned and sorted the whole table for a page of the chat list
		// instead (46 ms for 100,000 chats), and this index gives it the
		// page's first rows.
		index.Fields("created_at", "id"),
		// At most one chat that is not COMPLETED per contact and channel (R1):
		// concurrent first messages cannot open two chats.
		index.Fields("contact_id", "channel_id").Unique().
			Annotations(entsql.IndexWhere("status <> 'COMPLETED'")),
		index.Fields("contact_id", "channel_id", "status"),
		index.Fields("owner_id", "status"),
		index.Fields("queue_id", "status", "created_at"),
		index.Fields("completion_due_at"),
		// The chats whose first routing the release job owes (few, briefly).
		index.Fields("queue_id", "created_at", "id").StorageKey("chat_route_pending").
			Annotations(entsql.IndexWhere("route_pending")),
	}
}

func (Chat) Annotations() []entschema.Annotation { return listed() }

// ChatOffer is one offer of a chat to one operator: TO_ALL opens one per
// eligible member, TO_AVAILABLE and ROUND_ROBIN one at a time (R8, R13).
type ChatOffer struct{ ent.Schema }

func (ChatOffer) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("status").GoType(enum.OfferStatus("")).Annotations(entgql.Type("OfferStatus")),
		field.Time("created_at").Immutable(),
		field.Time("expires_at").Optional().Nillable(),
		field.Time("closed_at").Optional().Nillable(),
		field.Int("chat_id").Immutable().Annotations(hidden()),
		field.Int("operator_id").Immutable().Annotations(hidden()),
	}
}

func (ChatOffer) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("chat", Chat.Type).Ref("offers").Unique().Required().Immutable().Field("chat_id"),
		edge.To("operator", Operator.Type).Unique().Required().Immutable().Field("operator_id"),
	}
}

func (ChatOffer) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("chat_id", "status"),
		index.Fields("operator_id", "status"),
	}
}

// RoutingDecision records one routing attempt (R11).
type RoutingDecision struct{ ent.Schema }

// Candidate is one operator considered by a routing attempt.
type Candidate struct {
	OperatorID int    `json:"operatorId"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Load       int    `json:"load"`
	Limit      int    `json:"limit"`
	Chosen     bool   `json:"chosen"`
	// Excluded says why the operator was not chosen; empty for the chosen one.
	Excluded string `json:"excluded,omitempty"`
}

func (RoutingDecision) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("rule").GoType(enum.RoutingRule("")).Annotations(entgql.Type("RoutingRule")),
		field.Time("at"),
		// trigger says what started the attempt: NEW_CHAT, CAPACITY, TIMEOUT, TRANSFER.
		field.String("trigger"),
		field.JSON("candidates", []Candidate{}),
		// outcome: OFFERED, WAITING (nobody can take it).
		field.String("outcome"),
		field.Ints("chosen_operator_ids").Optional(),
	}
}

func (RoutingDecision) Edges() []ent.Edge {
	return []ent.Edge{edge.From("chat", Chat.Type).Ref("routing_decisions").Unique().Required()}
}

// Message is one message of a chat.
type Message struct{ ent.Schema }

func (Message) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("direction").GoType(enum.Direction("")).Annotations(entgql.Type("Direction")),
		field.Enum("author_kind").GoType(enum.AuthorKind("")).Annotations(entgql.Type("AuthorKind")),
		field.Enum("kind").GoType(enum.MessageKind("")).Annotations(entgql.Type("MessageKind")).Default(string(enum.KindText)),
		field.Text("text").Default(""),
		// content holds structured content: a location, a contact card, a reaction.
		field.JSON("content", map[string]any{}).Optional(),
		// channel_id is denormalised so that provider ids are unique per channel (R3).
		field.Int("channel_id").Annotations(hidden()),
		field.String("provider_message_id").Optional().Nillable().MaxLen(300),
		field.Enum("delivery_status").GoType(enum.DeliveryStatus("")).Annotations(entgql.Type("DeliveryStatus")).Optional().Nillable(),
		field.String("delivery_error_code").Optional(),
		field.String("delivery_error").Optional(),
		field.Time("created_at").Immutable().Annotations(entgql.OrderField("CREATED_AT")),
		field.Time("sent_at").Optional().Nillable(),
		field.Time("delivered_at").Optional().Nillable(),
		field.Time("read_at").Optional().Nillable(),
		field.Time("edited_at").Optional().Nillable(),
		// previous_texts keeps the text before each edit (Telegram edited messages).
		field.Strings("previous_texts").Optional(),
		field.Int("chat_id").Annotations(hidden()),
	}
}

func (Message) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("chat", Chat.Type).Ref("messages").Unique().Required().Field("chat_id"),
		edge.To("author", Operator.Type).Unique(),
		edge.To("attachments", Attachment.Type),
	}
}

func (Message) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("channel_id", "provider_message_id").Unique(),
		index.Fields("chat_id", "created_at"),
	}
}

func (Message) Annotations() []entschema.Annotation {
	return []entschema.Annotation{entgql.RelayConnection()}
}

// Attachment is a file of a message, kept in Parley's storage.
type Attachment struct{ ent.Schema }

func (Attachment) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("kind").GoType(enum.MessageKind("")).Annotations(entgql.Type("MessageKind")),
		field.String("file_name").Optional().MaxLen(500),
		field.String("mime_type").Optional().MaxLen(200),
		field.Int("size").Optional().NonNegative(),
		field.String("storage_key").Optional().Annotations(hidden()),
		field.String("provider_file_id").Optional().Annotations(hidden()),
		field.Enum("status").GoType(enum.AttachmentStatus("")).Annotations(entgql.Type("AttachmentStatus")),
		field.Time("created_at").Immutable(),
	}
}

func (Attachment) Edges() []ent.Edge {
	return []ent.Edge{edge.From("message", Message.Type).Ref("attachments").Unique()}
}
