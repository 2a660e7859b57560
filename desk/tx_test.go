package desk_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// A use case runs to its end once begun: its caller's context, cancelled
// inside the transaction (a provider or an operator hanging up, a shutdown
// past its grace), neither fails nor rolls it back. One cancelled before it
// begins stops it with nothing written.
func TestUseCaseIsNotCancelledHalfway(t *testing.T) {
	// The hook cancels the caller's context at the use case's first
	// statement inside its transaction, before the statement is sent.
	var cancelled atomic.Pointer[context.CancelFunc]
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if strings.HasPrefix(statement, "Tx(") && !strings.HasSuffix(statement, "committed") {
			if stop := cancelled.Swap(nil); stop != nil {
				(*stop)()
			}
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	op := w.Operator(active, 5)
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{op}), enum.ProviderAPI)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	cancelled.Store(&stop)
	res, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID,
		Identity: desk.InboundIdentity{ExternalID: "hangs-up"}, Text: "hello"})
	if ctx.Err() == nil {
		t.Fatal("the hook did not cancel the context: the test tests nothing")
	}
	if err != nil {
		t.Fatalf("ingest with its context cancelled halfway: %v, want it committed", err)
	}
	// Its last writes (the offer, the chat's offer time) went with the
	// commit.
	if got := openOffers(w, res.Chat.ID); !got[op.ID] || len(got) != 1 {
		t.Fatalf("offers = %v, want the operator's", got)
	}
	if w.Chat(res.Chat.ID).OfferedAt == nil {
		t.Fatal("the chat has no offer time")
	}

	// Cancelled before it begins: refused, nothing written.
	_, err = w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID,
		Identity: desk.InboundIdentity{ExternalID: "hangs-up"}, Text: "too late"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("ingest with a cancelled context: %v, want context.Canceled", err)
	}
	if n, err := w.Client().Message.Query().Where(message.ChatID(res.Chat.ID)).Count(context.Background()); err != nil || n != 1 {
		t.Fatalf("messages = %d (%v), want the first one only", n, err)
	}
}

// txIDOf is the id ent's debug driver gives a transaction in the statements
// it logs ("driver.Tx(ID): started", "Tx(ID): committed", …).
func txIDOf(statement string) string {
	_, rest, _ := strings.Cut(statement, "Tx(")
	id, _, _ := strings.Cut(rest, ")")
	return id
}

// Use cases run at most Config.Transactions transactions at once on
// PostgreSQL, and one at a time on SQLite; those beyond wait their turn
// before they begin. Sixteen callers ingest at once.
func TestUseCasesRunAtMostTheirTransactionSlotsAtOnce(t *testing.T) {
	const slots = 2
	var (
		mu       sync.Mutex
		inFlight = map[string]bool{}
		most     int
	)
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasSuffix(statement, ": started"):
			inFlight[txIDOf(statement)] = true
			most = max(most, len(inFlight))
		case strings.HasSuffix(statement, ": committed"), strings.HasSuffix(statement, ": rollbacked"):
			delete(inFlight, txIDOf(statement))
		}
	})
	w := desktest.NewWith(t, db, desktest.NewClock(),
		desk.WithConfig(desk.Config{PasswordCost: bcrypt.MinCost, Transactions: slots}))
	want := slots
	if !db.Postgres() {
		want = 1
	}
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active, 100)}), enum.ProviderAPI)

	const callers, each = 16, 5
	errs := make(chan error, callers*each)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for m := range each {
				_, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID,
					Identity: desk.InboundIdentity{ExternalID: fmt.Sprintf("caller-%d", c)}, Text: fmt.Sprintf("message %d", m)})
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("ingest: %v", err)
		}
	}
	if n, err := w.Client().Message.Query().Count(context.Background()); err != nil || n != callers*each {
		t.Fatalf("messages = %d (%v), want %d", n, err, callers*each)
	}
	if most > want {
		t.Fatalf("%d transactions ran at once, want at most %d", most, want)
	}
}

// oneSlotWorld is a world on PostgreSQL whose desk has one transaction
// slot, over a database whose transactions the holder can hold.
func oneSlotWorld(t *testing.T) (*desktest.World, *storetest.Holder) {
	db, hd := storetest.WithHolder(storetest.Open(t))
	return desktest.NewWith(t, db, desktest.NewClock(),
		desk.WithConfig(desk.Config{PasswordCost: bcrypt.MinCost, Transactions: 1})), hd
}

type holdingKey struct{}

// holdTheSlot ingests in on another goroutine and returns once its
// transaction holds the only slot (oneSlotWorld); release lets it end and
// returns its error.
func holdTheSlot(t *testing.T, w *desktest.World, hd *storetest.Holder, in desk.Inbound) (release func() error) {
	t.Helper()
	h := hd.Arm(t, func(ctx context.Context) bool { return ctx.Value(holdingKey{}) != nil })
	held := make(chan error, 1)
	go func() {
		_, err := w.Desk.Ingest(context.WithValue(context.Background(), holdingKey{}, true), in)
		held <- err
	}()
	select {
	case <-h.Held():
	case err := <-held:
		t.Fatalf("the holding ingest ended (%v) without its transaction being held", err)
	}
	return sync.OnceValue(func() error {
		h.Release()
		return <-held
	})
}

// The wait for a transaction slot, like the wait for a connection, ends with
// the caller's context: a caller that gives up while every slot is taken
// gets its context's error, and nothing of its use case is written.
func TestTheWaitForATransactionSlotEndsWithTheCaller(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite's writers queue on its write lock")
	}
	w, hd := oneSlotWorld(t)
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active, 100)}), enum.ProviderAPI)
	inbound := func(text string) desk.Inbound {
		return desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: "waits"}, Text: text}
	}
	release := holdTheSlot(t, w, hd, inbound("first"))
	defer release()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := w.Desk.Ingest(ctx, inbound("gives up")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ingest while the only slot is taken: %v, want its context's deadline", err)
	}
	if err := release(); err != nil {
		t.Fatalf("the first ingest: %v", err)
	}
	if _, err := w.Desk.Ingest(context.Background(), inbound("after")); err != nil {
		t.Fatalf("ingest once the slot is free: %v", err)
	}
	var texts []string
	for _, m := range w.Client().Message.Query().Order(ent.Asc(message.FieldID)).AllX(context.Background()) {
		texts = append(texts, m.Text)
	}
	if strings.Join(texts, ",") != "first,after" {
		t.Fatalf("messages %q, want the first and the one after", texts)
	}
}

// A release of pending chats does not queue behind the webhooks for a
// transaction slot: it has one of its own, so a chat already acknowledged
// is offered while every other slot is taken.
func TestAReleaseRunsWhileEveryOtherTransactionSlotIsTaken(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite has no releases, its queues are never busy")
	}
	w, hd := oneSlotWorld(t)
	a := w.Operator(active, 100)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a})
	ch := w.Channel(q, enum.ProviderAPI)
	pending := pendNewChats(w, q, ch, "pending", 1)[0]
	release := holdTheSlot(t, w, hd, desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: "holds"}, Text: "hello"})
	defer release()

	ran := make(chan int, 1)
	go func() { ran <- w.Desk.RunWantedReleases(context.Background()) }()
	var n int
	select {
	case n = <-ran:
	case <-time.After(10 * time.Second):
		release()
		<-ran
		t.Fatal("the release did not end while the only slot was taken: it waited for it")
	}
	offers := openOffers(w, pending.ID)
	if err := release(); err != nil {
		t.Fatalf("the holding ingest: %v", err)
	}
	if n != 1 || len(offers) != 1 || !offers[a.ID] {
		t.Fatalf("%d releases ran while the slot was taken, and the pending chat's offers were %v; want one, to A", n, offers)
	}
	if w.Chat(pending.ID).RoutePending {
		t.Fatal("the chat is still pending after its release")
	}
}
