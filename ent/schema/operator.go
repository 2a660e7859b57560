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

// Operator is a person who works chats, or configures Parley (R4–R7, R32).
type Operator struct{ ent.Schema }

func (Operator) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (Operator) Fields() []ent.Field {
	return []ent.Field{
		field.String("email").NotEmpty().MaxLen(254).Unique().
			Annotations(entgql.OrderField("EMAIL")),
		field.String("name").NotEmpty().MaxLen(200).
			Annotations(entgql.OrderField("NAME")),
		field.String("password_hash").Sensitive().Annotations(hidden()),
		field.Enum("role").GoType(enum.Role("")).Annotations(entgql.Type("Role")).Default(string(enum.RoleOperator)).
			Annotations(entgql.OrderField("ROLE")),
		// status is what the operator chose (R4, R5): new operators start INACTIVE.
		field.Enum("status").GoType(enum.OperatorStatus("")).Annotations(entgql.Type("OperatorStatus")).Default(string(enum.StatusInactive)).
			Annotations(entgql.OrderField("STATUS"), readOnly()),
		// status_before_logout is restored at the next login (R6).
		field.Enum("status_before_logout").GoType(enum.OperatorStatus("")).Annotations(entgql.Type("OperatorStatus")).Optional().Nillable().
			Annotations(readOnly()),
		field.Time("status_changed_at").Optional().Nillable().Annotations(readOnly()),
		// chat_limit overrides the queue's and the system's concurrent-chats limit (R7).
		field.Int("chat_limit").Optional().Nillable().Min(0).Max(1000),
		// disabled operators cannot log in; their sessions are revoked.
		field.Bool("disabled").Default(false),
		// last_accepted_at breaks ties in TO_AVAILABLE routing (idle longest wins).
		field.Time("last_accepted_at").Optional().Nillable().Annotations(readOnly()),
		field.Int("missed_offers").Default(0).NonNegative().Annotations(readOnly()),
	}
}

func (Operator) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("sessions", OperatorSession.Type).Annotations(hidden()),
		edge.To("status_changes", OperatorStatusChange.Type).
			Annotations(entgql.RelayConnection(), readOnly()),
		edge.From("queues", Queue.Type).Ref("members").
			Annotations(entgql.Skip(entgql.SkipMutationCreateInput, entgql.SkipMutationUpdateInput)),
		edge.From("owned_chats", Chat.Type).Ref("owner").
			Annotations(entgql.RelayConnection(), readOnly()),
		edge.From("offers", ChatOffer.Type).Ref("operator").Annotations(readOnly()),
		edge.To("drafts", Draft.Type).Annotations(hidden()),
		edge.From("assigned_cases", SupportCase.Type).Ref("assignee").Annotations(readOnly()),
	}
}

func (Operator) Annotations() []entschema.Annotation { return listed() }

// OperatorSession is one login: a bearer token stored as a hash, revocable and
// expiring (R6, R32).
type OperatorSession struct{ ent.Schema }

func (OperatorSession) Fields() []ent.Field {
	return []ent.Field{
		field.Bytes("token_hash").Sensitive().Unique().NotEmpty(),
		field.Time("created_at").Immutable(),
		field.Time("expires_at"),
		field.Time("last_seen_at"),
		// ended_at is set by logout, expiry or revocation; the reason says which.
		field.Time("ended_at").Optional().Nillable(),
		field.String("end_reason").Optional(),
		field.String("user_agent").Optional().MaxLen(500),
		field.String("remote_addr").Optional().MaxLen(100),
	}
}

func (OperatorSession) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("operator", Operator.Type).Ref("sessions").Unique().Required(),
	}
}

func (OperatorSession) Indexes() []ent.Index {
	return []ent.Index{index.Fields("expires_at", "ended_at")}
}

func (OperatorSession) Annotations() []entschema.Annotation {
	return []entschema.Annotation{hidden()}
}

// OperatorStatusChange is the history of an operator's status (R6): time in
// status is computed from it.
type OperatorStatusChange struct{ ent.Schema }

func (OperatorStatusChange) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("status").GoType(enum.OperatorStatus("")).Annotations(entgql.Type("OperatorStatus")),
		field.Enum("previous").GoType(enum.OperatorStatus("")).Annotations(entgql.Type("OperatorStatus")).Optional().Nillable(),
		field.Enum("reason").GoType(enum.StatusChangeReason("")).Annotations(entgql.Type("StatusChangeReason")),
		field.Time("at").Annotations(entgql.OrderField("AT")),
	}
}

func (OperatorStatusChange) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("operator", Operator.Type).Ref("status_changes").Unique().Required(),
	}
}

func (OperatorStatusChange) Indexes() []ent.Index {
	return []ent.Index{index.Edges("operator").Fields("at")}
}

func (OperatorStatusChange) Annotations() []entschema.Annotation {
	return []entschema.Annotation{entgql.RelayConnection()}
}

// ApiKey lets an integrator call the API as a service account (R32).
type ApiKey struct{ ent.Schema }

func (ApiKey) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (ApiKey) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").NotEmpty().MaxLen(200).Annotations(entgql.OrderField("NAME")),
		// prefix is the first characters of the key, shown so keys can be told apart.
		field.String("prefix").Immutable(),
		field.Bytes("key_hash").Sensitive().Unique().Immutable(),
		field.Enum("role").GoType(enum.ApiKeyRole("")).Annotations(entgql.Type("ApiKeyRole")),
		field.Time("expires_at").Optional().Nillable(),
		field.Time("revoked_at").Optional().Nillable(),
		field.Time("last_used_at").Optional().Nillable(),
	}
}

func (ApiKey) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("created_by", Operator.Type).Unique().Annotations(readOnly()),
	}
}

func (ApiKey) Annotations() []entschema.Annotation { return listed() }
