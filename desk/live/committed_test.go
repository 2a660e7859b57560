package live_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// countingLog counts the pump's reads of the log.
type countingLog struct {
	*memLog
	reads atomic.Int32
}

func (l *countingLog) ReadEvents(ctx context.Context, after, limit int) ([]*ent.Event, error) {
	l.reads.Add(1)
	return l.memLog.ReadEvents(ctx, after, limit)
}

func startCounting(t *testing.T, log *countingLog) (*live.Hub, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := live.New(log, live.Options{Poll: time.Hour})
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return h, cancel
}

// operatorOnePanel starts a hub over log with operator 1's panel
// subscribed; stop ends both.
func operatorOnePanel(t *testing.T, log *countingLog) (*live.Hub, *live.Stream, func()) {
	t.Helper()
	h, stopHub := startCounting(t, log)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.Subscribe(ctx, &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		cancel()
		stopHub()
		t.Fatal(err)
	}
	return h, st, func() { cancel(); stopHub() }
}

func msg(id int, audience ...int) *ent.Event {
	return &ent.Event{ID: id, Type: desk.EventMessageAdded, Audience: audience}
}

// A local commit's events that follow what the hub has dispatched reach the
// subscribers as the committing transaction hands them over: the log is not
// read (these events are not even in the test's log).
func TestHub_CommittedEventsFollowingTheCursorAreDispatchedWithoutReadingTheLog(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &countingLog{memLog: &memLog{}}
	h, st, stop := operatorOnePanel(t, log)
	defer stop()
	h.Committed([]*ent.Event{msg(1, 1), msg(2, 2), msg(3, 1)})
	h.Committed([]*ent.Event{msg(4, 1)})
	for _, want := range []int{1, 3, 4} {
		if e := receive(t, st); e.ID != want {
			t.Fatalf("got event %d, want %d", e.ID, want)
		}
	}
	if h.Cursor() != 4 {
		t.Fatalf("cursor = %d, want 4", h.Cursor())
	}
	if n := log.reads.Load(); n != 0 {
		t.Fatalf("the pump read the log %d times for events handed over in order", n)
	}
	// Handed over again (a late report): nothing is delivered twice.
	h.Committed([]*ent.Event{msg(3, 1), msg(4, 1)})
	h.Committed([]*ent.Event{msg(5, 1)})
	if e := receive(t, st); e.ID != 5 {
		t.Fatalf("got event %d after a repeated report, want 5", e.ID)
	}
}

// When a local commit's events do not follow the cursor (another instance's
// events, or a concurrent commit reporting later, come between), the pump
// reads the log: every event arrives once, in id order.
func TestHub_CommittedEventsAfterAGapAreReadFromTheLogInOrder(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &countingLog{memLog: &memLog{}}
	h, st, stop := operatorOnePanel(t, log)
	defer stop()
	other := log.append(1) // committed elsewhere: only in the log
	mine := log.append(1)
	h.Committed([]*ent.Event{msg(mine, 1)})
	for _, want := range []int{other, mine} {
		if e := receive(t, st); e.ID != want {
			t.Fatalf("got event %d, want %d", e.ID, want)
		}
	}
	if log.reads.Load() == 0 {
		t.Fatal("the log was not read although an event came between")
	}
	// The earlier commit reports last: it was read from the log already.
	h.Committed([]*ent.Event{msg(other, 1)})
	next := log.append(1)
	h.Committed([]*ent.Event{msg(next, 1)})
	if e := receive(t, st); e.ID != next {
		t.Fatalf("got event %d, want %d (no duplicate of %d)", e.ID, next, other)
	}
}
