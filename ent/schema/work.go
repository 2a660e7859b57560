package schema

import (
	"entgo.io/contrib/entgql"
	"entgo.io/ent"
	entschema "entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"

	"github.com/parleydesk/parley/ent/schema/enum"
)

// QuickReply is a reply template (R15).
type QuickReply struct{ ent.Schema }

func (QuickReply) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (QuickReply) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").NotEmpty().MaxLen(200).Annotations(entgql.OrderField("NAME")),
		field.Text("text").NotEmpty().MaxLen(4000),
		// search_key is the lower-cased name and text, for case-insensitive search in any language.
		field.Text("search_key").Annotations(hidden()),
	}
}

func (QuickReply) Annotations() []entschema.Annotation { return listed(managed()) }

// Draft is an operator's unsent reply in a chat (R16).
type Draft struct{ ent.Schema }

func (Draft) Fields() []ent.Field {
	return []ent.Field{
		field.Text("text").MaxLen(10000),
		field.Time("updated_at"),
	}
}

func (Draft) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("operator", Operator.Type).Ref("drafts").Unique().Required(),
		edge.To("chat", Chat.Type).Unique().Required(),
	}
}

func (Draft) Indexes() []ent.Index {
	return []ent.Index{index.Edges("operator", "chat").Unique()}
}

// SupportCase is a request created from a chat (R26).
type SupportCase struct{ ent.Schema }

func (SupportCase) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (SupportCase) Fields() []ent.Field {
	return []ent.Field{
		field.String("subject").MaxLen(1000),
		field.Text("description").Default(""),
		field.String("origin").Default("Chat"),
		field.String("status").Default("New"),
		field.Time("registered_at"),
	}
}

func (SupportCase) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("contact", Contact.Type).Ref("cases").Unique(),
		edge.From("account", Account.Type).Ref("cases").Unique(),
		edge.To("assignee", Operator.Type).Unique(),
		edge.From("chat", Chat.Type).Ref("cases").Unique(),
	}
}

func (SupportCase) Annotations() []entschema.Annotation { return listed() }

// ChatAction is a button in a queue's chats: create a case, or call an
// integrator's endpoint (R25).
type ChatAction struct{ ent.Schema }

func (ChatAction) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (ChatAction) Fields() []ent.Field {
	return []ent.Field{
		field.String("caption").NotEmpty().MaxLen(200).Annotations(entgql.OrderField("CAPTION")),
		field.Enum("kind").GoType(enum.ChatActionKind("")).Annotations(entgql.Type("ChatActionKind")),
		field.String("url").Optional().MaxLen(2000),
		// secret signs the POST to url (HMAC-SHA256); write-only.
		field.String("secret").Optional().Sensitive().Annotations(secret()),
		field.Int("position").Default(0).Annotations(entgql.OrderField("POSITION")),
		field.Bool("active").Default(true),
	}
}

func (ChatAction) Edges() []ent.Edge {
	return []ent.Edge{edge.From("queue", Queue.Type).Ref("chat_actions").Unique().Required()}
}

func (ChatAction) Annotations() []entschema.Annotation { return listed(managed()) }

// DuplicateRule says which contact field finds duplicates (R22).
type DuplicateRule struct{ ent.Schema }

func (DuplicateRule) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (DuplicateRule) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").NotEmpty().MaxLen(200).Annotations(entgql.OrderField("NAME")),
		field.Enum("field").GoType(enum.DuplicateField("")).Annotations(entgql.Type("DuplicateField")),
		field.Bool("active").Default(true),
	}
}

func (DuplicateRule) Annotations() []entschema.Annotation { return listed(managed()) }

// Setting is the single row of system settings.
type Setting struct{ ent.Schema }

func (Setting) Fields() []ent.Field {
	return []ent.Field{
		// scope makes the row a singleton that concurrent starts create once.
		field.String("scope").Unique().Immutable().Annotations(hidden()),
		// concurrent_chats is the default chat limit per operator (R7).
		field.Int("concurrent_chats").Default(5).Min(1).Max(1000),
		// accept_timeout_seconds for TO_AVAILABLE routing (R8): default 5 minutes.
		field.Int("accept_timeout_seconds").Default(300).Min(5).Max(86400),
		field.Enum("waiting_order").GoType(enum.WaitingOrder("")).Annotations(entgql.Type("WaitingOrder")).Default(string(enum.OldestFirst)),
		// bot_completion_minutes completes BOT_PROCESSING chats when the queue has no timeout (R29).
		field.Int("bot_completion_minutes").Default(60).Min(1).Max(525600),
		// events_pruned_through: the newest event id the retention job deleted;
		// resuming a subscription from before it fails with EVENTS_EXPIRED.
		field.Int("events_pruned_through").Default(0).Annotations(hidden()),
		field.Time("updated_at").Annotations(readOnly()),
	}
}

func (Setting) Annotations() []entschema.Annotation {
	return []entschema.Annotation{entgql.Mutations(entgql.MutationUpdate())}
}

// Event is the append-only log of state changes: subscriptions read it and
// resume from an id. The id is monotonic.
type Event struct{ ent.Schema }

func (Event) Fields() []ent.Field {
	return []ent.Field{
		field.String("type"),
		field.Int("chat_id").Optional().Nillable(),
		field.Int("operator_id").Optional().Nillable(),
		field.Int("queue_id").Optional().Nillable(),
		field.JSON("payload", map[string]any{}).Optional(),
		field.Time("created_at"),
		// audience: the operators whose panel shows the change (owner,
		// operators offered the chat, the operator concerned); queue_ids:
		// the queues whose supervisors' view shows it. Subscriptions match
		// on them without reading anything else.
		field.Ints("audience").Optional(),
		field.Ints("queue_ids").Optional(),
	}
}

func (Event) Indexes() []ent.Index {
	return []ent.Index{index.Fields("created_at")}
}

func (Event) Annotations() []entschema.Annotation { return []entschema.Annotation{hidden()} }

// Job is durable background work with a due time: accept and completion
// timers, outbound sends, media downloads. Each fires exactly once across
// instances and survives restarts.
type Job struct{ ent.Schema }

func (Job) Fields() []ent.Field {
	return []ent.Field{
		field.String("kind"),
		// dedupe_key makes scheduling idempotent (e.g. "accept-timeout:<offer id>").
		field.String("dedupe_key").Optional().Nillable().Unique(),
		field.Int("chat_id").Optional().Nillable(),
		field.JSON("payload", map[string]any{}).Optional(),
		field.Time("due_at"),
		field.Enum("status").GoType(enum.JobStatus("")).Annotations(entgql.Type("JobStatus")).Default(string(enum.JobPending)),
		field.Int("attempts").Default(0),
		// locked_until: a worker holds the job until then; a crashed worker's lease expires.
		field.Time("locked_until").Optional().Nillable(),
		field.String("last_error").Optional(),
		field.Time("created_at"),
		field.Time("done_at").Optional().Nillable(),
		// call_started_at is set while a provider call of the job is in
		// flight; a claim that finds it set knows a process died mid-call.
		field.Time("call_started_at").Optional().Nillable(),
	}
}

func (Job) Indexes() []ent.Index {
	return []ent.Index{index.Fields("status", "due_at")}
}

func (Job) Annotations() []entschema.Annotation { return []entschema.Annotation{hidden()} }

// InboundDelivery is one verified provider delivery, stored before the
// webhook is acknowledged and unique by the provider's key (R3).
type InboundDelivery struct{ ent.Schema }

func (InboundDelivery) Fields() []ent.Field {
	return []ent.Field{
		field.Int("channel_id"),
		field.String("provider_key"),
		field.Bytes("body"),
		field.Time("received_at"),
		field.Time("processed_at").Optional().Nillable(),
		field.String("error").Optional(),
	}
}

func (InboundDelivery) Indexes() []ent.Index {
	return []ent.Index{index.Fields("channel_id", "provider_key").Unique()}
}

func (InboundDelivery) Annotations() []entschema.Annotation { return []entschema.Annotation{hidden()} }
