package schema

import (
	"time"

	"entgo.io/contrib/entgql"
	"entgo.io/ent"
	entschema "entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/mixin"
)

// TimeMixin adds created_at and updated_at. desk/ sets both from its clock so
// that tests can inject time; the defaults only cover direct inserts.
type TimeMixin struct{ mixin.Schema }

func (TimeMixin) Fields() []ent.Field {
	return []ent.Field{
		field.Time("created_at").Default(time.Now).Immutable().
			Annotations(entgql.OrderField("CREATED_AT"), entgql.Skip(entgql.SkipMutationCreateInput, entgql.SkipMutationUpdateInput)),
		field.Time("updated_at").Default(time.Now).UpdateDefault(time.Now).
			Annotations(entgql.OrderField("UPDATED_AT"), entgql.Skip(entgql.SkipMutationCreateInput, entgql.SkipMutationUpdateInput)),
	}
}

// readOnly hides a field from the generated create and update inputs: the
// rules in desk/ own it.
func readOnly() entgql.Annotation {
	return entgql.Skip(entgql.SkipMutationCreateInput, entgql.SkipMutationUpdateInput)
}

// secret hides a write-only field from every GraphQL output and filter; it can
// still be set through the create and update inputs (R32).
func secret() entgql.Annotation {
	return entgql.Skip(entgql.SkipType, entgql.SkipWhereInput, entgql.SkipOrderField, entgql.SkipEnumField)
}

// hidden keeps a field or edge out of GraphQL entirely.
func hidden() entgql.Annotation { return entgql.Skip(entgql.SkipAll) }

// listed makes an entity a Relay connection field on Query with where and orderBy.
func listed(more ...entschema.Annotation) []entschema.Annotation {
	return append([]entschema.Annotation{entgql.QueryField(), entgql.RelayConnection()}, more...)
}

// managed adds the generated create and update inputs used by administration.
func managed() entschema.Annotation {
	return entgql.Mutations(entgql.MutationCreate(), entgql.MutationUpdate())
}
