package desk_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/routingdecision"
	"github.com/parleydesk/parley/ent/schema/enum"
)

var (
	active   = enum.StatusActive
	inactive = enum.StatusInactive
)

// openOffers returns the operators with an open offer of the chat.
func openOffers(w *desktest.World, chatID int) map[int]bool {
	w.T.Helper()
	offers, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(chatID), chatoffer.StatusEQ(enum.OfferOpen)).All(context.Background())
	w.Must(err)
	out := map[int]bool{}
	for _, o := range offers {
		out[o.OperatorID] = true
	}
	return out
}

func decisions(w *desktest.World, chatID int) []*ent.RoutingDecision {
	w.T.Helper()
	ds, err := w.Client().RoutingDecision.Query().Where(routingdecision.HasChatWith()).All(context.Background())
	w.Must(err)
	var out []*ent.RoutingDecision
	for _, d := range ds {
		c, err := d.QueryChat().OnlyID(context.Background())
		w.Must(err)
		if c == chatID {
			out = append(out, d)
		}
	}
	return out
}

func TestR8_ToAllOffersEveryActiveMemberUnderLimitAndFirstAcceptWins(t *testing.T) {
	w := desktest.New(t)
	a, b := w.Operator(active), w.Operator(active)
	off := w.Operator(inactive)
	full := w.Operator(active, 0)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a, b, off, full})
	ch := w.Channel(q, enum.ProviderAPI)

	res := w.Inbound(ch, "c1", "hello")
	if !res.NewChat || res.Chat.Status != enum.ChatWaiting {
		t.Fatalf("new chat = %v status %s, want a new WAITING chat", res.NewChat, res.Chat.Status)
	}
	offers := openOffers(w, res.Chat.ID)
	if !offers[a.ID] || !offers[b.ID] || offers[off.ID] || offers[full.ID] || len(offers) != 2 {
		t.Fatalf("offers = %v, want exactly A and B", offers)
	}

	c, err := w.Desk.AcceptChat(w.As(b), res.Chat.ID)
	w.Must(err)
	if c.Status != enum.ChatInProgress || c.OwnerID == nil || *c.OwnerID != b.ID {
		t.Fatalf("accepted chat = %+v, want IN_PROGRESS owned by B", c)
	}
	if got := openOffers(w, res.Chat.ID); len(got) != 0 {
		t.Fatalf("open offers after accept = %v, want none (A lost the offer)", got)
	}
	_, err = w.Desk.AcceptChat(w.As(a), res.Chat.ID)
	w.WantCode(err, desk.CodeChatAlreadyTaken)

	ds := decisions(w, res.Chat.ID)
	if len(ds) != 1 {
		t.Fatalf("decisions = %d, want 1", len(ds))
	}
	d := ds[0]
	if d.Rule != enum.RuleToAll || d.Outcome != desk.OutcomeOffered || d.Trigger != desk.TriggerNewChat {
		t.Fatalf("decision = %+v", d)
	}
	why := map[int]string{}
	for _, c := range d.Candidates {
		why[c.OperatorID] = c.Excluded
	}
	if why[off.ID] != desk.ExcludedInactive || why[full.ID] != desk.ExcludedLimitExhausted || why[a.ID] != "" || why[b.ID] != "" {
		t.Fatalf("exclusions = %v", why)
	}
}

func TestR13_ConcurrentAcceptsHaveExactlyOneWinner(t *testing.T) {
	w := desktest.New(t)
	var ops []*ent.Operator
	for range 16 {
		ops = append(ops, w.Operator(active))
	}
	q := w.Queue(enum.RuleToAll, ops)
	ch := w.Channel(q, enum.ProviderAPI)
	res := w.Inbound(ch, "c1", "hello")

	var wg sync.WaitGroup
	codes := make([]desk.Code, len(ops))
	start := make(chan struct{})
	for i, op := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := w.Desk.AcceptChat(w.As(op), res.Chat.ID)
			codes[i] = desktest.Code(err)
		}()
	}
	close(start)
	wg.Wait()
	winners := 0
	for _, c := range codes {
		switch c {
		case "":
			winners++
		case desk.CodeChatAlreadyTaken:
		default:
			t.Fatalf("unexpected code %q", c)
		}
	}
	if winners != 1 {
		t.Fatalf("winners = %d, want exactly 1 (codes %v)", winners, codes)
	}
}

func TestR8_ToAvailableOffersLeastLoadedThenIdleLongestAndTimesOut(t *testing.T) {
	w := desktest.New(t)
	a, b, c := w.Operator(active), w.Operator(active), w.Operator(active)
	q := w.Queue(enum.RuleToAvailable, []*ent.Operator{a, b, c})
	ch := w.Channel(q, enum.ProviderAPI)
	ctx := w.Ctx()
	// B accepted most recently, C earlier, A never: A is idle longest.
	w.Must(w.Client().Operator.UpdateOneID(b.ID).SetLastAcceptedAt(w.Clock.Now().Add(-time.Minute)).Exec(ctx))
	w.Must(w.Client().Operator.UpdateOneID(c.ID).SetLastAcceptedAt(w.Clock.Now().Add(-time.Hour)).Exec(ctx))

	first := w.Inbound(ch, "c1", "one")
	if got := openOffers(w, first.Chat.ID); len(got) != 1 || !got[a.ID] {
		t.Fatalf("first chat offers = %v, want only A (never accepted)", got)
	}
	second := w.Inbound(ch, "c2", "two")
	if got := openOffers(w, second.Chat.ID); len(got) != 1 || !got[c.ID] {
		t.Fatalf("second chat offers = %v, want only C (A is loaded, C idle longer than B)", got)
	}

	// A lets the offer expire: the default action sets A INACTIVE and the
	// chat goes to the next member (B: fewest chats).
	w.Clock.Advance(5*time.Minute + time.Second)
	if n := w.RunJobs(); n == 0 {
		t.Fatal("no job ran at the accept timeout")
	}
	if got := w.OperatorNow(a.ID); got.Status != enum.StatusInactive || got.MissedOffers != 1 {
		t.Fatalf("A after timeout: status %s missed %d, want INACTIVE and 1", got.Status, got.MissedOffers)
	}
	if got := openOffers(w, first.Chat.ID); len(got) != 1 || !got[b.ID] {
		t.Fatalf("first chat offers after timeout = %v, want only B", got)
	}
}

func TestR8_AcceptTimeoutCountMissedKeepsOperatorActive(t *testing.T) {
	w := desktest.New(t)
	a, b := w.Operator(active), w.Operator(active)
	q := w.Queue(enum.RuleToAvailable, []*ent.Operator{a, b}, func(c *ent.QueueCreate) {
		c.SetAcceptTimeoutAction(enum.TimeoutCountMissed).SetAcceptTimeoutSeconds(30)
	})
	ch := w.Channel(q, enum.ProviderAPI)
	res := w.Inbound(ch, "c1", "hi")
	first := openOffers(w, res.Chat.ID)
	if len(first) != 1 {
		t.Fatalf("offers = %v, want one", first)
	}
	w.Clock.Advance(29 * time.Second)
	if n := w.RunJobs(); n != 0 {
		t.Fatalf("%d jobs ran before the timeout", n)
	}
	w.Clock.Advance(time.Second)
	w.RunJobs()
	var missed, other *ent.Operator = a, b
	if first[b.ID] {
		missed, other = b, a
	}
	if got := w.OperatorNow(missed.ID); got.Status != enum.StatusActive || got.MissedOffers != 1 {
		t.Fatalf("missed operator: status %s missed %d, want ACTIVE and 1", got.Status, got.MissedOffers)
	}
	if got := openOffers(w, res.Chat.ID); len(got) != 1 || !got[other.ID] {
		t.Fatalf("offers after timeout = %v, want the other operator", got)
	}
	// The other one misses it too: the chat comes back to the first.
	w.Clock.Advance(30 * time.Second)
	w.RunJobs()
	if got := openOffers(w, res.Chat.ID); len(got) != 1 || !got[missed.ID] {
		t.Fatalf("offers after the second timeout = %v, want the first operator again", got)
	}
}

// TestR10_NewChatsOfABusyQueueAreRoutedByItsRelease: on PostgreSQL a new
// chat that arrives while another transaction is routing a new chat of the
// same queue does not wait for that transaction's member locks; a release
// of the queue routes it right after commit, oldest first, each chat with its
// NEW_CHAT decision (offered or waiting) and event (R8, R9, R11).
func TestR10_NewChatsOfABusyQueueAreRoutedByItsRelease(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a queue is never busy (covered by the PostgreSQL run in .ci/run)")
	}
	// The reads of chats' offers ahead of their routing: a release of
	// pending chats needs none (they were never routed).
	var offerReads atomic.Int64
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if strings.Contains(statement, "FROM chat_offers WHERE chat_id IN") {
			offerReads.Add(1)
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	a, b := w.Operator(active, 1), w.Operator(active, 1)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a, b})
	ch := w.Channel(q, enum.ProviderAPI)
	ctx := context.Background()

	// Another transaction routing a new chat of q holds its mark.
	busy, err := w.DB.SQL.BeginTx(ctx, nil)
	w.Must(err)
	w.Must(desk.HoldRoutingMark(ctx, busy, q.ID))
	var chats []*ent.Chat
	for _, ext := range []string{"busy-1", "busy-2", "busy-3"} {
		res := w.Inbound(ch, ext, "hello")
		if !res.NewChat || !res.Chat.RoutePending {
			t.Fatalf("%s: new=%v pending=%v, want a new chat left to the release", ext, res.NewChat, res.Chat.RoutePending)
		}
		chats = append(chats, res.Chat)
	}
	w.Inbound(ch, "busy-1", "are you there?") // a message to a chat still pending
	for _, c := range chats {
		if got := openOffers(w, c.ID); len(got) != 0 || len(decisions(w, c.ID)) != 0 {
			t.Fatalf("chat %d routed while its queue was busy: offers %v", c.ID, got)
		}
	}
	w.Must(busy.Rollback())

	if n, err := w.Client().Job.Query().Count(ctx); err != nil || n != 0 {
		t.Fatalf("jobs = %d (%v): a pending chat needs no job row", n, err)
	}
	offerReads.Store(0)
	if w.RunJobs() == 0 {
		t.Fatal("no release ran")
	}
	if n := offerReads.Load(); n != 0 {
		t.Fatalf("the release of pending chats read their offers %d times, want none", n)
	}
	// TO_ALL with a limit of 1 each: the oldest chat is offered to both,
	// which fills them; the two others wait.
	if got := openOffers(w, chats[0].ID); !got[a.ID] || !got[b.ID] || len(got) != 2 {
		t.Fatalf("oldest chat offers = %v, want A and B", got)
	}
	for i, c := range chats {
		ds := decisions(w, c.ID)
		want := outcomeFor(i == 0)
		if len(ds) != 1 || ds[0].Trigger != desk.TriggerNewChat || ds[0].Outcome != want {
			t.Fatalf("chat %d decisions = %+v, want one NEW_CHAT %s", i, ds, want)
		}
		if w.Chat(c.ID).RoutePending {
			t.Fatalf("chat %d still pending after its release", i)
		}
	}
	waiting, err := w.Client().Event.Query().Where(event.TypeEQ(desk.EventChatWaiting)).All(ctx)
	w.Must(err)
	if len(waiting) != 2 || *waiting[0].ChatID != chats[1].ID || *waiting[1].ChatID != chats[2].ID {
		t.Fatalf("CHAT_WAITING events = %d, want one for each of the two newer chats, in order", len(waiting))
	}
	atRest(t, w, w.Invariants(), "after the release")

	// Capacity frees: the next waiting chat is offered (R9). Its release
	// reads the offers of the chats routed before (the count above sees
	// such a read).
	_, err = w.Desk.AcceptChat(w.As(a), chats[0].ID)
	w.Must(err)
	offerReads.Store(0)
	w.RunJobs()
	if got := openOffers(w, chats[1].ID); !got[b.ID] || len(got) != 1 {
		t.Fatalf("second chat offers = %v, want B (A is full)", got)
	}
	if offerReads.Load() == 0 {
		t.Fatal("the release of chats routed before read no offers: the count above counts nothing")
	}
}

// TestR10_APendingReleaseTakesTwoRoundTrips: the release of a busy queue's
// pending chats takes the mark, locks the members, reads the chats and
// draws their offer ids in one message, and sends everything it writes with
// its commit, so that the mark is free again soon. Its offers are those its
// CHAT_OFFERED events name, in the waiting order (oldest first, then newest
// first), and a round-robin turn it moved is stored for the next chat (R8,
// R9, R11).
func TestR10_APendingReleaseTakesTwoRoundTrips(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a queue is never busy (covered by the PostgreSQL run in .ci/run)")
	}
	sent := &txMessages{}
	w := desktest.NewOn(t, sent.open(t, nil), desktest.NewClock())
	ctx := context.Background()
	a, b := w.Operator(active, 10), w.Operator(active, 10)
	// pend leaves three new chats of q pending, a second apart, and
	// releases them.
	pend := func(q *ent.Queue, prefix string) []int {
		t.Helper()
		var chats []int
		for _, c := range pendNewChats(w, q, w.Channel(q, enum.ProviderAPI), prefix, 3) {
			chats = append(chats, c.ID)
		}
		sent.reset()
		if w.RunJobs() == 0 {
			t.Fatal("no release ran")
		}
		if n := sent.of("parley_offer_ids"); n != 2 {
			t.Fatalf("the release sent %d messages, want 2: the lock and read, then the commit", n)
		}
		for i, c := range chats {
			if w.Chat(c).RoutePending {
				t.Fatalf("chat %d still pending after its release", i)
			}
			if ds := decisions(w, c); len(ds) != 1 || ds[0].Trigger != desk.TriggerNewChat {
				t.Fatalf("chat %d decisions = %+v, want one NEW_CHAT", i, ds)
			}
		}
		return chats
	}
	// offeredTo checks that the CHAT_OFFERED events of chats, in event
	// order, offer chat i to want[i], naming the offer stored for it.
	offeredTo := func(chats []int, want ...int) {
		t.Helper()
		events, err := w.Client().Event.Query().Where(event.TypeEQ(desk.EventChatOffered), event.ChatIDIn(chats...)).
			Order(ent.Asc(event.FieldID)).All(ctx)
		w.Must(err)
		if len(events) != len(want) {
			t.Fatalf("%d CHAT_OFFERED events of chats %v, want %d", len(events), chats, len(want))
		}
		for i, e := range events {
			o, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(chats[i])).Only(ctx)
			w.Must(err)
			if *e.ChatID != chats[i] || *e.OperatorID != want[i] || o.OperatorID != want[i] || e.Payload["offerId"] != float64(o.ID) {
				t.Fatalf("event %d: chat %d to %d naming offer %v; want chat %d to %d naming its offer %d (to %d)",
					i, *e.ChatID, *e.OperatorID, e.Payload["offerId"], chats[i], want[i], o.ID, o.OperatorID)
			}
		}
	}

	// Round robin, oldest first: A, B, A; then B's turn.
	rr := w.Queue(enum.RuleRoundRobin, []*ent.Operator{a, b})
	chats := pend(rr, "rr")
	offeredTo(chats, a.ID, b.ID, a.ID)
	next := w.Inbound(w.Channel(rr, enum.ProviderAPI), "rr-next", "hello")
	if got := openOffers(w, next.Chat.ID); len(got) != 1 || !got[b.ID] {
		t.Fatalf("the next chat's offers = %v, want B's turn", got)
	}

	// Newest first, one place left: the newest chat takes it.
	c := w.Operator(active, 1)
	newest := w.Queue(enum.RuleToAvailable, []*ent.Operator{c}, func(qc *ent.QueueCreate) { qc.SetWaitingOrder(enum.NewestFirst) })
	chats = pend(newest, "newest")
	offeredTo(chats[2:], c.ID)
	for _, id := range chats[:2] {
		if got := openOffers(w, id); len(got) != 0 {
			t.Fatalf("an older chat was offered to %v, want it waiting", got)
		}
	}

	// TO_ALL: every member, with the ids drawn for them.
	all := w.Queue(enum.RuleToAll, []*ent.Operator{a, b})
	for _, id := range pend(all, "all") {
		if got := openOffers(w, id); len(got) != 2 || !got[a.ID] || !got[b.ID] {
			t.Fatalf("chat %d offers = %v, want A and B", id, got)
		}
	}
	atRest(t, w, w.Invariants(), "after the releases")
}

// TestR9_ANewestFirstReleaseOfMoreThanABatchStartsFromTheNewest: a
// release of more pending chats than one batch (200) in a NEWEST_FIRST
// queue offers the one place left to the newest chat, not to the newest of
// the oldest batch, and the next release decides the rest (R9, R11).
func TestR9_ANewestFirstReleaseOfMoreThanABatchStartsFromTheNewest(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a queue is never busy (covered by the PostgreSQL run in .ci/run)")
	}
	w := desktest.New(t)
	c := w.Operator(active, 1)
	q := w.Queue(enum.RuleToAvailable, []*ent.Operator{c}, func(qc *ent.QueueCreate) { qc.SetWaitingOrder(enum.NewestFirst) })
	var chats []int
	for _, c := range pendNewChats(w, q, w.Channel(q, enum.ProviderAPI), "many", 201) {
		chats = append(chats, c.ID)
	}
	// Releases run until none is left (a release may ask for another):
	// a bounded number of rounds, so a release that kept asking fails.
	for round := 0; w.RunJobs() > 0; round++ {
		if round == 50 {
			t.Fatal("releases still ran after 50 rounds")
		}
	}
	for i, id := range chats {
		got := openOffers(w, id)
		if want := i == len(chats)-1; got[c.ID] != want || len(got) > 1 {
			t.Fatalf("chat %d of %d: offers %v, want an offer to C only for the newest", i, len(chats), got)
		}
		if w.Chat(id).RoutePending {
			t.Fatalf("chat %d still pending", i)
		}
	}
	if ds := decisions(w, chats[0]); len(ds) != 1 || ds[0].Trigger != desk.TriggerNewChat || ds[0].Outcome != desk.OutcomeWaiting {
		t.Fatalf("the oldest chat's decisions = %+v, want one NEW_CHAT WAITING", ds)
	}
	atRest(t, w, w.Invariants(), "after the releases")
}

// TestR10_AReleaseRoutesTheChatsLeftPendingWhileItRan: a new chat that
// finds its queue busy with a release, and asks for another release after
// its commit, is routed by that release when it is still running: one
// more read in the same transaction, not a transaction of its own after it.
func TestR10_AReleaseRoutesTheChatsLeftPendingWhileItRan(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a queue is never busy (covered by the PostgreSQL run in .ci/run)")
	}
	sent := &txMessages{}
	// during runs once, in the release's transaction, when it writes the
	// first routing it holds for the commit: after it read the pending
	// chats, before it commits.
	var during func()
	var releaseTx atomic.Value
	db := sent.open(t, func(ctx context.Context, statement string) {
		tx, _, _ := strings.Cut(statement, ").")
		if strings.Contains(statement, "parley_offer_ids") && releaseTx.Load() == nil {
			releaseTx.Store(tx)
		} else if store.IsAtCommit(ctx) && releaseTx.Load() == tx && during != nil {
			f := during
			during = nil
			f()
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	a := w.Operator(active, 10)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a})
	ch := w.Channel(q, enum.ProviderAPI)
	first := pendNewChats(w, q, ch, "first", 1)[0]
	var late *desk.IngestResult
	// An ingest begun inside the release's transaction, on the same
	// goroutine: it takes one of the desk's transaction slots, the release
	// holding its own.
	during = func() { late = w.Inbound(ch, "late", "hello") }
	sent.reset()
	if w.RunJobs() == 0 {
		t.Fatal("no release ran")
	}
	if late == nil || !late.Chat.RoutePending {
		t.Fatalf("the chat written during the release: %+v, want one left pending (the release holds the mark)", late)
	}
	for _, c := range []*ent.Chat{first, late.Chat} {
		if got := openOffers(w, c.ID); len(got) != 1 || !got[a.ID] || w.Chat(c.ID).RoutePending {
			t.Fatalf("chat %d: offers %v, pending %v; want it offered to A", c.ID, got, w.Chat(c.ID).RoutePending)
		}
	}
	if n := sent.of("parley_offer_ids"); n != 3 {
		t.Fatalf("the release sent %d messages (or more than one release ran), want 3: the lock and read, the read of the late chat, the commit", n)
	}
	atRest(t, w, w.Invariants(), "after the release")
}

// pendNewChats writes n new chats of ch's queue q, a second apart, while
// another transaction holds the queue's routing mark, so that each is left
// pending to a release (PostgreSQL), and returns them.
func pendNewChats(w *desktest.World, q *ent.Queue, ch *ent.Channel, prefix string, n int) []*ent.Chat {
	w.T.Helper()
	ctx := context.Background()
	busy, err := w.DB.SQL.BeginTx(ctx, nil)
	w.Must(err)
	defer func() { w.Must(busy.Rollback()) }()
	w.Must(desk.HoldRoutingMark(ctx, busy, q.ID))
	var chats []*ent.Chat
	for i := range n {
		res := w.Inbound(ch, fmt.Sprintf("%s-%d", prefix, i), "hello")
		if !res.NewChat || !res.Chat.RoutePending {
			w.T.Fatalf("%s-%d: new=%v pending=%v, want a new chat left to the release", prefix, i, res.NewChat, res.Chat.RoutePending)
		}
		chats = append(chats, res.Chat)
		w.Clock.Advance(time.Second)
	}
	return chats
}

// txMessages counts the messages each transaction sends (PostgreSQL): the
// statements ent's debug lines show, each named by its transaction, but
// the writes held for the commit, which travel with it.
type txMessages struct {
	mu   sync.Mutex
	sent map[string]int
	// texts are the statements of each transaction.
	texts map[string][]string
}

// open opens the test database with the counting hook, which then calls
// also (when not nil) with each statement.
func (m *txMessages) open(t *testing.T, also func(ctx context.Context, statement string)) *store.DB {
	return storetest.Open(t).WithQueryHook(func(ctx context.Context, statement string) {
		if also != nil {
			also(ctx, statement)
		}
		tx, rest, ok := strings.Cut(statement, ").")
		if !ok || store.IsAtCommit(ctx) || !(strings.HasPrefix(rest, "Query") || strings.HasPrefix(rest, "Exec")) {
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.sent == nil {
			m.sent, m.texts = map[string]int{}, map[string][]string{}
		}
		m.sent[tx]++
		m.texts[tx] = append(m.texts[tx], rest)
	})
}

func (m *txMessages) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent, m.texts = nil, nil
}

// of returns how many messages the one transaction that sent a statement
// containing marker sent (-1: no such transaction, or several).
func (m *txMessages) of(marker string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := -1
	for tx, texts := range m.texts {
		if slices.ContainsFunc(texts, func(s string) bool { return strings.Contains(s, marker) }) {
			if n != -1 {
				return -1
			}
			n = m.sent[tx]
		}
	}
	return n
}

// A process that stops after committing a pending chat and before its
// release worker runs leaves the chat unrouted: another instance's scheduler
// finds it once it is older than the grace the worker has, and routes it.
func TestR10_PendingChatsOfAStoppedInstanceAreRoutedByAnother(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a queue is never busy (covered by the PostgreSQL run in .ci/run)")
	}
	w1 := desktest.New(t)
	a := w1.Operator(active, 2)
	q := w1.Queue(enum.RuleToAll, []*ent.Operator{a})
	ch := w1.Channel(q, enum.ProviderAPI)
	ctx := context.Background()
	busy, err := w1.DB.SQL.BeginTx(ctx, nil)
	w1.Must(err)
	w1.Must(desk.HoldRoutingMark(ctx, busy, q.ID))
	res := w1.Inbound(ch, "orphan", "hello")
	w1.Must(busy.Rollback())
	if !res.Chat.RoutePending {
		t.Fatal("the new chat was routed although its queue was busy")
	}
	// w1 stops here: its worker never runs. w2 leaves the chat to it for
	// the grace period, then routes it.
	w2 := desktest.NewOn(t, w1.DB, w1.Clock)
	w2.RunJobs()
	if got := openOffers(w2, res.Chat.ID); len(got) != 0 {
		t.Fatalf("offers = %v within the grace period, want none yet", got)
	}
	w1.Clock.Advance(10 * time.Second)
	w2.RunJobs()
	if got := openOffers(w2, res.Chat.ID); !got[a.ID] || len(got) != 1 {
		t.Fatalf("offers = %v after the grace period, want A", got)
	}
	if ds := decisions(w2, res.Chat.ID); len(ds) != 1 || ds[0].Trigger != desk.TriggerNewChat {
		t.Fatalf("decisions = %+v, want one NEW_CHAT", ds)
	}
	if w2.Chat(res.Chat.ID).RoutePending {
		t.Fatal("chat still pending after the sweep")
	}
	atRest(t, w2, w2.Invariants(), "after the sweep")
}

// TestR8_ARoutingReadsTheTurnItWaitedFor: a routing that waits for a
// member's lock held by another transaction of the queue (the offer
// timeout of one of its chats, say) reads the queue's round-robin turn as
// that transaction left it, once it holds the lock, so that two routings
// in a row do not offer to the same member out of turn (PostgreSQL: SQLite
// has one writer, so nothing waits there).
func TestR8_ARoutingReadsTheTurnItWaitedFor(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL only: SQLite has one writer, so a routing never waits for another's locks (covered by the PostgreSQL run in .ci/run)")
	}
	w := desktest.New(t)
	a, b, c := w.Operator(active, 5), w.Operator(active, 5), w.Operator(active, 5)
	q := w.Queue(enum.RuleRoundRobin, []*ent.Operator{a, b, c})
	ch := w.Channel(q, enum.ProviderAPI)
	ctx := context.Background()

	// Another transaction routes a chat of q: it holds A's row and gives
	// A the turn.
	other, err := w.DB.SQL.BeginTx(ctx, nil)
	w.Must(err)
	defer func() { _ = other.Rollback() }() // a no-op once committed below
	_, err = other.ExecContext(ctx, "SELECT id FROM operators WHERE id = $1 FOR NO KEY UPDATE", a.ID)
	w.Must(err)
	_, err = other.ExecContext(ctx, "UPDATE queues SET rr_last_operator_id = $1 WHERE id = $2", a.ID, q.ID)
	w.Must(err)
	var xid string
	w.Must(other.QueryRowContext(ctx, `SELECT transactionid::text FROM pg_locks
		WHERE locktype = 'transactionid' AND pid = pg_backend_pid() AND granted`).Scan(&xid))

	type result struct {
		res *desk.IngestResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: "turn"},
			Text: "hello"})
		done <- result{res, err}
	}()
	// The new chat's routing waits for A's lock: for the other transaction.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		w.Must(w.DB.SQL.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks
			WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted`, xid).Scan(&waiting))
		if waiting > 0 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("the ingest ended (%v) without waiting for the other routing's lock", r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the ingest did not wait for the other routing's lock within 10s")
		}
		time.Sleep(time.Millisecond) // polling another connection's lock state, bounded by the deadline
	}
	w.Must(other.Commit())
	r := <-done
	w.Must(r.err)
	if got := openOffers(w, r.res.Chat.ID); !got[b.ID] || len(got) != 1 {
		t.Fatalf("offers = %v, want B only: A had the turn (A %d, B %d, C %d)", got, a.ID, b.ID, c.ID)
	}
	atRest(t, w, w.Invariants(), "after the routing")
}

// outcomeFor is the decision outcome of a chat that was or was not offered.
func outcomeFor(offered bool) string {
	if offered {
		return desk.OutcomeOffered
	}
	return desk.OutcomeWaiting
}

// TestR9_AReleaseOffersItsChatsTogether: a release that routes several
// waiting chats inserts their offers with one statement, once every chat is
// decided; each chat's CHAT_OFFERED event still follows its routing, in the
// release's order, naming the offer stored for it; and the round-robin turn
// the routings moved is stored for the next chat (R8, R9, R11).
func TestR9_AReleaseOffersItsChatsTogether(t *testing.T) {
	var offerInserts atomic.Int64
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if strings.Contains(statement, `INSERT INTO "chat_offers"`) || strings.Contains(statement, "INSERT INTO `chat_offers`") {
			offerInserts.Add(1)
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx := context.Background()
	a, b := w.Operator(inactive, 5), w.Operator(inactive, 5)
	q := w.Queue(enum.RuleRoundRobin, []*ent.Operator{a, b})
	ch := w.Channel(q, enum.ProviderAPI)
	var chats []int
	for _, who := range []string{"rel-1", "rel-2", "rel-3"} {
		chats = append(chats, w.Inbound(ch, who, "hello").Chat.ID)
		w.Clock.Advance(time.Second)
	}
	w.RunJobs()
	for _, op := range []*ent.Operator{a, b} {
		_, err := w.Desk.SetMyStatus(w.As(op), active)
		w.Must(err)
	}
	offerInserts.Store(0)
	if w.RunJobs() == 0 {
		t.Fatal("no release ran")
	}
	if n := offerInserts.Load(); n != 1 {
		t.Fatalf("the release sent %d offer inserts for 3 chats, want 1", n)
	}
	// Oldest first, in turns: A, B, A.
	offered, err := w.Client().Event.Query().Where(event.TypeEQ(desk.EventChatOffered)).Order(ent.Asc(event.FieldID)).All(ctx)
	w.Must(err)
	if len(offered) != len(chats) {
		t.Fatalf("%d CHAT_OFFERED events, want %d", len(offered), len(chats))
	}
	for i, e := range offered {
		want := []int{a.ID, b.ID}[i%2]
		o, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(chats[i])).Only(ctx)
		w.Must(err)
		if *e.ChatID != chats[i] || *e.OperatorID != want || o.OperatorID != want || e.Payload["offerId"] != float64(o.ID) {
			t.Fatalf("event %d: chat %d to %d naming offer %v; want chat %d to %d naming its offer %d (to %d)",
				i, *e.ChatID, *e.OperatorID, e.Payload["offerId"], chats[i], want, o.ID, o.OperatorID)
		}
	}
	atRest(t, w, w.Invariants(), "after the release")
	// A had the last turn: the next chat is B's.
	next := w.Inbound(ch, "rel-4", "hello")
	if got := openOffers(w, next.Chat.ID); len(got) != 1 || !got[b.ID] {
		t.Fatalf("the next chat's offers = %v, want B's turn", got)
	}
}
