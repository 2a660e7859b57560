package graph_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/parleydesk/parley/ent"
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
	// A computed field: the availability of a list's operators is read
	// for the whole list at once.
	"operators → availability":        `{ operators(first: 100) { edges { node { id availability { availability load limit } } } } }`,
	"queues → members → availability": `{ queues(first: 100) { edges { node { id members { id availability { load limit } } } } } }`,
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

// The panel as an operator's screen asks for it (the bench's panel query,
// with more edges), and a queue overview as a supervisor's.
const (
	countedPanel = `{ panel { me { availability load limit operator { name } }
	  newChats { chat { id status contact { name } channel { name } queue { name } } lastMessage { id text createdAt } unreadCount waitingSeconds }
	  activeChats { chat { id status contact { name identities { externalID } } owner { name } } lastMessage { id text createdAt } unreadCount waitingSeconds } } }`
	countedOverview = `query($q: ID!) { queueOverview(id: $q) { queue { name }
	  waitingChats { chat { id contact { name } } lastMessage { text } unreadCount waitingSeconds }
	  operators { availability load operator { name } } } }`
)

type countedPanelChat struct {
	Chat struct {
		ID, Status string
		Contact    struct {
			Name       string
			Identities []struct{ ExternalID string }
		}
		Channel, Queue, Owner struct{ Name string }
	}
	LastMessage struct{ Text string }
	UnreadCount int
}

// TestNoNPlusOne_PanelUsesAFixedNumberOfQueries counts the SQL statements
// of a panel and of a queue overview with 2 and with 10 chats in each list:
// the last messages, unread counts and the chats' contacts (and the other
// selected edges) are each read in one statement, not one per chat.
func TestNoNPlusOne_PanelUsesAFixedNumberOfQueries(t *testing.T) {
	t.Parallel()
	rec := &apptest.Recorder{}
	s := apptest.New(t, apptest.WithRecorder(rec))
	admin := s.AdminToken(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	key := s.CreateAPIKey(t, enum.ApiKeyIntegration)
	s.Do(t, admin, `mutation { updateSettings(input: {concurrentChats: 100}) { concurrentChats } }`, nil).OK(t)
	var q struct{ CreateQueue struct{ ID string } }
	s.Do(t, admin, `mutation($m: [ID!]) { createQueue(input: {name: "Counted", routingRule: TO_ALL, memberIDs: $m}) { id } }`,
		map[string]any{"m": []string{op.GID}}).OK(t).Decode(t, &q)
	var ch struct{ CreateChannel struct{ ID string } }
	s.Do(t, admin, `mutation($q: ID!) { createChannel(input: {name: "Counted site", provider: API, queueID: $q}) { id } }`,
		map[string]any{"q": q.CreateQueue.ID}).OK(t).Decode(t, &ch)
	s.Do(t, op.Token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil).OK(t)
	inbound := func(customer, text string) string {
		var in struct {
			SimulateInbound struct{ Chat struct{ ID string } }
		}
		s.Do(t, key.Key, `mutation($ch: ID!, $ext: String!, $text: String!) {
		  simulateInbound(input: {channelId: $ch, externalId: $ext, name: $ext, text: $text}) { chat { id } } }`,
			map[string]any{"ch": ch.CreateChannel.ID, "ext": customer, "text": text}).OK(t).Decode(t, &in)
		return in.SimulateInbound.Chat.ID
	}
	// addChats adds n new chats (offered to op) and n active ones (accepted,
	// with a second customer message).
	addChats := func(n int) {
		for range n {
			inbound(apptest.Unique("new-"), "hello")
			c := apptest.Unique("active-")
			id := inbound(c, "hello")
			s.Do(t, op.Token, `mutation($id: ID!) { acceptChat(id: $id) { id } }`, map[string]any{"id": id}).OK(t)
			inbound(c, "still there?")
		}
	}
	count := func(token, query string, vars map[string]any, v any) (int, []string) {
		t.Helper()
		rec.Reset()
		s.Do(t, token, query, vars).OK(t).Decode(t, v)
		st := rec.Statements()
		return len(st), st
	}
	check := func(n int) (panel, overview int, st []string) {
		t.Helper()
		var p struct {
			Panel struct{ NewChats, ActiveChats []countedPanelChat }
		}
		panel, st = count(op.Token, countedPanel, nil, &p)
		if len(p.Panel.NewChats) != n || len(p.Panel.ActiveChats) != n {
			t.Fatalf("panel: %d new and %d active chats, want %d each", len(p.Panel.NewChats), len(p.Panel.ActiveChats), n)
		}
		for _, c := range p.Panel.NewChats {
			if c.Chat.Status != "WAITING" || !strings.HasPrefix(c.Chat.Contact.Name, "new-") || c.Chat.Channel.Name != "Counted site" ||
				c.Chat.Queue.Name != "Counted" || c.LastMessage.Text != "hello" || c.UnreadCount != 1 {
				t.Fatalf("new chat = %+v", c)
			}
		}
		for _, c := range p.Panel.ActiveChats {
			if c.Chat.Status != "IN_PROGRESS" || len(c.Chat.Contact.Identities) != 1 || c.Chat.Contact.Identities[0].ExternalID != c.Chat.Contact.Name ||
				c.Chat.Owner.Name == "" || c.LastMessage.Text != "still there?" || c.UnreadCount != 2 {
				t.Fatalf("active chat = %+v", c)
			}
		}
		var o struct {
			QueueOverview struct{ WaitingChats []countedPanelChat }
		}
		overview, _ = count(admin, countedOverview, map[string]any{"q": q.CreateQueue.ID}, &o)
		if len(o.QueueOverview.WaitingChats) != n {
			t.Fatalf("overview: %d waiting chats, want %d", len(o.QueueOverview.WaitingChats), n)
		}
		return panel, overview, st
	}
	// The chat list of the README (its messages are read for the whole page
	// at once) and, to compare its pages with Paginate's, the same list
	// with the messages' totalCount, which a page of rows cannot answer.
	list := func(first int, withTotal bool) (int, []string, string) {
		total := ""
		if withTotal {
			total = "totalCount"
		}
		var l struct{ Chats json.RawMessage }
		n, st := count(admin, fmt.Sprintf(`{ chats(first: 30, where: {statusIn: [WAITING, IN_PROGRESS]}, orderBy: {field: CREATED_AT, direction: DESC}) {
		  totalCount edges { node { id status createdAt lastMessageAt contact { name } channel { name provider } queue { name } owner { name }
		    messages(first: %d) { %s edges { cursor node { id direction text createdAt } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } } } } }`,
			first, total), nil, &l)
		return n, st, regexp.MustCompile(`"totalCount":\d+,?`).ReplaceAllString(string(l.Chats), "")
	}
	addChats(2)
	panel2, overview2, _ := check(2)
	list2, _, _ := list(5, false)
	addChats(8)
	panel10, overview10, st := check(10)
	if panel10 != panel2 || overview10 != overview2 {
		t.Errorf("panel: %d statements with 2 chats per list, %d with 10; queue overview: %d, %d (N+1):\n%s",
			panel2, panel10, overview2, overview10, strings.Join(st, "\n"))
	}
	list20, listSt, _ := list(5, false)
	if list20 != list2 {
		t.Errorf("chat list: %d statements with 4 chats, %d with 20 (N+1):\n%s", list2, list20, strings.Join(listSt, "\n"))
	}
	for _, first := range []int{1, 2, 3} {
		_, _, preloaded := list(first, false)
		_, _, paginated := list(first, true)
		if preloaded != paginated {
			t.Errorf("messages(first: %d) preloaded for the page:\n%s\nby Paginate:\n%s", first, preloaded, paginated)
		}
	}
	t.Logf("panel: %d statements, queue overview: %d:\n%s", panel10, overview10, strings.Join(st, "\n"))
	// The session, the operator, the loads, the offers, two lists with their
	// contacts (and channels, queues, identities, owners as selected), the
	// last messages and the unread counts.
	if panel10 > 16 {
		t.Errorf("panel: %d statements:\n%s", panel10, strings.Join(st, "\n"))
	}
}

// TestR7_AvailabilityInListsIsEachOperatorsOwn: read for a whole list at
// once (a list of operators, the members of a list of queues), every
// operator's availability, load and limit are still their own, also for an
// operator listed in two queues.
func TestR7_AvailabilityInListsIsEachOperatorsOwn(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	tok := s.AdminToken(t)
	c := s.Client()
	now := s.Clock.Now()
	mk := func(email string, status enum.OperatorStatus, limit int) *ent.Operator {
		cr := c.Operator.Create().SetEmail(email).SetName(email).SetPasswordHash("x").SetStatus(status)
		if limit > 0 {
			cr.SetChatLimit(limit)
		}
		return cr.SaveX(bg)
	}
	a := mk("a@parley.test", enum.StatusActive, 1)
	b := mk("b@parley.test", enum.StatusInactive, 0)
	d := mk("d@parley.test", enum.StatusActive, 3)
	q1 := c.Queue.Create().SetName("One").AddMembers(a, b).SaveX(bg)
	c.Queue.Create().SetName("Two").AddMembers(b, d).SaveX(bg)
	ch := c.Channel.Create().SetProvider(enum.ProviderAPI).SetName("api").SetQueueID(q1.ID).SaveX(bg)
	chat := func(owner *ent.Operator) *ent.Chat {
		ct := c.Contact.Create().SetName("C").SaveX(bg)
		cr := c.Chat.Create().SetCreatedAt(now).SetLastMessageAt(now).SetChannelID(ch.ID).SetContactID(ct.ID).SetQueueID(q1.ID)
		if owner != nil {
			return cr.SetStatus(enum.ChatInProgress).SetOwnerID(owner.ID).SaveX(bg)
		}
		return cr.SetStatus(enum.ChatWaiting).SaveX(bg)
	}
	chat(a)
	c.ChatOffer.Create().SetChatID(chat(nil).ID).SetOperatorID(d.ID).SetStatus(enum.OfferOpen).SetCreatedAt(now).SaveX(bg)
	type load struct {
		Availability string
		Load, Limit  int
	}
	want := map[string]load{gid(a.ID): {"LIMIT_EXHAUSTED", 1, 1}, gid(b.ID): {"INACTIVE", 0, 5}, gid(d.ID): {"ACTIVE", 1, 3}}
	type op struct {
		ID           string
		Availability load
	}
	check := func(where string, ops []op) {
		t.Helper()
		for _, o := range ops {
			if w, ok := want[o.ID]; ok && o.Availability != w {
				t.Errorf("%s: operator %s has %+v, want %+v", where, o.ID, o.Availability, w)
			}
		}
	}
	var list struct {
		Operators struct{ Edges []struct{ Node op } }
	}
	s.Do(t, tok, `{ operators(first: 100) { edges { node { id availability { availability load limit } } } } }`, nil).OK(t).Decode(t, &list)
	var ops []op
	for _, e := range list.Operators.Edges {
		ops = append(ops, e.Node)
	}
	if len(ops) < 4 {
		t.Fatalf("%d operators listed", len(ops))
	}
	check("operators", ops)
	var queues struct {
		Queues struct {
			Edges []struct{ Node struct{ Members []op } }
		}
	}
	s.Do(t, tok, `{ queues(first: 100) { edges { node { members { id availability { availability load limit } } } } } }`, nil).OK(t).Decode(t, &queues)
	n := 0
	for _, e := range queues.Queues.Edges {
		check("queue members", e.Node.Members)
		n += len(e.Node.Members)
	}
	if n != 4 {
		t.Fatalf("%d members listed, want 4", n)
	}
}
