package graph_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// nested returns n levels of alternating members and queues, outermost
// first (members when from is "Queue", queues when from is "Operator").
func nested(from string, n int) string {
	names := [2]string{"members", "queues"}
	if from == "Operator" {
		names = [2]string{"queues", "members"}
	}
	sel := "id"
	for i := n - 1; i >= 0; i-- {
		sel = names[i%2] + " { " + sel + " }"
	}
	return sel
}

// anyStatus accepts any status below 500 (gqlgen answers some refusals of
// the GraphQL layer with 200, as the GraphQL-over-HTTP spec allows for
// application/json).
const anyStatus = -1

// TestR32_BadRequestsAreRefusedWithStableCodes: what a client can get
// wrong is answered with the documented status and extensions.code, and
// writes nothing.
func TestR32_BadRequestsAreRefusedWithStableCodes(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q := s.Client().Queue.Create().SetName("Existing").SaveX(bg)
	s.Client().Channel.Create().SetProvider(enum.ProviderAPI).SetName("api").SetQueueID(q.ID).SaveX(bg)

	var aliases strings.Builder
	aliases.WriteString("{")
	for i := 0; i < 400; i++ {
		fmt.Fprintf(&aliases, " s%d: settings { id concurrentChats }", i)
	}
	aliases.WriteString(" }")
	deepFragment := "fragment Deep on Operator { " + nested("Operator", 9) + " }\n" +
		"query { queues { edges { node { members { ...Deep } } } } }"
	createOp := `mutation($in: CreateOperatorInput!) { createOperator(input: $in) { id } }`
	createQueue := `mutation($in: CreateQueueInput!) { createQueue(input: $in) { id } }`
	big := append([]byte(`{"query":"{ me { __typename } }","pad":"`), bytes.Repeat([]byte("a"), 1<<20)...)
	big = append(big, `"}`...)

	cases := []struct {
		name   string
		do     func() apptest.Response
		status int
		code   string
		field  string
	}{
		{"malformed JSON body", func() apptest.Response {
			return s.Post(t, admin, "application/json", strings.NewReader(`{"query": "{ me { __typename } }"`))
		}, 400, "BAD_REQUEST", ""},
		{"JSON that is not a request", func() apptest.Response {
			return s.Post(t, admin, "application/json", strings.NewReader(`[1, 2]`))
		}, 400, "BAD_REQUEST", ""},
		{"malformed GraphQL", func() apptest.Response {
			return s.Do(t, admin, `mutation { createQueue(input: {name: "x"}) { id `, nil)
		}, 422, "GRAPHQL_PARSE_FAILED", ""},
		{"unknown field", func() apptest.Response {
			return s.Do(t, admin, `mutation { createQueue(input: {name: "x", colour: "red"}) { id } }`, nil)
		}, 422, "GRAPHQL_VALIDATION_FAILED", ""},
		{"missing required argument", func() apptest.Response {
			return s.Do(t, admin, `mutation { createQueue { id } }`, nil)
		}, 422, "GRAPHQL_VALIDATION_FAILED", ""},
		{"invalid enum literal", func() apptest.Response {
			return s.Do(t, admin, `mutation { createQueue(input: {name: "x", routingRule: FASTEST}) { id } }`, nil)
		}, 422, "GRAPHQL_VALIDATION_FAILED", ""},
		{"invalid enum in a variable", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": "x", "routingRule": "FASTEST"}})
		}, 422, "GRAPHQL_VALIDATION_FAILED", ""},
		{"invalid role in a variable", func() apptest.Response {
			return s.Do(t, admin, createOp, map[string]any{"in": map[string]any{"email": "e@parley.test", "name": "E", "password": "long-enough", "role": "ROOT"}})
		}, 422, "GRAPHQL_VALIDATION_FAILED", ""},
		{"malformed ID", func() apptest.Response {
			return s.Do(t, admin, `{ node(id: "not-a-number") { id } }`, nil)
		}, 200, "VALIDATION", ""},
		{"oversized body", func() apptest.Response {
			return s.Post(t, admin, "application/json", bytes.NewReader(big))
		}, 413, "REQUEST_TOO_LARGE", ""},
		{"oversized body without Content-Length", func() apptest.Response {
			// A reader of unknown length makes the client stream the body chunked.
			return s.Post(t, admin, "application/json", io.MultiReader(bytes.NewReader(big)))
		}, 413, "REQUEST_TOO_LARGE", ""},
		{"over the token limit", func() apptest.Response {
			return s.Do(t, admin, "{ "+strings.Repeat("__typename ", 10001)+"}", nil)
		}, 422, "QUERY_TOO_LARGE", ""},
		{"too deep", func() apptest.Response {
			return s.Do(t, admin, "{ queues { edges { node { "+nested("Queue", 10)+" } } } }", nil)
		}, anyStatus, "DEPTH_LIMIT_EXCEEDED", ""},
		{"too deep through a fragment", func() apptest.Response {
			return s.Do(t, admin, deepFragment, nil)
		}, anyStatus, "DEPTH_LIMIT_EXCEEDED", ""},
		{"too complex", func() apptest.Response {
			return s.Do(t, admin, aliases.String(), nil)
		}, anyStatus, "COMPLEXITY_LIMIT_EXCEEDED", ""},
		{"page over the maximum", func() apptest.Response {
			return s.Do(t, admin, `{ queues(first: 501) { totalCount } }`, nil)
		}, 200, "VALIDATION", ""},
		{"invalid email", func() apptest.Response {
			return s.Do(t, admin, createOp, map[string]any{"in": map[string]any{"email": "not an email", "name": "E", "password": "long-enough"}})
		}, 200, "VALIDATION", "email"},
		{"short password", func() apptest.Response {
			return s.Do(t, admin, createOp, map[string]any{"in": map[string]any{"email": "e@parley.test", "name": "E", "password": "short"}})
		}, 200, "VALIDATION", "password"},
		{"operator chat limit out of range", func() apptest.Response {
			return s.Do(t, admin, createOp, map[string]any{"in": map[string]any{"email": "e@parley.test", "name": "E", "password": "long-enough", "chatLimit": 1001}})
		}, 200, "VALIDATION", "chatLimit"},
		{"empty queue name", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": ""}})
		}, 200, "VALIDATION", "name"},
		{"queue name too long", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": strings.Repeat("q", 201)}})
		}, 200, "VALIDATION", "name"},
		{"accept timeout too short", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": "x", "acceptTimeoutSeconds": 1}})
		}, 200, "VALIDATION", "acceptTimeoutSeconds"},
		{"negative queue chat limit", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": "x", "chatLimit": -1}})
		}, 200, "VALIDATION", "chatLimit"},
		{"zero concurrent chats", func() apptest.Response {
			return s.Do(t, admin, `mutation { updateSettings(input: {concurrentChats: 0}) { id } }`, nil)
		}, 200, "VALIDATION", "concurrentChats"},
		{"contact with an invalid email", func() apptest.Response {
			return s.Do(t, admin, `mutation { createContact(input: {name: "C", email: "nope"}) { id } }`, nil)
		}, 200, "VALIDATION", "email"},
		{"webhook action without an http url", func() apptest.Response {
			return s.Do(t, admin, `mutation($q: ID!) { createChatAction(input: {caption: "Go", kind: WEBHOOK, url: "ftp://x", queueID: $q}) { id } }`,
				map[string]any{"q": gid(q.ID)})
		}, 200, "VALIDATION", "url"},
		{"telegram channel without a token", func() apptest.Response {
			return s.Do(t, admin, `mutation($q: ID!) { createChannel(input: {provider: TELEGRAM, name: "tg", queueID: $q}) { id } }`,
				map[string]any{"q": gid(q.ID)})
		}, 200, "VALIDATION", "token"},
		{"unknown queue of a channel", func() apptest.Response {
			return s.Do(t, admin, `mutation { createChannel(input: {provider: API, name: "api", queueID: "999999"}) { id } }`, nil)
		}, 200, "NOT_FOUND", ""},
		{"NUL in a variable", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": "a\x00b"}})
		}, 200, "VALIDATION", "$in.name"},
		{"NUL in a literal", func() apptest.Response {
			return s.Do(t, admin, `mutation { createContact(input: {name: "C", notes: "x\u0000y"}) { id } }`, nil)
		}, 200, "VALIDATION", "createContact.input.notes"},
		{"NUL in a filter", func() apptest.Response {
			return s.Do(t, admin, `query($f: [QueueWhereInput!]) { queues(where: {or: $f}) { totalCount } }`,
				map[string]any{"f": []any{map[string]any{"nameContains": "\x00"}}})
		}, 200, "VALIDATION", "$f[0].nameContains"},
		{"duplicate queue name", func() apptest.Response {
			return s.Do(t, admin, createQueue, map[string]any{"in": map[string]any{"name": " Existing "}})
		}, 200, "CONFLICT", "name"},
		{"duplicate operator email", func() apptest.Response {
			return s.Do(t, admin, createOp, map[string]any{"in": map[string]any{"email": strings.ToUpper(apptest.AdminEmail), "name": "E", "password": "long-enough"}})
		}, 200, "CONFLICT", "email"},
		{"deleting a queue that has channels", func() apptest.Response {
			return s.Do(t, admin, `mutation($id: ID!) { deleteQueue(id: $id) }`, map[string]any{"id": gid(q.ID)})
		}, 200, "CONFLICT", ""},
	}
	before := s.RowCounts(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.do()
			if (c.status != anyStatus && r.Status != c.status) || r.Status >= 500 || r.Code() != c.code {
				body := r.Body
				if len(body) > 500 {
					body = body[:500]
				}
				t.Fatalf("want %d %s, got %d %s", c.status, c.code, r.Status, body)
			}
			if c.field != "" && r.Errors[0].Field() != c.field {
				t.Errorf("extensions.field = %q, want %q", r.Errors[0].Field(), c.field)
			}
			if r.Errors[0].Message == "" {
				t.Error("error without a message")
			}
			assertNoLeak(t, r)
		})
	}
	s.AssertNoWrites(t, before)
	// Refusals are logged by code and field (not by message: it may quote
	// the input).
	for _, want := range []string{`msg="graphql refused" code=VALIDATION path=createQueue field=name`,
		`msg="graphql refused" code=VALIDATION field=$in.name`, `msg="graphql refused" code=DEPTH_LIMIT_EXCEEDED`} {
		if !strings.Contains(s.Logs(), want) {
			t.Errorf("the log has no %s:\n%s", want, s.Logs())
		}
	}
}

// TestR32_UnknownIDsAreNotFound: every use case that takes an id answers
// NOT_FOUND for one that does not exist, including ids inside inputs.
func TestR32_UnknownIDsAreNotFound(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q := s.Client().Queue.Create().SetName("Q").SaveX(bg)
	op := s.CreateOperator(t, enum.RoleOperator)
	missing := gid(1<<32 + 424242) // in a type's id range, but no row
	vars := map[string]any{"id": missing, "q": gid(q.ID), "op": op.GID}
	calls := []string{
		`{ node(id: $id) { id } }`,
		`{ nodes(ids: [$id]) { id } }`,
		`mutation { updateOperator(id: $id, input: {name: "x"}) { id } }`,
		`mutation { updateOperator(id: $op, input: {addQueueIDs: [$id]}) { id } }`,
		`mutation { createOperator(input: {email: "n@parley.test", name: "N", password: "long-enough", queueIDs: [$id]}) { id } }`,
		`mutation { revokeApiKey(id: $id) { id } }`,
		`mutation { updateQueue(id: $id, input: {name: "x"}) { id } }`,
		`mutation { updateQueue(id: $q, input: {addMemberIDs: [$id]}) { id } }`,
		`mutation { createQueue(input: {name: "New", memberIDs: [$id]}) { id } }`,
		`mutation { deleteQueue(id: $id) }`,
		`mutation { updateChannel(id: $id, input: {name: "x"}) { id } }`,
		`mutation { setChannelActive(id: $id, active: false) { id } }`,
		`mutation { deleteChannel(id: $id) }`,
		`mutation { updateQuickReply(id: $id, input: {name: "x"}) { id } }`,
		`mutation { deleteQuickReply(id: $id) }`,
		`mutation { updateDuplicateRule(id: $id, input: {name: "x"}) { id } }`,
		`mutation { deleteDuplicateRule(id: $id) }`,
		`mutation { createChatAction(input: {caption: "c", kind: CREATE_CASE, queueID: $id}) { id } }`,
		`mutation { updateChatAction(id: $id, input: {caption: "x"}) { id } }`,
		`mutation { deleteChatAction(id: $id) }`,
		`mutation { createAccount(input: {name: "A", contactIDs: [$id]}) { id } }`,
		`mutation { updateAccount(id: $id, input: {name: "x"}) { id } }`,
		`mutation { createContact(input: {name: "C", accountID: $id}) { id } }`,
		`mutation { updateContact(id: $id, input: {name: "x"}) { id } }`,
	}
	before := s.RowCounts(t)
	for _, call := range calls {
		// Declare only the variables the call uses.
		var decl []string
		used := map[string]any{}
		for name, v := range vars {
			if strings.Contains(call, "$"+name) {
				decl = append(decl, "$"+name+": ID!")
				used[name] = v
			}
		}
		op, rest, _ := strings.Cut(call, "{")
		if op == "" {
			op = "query"
		}
		query := strings.TrimSpace(op) + "(" + strings.Join(decl, ", ") + ") {" + rest
		r := s.Do(t, admin, query, used)
		if r.Code() != "NOT_FOUND" {
			t.Errorf("%s: want NOT_FOUND, got %d %s", call, r.Status, r.Body)
		}
		assertNoLeak(t, r)
	}
	s.AssertNoWrites(t, before)
}

// TestSpec_ChannelWithChatsIsNeverDeleted (vocabulary: "A channel that has
// chats is deactivated, never deleted"), and a queue with chats is kept.
func TestSpec_ChannelWithChatsIsNeverDeleted(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	c := s.Client()
	q := c.Queue.Create().SetName("Q").SaveX(bg)
	q2 := c.Queue.Create().SetName("Q2").SaveX(bg)
	ch := c.Channel.Create().SetProvider(enum.ProviderAPI).SetName("api").SetQueueID(q.ID).SaveX(bg)
	contact := c.Contact.Create().SetName("Customer").SaveX(bg)
	now := s.Clock.Now()
	c.Chat.Create().SetStatus(enum.ChatCompleted).SetCreatedAt(now).SetLastMessageAt(now).
		SetChannelID(ch.ID).SetContactID(contact.ID).SetQueueID(q.ID).SaveX(bg)

	before := s.RowCounts(t)
	e := s.Do(t, admin, `mutation($id: ID!) { deleteChannel(id: $id) }`, map[string]any{"id": gid(ch.ID)}).Expect(t, "CONFLICT")
	if !strings.Contains(e.Message, "deactivate") {
		t.Errorf("the refusal should say what to do instead: %q", e.Message)
	}
	assertNoLeak(t, apptest.Response{Errors: []apptest.Error{e}})
	s.AssertNoWrites(t, before)

	// Deactivating is the way.
	var out struct{ SetChannelActive struct{ Active bool } }
	s.Do(t, admin, `mutation($id: ID!) { setChannelActive(id: $id, active: false) { active } }`, map[string]any{"id": gid(ch.ID)}).OK(t).Decode(t, &out)
	if out.SetChannelActive.Active {
		t.Error("channel still active")
	}

	// Moving the channel leaves the queue with chats but no channel: still kept.
	s.Do(t, admin, `mutation($id: ID!, $q: ID!) { updateChannel(id: $id, input: {queueID: $q}) { id } }`,
		map[string]any{"id": gid(ch.ID), "q": gid(q2.ID)}).OK(t)
	s.Do(t, admin, `mutation($id: ID!) { deleteQueue(id: $id) }`, map[string]any{"id": gid(q.ID)}).Expect(t, "CONFLICT")
	if !c.Queue.Query().Where().ExistX(bg) || c.Queue.GetX(bg, q.ID) == nil {
		t.Error("queue with chats was deleted")
	}
}

// TestR32_InternalErrorsCarryNoDatabaseText: when the database fails under
// a resolver, the client gets INTERNAL with a generic message; the details
// go to the log.
func TestR32_InternalErrorsCarryNoDatabaseText(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	// Break the database under the resolvers but not under authentication.
	if _, err := s.App.DB.SQL.Exec(`DROP TABLE quick_replies`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`{ quickReplies { totalCount } }`,
		`mutation { createQuickReply(input: {name: "Hi", text: "Hello"}) { id } }`,
	} {
		r := s.Do(t, admin, q, nil)
		e := r.Expect(t, "INTERNAL")
		if e.Message != "internal error" {
			t.Errorf("%s: message %q", q, e.Message)
		}
		assertNoLeak(t, r)
		if strings.Contains(string(r.Body), "quick_replies") {
			t.Errorf("%s: the table name reached the client: %s", q, r.Body)
		}
	}
	if !strings.Contains(s.Logs(), "quick_replies") {
		t.Errorf("the cause was not logged:\n%s", s.Logs())
	}
}
