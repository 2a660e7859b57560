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

// Contact is a customer (R2, R22, R23).
type Contact struct{ ent.Schema }

func (Contact) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (Contact) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").Default("").MaxLen(300).Annotations(entgql.OrderField("NAME")),
		field.String("phone").Optional().MaxLen(50),
		field.String("email").Optional().MaxLen(254),
		field.String("username").Optional().MaxLen(100),
		// photo_key is the file in Parley's storage (provider URLs expire, R2).
		field.String("photo_key").Optional().Annotations(hidden()),
		field.String("notes").Optional().MaxLen(10000),
		// merged_into_id is set on a contact merged into another (R22).
		field.Int("merged_into_id").Optional().Nillable().Annotations(readOnly()),
	}
}

func (Contact) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("account", Account.Type).Ref("contacts").Unique(),
		edge.To("identities", ContactIdentity.Type).Annotations(readOnly()),
		edge.To("chats", Chat.Type).Annotations(entgql.RelayConnection(), readOnly()),
		edge.To("cases", SupportCase.Type).Annotations(readOnly()),
	}
}

func (Contact) Indexes() []ent.Index {
	return []ent.Index{index.Fields("phone"), index.Fields("email")}
}

func (Contact) Annotations() []entschema.Annotation { return listed(managed()) }

// ContactIdentity is a contact's id at a provider: Telegram user id, WhatsApp
// number or business-scoped id, Messenger page-scoped id. Unique per provider.
type ContactIdentity struct{ ent.Schema }

func (ContactIdentity) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (ContactIdentity) Fields() []ent.Field {
	return []ent.Field{
		field.Enum("provider").GoType(enum.Provider("")).Annotations(entgql.Type("Provider")).Immutable(),
		field.String("external_id").NotEmpty().MaxLen(200).Immutable(),
		field.String("display_name").Optional().MaxLen(300),
		field.String("username").Optional().MaxLen(100),
		field.String("phone").Optional().MaxLen(50),
		// unreachable: the user blocked the bot, or the provider refuses to deliver.
		field.Bool("unreachable").Default(false),
		field.String("unreachable_reason").Optional(),
		field.Int("contact_id").Annotations(hidden()),
	}
}

func (ContactIdentity) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("contact", Contact.Type).Ref("identities").Unique().Required().Field("contact_id"),
	}
}

func (ContactIdentity) Indexes() []ent.Index {
	return []ent.Index{index.Fields("provider", "external_id").Unique()}
}

func (ContactIdentity) Annotations() []entschema.Annotation {
	return []entschema.Annotation{entgql.RelayConnection()}
}

// Account is a company that contacts belong to.
type Account struct{ ent.Schema }

func (Account) Mixin() []ent.Mixin { return []ent.Mixin{TimeMixin{}} }

func (Account) Fields() []ent.Field {
	return []ent.Field{
		field.String("name").NotEmpty().MaxLen(300).Annotations(entgql.OrderField("NAME")),
		field.String("phone").Optional().MaxLen(50),
		field.String("email").Optional().MaxLen(254),
		field.String("website").Optional().MaxLen(300),
	}
}

func (Account) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("contacts", Contact.Type),
		edge.To("cases", SupportCase.Type).Annotations(readOnly()),
	}
}

func (Account) Annotations() []entschema.Annotation { return listed(managed()) }

// ContactMerge records a merge of duplicates so that it can be undone (R22).
type ContactMerge struct{ ent.Schema }

func (ContactMerge) Fields() []ent.Field {
	return []ent.Field{
		field.Int("survivor_id"),
		field.Int("merged_id"),
		// moved lists the ids of chats and identities moved to the survivor.
		field.JSON("moved", map[string][]int{}).Annotations(hidden()),
		field.Time("at"),
		field.Time("undone_at").Optional().Nillable(),
	}
}

func (ContactMerge) Edges() []ent.Edge {
	return []ent.Edge{edge.To("by", Operator.Type).Unique()}
}
