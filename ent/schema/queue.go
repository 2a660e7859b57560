package schema

import (
	"entgo.io/contrib/entgql"
	"entgo.io/ent"
	entschema "entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"

	"github.com/parleydesk/parley/ent/schema/enum"
)

// Queue is a routing unit: a rule, timeouts, members and channels (R8, R9, R18).
type Queue struct{ ent.Schema }

func (Queue) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (Queue) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").NotEmpty().MaxLen(200).Unique().
			Annotations(entgql.OrderField("NAME")),
		field.Enum("routing_rule").GoType(enum.RoutingRule("")).Annotations(entgql.Type("RoutingRule")).Default(string(enum.RuleToAll)),
		// accept_timeout_seconds overrides the system setting for TO_AVAILABLE and ROUND_ROBIN.
		field.Int("accept_timeout_seconds").Optional().Nillable().Min(5).Max(86400),
		field.Enum("accept_timeout_action").GoType(enum.AcceptTimeoutAction("")).Annotations(entgql.Type("AcceptTimeoutAction")).
			Default(string(enum.TimeoutSetInactive)),
		// completion_timeout_minutes: customer silence after an operator reply
		// that completes the chat (R18); empty means never.
		field.Int("completion_timeout_minutes").Optional().Nillable().Min(1).Max(525600),
		// chat_limit overrides the system's concurrent-chats limit for members (R7).
		field.Int("chat_limit").Optional().Nillable().Min(0).Max(1000),
		// waiting_order overrides the system setting (R9).
		field.Enum("waiting_order").GoType(enum.WaitingOrder("")).Annotations(entgql.Type("WaitingOrder")).Optional().Nillable(),
		// position orders queues in lists (transfer targets, supervisors' view).
		field.Int("position").Default(0).Annotations(entgql.OrderField("POSITION")),
		// rr_last_operator_id is the round-robin cursor.
		field.Int("rr_last_operator_id").Optional().Nillable().Annotations(hidden()),
	}
}

func (Queue) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("members", Operator.Type),
		edge.To("channels", Channel.Type).Annotations(readOnly()),
		edge.To("chats", Chat.Type).Annotations(entgql.RelayConnection(), readOnly()),
		edge.To("chat_actions", ChatAction.Type).Annotations(readOnly()),
	}
}

func (Queue) Annotations() []entschema.Annotation { return listed(managed()) }

// Channel is one connected provider account: a Telegram bot, a WhatsApp
// business number or a Facebook page. Secrets are write-only (R32).
type Channel struct{ ent.Schema }

func (Channel) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (Channel) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("provider").GoType(enum.Provider("")).Annotations(entgql.Type("Provider")).Immutable().
			Annotations(entgql.OrderField("PROVIDER")),
		field.String("name").NotEmpty().MaxLen(200).Annotations(entgql.OrderField("NAME")),
		field.Bool("active").Default(true),
		// external_id is the provider's id of the account: the bot's user id,
		// the WhatsApp phone_number_id or the Facebook page id.
		field.String("external_id").Optional().MaxLen(100),
		// token: the Telegram bot token, or the WhatsApp / Messenger access token.
		field.String("token").Optional().Sensitive().Annotations(secret()),
		// app_secret signs Meta webhooks (X-Hub-Signature-256).
		field.String("app_secret").Optional().Sensitive().Annotations(secret()),
		// verify_token answers Meta's GET verification handshake.
		field.String("verify_token").Optional().Sensitive().Annotations(secret()),
		// webhook_secret is Telegram's X-Telegram-Bot-Api-Secret-Token.
		field.String("webhook_secret").Optional().Sensitive().Annotations(secret()),
		// bot_mode applies to Messenger only (R27–R29).
		field.Enum("bot_mode").GoType(enum.BotMode("")).Annotations(entgql.Type("BotMode")).Default(string(enum.BotNone)),
		// bot_app_id is the Meta app that owns threads in bot mode.
		field.String("bot_app_id").Optional().MaxLen(100),
		field.Int("queue_id").Annotations(hidden()),
	}
}

func (Channel) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("queue", Queue.Type).Ref("channels").Unique().Required().Field("queue_id"),
		edge.To("chats", Chat.Type).Annotations(entgql.RelayConnection(), readOnly()),
	}
}

func (Channel) Annotations() []entschema.Annotation { return listed(managed()) }
