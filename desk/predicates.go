package desk

import (
	entsql "entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Predicates written for the query planners, SQLite's above all, where
// ent's generated form plans badly on a large database.

// chatOpen matches the chats not completed, with the status written into
// the statement as the partial indexes on chats spell it: SQLite matches a
// partial index against literals only, and a statement whose bound value
// decided a plan is compiled again each time it runs.
func chatOpen() predicate.Chat {
	return func(s *entsql.Selector) { s.Where(entsql.ExprP(openChatCondition(s.C(chat.FieldStatus)))) }
}

// openChatCondition is chatOpen's condition on a chat's status column, for
// statements written by hand (senderStatement).
func openChatCondition(status string) string {
	return status + " <> '" + string(enum.ChatCompleted) + "'"
}

// chatRoutePending matches the chats that still owe their first routing
// (literal, as chatOpen).
func chatRoutePending() predicate.Chat {
	return func(s *entsql.Selector) { s.Where(entsql.ExprP(s.C(chat.FieldRoutePending))) }
}

// chatOfIdentity matches the chats of the contact of the identities
// matching ps, as "contact_id IN (SELECT contact_id …)": ent's edge
// predicates are correlated EXISTS, which SQLite evaluates once per row.
func chatOfIdentity(ps ...predicate.ContactIdentity) predicate.Chat {
	return func(s *entsql.Selector) { s.Where(entsql.In(s.C(chat.FieldContactID), identityContacts(ps))) }
}

// identityContacts selects the contact ids of the identities matching ps.
func identityContacts(ps []predicate.ContactIdentity) *entsql.Selector {
	t := entsql.Table(contactidentity.Table)
	sub := entsql.Select(t.C(contactidentity.FieldContactID)).From(t)
	for _, p := range ps {
		p(sub)
	}
	return sub
}
