package graph_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	entevent "github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

const panelSub = `subscription($after: ID) { panel(after: $after) { id type notify chatId } }`

// liveWorld is a server with an active operator in a TO_ALL queue fed by an
// API channel, and an integration key to play the customer.
type liveWorld struct {
	s       *apptest.Server
	op      apptest.Operator
	key     apptest.APIKey
	queue   *ent.Queue
	channel *ent.Channel
}

func newLiveWorld(t *testing.T, opts ...apptest.Option) *liveWorld {
	t.Helper()
	s := apptest.New(t, opts...)
	w := &liveWorld{s: s, op: s.CreateOperator(t, enum.RoleOperator), key: s.CreateAPIKey(t, enum.ApiKeyIntegration)}
	ctx := context.Background()
	var err error
	if w.queue, err = s.Client().Queue.Create().SetName(apptest.Unique("q")).SetRoutingRule(enum.RuleToAll).
		AddMemberIDs(w.op.ID).SetChatLimit(1000).Save(ctx); err != nil {
		t.Fatal(err)
	}
	if w.channel, err = s.Client().Channel.Create().SetName("api").SetProvider(enum.ProviderAPI).SetQueueID(w.queue.ID).Save(ctx); err != nil {
		t.Fatal(err)
	}
	s.Do(t, w.op.Token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil).OK(t)
	return w
}

// inbound delivers a customer message through the API channel.
func (w *liveWorld) inbound(t testing.TB, customer, text string) string {
	t.Helper()
	var out struct {
		SimulateInbound struct{ Chat struct{ ID string } }
	}
	w.s.Do(t, w.key.Key, `mutation($ch: ID!, $c: String!, $t: String!) {
	  simulateInbound(input: {channelId: $ch, externalId: $c, text: $t}) { chat { id } } }`,
		map[string]any{"ch": apptest.ID(w.channel.ID), "c": customer, "t": text}).OK(t).Decode(t, &out)
	return out.SimulateInbound.Chat.ID
}

// lastEventID is the newest event id, for subscribing with after without
// racing the subscription's start.
func lastEventID(t testing.TB, s *apptest.Server) string {
	t.Helper()
	id, err := s.Desk().LastEventID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(id)
}

// panelEvents returns the ids of the stored events of the operator's panel
// after an id, in order: what a resuming client must receive.
func panelEvents(t testing.TB, s *apptest.Server, opID, after int) []int {
	t.Helper()
	events, err := s.Client().Event.Query().Where(entevent.IDGT(after)).Order(ent.Asc(entevent.FieldID)).All(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []int
	for _, e := range events {
		if slices.Contains(e.Audience, opID) {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

func TestR12_PanelSubscriptionDeliversOffersWithNotificationAndMessages(t *testing.T) {
	w := newLiveWorld(t)
	ws := w.s.Connect(t, w.op.Token)
	ws.Subscribe("1", panelSub, map[string]any{"after": lastEventID(t, w.s)})

	chatID := w.inbound(t, "c1", "hello")
	ev := ws.NextEvent("1", "panel")
	if ev.Type != desk.EventChatOffered || !ev.Notify || ev.ChatID != chatID {
		t.Fatalf("first panel event = %+v, want CHAT_OFFERED with notify for chat %s", ev, chatID)
	}
	w.inbound(t, "c1", "are you there?")
	if ev := ws.NextEvent("1", "panel"); ev.Type != desk.EventMessageAdded || ev.ChatID != chatID || ev.Notify {
		t.Fatalf("second panel event = %+v, want MESSAGE_ADDED", ev)
	}
	w.s.Do(t, w.op.Token, `mutation($id: ID!) { acceptChat(id: $id) { id } }`, map[string]any{"id": chatID}).OK(t)
	accepted := ws.NextEvent("1", "panel")
	if accepted.Type != desk.EventChatAccepted {
		t.Fatalf("third panel event = %+v, want CHAT_ACCEPTED", accepted)
	}
	// The chat subscription of the owner sees the chat's events.
	ws.Subscribe("2", `subscription($id: ID!, $after: ID) { chat(id: $id, after: $after) { id type message { text } } }`,
		map[string]any{"id": chatID, "after": accepted.ID})
	w.s.Do(t, w.op.Token, `mutation($id: ID!) { sendMessage(chatId: $id, text: "yes") { id } }`, map[string]any{"id": chatID}).OK(t)
	got := map[string]bool{}
	for range 2 {
		m := ws.Next()
		if m.Type != "next" {
			t.Fatalf("got %s %s", m.Type, m.Payload)
		}
		got[m.ID] = true
	}
	if !got["1"] || !got["2"] {
		t.Fatalf("the message reached operations %v, want both panel and chat", got)
	}
}

func TestR12_ResumeAfterADropDeliversEveryMissedEventOnce(t *testing.T) {
	w := newLiveWorld(t)
	ws := w.s.Connect(t, w.op.Token)
	ws.Subscribe("1", panelSub, map[string]any{"after": lastEventID(t, w.s)})
	w.inbound(t, "first", "hello")
	firstEv := ws.NextEvent("1", "panel")
	last, _ := strconv.Atoi(firstEv.ID)
	ws.Drop()

	// Events keep coming while the client is away, and while it resumes.
	const producers, each = 4, 10
	var wg sync.WaitGroup
	produce := func(round int) {
		for p := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					w.inbound(t, fmt.Sprintf("r%d-p%d-%d", round, p, i), "hi")
				}
			}()
		}
	}
	produce(0)
	wg.Wait()
	produce(1)
	ws2 := w.s.Connect(t, w.op.Token)
	ws2.Subscribe("1", panelSub, map[string]any{"after": strconv.Itoa(last)})
	wg.Wait()
	// On PostgreSQL some of these concurrent new chats are left to their
	// queue's release (desk's routing mark), which the server's release worker
	// would run at once; this test server runs no scheduler.
	if _, err := w.s.Desk().RunDueJobs(context.Background()); err != nil {
		t.Fatal(err)
	}

	want := panelEvents(t, w.s, w.op.ID, last)
	if len(want) != 2*producers*each {
		evs, _ := w.s.Client().Event.Query().Where(entevent.IDGT(last)).All(context.Background())
		for _, e := range evs {
			t.Logf("%d %s %v %v", e.ID, e.Type, e.Audience, e.Payload)
		}
		t.Fatalf("stored %d panel events, want %d", len(want), 2*producers*each)
	}
	var got []int
	for len(got) < len(want) {
		id, _ := strconv.Atoi(ws2.NextEvent("1", "panel").ID)
		got = append(got, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("resumed events differ from the log:\n got %v\nwant %v", got, want)
	}
	// Nothing else is pending: a new event comes next, not a duplicate.
	w.inbound(t, "after", "hi")
	if id, _ := strconv.Atoi(ws2.NextEvent("1", "panel").ID); id <= got[len(got)-1] {
		t.Fatalf("event %d after %d: a duplicate or out of order", id, got[len(got)-1])
	}
}

func TestR12_ResumingFromBeforeTheRetentionWindowIsRefused(t *testing.T) {
	w := newLiveWorld(t)
	w.inbound(t, "c1", "hello")
	if err := w.s.Client().Setting.Update().SetEventsPrunedThrough(1 << 40).Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	ws := w.s.Connect(t, w.op.Token)
	ws.Subscribe("1", panelSub, map[string]any{"after": "1"})
	ws.ExpectRefused("1", string(desk.CodeEventsExpired))
}

func TestR32_SubscriptionsAreAuthorised(t *testing.T) {
	w := newLiveWorld(t)
	other := w.s.CreateOperator(t, enum.RoleOperator)
	chatID := w.inbound(t, "c1", "hello")
	w.s.Do(t, w.op.Token, `mutation($id: ID!) { acceptChat(id: $id) { id } }`, map[string]any{"id": chatID}).OK(t)

	t.Run("no credentials", func(t *testing.T) {
		ws := w.s.DialWS(t, "graphql-transport-ws", nil)
		ws.Send("connection_init", "", map[string]any{})
		for {
			m, err := ws.Read(10 * time.Second)
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				if ce.Code != 4401 {
					t.Fatalf("closed with %d, want 4401", ce.Code)
				}
				return
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if m.Type == "connection_ack" {
				t.Fatal("acknowledged without credentials")
			}
		}
	})
	t.Run("another operator's open chat", func(t *testing.T) {
		ws := w.s.Connect(t, other.Token)
		ws.Subscribe("1", `subscription($id: ID!) { chat(id: $id) { id } }`, map[string]any{"id": chatID})
		ws.ExpectRefused("1", "FORBIDDEN")
	})
	t.Run("queue without the supervisor role", func(t *testing.T) {
		ws := w.s.Connect(t, other.Token)
		ws.Subscribe("1", `subscription($id: ID!) { queue(id: $id) { id } }`, map[string]any{"id": apptest.ID(w.queue.ID)})
		ws.ExpectRefused("1", "FORBIDDEN")
	})
	t.Run("panel for an API key", func(t *testing.T) {
		ws := w.s.Connect(t, w.key.Key)
		ws.Subscribe("1", panelSub, nil)
		ws.ExpectRefused("1", "FORBIDDEN")
	})
	t.Run("logout ends the session's subscriptions", func(t *testing.T) {
		token := w.s.Login(t, other.Email, other.Password)
		ws := w.s.Connect(t, token)
		ws.Subscribe("1", panelSub, map[string]any{"after": lastEventID(t, w.s)})
		w.s.Do(t, token, `mutation { logout }`, nil).OK(t)
		ws.ExpectRefused("1", "UNAUTHENTICATED")
	})
	t.Run("a supervisor follows the queue", func(t *testing.T) {
		sup := w.s.CreateOperator(t, enum.RoleSupervisor)
		ws := w.s.Connect(t, sup.Token)
		ws.Subscribe("1", `subscription($id: ID!, $after: ID) { queue(id: $id, after: $after) { id type } }`,
			map[string]any{"id": apptest.ID(w.queue.ID), "after": lastEventID(t, w.s)})
		w.inbound(t, "c2", "hello")
		if ev := ws.NextEvent("1", "queue"); ev.Type != desk.EventChatCreated {
			t.Fatalf("queue event = %+v, want CHAT_CREATED", ev)
		}
	})
}

func TestR32_WebsocketOriginsComeFromTheCORSAllowList(t *testing.T) {
	s := apptest.New(t, apptest.WithConfig(func(c *app.Config) { c.CORSOrigins = []string{"https://desk.example"} }))
	op := s.CreateOperator(t, enum.RoleOperator)
	// An allowed browser origin connects and authenticates.
	ws := s.DialWS(t, "graphql-transport-ws", map[string]string{"Origin": "https://desk.example"})
	ws.Send("connection_init", "", map[string]any{"Authorization": "Bearer " + op.Token})
	if m := ws.Next(); m.Type != "connection_ack" {
		t.Fatalf("allowed origin: got %s %s", m.Type, m.Payload)
	}
	// Another origin is refused at the upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.URL, "http")+"/graphql", &websocket.DialOptions{
		Subprotocols: []string{"graphql-transport-ws"},
		HTTPHeader:   map[string][]string{"Origin": {"https://evil.example"}},
	})
	if err == nil {
		t.Fatal("a websocket from a foreign origin was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin answered %v, want 403", resp)
	}
}

// The events one commit appends share the loads of the chat they name: a
// new chat offered to three operators is one commit (its creation, its
// message, an offer each), and the three panels that show the chat with its
// customer read the chat once, not once per event; on PostgreSQL its
// contact with it, in the commit's own message, after the COMMIT
// (desk.WithCommitViews), and the next message's event reads the chat, the
// contact and the message there, in one statement.
func TestR12_PanelsOfOneCommitsEventsReadTheirChatOnce(t *testing.T) {
	rec := &apptest.Recorder{}
	w := newLiveWorld(t, apptest.WithRecorder(rec))
	ops := []apptest.Operator{w.op, w.s.CreateOperator(t, enum.RoleOperator), w.s.CreateOperator(t, enum.RoleOperator)}
	if err := w.s.Client().Queue.UpdateOne(w.queue).AddMemberIDs(ops[1].ID, ops[2].ID).Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops[1:] {
		w.s.Do(t, op.Token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil).OK(t)
	}
	after := lastEventID(t, w.s)
	var panels []*apptest.WS
	for _, op := range ops {
		ws := w.s.Connect(t, op.Token)
		ws.Subscribe("1", `subscription($after: ID) { panel(after: $after) {
		  type chatId chat { id contact { externalName: name } } message { text } } }`, map[string]any{"after": after})
		panels = append(panels, ws)
	}
	// The panels' loads, outside any transaction (SQLite quotes with `):
	// on PostgreSQL one statement (the contact and the message as JSON),
	// on SQLite ent's loads (the chat, its contact, the message).
	// viewed counts the commits that carried the read of their view.
	viewed := 0
	reads := func() (chats, contacts, messages int) {
		read := func(table string) *regexp.Regexp {
			return regexp.MustCompile("(?s)^driver\\.Query(Context)?: query=SELECT .*\\sFROM [`\"]" + table + "[`\"]( WHERE|$)")
		}
		// A read of one chat by its id: the scheduler's look for pending
		// chats (PostgreSQL, once a second) reads chats too.
		chatRead := regexp.MustCompile("(?s)^driver\\.Query(Context)?: query=SELECT .*\\sFROM [`\"]?chats[`\"]?( AS c)? WHERE (c\\.|[`\"]chats[`\"]\\.)[`\"]?id[`\"]? = ")
		contactRead, messageRead := read("contacts"), read("messages")
		viewed = 0
		for _, s := range rec.Statements() {
			if _, after, ok := strings.Cut(s, store.AfterCommit); ok && strings.Contains(after, `FROM chats AS c WHERE c.id = $1`) {
				viewed++
			}
			if chatRead.MatchString(s) {
				chats++
			}
			if contactRead.MatchString(s) {
				contacts++
			}
			if messageRead.MatchString(s) {
				messages++
			}
		}
		rec.Reset()
		return
	}
	// Separate reads of the chat, of its contact (and message), and
	// commits that carried their view.
	chatReads, separate, views := 1, 1, 0
	if w.s.DB().Postgres() {
		chatReads, separate, views = 0, 0, 1
	}
	customer := "shared-" + apptest.Unique("c")
	rec.Reset()
	chatID := w.inbound(t, customer, "hello")
	for i, ws := range panels {
		m := ws.Next()
		if m.Type != "next" || !strings.Contains(string(m.Payload), `"CHAT_OFFERED"`) || !strings.Contains(string(m.Payload), `"chatId":"`+chatID+`"`) ||
			!strings.Contains(string(m.Payload), `"externalName":`) {
			t.Fatalf("panel %d: got %s %s, want the offer of chat %s with its customer", i, m.Type, m.Payload, chatID)
		}
	}
	if chats, contacts, _ := reads(); chats != chatReads || contacts != separate || viewed != views {
		t.Fatalf("three panels showing the offers of one commit read the chat %d times and its contact %d more, with %d commits' views; want %d, %d and %d",
			chats, contacts, viewed, chatReads, separate, views)
	}
	w.inbound(t, customer, "are you there?")
	for i, ws := range panels {
		m := ws.Next()
		if m.Type != "next" || !strings.Contains(string(m.Payload), `"MESSAGE_ADDED"`) || !strings.Contains(string(m.Payload), `"text":"are you there?"`) {
			t.Fatalf("panel %d: got %s %s, want the message", i, m.Type, m.Payload)
		}
	}
	if chats, contacts, messages := reads(); chats != chatReads || contacts != separate || messages != separate || viewed != views {
		t.Fatalf("three panels showing a message read its chat %d times, its contact %d and the message %d more, with %d commits' views; want %d, %d, %d and %d",
			chats, contacts, messages, viewed, chatReads, separate, separate, views)
	}
}
