package graph_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/ent/operatorstatuschange"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// mustData runs an operation that must succeed and returns its data as a tree.
func mustData(t *testing.T, s *apptest.Server, tok, q string, vars map[string]any) map[string]any {
	t.Helper()
	var m map[string]any
	r := s.Do(t, tok, q, vars).OK(t)
	if err := json.Unmarshal(r.Data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// pathGet walks a decoded tree by a dotted path ("createQueue.members.0.id").
func pathGet(v any, path string) any {
	for _, p := range strings.Split(path, ".") {
		switch n := v.(type) {
		case map[string]any:
			v = n[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(n) {
				return nil
			}
			v = n[i]
		default:
			return nil
		}
	}
	return v
}

func pathStr(v any, path string) string { s, _ := pathGet(v, path).(string); return s }

// pathIDs collects the "id" of every element of the list at path, sorted.
func pathIDs(v any, path string) []string {
	var out []string
	list, _ := pathGet(v, path).([]any)
	for _, e := range list {
		out = append(out, pathStr(e, "id"))
	}
	sort.Strings(out)
	return out
}

func sortedIDs(s ...string) []string { s = slices.Clone(s); sort.Strings(s); return s }

func TestR32_AdminManagesOperators(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q1 := s.Client().Queue.Create().SetName("Sales").SaveX(bg)
	q2 := s.Client().Queue.Create().SetName("Support").SaveX(bg)
	opFields := `id email name role status chatLimit disabled queues { id }`

	m := mustData(t, s, admin, `mutation($in: CreateOperatorInput!) { createOperator(input: $in) { `+opFields+` } }`,
		map[string]any{"in": map[string]any{"email": " Olga@Example.COM ", "name": " Olga ", "password": "olga-password",
			"role": "SUPERVISOR", "chatLimit": 3, "queueIDs": []string{gid(q1.ID)}}})
	op := pathGet(m, "createOperator")
	if pathStr(op, "email") != "olga@example.com" || pathStr(op, "name") != "Olga" || pathStr(op, "role") != "SUPERVISOR" ||
		pathGet(op, "chatLimit") != 3.0 || pathGet(op, "disabled") != false {
		t.Errorf("created operator = %v", op)
	}
	// R5: a new operator starts INACTIVE.
	if pathStr(op, "status") != "INACTIVE" {
		t.Errorf("R5: new operator status %v, want INACTIVE", pathGet(op, "status"))
	}
	if got := pathIDs(op, "queues"); !slices.Equal(got, []string{gid(q1.ID)}) {
		t.Errorf("queues = %v", got)
	}
	id := pathStr(op, "id")
	// The role defaults to OPERATOR.
	m = mustData(t, s, admin, `mutation { createOperator(input: {email: "oscar@example.com", name: "Oscar", password: "oscar-password"}) { role } }`, nil)
	if pathStr(m, "createOperator.role") != "OPERATOR" {
		t.Errorf("default role = %v", pathGet(m, "createOperator.role"))
	}
	// The new operator can log in.
	olga := s.Login(t, "olga@example.com", "olga-password")

	// Update: name, role, chat limit, queues.
	m = mustData(t, s, admin, `mutation($id: ID!, $in: UpdateOperatorInput!) { updateOperator(id: $id, input: $in) { `+opFields+` } }`,
		map[string]any{"id": id, "in": map[string]any{"name": "Olga P.", "role": "OPERATOR", "chatLimit": 7,
			"addQueueIDs": []string{gid(q2.ID)}, "removeQueueIDs": []string{gid(q1.ID)}}})
	op = pathGet(m, "updateOperator")
	if pathStr(op, "name") != "Olga P." || pathStr(op, "role") != "OPERATOR" || pathGet(op, "chatLimit") != 7.0 {
		t.Errorf("updated operator = %v", op)
	}
	if got := pathIDs(op, "queues"); !slices.Equal(got, []string{gid(q2.ID)}) {
		t.Errorf("queues after update = %v", got)
	}
	s.Do(t, olga, meQuery, nil).OK(t) // an update without a password keeps sessions
	m = mustData(t, s, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {clearChatLimit: true}) { chatLimit } }`, map[string]any{"id": id})
	if pathGet(m, "updateOperator.chatLimit") != nil {
		t.Errorf("chat limit not cleared: %v", m)
	}
	// A new password ends the operator's sessions.
	mustData(t, s, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {password: "another-password"}) { id } }`, map[string]any{"id": id})
	s.Do(t, olga, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	s.Login(t, "olga@example.com", "another-password")

	// Refusals.
	e := s.Do(t, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {email: "ADMIN@parley.test"}) { id } }`, map[string]any{"id": id}).Expect(t, "CONFLICT")
	if e.Field() != "email" {
		t.Errorf("taken email: field %q", e.Field())
	}
	e = s.Do(t, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {password: "short"}) { id } }`, map[string]any{"id": id}).Expect(t, "VALIDATION")
	if e.Field() != "password" {
		t.Errorf("short password: field %q", e.Field())
	}
	s.Do(t, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {name: ""}) { id } }`, map[string]any{"id": id}).Expect(t, "VALIDATION")

	// Listing, filtered by role.
	m = mustData(t, s, admin, `{ operators(where: {role: OPERATOR}, orderBy: {field: EMAIL}) { totalCount edges { node { email } } } }`, nil)
	if pathGet(m, "operators.totalCount") != 2.0 || pathStr(m, "operators.edges.0.node.email") != "olga@example.com" {
		t.Errorf("operators = %v", m)
	}
}

func TestR8_AdminManagesQueuesWithMembersAndSettings(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	a, b := s.CreateOperator(t, enum.RoleOperator), s.CreateOperator(t, enum.RoleOperator)
	qFields := `id name routingRule acceptTimeoutSeconds acceptTimeoutAction completionTimeoutMinutes chatLimit waitingOrder position members { id } channels { id } chatActions { id }`

	// Defaults (R8: TO_ALL is the default rule).
	m := mustData(t, s, admin, `mutation { createQueue(input: {name: "  Plain  "}) { `+qFields+` } }`, nil)
	q := pathGet(m, "createQueue")
	if pathStr(q, "name") != "Plain" || pathStr(q, "routingRule") != "TO_ALL" || pathStr(q, "acceptTimeoutAction") != "SET_INACTIVE" ||
		pathGet(q, "acceptTimeoutSeconds") != nil || pathGet(q, "completionTimeoutMinutes") != nil || pathGet(q, "chatLimit") != nil ||
		pathGet(q, "waitingOrder") != nil || len(pathIDs(q, "members")) != 0 {
		t.Errorf("queue defaults = %v", q)
	}

	m = mustData(t, s, admin, `mutation($in: CreateQueueInput!) { createQueue(input: $in) { `+qFields+` } }`,
		map[string]any{"in": map[string]any{"name": "Support", "routingRule": "TO_AVAILABLE", "acceptTimeoutSeconds": 60,
			"acceptTimeoutAction": "COUNT_MISSED", "completionTimeoutMinutes": 30, "chatLimit": 2, "waitingOrder": "NEWEST_FIRST",
			"position": 3, "memberIDs": []string{a.GID, b.GID}}})
	q = pathGet(m, "createQueue")
	if pathStr(q, "routingRule") != "TO_AVAILABLE" || pathGet(q, "acceptTimeoutSeconds") != 60.0 || pathStr(q, "acceptTimeoutAction") != "COUNT_MISSED" ||
		pathGet(q, "completionTimeoutMinutes") != 30.0 || pathGet(q, "chatLimit") != 2.0 || pathStr(q, "waitingOrder") != "NEWEST_FIRST" || pathGet(q, "position") != 3.0 {
		t.Errorf("queue settings = %v", q)
	}
	if got := pathIDs(q, "members"); !slices.Equal(got, sortedIDs(a.GID, b.GID)) {
		t.Errorf("members = %v", got)
	}
	id := pathStr(q, "id")

	m = mustData(t, s, admin, `mutation($id: ID!, $in: UpdateQueueInput!) { updateQueue(id: $id, input: $in) { `+qFields+` } }`,
		map[string]any{"id": id, "in": map[string]any{"routingRule": "ROUND_ROBIN", "clearCompletionTimeoutMinutes": true,
			"clearChatLimit": true, "removeMemberIDs": []string{a.GID}}})
	q = pathGet(m, "updateQueue")
	if pathStr(q, "routingRule") != "ROUND_ROBIN" || pathGet(q, "completionTimeoutMinutes") != nil || pathGet(q, "chatLimit") != nil ||
		pathGet(q, "acceptTimeoutSeconds") != 60.0 {
		t.Errorf("updated queue = %v", q)
	}
	if got := pathIDs(q, "members"); !slices.Equal(got, []string{b.GID}) {
		t.Errorf("members after update = %v", got)
	}
	// The operator side sees the membership too.
	m = mustData(t, s, admin, `query($id: ID!) { node(id: $id) { ... on Operator { queues { id } } } }`, map[string]any{"id": b.GID})
	if got := pathIDs(m, "node.queues"); !slices.Equal(got, []string{id}) {
		t.Errorf("operator's queues = %v", got)
	}

	// Refusals.
	e := s.Do(t, admin, `mutation($id: ID!) { updateQueue(id: $id, input: {name: "Plain"}) { id } }`, map[string]any{"id": id}).Expect(t, "CONFLICT")
	if e.Field() != "name" {
		t.Errorf("duplicate name: field %q", e.Field())
	}
	e = s.Do(t, admin, `mutation($id: ID!) { updateQueue(id: $id, input: {completionTimeoutMinutes: 0}) { id } }`, map[string]any{"id": id}).Expect(t, "VALIDATION")
	if e.Field() != "completionTimeoutMinutes" {
		t.Errorf("zero completion timeout: field %q", e.Field())
	}

	// Deleting: a queue without channels or chats goes, with its chat actions.
	action := mustData(t, s, admin, `mutation($q: ID!) { createChatAction(input: {caption: "Case", kind: CREATE_CASE, queueID: $q}) { id } }`, map[string]any{"q": id})
	m = mustData(t, s, admin, `mutation($id: ID!) { deleteQueue(id: $id) }`, map[string]any{"id": id})
	if pathStr(m, "deleteQueue") != id {
		t.Errorf("deleteQueue returned %v", m)
	}
	s.Do(t, admin, `query($id: ID!) { node(id: $id) { id } }`, map[string]any{"id": id}).Expect(t, "NOT_FOUND")
	s.Do(t, admin, `query($id: ID!) { node(id: $id) { id } }`, map[string]any{"id": pathStr(action, "createChatAction.id")}).Expect(t, "NOT_FOUND")
	// Operators stay.
	s.Do(t, admin, `query($id: ID!) { node(id: $id) { id } }`, map[string]any{"id": b.GID}).OK(t)
}

func TestR32_AdminManagesChannelsPerProvider(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q := s.Client().Queue.Create().SetName("Q").SaveX(bg)
	create := `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id provider name active externalID botMode botAppID queue { id } hasToken } }`
	base := func(provider string, kv ...any) map[string]any {
		in := map[string]any{"provider": provider, "name": provider + " channel", "queueID": gid(q.ID)}
		for i := 0; i < len(kv); i += 2 {
			in[kv[i].(string)] = kv[i+1]
		}
		return map[string]any{"in": in}
	}
	metaFull := func(provider string, kv ...any) map[string]any {
		return base(provider, append([]any{"externalID", "123", "token", "tok", "appSecret", "app", "verifyToken", "verify"}, kv...)...)
	}
	refusals := []struct {
		name  string
		vars  map[string]any
		field string
	}{
		{"telegram without token", base("TELEGRAM"), "token"},
		{"telegram with a blank token", base("TELEGRAM", "token", "   "), "token"},
		{"whatsapp without phone number id", base("WHATSAPP", "token", "t", "appSecret", "a", "verifyToken", "v"), "externalID"},
		{"whatsapp without app secret", base("WHATSAPP", "externalID", "1", "token", "t", "verifyToken", "v"), "appSecret"},
		{"messenger without verify token", base("MESSENGER", "externalID", "1", "token", "t", "appSecret", "a"), "verifyToken"},
		{"messenger without token", base("MESSENGER", "externalID", "1", "appSecret", "a", "verifyToken", "v"), "token"},
		{"bot on telegram (R27)", base("TELEGRAM", "token", "t", "botMode", "FULL", "botAppID", "1"), "botMode"},
		{"bot on whatsapp (R27)", metaFull("WHATSAPP", "botMode", "FIRST_LINE", "botAppID", "1"), "botMode"},
		{"messenger bot without the bot app", metaFull("MESSENGER", "botMode", "FULL"), "botAppID"},
		{"empty name", base("API", "name", ""), "name"},
	}
	before := s.RowCounts(t)
	for _, r := range refusals {
		e := s.Do(t, admin, create, r.vars).Expect(t, "VALIDATION")
		if e.Field() != r.field {
			t.Errorf("%s: field %q, want %q (%s)", r.name, e.Field(), r.field, e.Message)
		}
	}
	s.AssertNoWrites(t, before)

	created := map[string]any{}
	for name, vars := range map[string]map[string]any{
		"telegram":      base("TELEGRAM", "token", "123:abc"),
		"whatsapp":      metaFull("WHATSAPP"),
		"messenger":     metaFull("MESSENGER"),
		"messenger bot": metaFull("MESSENGER", "botMode", "FIRST_LINE", "botAppID", "263902037430900"),
		"api":           base("API"),
		"inactive":      base("API", "active", false),
	} {
		m := mustData(t, s, admin, create, vars)
		ch := pathGet(m, "createChannel")
		created[name] = ch
		in := vars["in"].(map[string]any)
		if pathStr(ch, "provider") != in["provider"] || pathStr(ch, "queue.id") != gid(q.ID) {
			t.Errorf("%s: %v", name, ch)
		}
		wantActive := in["active"] != false
		if pathGet(ch, "active") != wantActive {
			t.Errorf("%s: active = %v, want %v", name, pathGet(ch, "active"), wantActive)
		}
	}
	if pathStr(created["messenger bot"], "botMode") != "FIRST_LINE" || pathStr(created["messenger bot"], "botAppID") != "263902037430900" {
		t.Errorf("messenger bot = %v", created["messenger bot"])
	}
	if pathStr(created["api"], "botMode") != "NONE" {
		t.Errorf("default bot mode = %v", pathGet(created["api"], "botMode"))
	}

	// Activate and deactivate.
	tg := pathStr(created["telegram"], "id")
	for _, active := range []bool{false, true, false} {
		m := mustData(t, s, admin, `mutation($id: ID!, $a: Boolean!) { setChannelActive(id: $id, active: $a) { active } }`, map[string]any{"id": tg, "a": active})
		if pathGet(m, "setChannelActive.active") != active {
			t.Errorf("setChannelActive(%v) = %v", active, m)
		}
	}
	m := mustData(t, s, admin, `{ channels(where: {active: true}) { totalCount } }`, nil)
	if pathGet(m, "channels.totalCount") != 4.0 {
		t.Errorf("active channels = %v, want 4", pathGet(m, "channels.totalCount"))
	}

	// Update: the provider's requirements hold on the channel as it will be.
	wa := pathStr(created["whatsapp"], "id")
	e := s.Do(t, admin, `mutation($id: ID!) { updateChannel(id: $id, input: {clearAppSecret: true}) { id } }`, map[string]any{"id": wa}).Expect(t, "VALIDATION")
	if e.Field() != "appSecret" {
		t.Errorf("clearing a required secret: field %q", e.Field())
	}
	q2 := s.Client().Queue.Create().SetName("Q2").SaveX(bg)
	m = mustData(t, s, admin, `mutation($id: ID!, $q: ID!) { updateChannel(id: $id, input: {name: " WA 2 ", externalID: "999", queueID: $q}) { name externalID queue { id } } }`,
		map[string]any{"id": wa, "q": gid(q2.ID)})
	if pathStr(m, "updateChannel.name") != "WA 2" || pathStr(m, "updateChannel.externalID") != "999" || pathStr(m, "updateChannel.queue.id") != gid(q2.ID) {
		t.Errorf("updated channel = %v", m)
	}
	// The provider is fixed once created.
	s.Do(t, admin, `mutation($id: ID!) { updateChannel(id: $id, input: {provider: API}) { id } }`, map[string]any{"id": wa}).Expect(t, "GRAPHQL_VALIDATION_FAILED")

	// Delete a channel that never had chats.
	api := pathStr(created["api"], "id")
	if m := mustData(t, s, admin, `mutation($id: ID!) { deleteChannel(id: $id) }`, map[string]any{"id": api}); pathStr(m, "deleteChannel") != api {
		t.Errorf("deleteChannel = %v", m)
	}
	s.Do(t, admin, `mutation($id: ID!) { deleteChannel(id: $id) }`, map[string]any{"id": api}).Expect(t, "NOT_FOUND")
}

func TestR15_AdminManagesQuickReplies(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	m := mustData(t, s, admin, `mutation { createQuickReply(input: {name: " Greeting ", text: "Здравствуйте! Чем помочь?"}) { id name text } }`, nil)
	id := pathStr(m, "createQuickReply.id")
	if pathStr(m, "createQuickReply.name") != "Greeting" || pathStr(m, "createQuickReply.text") != "Здравствуйте! Чем помочь?" {
		t.Errorf("created = %v", m)
	}
	m = mustData(t, s, admin, `mutation($id: ID!) { updateQuickReply(id: $id, input: {text: "Hello!"}) { name text } }`, map[string]any{"id": id})
	if pathStr(m, "updateQuickReply.name") != "Greeting" || pathStr(m, "updateQuickReply.text") != "Hello!" {
		t.Errorf("updated = %v", m)
	}
	for _, in := range []string{`{name: "", text: "x"}`, `{name: "x", text: ""}`, fmt.Sprintf(`{name: "x", text: %q}`, strings.Repeat("x", 4001))} {
		s.Do(t, admin, `mutation { createQuickReply(input: `+in+`) { id } }`, nil).Expect(t, "VALIDATION")
	}
	// Operators read templates (they use them); only administrators change them.
	op := s.CreateOperator(t, enum.RoleOperator)
	m = mustData(t, s, op.Token, `{ quickReplies { edges { node { id name text } } } }`, nil)
	if pathStr(m, "quickReplies.edges.0.node.id") != id {
		t.Errorf("operator's quick replies = %v", m)
	}
	s.Do(t, op.Token, `mutation($id: ID!) { deleteQuickReply(id: $id) }`, map[string]any{"id": id}).Expect(t, "FORBIDDEN")
	mustData(t, s, admin, `mutation($id: ID!) { deleteQuickReply(id: $id) }`, map[string]any{"id": id})
	s.Do(t, admin, `mutation($id: ID!) { deleteQuickReply(id: $id) }`, map[string]any{"id": id}).Expect(t, "NOT_FOUND")
}

func TestR22_AdminManagesDuplicateRules(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	m := mustData(t, s, admin, `mutation { createDuplicateRule(input: {name: "Same phone", field: PHONE}) { id name field active } }`, nil)
	r := pathGet(m, "createDuplicateRule")
	if pathStr(r, "field") != "PHONE" || pathGet(r, "active") != true {
		t.Errorf("created = %v", r)
	}
	id := pathStr(r, "id")
	m = mustData(t, s, admin, `mutation($id: ID!) { updateDuplicateRule(id: $id, input: {active: false, field: EMAIL}) { field active } }`, map[string]any{"id": id})
	if pathStr(m, "updateDuplicateRule.field") != "EMAIL" || pathGet(m, "updateDuplicateRule.active") != false {
		t.Errorf("updated = %v", m)
	}
	s.Do(t, admin, `mutation { createDuplicateRule(input: {name: "x", field: BIRTHDAY}) { id } }`, nil).Expect(t, "GRAPHQL_VALIDATION_FAILED")
	s.Do(t, admin, `mutation { createDuplicateRule(input: {name: "", field: NAME}) { id } }`, nil).Expect(t, "VALIDATION")
	m = mustData(t, s, admin, `{ duplicateRules(where: {active: false}) { totalCount } }`, nil)
	if pathGet(m, "duplicateRules.totalCount") != 1.0 {
		t.Errorf("inactive rules = %v", m)
	}
	mustData(t, s, admin, `mutation($id: ID!) { deleteDuplicateRule(id: $id) }`, map[string]any{"id": id})
	s.Do(t, admin, `mutation($id: ID!) { deleteDuplicateRule(id: $id) }`, map[string]any{"id": id}).Expect(t, "NOT_FOUND")
}

func TestR25_AdminManagesChatActions(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q := gid(s.Client().Queue.Create().SetName("Q").SaveX(bg).ID)
	fields := `id caption kind url position active queue { id chatActions { id } }`
	m := mustData(t, s, admin, `mutation($q: ID!) { createChatAction(input: {caption: "Create case", kind: CREATE_CASE, queueID: $q}) { `+fields+` } }`, map[string]any{"q": q})
	a := pathGet(m, "createChatAction")
	if pathStr(a, "kind") != "CREATE_CASE" || pathGet(a, "active") != true || pathStr(a, "queue.id") != q || !slices.Contains(pathIDs(a, "queue.chatActions"), pathStr(a, "id")) {
		t.Errorf("created = %v", a)
	}
	m = mustData(t, s, admin, `mutation($q: ID!) { createChatAction(input: {caption: "Start process", kind: WEBHOOK, url: "https://crm.example/bp", position: 2, queueID: $q}) { `+fields+` } }`, map[string]any{"q": q})
	hook := pathStr(m, "createChatAction.id")
	if pathStr(m, "createChatAction.url") != "https://crm.example/bp" || pathGet(m, "createChatAction.position") != 2.0 {
		t.Errorf("webhook action = %v", m)
	}
	for _, url := range []string{"", "crm.example/bp", "ftp://crm.example", "https://"} {
		vars := map[string]any{"q": q, "u": url}
		e := s.Do(t, admin, `mutation($q: ID!, $u: String) { createChatAction(input: {caption: "x", kind: WEBHOOK, url: $u, queueID: $q}) { id } }`, vars).Expect(t, "VALIDATION")
		if e.Field() != "url" {
			t.Errorf("url %q: field %q", url, e.Field())
		}
	}
	// Turning a case action into a webhook needs a url; clearing a webhook's url is refused.
	s.Do(t, admin, `mutation($id: ID!) { updateChatAction(id: $id, input: {clearURL: true}) { id } }`, map[string]any{"id": hook}).Expect(t, "VALIDATION")
	s.Do(t, admin, `mutation($id: ID!) { updateChatAction(id: $id, input: {kind: WEBHOOK}) { id } }`, map[string]any{"id": pathStr(a, "id")}).Expect(t, "VALIDATION")
	m = mustData(t, s, admin, `mutation($id: ID!) { updateChatAction(id: $id, input: {caption: "Case!", active: false}) { caption active } }`, map[string]any{"id": pathStr(a, "id")})
	if pathStr(m, "updateChatAction.caption") != "Case!" || pathGet(m, "updateChatAction.active") != false {
		t.Errorf("updated = %v", m)
	}
	mustData(t, s, admin, `mutation($id: ID!) { deleteChatAction(id: $id) }`, map[string]any{"id": hook})
	m = mustData(t, s, admin, `{ chatActions { totalCount } }`, nil)
	if pathGet(m, "chatActions.totalCount") != 1.0 {
		t.Errorf("actions left = %v", m)
	}
}

// TestAdmin_AccountsAndContacts: any operator may create and edit accounts
// and contacts (they are CRM records, not configuration).
func TestAdmin_AccountsAndContacts(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator).Token
	m := mustData(t, s, op, `mutation { createContact(input: {name: "Ivan", phone: "+79001234567", email: "ivan@example.com"}) { id name phone email account { id } } }`, nil)
	ivan := pathStr(m, "createContact.id")
	if pathStr(m, "createContact.phone") != "+79001234567" || pathGet(m, "createContact.account") != nil {
		t.Errorf("contact = %v", m)
	}
	m = mustData(t, s, op, `mutation($c: ID!) { createAccount(input: {name: "Acme", website: "https://acme.example", contactIDs: [$c]}) { id name website contacts { id account { id } } } }`, map[string]any{"c": ivan})
	acme := pathStr(m, "createAccount.id")
	if got := pathIDs(m, "createAccount.contacts"); !slices.Equal(got, []string{ivan}) || pathStr(m, "createAccount.contacts.0.account.id") != acme {
		t.Errorf("account = %v", m)
	}
	m = mustData(t, s, op, `mutation($a: ID!) { createContact(input: {name: "Petr", accountID: $a}) { id account { id name } } }`, map[string]any{"a": acme})
	petr := pathStr(m, "createContact.id")
	if pathStr(m, "createContact.account.name") != "Acme" {
		t.Errorf("contact with account = %v", m)
	}
	m = mustData(t, s, op, `mutation($id: ID!, $c: ID!) { updateAccount(id: $id, input: {name: "Acme Ltd", removeContactIDs: [$c]}) { name contacts { id } } }`, map[string]any{"id": acme, "c": ivan})
	if pathStr(m, "updateAccount.name") != "Acme Ltd" || !slices.Equal(pathIDs(m, "updateAccount.contacts"), []string{petr}) {
		t.Errorf("updated account = %v", m)
	}
	m = mustData(t, s, op, `mutation($id: ID!) { updateContact(id: $id, input: {clearAccount: true, notes: "VIP", clearPhone: true}) { notes phone account { id } } }`, map[string]any{"id": petr})
	if pathStr(m, "updateContact.notes") != "VIP" || pathGet(m, "updateContact.account") != nil {
		t.Errorf("updated contact = %v", m)
	}
	s.Do(t, op, `mutation { createAccount(input: {name: ""}) { id } }`, nil).Expect(t, "VALIDATION")
	e := s.Do(t, op, `mutation($id: ID!) { updateContact(id: $id, input: {email: "not-an-email"}) { id } }`, map[string]any{"id": ivan}).Expect(t, "VALIDATION")
	if e.Field() != "email" {
		t.Errorf("contact email: field %q", e.Field())
	}
	m = mustData(t, s, op, `{ contacts(where: {nameContainsFold: "IVA"}) { totalCount edges { node { id } } } }`, nil)
	if pathGet(m, "contacts.totalCount") != 1.0 || pathStr(m, "contacts.edges.0.node.id") != ivan {
		t.Errorf("contacts search = %v", m)
	}
	// Any caller with credentials, but not without.
	s.Do(t, "", `mutation { createContact(input: {name: "X"}) { id } }`, nil).Expect(t, "UNAUTHENTICATED")
}

// TestR7_AdminManagesSettings: the system settings start at SPEC.md's
// defaults and only administrators change them.
func TestR7_AdminManagesSettings(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	op := s.CreateOperator(t, enum.RoleOperator).Token
	fields := `{ id concurrentChats acceptTimeoutSeconds waitingOrder botCompletionMinutes updatedAt }`
	m := mustData(t, s, op, `{ settings `+fields+` }`, nil)
	st := pathGet(m, "settings")
	// R7: 5 concurrent chats; R8: 5 minutes to accept; R9: oldest first; R29: 60 minutes.
	if pathGet(st, "concurrentChats") != 5.0 || pathGet(st, "acceptTimeoutSeconds") != 300.0 || pathStr(st, "waitingOrder") != "OLDEST_FIRST" || pathGet(st, "botCompletionMinutes") != 60.0 {
		t.Errorf("default settings = %v", st)
	}
	s.Do(t, op, `mutation { updateSettings(input: {concurrentChats: 9}) { id } }`, nil).Expect(t, "FORBIDDEN")
	s.Clock.Advance(time.Minute)
	m = mustData(t, s, admin, `mutation { updateSettings(input: {concurrentChats: 3, acceptTimeoutSeconds: 60, waitingOrder: NEWEST_FIRST}) `+fields+` }`, nil)
	up := pathGet(m, "updateSettings")
	if pathGet(up, "concurrentChats") != 3.0 || pathGet(up, "acceptTimeoutSeconds") != 60.0 || pathStr(up, "waitingOrder") != "NEWEST_FIRST" ||
		pathGet(up, "botCompletionMinutes") != 60.0 || pathStr(up, "id") != pathStr(st, "id") {
		t.Errorf("updated settings = %v", up)
	}
	if ts, _ := time.Parse(time.RFC3339Nano, pathStr(up, "updatedAt")); !ts.Equal(s.Clock.Now()) {
		t.Errorf("updatedAt = %v, want %v", pathStr(up, "updatedAt"), s.Clock.Now())
	}
	for _, in := range []string{`{concurrentChats: 0}`, `{acceptTimeoutSeconds: 4}`, `{botCompletionMinutes: 0}`, `{concurrentChats: 1001}`} {
		s.Do(t, admin, `mutation { updateSettings(input: `+in+`) { id } }`, nil).Expect(t, "VALIDATION")
	}
	m = mustData(t, s, op, `{ settings `+fields+` }`, nil)
	if pathGet(m, "settings.concurrentChats") != 3.0 {
		t.Errorf("settings after refusals = %v", m)
	}
	if n := s.Client().Setting.Query().CountX(bg); n != 1 {
		t.Errorf("%d settings rows, want 1", n)
	}
}

// TestR6_AdminDisablingAnOperatorIsRecorded: ending an operator's sessions
// from administration applies R6 like a logout.
func TestR6_AdminDisablingAnOperatorIsRecorded(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	mustData(t, s, op.Token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil)
	mustData(t, s, admin, `mutation($id: ID!) { updateOperator(id: $id, input: {disabled: true}) { id } }`, map[string]any{"id": op.GID})
	m := mustData(t, s, admin, `query($id: ID!) { node(id: $id) { ... on Operator { status statusBeforeLogout disabled } } }`, map[string]any{"id": op.GID})
	if pathStr(m, "node.status") != "INACTIVE" || pathStr(m, "node.statusBeforeLogout") != "ACTIVE" || pathGet(m, "node.disabled") != true {
		t.Errorf("disabled operator = %v", m)
	}
	last := s.Client().OperatorStatusChange.Query().Order(operatorstatuschange.ByAt(), operatorstatuschange.ByID()).AllX(bg)
	if n := len(last); n == 0 || last[n-1].Status != enum.StatusInactive || last[n-1].Reason != enum.ReasonAdmin {
		t.Errorf("status changes = %+v", last)
	}
}
