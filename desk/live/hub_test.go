package live_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// memLog is an event log in memory, appended in id order like the real one.
type memLog struct {
	mu     sync.Mutex
	events []*ent.Event
	pruned int
	reads  int // reads of the pump and of resumptions
	// inFlight are appended events no read sees yet (an append that has
	// drawn its id and not committed).
	inFlight map[int]bool
}

func (l *memLog) append(audience ...int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := len(l.events) + 1
	l.events = append(l.events, &ent.Event{ID: id, Type: desk.EventMessageAdded, Audience: audience})
	return id
}

func (l *memLog) EventsThrough(_ context.Context, after, through, limit int) ([]*ent.Event, error) {
	return l.read(after, through, limit, true)
}

func (l *memLog) ReadEvents(_ context.Context, after, limit int) ([]*ent.Event, error) {
	return l.read(after, math.MaxInt, limit, false)
}

func (l *memLog) read(after, through, limit int, checkRetention bool) ([]*ent.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads++
	if checkRetention && after < l.pruned {
		return nil, desk.Fail(desk.CodeEventsExpired, "expired")
	}
	var out []*ent.Event
	for _, e := range l.events {
		if e.ID > after && e.ID <= through && !l.inFlight[e.ID] && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

func (l *memLog) LastEventID(context.Context) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events), nil
}

func start(t *testing.T, log *memLog, opt live.Options) (*live.Hub, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if opt.Poll == 0 {
		opt.Poll = time.Hour // tests wake the pump explicitly
	}
	h := live.New(log, opt)
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return h, cancel
}

func receive(t *testing.T, st *live.Stream) *ent.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, ok := st.Next(ctx)
	if !ok {
		if ctx.Err() != nil {
			t.Fatal("no event within 5s")
		}
		t.Fatalf("stream ended: %v", st.Err())
	}
	return e
}

func TestHub_DeliversOnlyTheAudienceInOrderAndResumesWithoutGapOrDuplicate(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	log.append(1)
	h, stop := start(t, log, live.Options{})
	defer stop()
	actor := &desk.Actor{OperatorID: 1}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.Subscribe(ctx, actor, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mine := []int{log.append(1), log.append(2, 1)}
	log.append(2) // not for operator 1
	h.Wake()
	for _, want := range mine {
		if got := receive(t, st).ID; got != want {
			t.Fatalf("got event %d, want %d", got, want)
		}
	}
	cancel()
	for range st.C { // ends when the client goes away
	}

	// While away, events accumulate; the pump dispatches some of them
	// before the resumption and some after: the seam must hold.
	var want []int
	for range 5 {
		want = append(want, log.append(1))
	}
	h.Wake()
	waitCursor(t, h, want[len(want)-1])
	after := mine[len(mine)-1]
	st2, err := h.Subscribe(context.Background(), actor, live.Scope{Operator: 1}, &after, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		want = append(want, log.append(1))
	}
	h.Wake()
	for _, w := range want {
		if got := receive(t, st2).ID; got != w {
			t.Fatalf("resumed: got %d, want %d", got, w)
		}
	}
	stop()
	for range st2.C {
	}
	if err := st2.Err(); err != nil {
		t.Fatalf("shutdown ended the stream with %v, want nil", err)
	}
}

// event returns the logged event id (what a local commit reports).
func (l *memLog) event(id int) *ent.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.events[id-1]
}

func (l *memLog) readCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reads
}

// Concurrent local commits may report their events out of order: the later
// ones are held until the earlier one reports, then all are dispatched in
// id order, without reading the log back.
func TestHub_LocalCommitsReportedOutOfOrderAreDeliveredInOrderWithoutReadingTheLog(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, st, stop := holdingPanel(t, log)
	defer stop()
	a, b, c := log.append(1), log.append(1), log.append(1)
	reads := log.readCount()
	h.Committed([]*ent.Event{log.event(c)})
	h.Committed([]*ent.Event{log.event(b)})
	if got := h.Cursor(); got != 0 {
		t.Fatalf("cursor %d after the later commits reported, want 0: they wait for the first", got)
	}
	h.Committed([]*ent.Event{log.event(a)})
	if got := h.Cursor(); got != c {
		t.Fatalf("cursor %d once the first commit reported, want %d", got, c)
	}
	expectIDs(t, st, a, b, c)
	expectNoRead(t, log, reads)
}

// holdingPanel starts a hub over log whose gap timer never fires (held
// events wait for the commits before them) with operator 1's panel
// subscribed; stop ends both and drains the panel.
func holdingPanel(t *testing.T, log *memLog) (*live.Hub, *live.Stream, func()) {
	t.Helper()
	h, stopHub := start(t, log, live.Options{GapWait: time.Hour})
	st := panelOfOne(t, h)
	return h, st, func() {
		stopHub()
		for range st.C {
		}
	}
}

// panelOfOne subscribes operator 1's panel.
func panelOfOne(t *testing.T, h *live.Hub) *live.Stream {
	t.Helper()
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// expectNoRead fails unless the log was read as many times as before.
func expectNoRead(t *testing.T, log *memLog, before int) {
	t.Helper()
	if n := log.readCount() - before; n != 0 {
		t.Errorf("the log was read %d times, want none", n)
	}
}

// On PostgreSQL concurrent commits draw their ids concurrently, so one
// commit's ids need not be consecutive: each event that follows the cursor
// goes out at once, the others wait for the commit that drew the ids
// between, and nothing reads the log.
func TestHub_ACommitsInterleavedIdsAreDeliveredInOrderWithoutReadingTheLog(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, st, stop := holdingPanel(t, log)
	defer stop()
	a1, b1, a2, b2 := log.append(1), log.append(1), log.append(1), log.append(1)
	reads := log.readCount()
	h.Committed([]*ent.Event{log.event(a1), log.event(a2)})
	expectIDs(t, st, a1)
	if got := h.Cursor(); got != a1 {
		t.Fatalf("cursor %d, want %d: %d waits for %d", got, a1, a2, b1)
	}
	h.Committed([]*ent.Event{log.event(b1), log.event(b2)})
	expectIDs(t, st, b1, a2, b2)
	expectNoRead(t, log, reads)
}

// A gap no local commit fills (another instance's event, an id a
// rolled-back transaction used) is read from the log after GapWait, and the
// held events follow it in order.
func TestHub_AGapNoLocalCommitFillsIsReadFromTheLog(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stop := start(t, log, live.Options{GapWait: 10 * time.Millisecond})
	defer stop()
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := log.append(1) // committed elsewhere: never reported here
	mine := log.append(1)
	h.Committed([]*ent.Event{log.event(mine)})
	for _, want := range []int{other, mine} {
		if got := receive(t, st).ID; got != want {
			t.Fatalf("got event %d, want %d", got, want)
		}
	}
	stop()
	for range st.C {
	}
}

// Under steady concurrent commits some event is nearly always held, each
// gap filling within moments: GapWait counts from the gap still open, not
// from the first event held, so the log is read only for a gap that lasts
// GapWait (another instance's event here), not every GapWait (R12).
func TestHub_TheGapTimerCountsFromTheGapStillOpen(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	clock := &testClock{}
	h := live.New(log, live.Options{GapWait: 20 * time.Millisecond, Poll: time.Hour})
	live.SetAfterFunc(h, clock.afterFunc)
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := panelOfOne(t, h)
	defer func() {
		cancel()
		for range st.C {
		}
	}()
	a, b, c, d := log.append(1), log.append(1), log.append(1), log.append(1)
	reads := log.readCount()
	h.Committed([]*ent.Event{log.event(b)}) // held: a's commit has not reported
	if n := clock.advance(15 * time.Millisecond); n != 0 {
		t.Fatalf("%d timers fired 15 ms into a gap, want none", n)
	}
	h.Committed([]*ent.Event{log.event(d)}) // held too: c's commit is in flight
	h.Committed([]*ent.Event{log.event(a)}) // a and b go out; d waits for c
	expectIDs(t, st, a, b)
	if n := clock.advance(10 * time.Millisecond); n != 0 {
		t.Fatalf("%d timers fired 25 ms after the first gap opened and 10 ms after the one still open, want none", n)
	}
	expectNoRead(t, log, reads)
	// c is never reported here: the pump reads it once its gap has lasted
	// GapWait, and d follows.
	if n := clock.advance(10 * time.Millisecond); n != 1 {
		t.Fatalf("%d timers fired once the open gap lasted GapWait, want 1", n)
	}
	expectIDs(t, st, c, d)
	if log.readCount() == reads {
		t.Fatal("the log was not read for the gap")
	}
}

// testClock runs the hub's timers: they fire when the test moves it past
// their deadline.
type testClock struct {
	mu     sync.Mutex
	now    time.Duration
	timers []*testTimer
}

type testTimer struct {
	clock *testClock
	at    time.Duration
	f     func()
	done  bool // stopped or fired
}

func (c *testClock) afterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &testTimer{clock: c, at: c.now + d, f: f}
	c.timers = append(c.timers, tm)
	return tm
}

func (tm *testTimer) Stop() bool {
	tm.clock.mu.Lock()
	defer tm.clock.mu.Unlock()
	was := !tm.done
	tm.done = true
	return was
}

// advance moves the clock on by d, runs the timers then due and returns
// how many fired.
func (c *testClock) advance(d time.Duration) int {
	c.mu.Lock()
	c.now += d
	var due []func()
	for _, tm := range c.timers {
		if !tm.done && tm.at <= c.now {
			tm.done = true
			due = append(due, tm.f)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
	return len(due)
}

func waitCursor(t *testing.T, h *live.Hub, id int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.Cursor() < id {
		if time.Now().After(deadline) {
			t.Fatalf("the pump did not reach %d", id)
		}
		h.Wake()
		time.Sleep(time.Millisecond) // polling a condition, bounded by the deadline
	}
}

func TestHub_SlowConsumerIsEndedWithoutBlockingOthers(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stop := start(t, log, live.Options{Buffer: 4})
	defer stop()
	slowCtx, cancelSlow := context.WithCancel(context.Background())
	defer cancelSlow()
	slow, err := h.Subscribe(slowCtx, &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 2}, live.Scope{Operator: 2}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The slow subscriber reads nothing; the fast one reads everything.
	for i := range 20 {
		log.append(1, 2)
		h.Wake()
		if got := receive(t, fast).ID; got != i+1 {
			t.Fatalf("fast subscriber got %d, want %d", got, i+1)
		}
	}
	// The slow one has at most its buffer (plus the event in hand) and then
	// ends with SLOW_CONSUMER.
	n := 0
	for range slow.C {
		n++
	}
	var de *desk.Error
	if err := slow.Err(); !errors.As(err, &de) || de.Code != desk.CodeSlowConsumer {
		t.Fatalf("slow stream ended with %v, want SLOW_CONSUMER", err)
	}
	if n > 6 {
		t.Fatalf("the slow subscriber was sent %d events, more than its buffer", n)
	}
	stop()
	for range fast.C {
	}
}

func TestHub_ResumingBeforeThePrunedEventsIsRefused(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{pruned: 10}
	for range 12 {
		log.append(1)
	}
	h, stop := start(t, log, live.Options{})
	defer stop()
	after := 3
	_, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, &after, nil)
	wantRefused(t, h, err, desk.CodeEventsExpired)
}

// wantRefused checks that a subscription was refused with a code and left
// nothing registered.
func wantRefused(t *testing.T, h *live.Hub, err error, code desk.Code) {
	t.Helper()
	var de *desk.Error
	if !errors.As(err, &de) || de.Code != code {
		t.Fatalf("err = %v, want %s", err, code)
	}
	if h.Subscribers() != 0 {
		t.Fatal("a refused subscription stayed registered")
	}
}

func TestHub_EndedSessionEndsItsSubscriptions(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stop := start(t, log, live.Options{})
	defer stop()
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1, SessionID: 7}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1, SessionID: 8}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	log.events = append(log.events, &ent.Event{ID: 1, Type: desk.EventSessionEnded, Payload: map[string]any{"sessionId": float64(7)}})
	log.mu.Unlock()
	log.append(1)
	h.Wake()
	for range st.C {
	}
	var de *desk.Error
	if err := st.Err(); !errors.As(err, &de) || de.Code != desk.CodeUnauthenticated {
		t.Fatalf("ended with %v, want UNAUTHENTICATED", err)
	}
	if got := receive(t, other).ID; got != 2 {
		t.Fatalf("the other session got %d, want 2", got)
	}
	stop()
	for range other.C {
	}
}
