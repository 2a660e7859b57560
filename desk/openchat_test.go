package desk_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/inbounddelivery"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// openChatWorld is a PostgreSQL desk whose statements are recorded, with
// a commit view hook and an event sink that record what they are given,
// and a WhatsApp webhook channel whose queue offers to two operators.
type openChatWorld struct {
	*desktest.World
	clock *desktest.Clock
	ch    channels.Channel
	queue *ent.Queue
	ops   []*ent.Operator

	mu         sync.Mutex
	statements []string
	views      []desk.CommitView
	sunk       []*ent.Event
}

func newOpenChatWorld(t *testing.T) *openChatWorld {
	t.Helper()
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only (set TEST_DATABASE_URL): on SQLite every message takes the use case's transaction")
	}
	o := &openChatWorld{clock: desktest.NewClock()}
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, s string) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.statements = append(o.statements, s)
	})
	o.World = desktest.NewWith(t, db, o.clock,
		desk.WithCommitViews(func() bool { return true }, func(_ []*ent.Event, v desk.CommitView) {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.views = append(o.views, v)
		}),
		desk.WithEventSink(func(events []*ent.Event) {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.sunk = append(o.sunk, events...)
		}))
	o.ops = []*ent.Operator{o.Operator(active), o.Operator(active)}
	o.queue = o.Queue(enum.RuleToAll, o.ops)
	_, o.ch = o.WebhookChannel(o.queue, enum.ProviderWhatsApp)
	return o
}

// deliver applies a delivery of one message from who and returns the
// statements it sent (as the query hook logs them).
func (o *openChatWorld) deliver(t *testing.T, key, who, name, id, text string) []string {
	t.Helper()
	o.taken()
	res, err := o.Desk.ApplyDelivery(context.Background(), o.ch, textDelivery(key, who, name, id, text),
		[]byte(`{"key":"`+key+`"}`))
	o.Must(err)
	if res.Duplicate || res.Applied != 1 {
		t.Fatalf("delivery %s: %+v, want one update applied", key, res)
	}
	statements, _, _ := o.taken()
	return statements
}

// deliverLater applies a delivery of one message from who in a goroutine,
// whose error it sends on the channel returned.
func (o *openChatWorld) deliverLater(key, who, name, id, text string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := o.Desk.ApplyDelivery(context.Background(), o.ch, textDelivery(key, who, name, id, text), []byte(`{}`))
		done <- err
	}()
	return done
}

// textDelivery is a delivery (key) of one text message (id) from who.
func textDelivery(key, who, name, id, text string) channels.Delivery {
	return channels.Delivery{Key: key, Updates: []channels.Update{{Kind: channels.UpdateMessage,
		Sender: channels.Identity{ExternalID: who, Name: name}, MessageID: id, MessageKind: string(enum.KindText), Text: text}}}
}

// taken returns and forgets what was recorded.
func (o *openChatWorld) taken() ([]string, []desk.CommitView, []*ent.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, v, e := o.statements, o.views, o.sunk
	o.statements, o.views, o.sunk = nil, nil, nil
	return s, v, e
}

// oneStatement reports whether statements are the open chat's statement
// alone: no transaction begun, no other statement.
func oneStatement(statements []string) bool {
	return len(statements) == 1 && strings.Contains(statements[0], "parley_applied") &&
		!strings.Contains(statements[0], "Tx(")
}

// R1, R3, R12, R18, R21 (PostgreSQL): a known customer's message to their
// open chat, alone in its delivery, is one statement in its own
// transaction, which writes what the use case's transaction writes: the
// delivery's body, the message under an id drawn after the chat's lock,
// the chat's times (its completion timer cleared, WhatsApp's reply window
// moved), and the MESSAGE_ADDED event with the audience of the chat (the
// operators it is offered to; its owner once taken), notified to other
// instances; the sink gets the event as the log holds it, after the view
// of the commit (the chat as updated, its contact and the message).
func TestR1_AKnownCustomersMessageToTheirOpenChatIsOneStatement(t *testing.T) {
	o := newOpenChatWorld(t)
	ctx := context.Background()
	first := o.deliver(t, "k1", "15550001", "Ann", "wamid.1", "hello")
	if oneStatement(first) {
		t.Fatal("a new sender's first message took the open chat's statement")
	}
	m1, err := o.Client().Message.Query().Where(message.ProviderMessageID("wamid.1")).Only(ctx)
	o.Must(err)
	due := o.clock.Now().Add(time.Hour)
	o.Must(o.Client().Chat.UpdateOneID(m1.ChatID).SetCompletionDueAt(due).Exec(ctx))

	l := pq.NewListener(o.DB.URL, 10*time.Millisecond, time.Second, nil)
	t.Cleanup(func() { l.Close() })
	o.Must(l.Listen(desk.EventsChannel))
	o.Desk.SetPeers(true)
	o.clock.Advance(time.Minute)
	now := o.clock.Now()
	o.taken()
	_, err = o.Desk.ApplyDelivery(ctx, o.ch, channels.Delivery{Key: "k2", Updates: []channels.Update{{
		Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: "15550001", Name: "Ann"}, MessageID: "wamid.2",
		MessageKind: string(enum.KindLocation), Text: "here", Content: map[string]any{"latitude": 52.5, "name": "Büro"}}}},
		[]byte(`{"second":true}`))
	o.Must(err)
	statements, views, sunk := o.taken()
	if !oneStatement(statements) {
		t.Fatalf("the known customer's message sent %d statements, want the open chat's alone:\n%s",
			len(statements), strings.Join(statements, "\n"))
	}

	del, err := o.Client().InboundDelivery.Query().Where(inbounddelivery.ProviderKey("k2")).Only(ctx)
	o.Must(err)
	if del.ChannelID != o.ch.ID || string(del.Body) != `{"second":true}` || !del.ReceivedAt.Equal(now) {
		t.Fatalf("the delivery's row: %+v", del)
	}
	m2, err := o.Client().Message.Query().Where(message.ProviderMessageID("wamid.2")).Only(ctx)
	o.Must(err)
	if m2.ChatID != m1.ChatID || m2.ID <= m1.ID || m2.ChannelID != o.ch.ID || m2.Direction != enum.Inbound ||
		m2.AuthorKind != enum.AuthorCustomer || m2.Kind != enum.KindLocation || m2.Text != "here" ||
		m2.Content["name"] != "Büro" || m2.Content["latitude"] != 52.5 || !m2.CreatedAt.Equal(now) {
		t.Fatalf("the stored message: %+v (the first: %d)", m2, m1.ID)
	}
	c := o.Chat(m1.ChatID)
	if !c.LastMessageAt.Equal(now) || c.LastInboundAt == nil || !c.LastInboundAt.Equal(now) || c.CompletionDueAt != nil ||
		c.ReplyWindowEndsAt == nil || !c.ReplyWindowEndsAt.Equal(now.Add(24*time.Hour)) || c.Status != enum.ChatWaiting {
		t.Fatalf("the chat after the message: %+v, want its times at %v, no completion timer, the window 24 h on", c, now)
	}

	logged, err := o.Desk.EventsAfter(ctx, 0, 1000)
	o.Must(err)
	last := logged[len(logged)-1]
	ops := []int{o.ops[0].ID, o.ops[1].ID}
	slices.Sort(ops)
	if last.Type != desk.EventMessageAdded || last.ChatID == nil || *last.ChatID != c.ID || last.QueueID == nil ||
		*last.QueueID != o.queue.ID || last.Payload["messageId"] != float64(m2.ID) || !slices.Equal(last.Audience, ops) ||
		!slices.Equal(last.QueueIds, []int{o.queue.ID}) || !last.CreatedAt.Equal(now) {
		t.Fatalf("the log's last event: %+v, want MESSAGE_ADDED of message %d to operators %v", last, m2.ID, ops)
	}
	if len(sunk) != 1 || sunk[0].ID != last.ID || sunk[0].Type != last.Type || *sunk[0].ChatID != *last.ChatID ||
		*sunk[0].QueueID != *last.QueueID || sunk[0].Payload["messageId"] != last.Payload["messageId"] ||
		!slices.Equal(sunk[0].Audience, last.Audience) || !slices.Equal(sunk[0].QueueIds, last.QueueIds) ||
		!sunk[0].CreatedAt.Equal(last.CreatedAt) {
		t.Fatalf("the sink got %+v, want the log's event %+v", sunk, last)
	}
	if len(views) != 1 || views[0].ChatID != c.ID || views[0].MessageID != m2.ID || views[0].Chat == nil ||
		!views[0].Chat.LastMessageAt.Equal(now) || views[0].Chat.CompletionDueAt != nil ||
		views[0].Chat.Edges.Contact == nil || views[0].Chat.Edges.Contact.ID != c.ContactID ||
		views[0].Message == nil || views[0].Message.ID != m2.ID || views[0].Message.Text != "here" {
		t.Fatalf("the commit's view: %+v, want the chat as updated with its contact and message %d", views, m2.ID)
	}
	awaitNotification(t, l, o.Desk.Instance(), last.ID)

	// Taken by an operator, the chat's messages reach its owner alone.
	_, err = o.Desk.AcceptChat(o.As(o.ops[1]), c.ID)
	o.Must(err)
	if !oneStatement(o.deliver(t, "k3", "15550001", "Ann", "wamid.3", "thanks")) {
		t.Fatal("a message to a taken chat did not take the open chat's statement")
	}
	logged, err = o.Desk.EventsAfter(ctx, last.ID, 1000)
	o.Must(err)
	added := logged[len(logged)-1]
	if added.Type != desk.EventMessageAdded || !slices.Equal(added.Audience, []int{o.ops[1].ID}) {
		t.Fatalf("the taken chat's message event: %+v, want its owner %d as the audience", added, o.ops[1].ID)
	}
}

// awaitNotification waits for this instance's notification of EventsChannel
// and checks that it names the event id.
func awaitNotification(t *testing.T, l *pq.Listener, instance string, id int) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case n := <-l.Notify:
			if n == nil || !strings.Contains(n.Extra, " "+instance+" ") {
				continue // another test's desk (the database is shared)
			}
			if !strings.HasPrefix(n.Extra, fmt.Sprintf("%d %s ", id, instance)) {
				t.Fatalf("notification %q, want event %d's", n.Extra, id)
			}
			return
		case <-deadline:
			t.Fatalf("no notification of event %d", id)
		}
	}
}

// R1, R2, R7 (PostgreSQL): a known customer's message that must do more
// than append to an open chat is found out by the open chat's statement,
// which then changes nothing, and applied by the use case's transaction:
// a profile to refresh, a chat completed (a new one opens), a chat still
// pending its routing (routed by a release), and a sender removed behind
// the process's back (looked up again in full).
func TestR1_AKnownCustomersOtherMessagesTakeTheTransaction(t *testing.T) {
	o := newOpenChatWorld(t)
	ctx := context.Background()
	n := 0
	// deliver sends a message from the customer, checks that the open
	// chat's statement ran first and the transaction after it, and
	// returns the message.
	deliver := func(name, why string) *ent.Message {
		t.Helper()
		n++
		id := fmt.Sprintf("wamid.x%d", n)
		statements := o.deliver(t, fmt.Sprintf("x%d", n), "15550002", name, id, why)
		if len(statements) < 2 || !strings.Contains(statements[0], "parley_applied") || oneStatement(statements) {
			t.Fatalf("%s: %d statements, want the open chat's, then the transaction's:\n%s", why, len(statements),
				strings.Join(statements, "\n"))
		}
		m, err := o.Client().Message.Query().Where(message.ProviderMessageID(id)).WithChat().Only(ctx)
		o.Must(err)
		return m
	}
	o.deliver(t, "x0", "15550002", "Bo", "wamid.x0", "hello")
	identity := func() *ent.ContactIdentity {
		i, err := o.Client().ContactIdentity.Query().Where(contactidentity.ExternalID("15550002")).Only(ctx)
		o.Must(err)
		return i
	}

	m := deliver("Bo Li", "a new name")
	if identity().DisplayName != "Bo Li" {
		t.Fatalf("the identity's name is %q, want the message's", identity().DisplayName)
	}
	open := m.ChatID

	// A chat pending its routing has no offers yet.
	_, err := o.Client().ChatOffer.Delete().Where(chatoffer.ChatID(open)).Exec(ctx)
	o.Must(err)
	o.Must(o.Client().Chat.UpdateOneID(open).SetRoutePending(true).Exec(ctx))
	m = deliver("Bo Li", "to a pending chat")
	if m.ChatID != open {
		t.Fatalf("the message to the pending chat went to chat %d, want %d", m.ChatID, open)
	}
	o.RunJobs()
	if c := o.Chat(open); c.RoutePending || len(openOffers(o.World, open)) != 2 {
		t.Fatalf("the pending chat was not routed after the message (offered to %v)", openOffers(o.World, open))
	}

	_, err = o.Desk.AcceptChat(o.As(o.ops[0]), open)
	o.Must(err)
	_, err = o.Desk.CompleteChat(o.As(o.ops[0]), open)
	o.Must(err)
	m = deliver("Bo Li", "after completion")
	if m.ChatID == open || m.Edges.Chat.Status != enum.ChatWaiting {
		t.Fatalf("the message after completion went to chat %d (%s), want a new waiting chat", m.ChatID, m.Edges.Chat.Status)
	}

	_, err = o.Client().ContactIdentity.Delete().Where(contactidentity.ExternalID("15550002")).Exec(ctx)
	o.Must(err)
	statements := o.deliver(t, "x-gone", "15550002", "Bo Li", "wamid.gone", "I am back")
	if len(statements) < 2 || !strings.Contains(statements[0], "parley_applied") ||
		!strings.Contains(strings.Join(statements[1:], "\n"), "INSERT INTO contacts") {
		t.Fatalf("a removed sender's message: %d statements, want the open chat's, then a full look-up:\n%s",
			len(statements), strings.Join(statements, "\n"))
	}
	if i := identity(); i.ContactID == m.Edges.Chat.ContactID {
		t.Fatal("the removed sender's message went to the old contact")
	}
}

// R3 (PostgreSQL): the open chat's statement takes the events' append lock
// only once the delivery's and the message's rows are inserted, so that
// while it waits for a duplicate's insert in flight (another transaction
// holding the delivery's key) a read of the event log is not held up by
// it (see eventAppendLock: once an append holds the lock, it waits for
// nothing). When the other transaction rolls back, the message is applied.
func TestR3_TheOpenChatsStatementWaitsForADuplicateBeforeTheAppendLock(t *testing.T) {
	o := newOpenChatWorld(t)
	ctx := context.Background()
	o.deliver(t, "d0", "15550003", "Cy", "wamid.d0", "hello")

	other, err := o.DB.SQL.BeginTx(ctx, nil)
	o.Must(err)
	defer func() { _ = other.Rollback() }()
	_, err = other.ExecContext(ctx, `INSERT INTO inbound_deliveries (channel_id, provider_key, body, received_at, processed_at)
		VALUES ($1, 'held', '\x00', now(), now())`, o.ch.ID)
	o.Must(err)

	done := o.deliverLater("held", "15550003", "Cy", "wamid.held", "are you there?")
	o.awaitStatementWaiting(t, done, "the key held by another transaction")
	reader, err := o.DB.SQL.BeginTx(ctx, nil)
	o.Must(err)
	var free bool
	o.Must(reader.QueryRowContext(ctx, "SELECT pg_try_advisory_xact_lock("+desk.EventLockHash+", 0)").Scan(&free))
	o.Must(reader.Rollback())
	if !free {
		t.Fatal("the statement holds the events' append lock while it waits for another transaction's insert")
	}
	o.Must(other.Rollback())
	o.Must(<-done)
	if _, err := o.Client().Message.Query().Where(message.ProviderMessageID("wamid.held"), message.HasChatWith(chat.StatusNEQ(enum.ChatCompleted))).Only(ctx); err != nil {
		t.Fatalf("the message whose key was freed: %v", err)
	}
}

// awaitStatementWaiting waits until the open chat's statement waits for a
// lock (what: for what), failing if the delivery ends (done) first.
func (o *openChatWorld) awaitStatementWaiting(t *testing.T, done <-chan error, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		// (The statement's text is cut at track_activity_query_size: its
		// start names it.)
		o.Must(o.DB.SQL.QueryRowContext(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%s.applies THEN%'`).Scan(&waiting))
		if waiting == 1 {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the delivery ended (%v) without waiting for %s", err, what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the open chat's statement did not wait for %s within 10s", what)
		}
		time.Sleep(time.Millisecond) // polling another connection's lock state, bounded by the deadline
	}
}

// R8, R12 (PostgreSQL): a message whose statement waited for the chat's
// lock while another transaction offered the chat reaches the operator
// the chat was just offered to. The statement's snapshot, taken before
// the wait, misses that offer: it leaves the message to the use case's
// transaction, whose events statement reads the audience once the lock is
// held.
func TestR12_AMessageToAChatOfferedWhileItWaitedReachesTheNewOfferee(t *testing.T) {
	o := newOpenChatWorld(t)
	ctx := context.Background()
	o.deliver(t, "r0", "15550004", "Di", "wamid.r0", "hello")
	m0, err := o.Client().Message.Query().Where(message.ProviderMessageID("wamid.r0")).Only(ctx)
	o.Must(err)
	// Nobody holds an offer; then a routing offers the chat to B while
	// the message waits for the chat's lock.
	_, err = o.Client().ChatOffer.Delete().Where(chatoffer.ChatID(m0.ChatID)).Exec(ctx)
	o.Must(err)
	routing, err := o.DB.SQL.BeginTx(ctx, nil)
	o.Must(err)
	defer func() { _ = routing.Rollback() }()
	_, err = routing.ExecContext(ctx, "SELECT id FROM chats WHERE id = $1 FOR NO KEY UPDATE", m0.ChatID)
	o.Must(err)
	_, err = routing.ExecContext(ctx, `INSERT INTO chat_offers (status, created_at, chat_id, operator_id)
		VALUES ('OPEN', now(), $1, $2)`, m0.ChatID, o.ops[1].ID)
	o.Must(err)
	_, err = routing.ExecContext(ctx, "UPDATE chats SET offered_at = now() WHERE id = $1", m0.ChatID)
	o.Must(err)

	before, err := o.Desk.LastEventID(ctx)
	o.Must(err)
	done := o.deliverLater("r1", "15550004", "Di", "wamid.r1", "anyone?")
	o.awaitStatementWaiting(t, done, "the routing's lock on the chat")
	o.Must(routing.Commit())
	o.Must(<-done)
	m1, err := o.Client().Message.Query().Where(message.ProviderMessageID("wamid.r1")).Only(ctx)
	o.Must(err)
	events, err := o.Desk.EventsAfter(ctx, before, 100)
	o.Must(err)
	for _, e := range events {
		if e.Type == desk.EventMessageAdded && e.Payload["messageId"] == float64(m1.ID) {
			if !slices.Equal(e.Audience, []int{o.ops[1].ID}) {
				t.Fatalf("the message's event reaches %v, want B (%d), offered the chat while the message waited",
					e.Audience, o.ops[1].ID)
			}
			return
		}
	}
	t.Fatalf("no MESSAGE_ADDED event of message %d in %+v", m1.ID, events)
}

// R3, R12 (PostgreSQL): concurrent messages of one customer to their open
// chat, each one statement or (after waiting for another's lock) the
// transaction, are all stored, and their events follow the
// order of the messages: the message's id is drawn under the chat's lock
// and the event's before the lock is released, so a later message of the
// chat has both ids higher, and the sink gets every event the log holds.
func TestR3_ConcurrentMessagesToOneOpenChatKeepTheirOrderInTheLog(t *testing.T) {
	o := newOpenChatWorld(t)
	ctx := context.Background()
	o.deliver(t, "c0", "15550005", "Ed", "wamid.c0", "hello")
	before, err := o.Desk.LastEventID(ctx)
	o.Must(err)
	const senders, each = 8, 10
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("wamid.c%d-%d", g, i)
				if _, err := o.Desk.ApplyDelivery(ctx, o.ch, textDelivery(id, "15550005", "Ed", id, id), []byte(`{}`)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	statements, _, sunk := o.taken()
	applied := 0
	for _, s := range statements {
		if strings.Contains(s, "parley_applied") {
			applied++
		}
	}
	// (A message whose statement waited for another's lock on the chat
	// finds the chat changed and takes the transaction: both paths run.)
	if applied < senders*each {
		t.Fatalf("%d of %d messages tried the open chat's statement", applied, senders*each)
	}
	logged, err := o.Desk.EventsAfter(ctx, before, 1000)
	o.Must(err)
	added := addedMessages(logged)
	if len(added) != senders*each {
		t.Fatalf("%d MESSAGE_ADDED events in the log, want %d", len(added), senders*each)
	}
	if !slices.IsSorted(added) {
		t.Fatalf("the log's MESSAGE_ADDED events name messages out of their order: %v", added)
	}
	stored, err := o.Client().Message.Query().Where(message.ChannelID(o.ch.ID), message.ProviderMessageIDHasPrefix("wamid.c")).
		Count(ctx)
	o.Must(err)
	if stored != senders*each+1 {
		t.Fatalf("%d messages stored, want %d", stored, senders*each+1)
	}
	sunkIDs := make([]int, 0, len(sunk))
	for _, e := range sunk {
		sunkIDs = append(sunkIDs, e.ID)
	}
	slices.Sort(sunkIDs)
	loggedIDs := make([]int, 0, len(logged))
	for _, e := range logged {
		loggedIDs = append(loggedIDs, e.ID)
	}
	if !slices.Equal(sunkIDs, loggedIDs) {
		t.Fatalf("the sink got events %v, the log holds %v", sunkIDs, loggedIDs)
	}
}
