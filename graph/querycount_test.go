package graph_test

import (
	"strings"
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// nestedQueries are nested list queries whose SQL statement count must not
// depend on the number of rows (entgql field collection loads each level
// with one query).
var nestedQueries = map[string]string{
	"queues → members → queues, channels → queue, chat actions": `{ queues(first: 100) { totalCount edges { node {
		id name members { id name queues { id name } } channels { id name queue { id name } } chatActions { id caption } } } } }`,
	"channels → queue → members": `{ channels(first: 100) { edges { node { id name hasToken webhookPath queue { id name members { id email } } } } } }`,
	"contacts → identities, account → contacts": `{ contacts(first: 100) { edges { node {
		id name identities { id provider externalID } account { id name contacts { id } } } } } }`,
	"operators → queues → members":     `{ operators(first: 100) { edges { node { id name queues { id members { id } } } } } }`,
	"accounts → contacts → identities": `{ accounts(first: 100) { edges { node { id contacts { id identities { id } } } } } }`,
}

// addRows adds n queues (each with 2 members, a channel and a chat action)
// and n accounts (each with a contact with 2 identities).
func addRows(t *testing.T, s *apptest.Server, n int) {
	t.Helper()
	c := s.Client()
	for i := 0; i < n; i++ {
		u := apptest.Unique("")
		op1 := c.Operator.Create().SetEmail("qa" + u + "@parley.test").SetName("A " + u).SetPasswordHash("x").SaveX(bg)
		op2 := c.Operator.Create().SetEmail("qb" + u + "@parley.test").SetName("B " + u).SetPasswordHash("x").SaveX(bg)
		q := c.Queue.Create().SetName("Queue "+u).AddMembers(op1, op2).SaveX(bg)
		c.Channel.Create().SetProvider(enum.ProviderTelegram).SetName("Bot " + u).SetToken("t").SetQueueID(q.ID).SaveX(bg)
		c.ChatAction.Create().SetCaption("Case").SetKind(enum.ActionCreateCase).SetQueueID(q.ID).SaveX(bg)
		acc := c.Account.Create().SetName("Account " + u).SaveX(bg)
		ct := c.Contact.Create().SetName("Contact " + u).SetAccountID(acc.ID).SaveX(bg)
		c.ContactIdentity.Create().SetProvider(enum.ProviderTelegram).SetExternalID("tg" + u).SetContactID(ct.ID).SaveX(bg)
		c.ContactIdentity.Create().SetProvider(enum.ProviderWhatsApp).SetExternalID("wa" + u).SetContactID(ct.ID).SaveX(bg)
	}
}

// TestNoNPlusOne_NestedListsUseAFixedNumberOfQueries counts the SQL
// statements of nested list queries with 2 and with 20 rows per level: the
// count must not grow with the rows.
func TestNoNPlusOne_NestedListsUseAFixedNumberOfQueries(t *testing.T) {
	t.Parallel()
	rec := &apptest.Recorder{}
	s := apptest.New(t, apptest.WithRecorder(rec))
	tok := s.AdminToken(t)
	count := func(q string) (int, []string) {
		t.Helper()
		rec.Reset()
		s.Do(t, tok, q, nil).OK(t)
		st := rec.Statements()
		return len(st), st
	}
	addRows(t, s, 2)
	small := map[string]int{}
	for name, q := range nestedQueries {
		small[name], _ = count(q)
	}
	addRows(t, s, 18)
	for name, q := range nestedQueries {
		n, st := count(q)
		if n != small[name] {
			t.Errorf("%s: %d statements with 2 rows, %d with 20 (N+1):\n%s", name, small[name], n, strings.Join(st, "\n"))
		}
		if n > 12 {
			t.Errorf("%s: %d statements for a 3-level query", name, n)
		}
	}
	// The recorder sees the statements at all (otherwise the test proves nothing).
	if small["queues → members → queues, channels → queue, chat actions"] < 4 {
		t.Fatalf("only %v statements recorded: is the query hook wired?", small)
	}
}
