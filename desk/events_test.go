package desk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/contact"
	entevent "github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/schema/enum"
)

func TestEvents_EveryLifecycleChangeAppendsAnEventInItsTransaction(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	before, err := w.Desk.LastEventID(context.Background())
	w.Must(err)
	c := acceptedChat(w, ch, op, "c1")
	_, err = w.Desk.SendMessage(w.As(op), c.ID, "hi", nil)
	w.Must(err)
	_, err = w.Desk.CompleteChat(w.As(op), c.ID)
	w.Must(err)
	events, err := w.Desk.EventsAfter(context.Background(), before, 100)
	w.Must(err)
	var types []string
	for i, e := range events {
		types = append(types, e.Type)
		if i > 0 && e.ID <= events[i-1].ID {
			t.Fatalf("ids not increasing: %d after %d", e.ID, events[i-1].ID)
		}
	}
	want := []string{desk.EventChatCreated, desk.EventMessageAdded, desk.EventChatOffered, desk.EventChatAccepted,
		desk.EventMessageAdded, desk.EventChatCompleted}
	if len(types) != len(want) {
		t.Fatalf("events = %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("events = %v, want %v", types, want)
		}
	}
	// The offer reaches the operator's panel; the customer's first message
	// reaches nobody's panel (the offer carries the chat).
	if got := events[2].Audience; len(got) != 1 || got[0] != op.ID {
		t.Fatalf("offer audience = %v", got)
	}
	if got := events[0].QueueIds; len(got) != 1 || got[0] != q.ID {
		t.Fatalf("chat created queues = %v", got)
	}
}

func TestEvents_PrunedAfterTheRetentionWindow(t *testing.T) {
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	w.Inbound(ch, "old", "hi")
	old, err := w.Desk.LastEventID(context.Background())
	w.Must(err)
	w.Must(w.Desk.SchedulePruning(context.Background()))
	w.Clock.Advance(7*24*time.Hour + time.Minute)
	w.Inbound(ch, "new", "hi")
	w.RunJobs()
	_, err = w.Desk.EventsAfter(context.Background(), 0, 10)
	w.WantCode(err, desk.CodeEventsExpired)
	events, err := w.Desk.EventsAfter(context.Background(), old, 10)
	w.Must(err)
	if len(events) == 0 {
		t.Fatal("the new events were pruned too")
	}
	n, err := w.Client().Event.Query().Count(context.Background())
	w.Must(err)
	if n != len(events) {
		t.Fatalf("%d events left, want only the %d new ones", n, len(events))
	}
	// The pruning job schedules its next run.
	w.Clock.Advance(time.Hour)
	if w.RunJobs() != 1 {
		t.Fatal("the pruning job did not run again an hour later")
	}
}

// TestEvents_NoNotificationWhileNoOtherInstanceListens: a commit notifies
// EventsChannel with its last id, instance and scope, except while the desk is told
// that no other instance listens. Notifications arrive in commit order, so
// the first one received being the second commit's shows that the first
// commit sent none.
func TestEvents_NoNotificationWhileNoOtherInstanceListens(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): notifications are PostgreSQL's")
	}
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	l := pq.NewListener(w.DB.URL, 10*time.Millisecond, time.Second, nil)
	t.Cleanup(func() { l.Close() })
	w.Must(l.Listen(desk.EventsChannel))

	var scope string
	w.Must(w.DB.SQL.QueryRowContext(context.Background(), "SELECT "+desk.EventsScope).Scan(&scope))
	w.Desk.SetPeers(false)
	w.Inbound(ch, "quiet", "hi")
	quiet, err := w.Desk.LastEventID(context.Background())
	w.Must(err)
	w.Desk.SetPeers(true)
	w.Inbound(ch, "heard", "hi")
	heard, err := w.Desk.LastEventID(context.Background())
	w.Must(err)
	if heard <= quiet {
		t.Fatalf("the second commit appended no event (last id %d, then %d)", quiet, heard)
	}
	// Other tests' desks notify the same channel (the database is shared):
	// only this desk's notifications count.
	deadline := time.After(15 * time.Second)
	for {
		select {
		case n := <-l.Notify:
			if n == nil || !strings.Contains(n.Extra, " "+w.Desk.Instance()+" ") {
				continue
			}
			if want := fmt.Sprintf("%d %s %s", heard, w.Desk.Instance(), scope); n.Extra != want {
				t.Fatalf("first notification %q, want %q (the second commit's)", n.Extra, want)
			}
			return
		case <-deadline:
			t.Fatal("the commit made while other instances listen sent no notification")
		}
	}
}

// A live event's chat is read with its contact and its message (on
// PostgreSQL in one statement, the contact and the message as JSON): every
// field as ent's own loads give them, and both can query their edges
// afterwards (they are bound to the client, not left without a driver).
func TestEvents_AnEventsChatAndMessageAreReadAsEntLoadsThem(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	res := w.Inbound(w.Channel(q, enum.ProviderAPI), "event-chat", "hello")
	// Fields that are NULL, set and JSON-typed on both rows.
	ct, err := w.Client().Contact.Query().Where(contact.ID(res.Chat.ContactID)).Only(ctx)
	w.Must(err)
	w.Must(ct.Update().SetPhone("+15550100").SetNotes("prefers \"email\"\nafter 5pm").Exec(ctx))
	_, err = w.Desk.AcceptChat(w.As(op), res.Chat.ID)
	w.Must(err)
	sent, err := w.Desk.SendMessage(w.As(op), res.Chat.ID, "how can I help?", nil)
	w.Must(err)
	w.Must(w.Client().Message.UpdateOneID(sent.ID).SetContent(map[string]any{"buttons": []any{"yes", "no"}, "n": 2}).
		SetPreviousTexts([]string{"hi"}).Exec(ctx))

	asJSON := func(v any) string {
		b, err := json.Marshal(v)
		w.Must(err)
		return string(b)
	}
	gotChat, gotMessage, err := w.Desk.EventView(ctx, res.Chat.ID, sent.ID)
	w.Must(err)
	wantChat, err := w.Client().Chat.Query().Where(chat.ID(res.Chat.ID)).WithContact().Only(ctx)
	w.Must(err)
	wantMessage, err := w.Client().Message.Get(ctx, sent.ID)
	w.Must(err)
	if g, x := asJSON(gotChat), asJSON(wantChat); g != x {
		t.Fatalf("EventView's chat:\n%s\nent's load:\n%s", g, x)
	}
	if !strings.Contains(asJSON(gotChat), `"notes":"prefers \"email\"\nafter 5pm"`) {
		t.Fatalf("the contact's fields are missing: %s", asJSON(gotChat))
	}
	if g, x := asJSON(gotMessage), asJSON(wantMessage); g != x || !strings.Contains(g, `"buttons":["yes","no"]`) {
		t.Fatalf("EventView's message:\n%s\nent's load:\n%s", g, x)
	}
	n, err := gotChat.Edges.Contact.QueryIdentities().Count(ctx)
	w.Must(err)
	author, err := gotMessage.QueryAuthor().Only(ctx)
	w.Must(err)
	if n != 1 || author.ID != op.ID {
		t.Fatalf("the contact's identities: %d, the message's author: %d; want 1 and operator %d", n, author.ID, op.ID)
	}
	if c, m, err := w.Desk.EventView(ctx, res.Chat.ID, 0); err != nil || m != nil || c.ID != res.Chat.ID {
		t.Fatalf("the chat alone: %v, %v, %v", c, m, err)
	}
	if _, m, err := w.Desk.EventView(ctx, res.Chat.ID, sent.ID+1000); err != nil || m != nil {
		t.Fatalf("an unknown message: %v, %v; want none, no error", m, err)
	}
	if _, _, err := w.Desk.EventView(ctx, res.Chat.ID+1000, 0); desk.AsError(err) == nil || desk.AsError(err).Code != desk.CodeNotFound {
		t.Fatalf("an unknown chat: %v, want not found", err)
	}
}

// R12: a message to a waiting chat reaches the operators it is offered to,
// read by the statement that appends its event, on either database (no
// read of the offers of its own); a message to an accepted chat reaches its
// owner, one to a chat offered to nobody no panel. The events the commit
// hands the live hub carry the audiences the log holds. (On SQLite the
// message costs the look-up of the chat with its sender's identity, which
// shows nothing to refresh, and three writes.)
func TestR12_AWaitingChatsMessageReachesTheOperatorsItsEventsInsertReads(t *testing.T) {
	var recording atomic.Bool
	var mu sync.Mutex
	var sent []string
	var sunk []*ent.Event
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if recording.Load() && strings.Contains(statement, "query=") {
			mu.Lock()
			sent = append(sent, statement)
			mu.Unlock()
		}
	})
	w := desktest.NewWith(t, db, desktest.NewClock(), desk.WithEventSink(func(events []*ent.Event) {
		mu.Lock()
		sunk = append(sunk, events...)
		mu.Unlock()
	}))
	ctx := context.Background()
	a, b := w.Operator(active), w.Operator(active)
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{a, b}), enum.ProviderAPI)
	identityUpdate := regexp.MustCompile("UPDATE [`\"]?contact_identities")
	// message ingests a message from who on channel c and checks that its
	// MESSAGE_ADDED event, as the hub got it and as the log holds it, has
	// the audience want.
	message := func(c *ent.Channel, who string, want ...int) {
		t.Helper()
		mu.Lock()
		sent, sunk = nil, nil
		mu.Unlock()
		recording.Store(true)
		res := w.Inbound(c, who, "more")
		recording.Store(false)
		mu.Lock()
		defer mu.Unlock()
		logged, err := w.Client().Event.Query().Where(entevent.Type(desk.EventMessageAdded), entevent.ChatID(res.Chat.ID)).
			Order(ent.Desc(entevent.FieldID)).First(ctx)
		w.Must(err)
		if desk.PayloadInt(logged.Payload, "messageId") != res.MessageID {
			t.Fatalf("the chat's last MESSAGE_ADDED names message %v, want %d", logged.Payload, res.MessageID)
		}
		if len(sunk) != 1 || sunk[0].ID != logged.ID {
			t.Fatalf("the hub got %d events, want the one event %d", len(sunk), logged.ID)
		}
		slices.Sort(want)
		if !slices.Equal(logged.Audience, want) || !slices.Equal(sunk[0].Audience, want) {
			t.Fatalf("audience: logged %v, given the hub %v, want %v", logged.Audience, sunk[0].Audience, want)
		}
		for _, s := range sent {
			if strings.Contains(s, "chat_offers") && !strings.Contains(s, "INSERT INTO events") {
				t.Fatalf("the message read the chat's offers in a statement of its own: %s", s)
			}
			if identityUpdate.MatchString(s) {
				t.Fatalf("the message updated an identity whose profile it does not change: %s", s)
			}
		}
		if !storetest.Postgres() && len(sent) != 4 {
			t.Fatalf("%d statements, want the look-up and three writes:\n%s", len(sent), strings.Join(sent, "\n"))
		}
	}
	first := w.Inbound(ch, "c1", "hello")
	message(ch, "c1", a.ID, b.ID)
	_, err := w.Desk.AcceptChat(w.As(a), first.Chat.ID)
	w.Must(err)
	message(ch, "c1", a.ID)
	nobody := w.Channel(w.Queue(enum.RuleToAll, nil), enum.ProviderAPI)
	w.Inbound(nobody, "c2", "hello")
	message(nobody, "c2")
}

// A commit of hundreds of events (a release offering 180 waiting chats to
// three operators who just joined the queue: 540 CHAT_OFFERED in one
// transaction, more than SQLite's insert takes in one statement) appends
// them whole, with ids in their order, and hands the live hub the events
// the log holds.
func TestEvents_ACommitOfHundredsOfEventsIsAppendedWhole(t *testing.T) {
	var mu sync.Mutex
	var sunk []*ent.Event
	w := desktest.NewWith(t, storetest.Open(t), desktest.NewClock(), desk.WithEventSink(func(events []*ent.Event) {
		mu.Lock()
		sunk = append(sunk, events...)
		mu.Unlock()
	}))
	ctx := context.Background()
	a := w.Operator(active, 1000)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a})
	ch := w.Channel(q, enum.ProviderAPI)
	const chats = 180
	for i := range chats {
		w.Inbound(ch, fmt.Sprintf("many-%d", i), "hi")
	}
	joined := []*ent.Operator{w.Operator(active, 1000), w.Operator(active, 1000), w.Operator(active, 1000)}
	for _, op := range joined {
		_, err := w.Desk.UpdateOperator(w.AsAdmin(), op.ID, desk.UpdateOperatorInput{AddQueueIDs: []int{q.ID}})
		w.Must(err)
	}
	before, err := w.Desk.LastEventID(ctx)
	w.Must(err)
	mu.Lock()
	sunk = nil
	mu.Unlock()
	w.RunJobs()
	logged, err := w.Desk.EventsAfter(ctx, before, 10_000)
	w.Must(err)
	offered := map[int]int{}
	for i, e := range logged {
		if i > 0 && e.ID <= logged[i-1].ID {
			t.Fatalf("event ids out of order: %d after %d", e.ID, logged[i-1].ID)
		}
		if e.Type == desk.EventChatOffered && e.OperatorID != nil {
			offered[*e.OperatorID]++
		}
	}
	for _, op := range joined {
		if offered[op.ID] != chats {
			t.Fatalf("operator %d: %d CHAT_OFFERED, want %d (all: %v)", op.ID, offered[op.ID], chats, offered)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sunk) != len(logged) {
		t.Fatalf("the hub got %d events, the log holds %d", len(sunk), len(logged))
	}
	for i := range sunk {
		if sunk[i].ID != logged[i].ID || sunk[i].Type != logged[i].Type || !slices.Equal(sunk[i].Audience, logged[i].Audience) {
			t.Fatalf("event %d: the hub got %d %s %v, the log holds %d %s %v", i, sunk[i].ID, sunk[i].Type, sunk[i].Audience,
				logged[i].ID, logged[i].Type, logged[i].Audience)
		}
	}
}

// An event's view of what is gone reads alike on both databases: a chat
// that is not there is NOT_FOUND, a message that is not there is none.
func TestEvents_AnEventsViewOfWhatIsGone(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	ch := w.Channel(w.Queue(enum.RuleToAll, nil), enum.ProviderAPI)
	res := w.Inbound(ch, "gone", "hello")
	if _, _, err := w.Desk.EventView(ctx, res.Chat.ID+1_000_000, 0); desk.AsError(err).Code != desk.CodeNotFound ||
		!strings.Contains(err.Error(), "chat") {
		t.Fatalf("a chat that is not there: %v, want NOT_FOUND naming the chat", err)
	}
	for _, chatID := range []int{0, res.Chat.ID} {
		c, m, err := w.Desk.EventView(ctx, chatID, res.MessageID+1_000_000)
		if err != nil || m != nil || (chatID != 0) != (c != nil) {
			t.Fatalf("chat %d, a message that is not there: %v %v %v, want no message and no error", chatID, c, m, err)
		}
	}
}

// TestR12_AReadOfTheLogWaitsForTheAppendsInFlight: on PostgreSQL appends
// draw their event ids concurrently (they do not wait for one another), so
// a higher id may be visible before a lower one commits; a read of the log
// (the live pump's, the newest id at start) waits for the appends in
// flight, so it never returns an id above one still to come.
func TestR12_AReadOfTheLogWaitsForTheAppendsInFlight(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite has one writer at a time")
	}
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	ctx := context.Background()
	w.Inbound(ch, "before", "hi")
	start, err := w.Desk.LastEventID(ctx)
	w.Must(err)

	// An append in flight: its id drawn under the append lock, not committed.
	tx, err := w.DB.SQL.BeginTx(ctx, nil)
	w.Must(err)
	defer tx.Rollback() //nolint:errcheck
	const lockKey = desk.EventLockHash
	_, err = tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock_shared("+lockKey+", 0)")
	w.Must(err)
	var inFlight int
	w.Must(tx.QueryRowContext(ctx, "INSERT INTO events (type, created_at) VALUES ('TEST_IN_FLIGHT', now()) RETURNING id").Scan(&inFlight))

	// A later append commits meanwhile: appends do not wait for each other.
	appended := make(chan struct{})
	go func() { w.Inbound(ch, "after", "hi"); close(appended) }()
	select {
	case <-appended:
	case <-time.After(10 * time.Second):
		t.Fatal("an append waited for another one in flight")
	}

	type read struct {
		events []*ent.Event
		last   int
		err    error
	}
	reads, lasts := make(chan read, 1), make(chan read, 1)
	go func() { e, err := w.Desk.ReadEvents(ctx, start, 100); reads <- read{events: e, err: err} }()
	go func() { l, err := w.Desk.LastEventID(ctx); lasts <- read{last: l, err: err} }()
	// Both wait for the append in flight (their lock requests are queued).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		w.Must(w.DB.SQL.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
  AND classid = (`+lockKey+`::bigint & 4294967295)::oid AND objid = 0`).Scan(&waiting))
		if waiting == 2 {
			break
		}
		select {
		case r := <-reads:
			t.Fatalf("the read did not wait for the append in flight: %d events, %v", len(r.events), r.err)
		case r := <-lasts:
			t.Fatalf("LastEventID did not wait for the append in flight: %d, %v", r.last, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads wait for the append lock, want 2", waiting)
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by the deadline
	}
	w.Must(tx.Commit())

	r := <-reads
	w.Must(r.err)
	var ids []int
	var types []string
	for _, e := range r.events {
		ids, types = append(ids, e.ID), append(types, e.Type)
	}
	if len(ids) < 2 || ids[0] != inFlight || !slices.IsSorted(ids) || !slices.Contains(types, desk.EventMessageAdded) {
		t.Fatalf("read after %d: ids %v (%v), want %d (committed last) first, then the later append's, in order",
			start, ids, types, inFlight)
	}
	l := <-lasts
	w.Must(l.err)
	if l.last != ids[len(ids)-1] {
		t.Fatalf("LastEventID = %d, want %d", l.last, ids[len(ids)-1])
	}
}

// R12: on a log that never had an event (a new installation), the position
// the live hub starts from (LastEventID) is just below the first id the log
// will draw, so that the first commit's events follow it and are delivered
// at once, not held until a read of the log finds no gap before them.
func TestR12_ANewLogsLastEventIDIsJustBelowItsFirstEvent(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	if n, err := w.Client().Event.Query().Count(ctx); err != nil || n != 0 {
		t.Fatalf("the new world's log holds %d events (%v), want none", n, err)
	}
	last, err := w.Desk.LastEventID(ctx)
	w.Must(err)
	op := w.Operator(active)
	_, err = w.Desk.SetMyStatus(w.As(op), enum.StatusInactive)
	w.Must(err)
	first, err := w.Client().Event.Query().Order(ent.Asc(entevent.FieldID)).First(ctx)
	w.Must(err)
	if first.ID != last+1 {
		t.Fatalf("LastEventID of the new log is %d, its first event %d: want the id just below", last, first.ID)
	}
}

// R12: while someone may render live events, a commit whose events name one
// chat (and at most one message) reads what they name with its own COMMIT,
// on PostgreSQL: the chat with its contact and the message as the commit
// left them (the chat's times and the message are writes held for the
// commit), handed over before the events reach the sink. Commits of no chat
// or of several read none, nor does any while nobody listens, nor SQLite.
func TestR12_ACommitReadsWhatItsEventsNameWithItsCommit(t *testing.T) {
	var want atomic.Bool
	want.Store(true)
	var mu sync.Mutex
	var order []string
	var views []desk.CommitView
	clock := desktest.NewClock()
	w := desktest.NewWith(t, storetest.Open(t), clock,
		desk.WithCommitViews(want.Load, func(events []*ent.Event, v desk.CommitView) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, fmt.Sprintf("view %d", events[0].ID))
			views = append(views, v)
		}),
		desk.WithEventSink(func(events []*ent.Event) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, fmt.Sprintf("events %d", events[0].ID))
		}))
	taken := func() ([]desk.CommitView, []string) {
		mu.Lock()
		defer mu.Unlock()
		v, o := views, order
		views, order = nil, nil
		return v, o
	}
	a := w.Operator(inactive)
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{a}), enum.ProviderAPI)
	first := w.Inbound(ch, "c1", "hello")
	got, seq := taken()
	if !storetest.Postgres() {
		if len(got) != 0 {
			t.Fatalf("SQLite read %d views, want none", len(got))
		}
		return
	}
	if len(got) != 1 || len(seq) != 2 || !strings.HasPrefix(seq[0], "view ") || seq[1] != "events"+strings.TrimPrefix(seq[0], "view") {
		t.Fatalf("a new chat's commit gave %d views in the order %v; want one, before its events", len(got), seq)
	}
	v := got[0]
	if v.ChatID != first.Chat.ID || v.MessageID != first.MessageID || v.Chat == nil || v.Chat.ID != first.Chat.ID ||
		v.Chat.Edges.Contact == nil || v.Chat.Edges.Contact.Name != "Customer c1" || v.Message == nil || v.Message.Text != "hello" {
		t.Fatalf("the new chat's view: %+v, want chat %d with its contact and message %d", v, first.Chat.ID, first.MessageID)
	}

	clock.Advance(time.Minute)
	second := w.Inbound(ch, "c1", "still there?")
	got, _ = taken()
	if len(got) != 1 || got[0].Message == nil || got[0].Message.ID != second.MessageID || got[0].Message.Text != "still there?" ||
		!got[0].Chat.LastMessageAt.Equal(clock.Now()) {
		t.Fatalf("a message's view: %+v, want the message %d and the chat's last message time %v (held for the commit)",
			got, second.MessageID, clock.Now())
	}

	// Two chats in one commit: the release that offers both.
	w.Inbound(ch, "c2", "hello")
	taken()
	_, err := w.Desk.SetOperatorStatus(w.AsAdmin(), a.ID, enum.StatusActive)
	w.Must(err)
	w.RunJobs()
	offered, err := w.Client().ChatOffer.Query().Count(context.Background())
	w.Must(err)
	if got, _ := taken(); offered != 2 || len(got) != 0 {
		t.Fatalf("a release offering %d chats read %d views, want two chats and no view", offered, len(got))
	}

	// Nobody listens.
	want.Store(false)
	w.Inbound(ch, "c1", "anyone?")
	if got, seq := taken(); len(got) != 0 || len(seq) != 1 {
		t.Fatalf("with nobody listening a message read %d views (%v), want none and its events", len(got), seq)
	}
}

// LastEventID on PostgreSQL reads its own schema's events sequence only.
// Another schema of the same database (another deployment, or a parallel
// test) may be dropping its sequences meanwhile: a read of them would wait
// for the drop, then fail ("could not open relation with OID"). An empty
// log must still answer, at once.
func TestLastEventIDReadsOnlyItsOwnSequence(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite has no sequences")
	}
	ctx := context.Background()
	// Without indexes, PostgreSQL scans the catalog of sequences, as it
	// does where the catalog is small.
	db, err := store.Open(ctx, storetest.URL(t)+"&enable_indexscan=off&enable_bitmapscan=off", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	w := desktest.NewOn(t, db, desktest.NewClock())
	var scans string
	w.Must(db.SQL.QueryRowContext(ctx, "SHOW enable_indexscan").Scan(&scans))
	if scans != "off" {
		t.Fatalf("enable_indexscan = %s: the catalog would not be scanned", scans)
	}

	// A neighbour schema with a sequence, dropped by a transaction that
	// stays open while LastEventID runs.
	neighbour := fmt.Sprintf("lasteventid_neighbour_%d", time.Now().UnixNano())
	_, err = db.SQL.ExecContext(ctx, "CREATE SCHEMA "+neighbour+"; CREATE SEQUENCE "+neighbour+".s")
	w.Must(err)
	t.Cleanup(func() { _, _ = db.SQL.Exec("DROP SCHEMA IF EXISTS " + neighbour + " CASCADE") })
	dropping, err := db.SQL.BeginTx(ctx, nil)
	w.Must(err)
	defer dropping.Rollback()
	_, err = dropping.ExecContext(ctx, "DROP SCHEMA "+neighbour+" CASCADE")
	w.Must(err)

	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	want, err := w.Desk.LastEventID(wait)
	if err != nil {
		t.Fatalf("LastEventID while another schema's sequence is being dropped: %v (it must not wait for the drop)", err)
	}
	w.Must(dropping.Rollback())
	// The log is empty: the id before the sequence's first.
	_, err = w.Desk.Ingest(ctx, desk.Inbound{ChannelID: w.Channel(w.Queue(enum.RuleToAll, nil), enum.ProviderAPI).ID,
		Identity: desk.InboundIdentity{ExternalID: "first"}, Text: "hello"})
	w.Must(err)
	events, err := w.Desk.EventsAfter(ctx, want, 10)
	w.Must(err)
	if len(events) == 0 || events[0].ID != want+1 {
		t.Fatalf("LastEventID of the empty log %d; the first events %v, want the first to follow it", want, events)
	}
}
