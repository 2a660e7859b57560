package live_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// The delivery without a goroutine per subscription: a handoff channel of
// a few events, an overflow list behind it, and the consumer's side moving
// the overflow into the channel as it drains it.

func expectIDs(t *testing.T, st *live.Stream, want ...int) {
	t.Helper()
	for _, w := range want {
		if got := receive(t, st).ID; got != w {
			t.Fatalf("got event %d, want %d", got, w)
		}
	}
}

func ids(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func expectEnd(t *testing.T, st *live.Stream, code desk.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		e, ok := st.Next(ctx)
		if ctx.Err() != nil {
			t.Fatal("the stream did not end within 5s")
		}
		if !ok {
			break
		}
		if code == "" {
			t.Fatalf("got event %d, want the end of the stream", e.ID)
		}
	}
	err := st.Err()
	if code == "" {
		if err != nil {
			t.Fatalf("the stream ended with %v, want no error", err)
		}
		return
	}
	var de *desk.Error
	if !errors.As(err, &de) || de.Code != code {
		t.Fatalf("the stream ended with %v, want %s", err, code)
	}
}

// A subscriber that reads nothing while events pile up past the handoff
// channel gets them all afterwards, in order, once each.
func TestStream_OverflowKeepsOrderWithoutLossOrDuplicate(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &countingLog{memLog: &memLog{}}
	h, st, stop := operatorOnePanel(t, log)
	defer stop()
	for i := 1; i <= 50; i++ {
		h.Committed([]*ent.Event{msg(i, 1)})
	}
	h.Committed([]*ent.Event{msg(51, 2), msg(52, 1, 2), msg(53, 1)})
	want := append(ids(1, 50), 52, 53)
	expectIDs(t, st, want...)
	// Drained: the next event goes straight to the channel.
	h.Committed([]*ent.Event{msg(54, 1)})
	expectIDs(t, st, 54)
}

// Ready moves the overflow into C: a consumer that checks Ready before each
// receive never waits on an empty channel while events are queued.
func TestStream_ReadyRefillsTheChannel(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &countingLog{memLog: &memLog{}}
	h, st, stop := operatorOnePanel(t, log)
	defer stop()
	for i := 1; i <= 20; i++ {
		h.Committed([]*ent.Event{msg(i, 1)})
	}
	for want := 1; want <= 20; want++ {
		if !st.Ready() {
			t.Fatalf("not ready with event %d queued", want)
		}
		if e := <-st.C; e.ID != want {
			t.Fatalf("got %d, want %d", e.ID, want)
		}
	}
	if st.Ready() {
		t.Fatal("ready with nothing queued")
	}
}

// A subscriber more than Buffer events behind is ended with SLOW_CONSUMER:
// it still receives what its channel holds (the oldest, in order, so that it
// can resume after the last one), then the error; the hub forgets it.
func TestStream_TooFarBehindEndsWithSlowConsumer(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{Buffer: 8})
	defer stopHub()
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 8; i++ {
		h.Committed([]*ent.Event{msg(i, 1)})
	}
	if h.Subscribers() != 1 {
		t.Fatal("ended with Buffer events undelivered, not more")
	}
	h.Committed([]*ent.Event{msg(9, 1)})
	if h.Subscribers() != 0 {
		t.Fatal("still registered past its buffer")
	}
	n := 0
	for e := range st.C {
		n++
		if e.ID != n {
			t.Fatalf("got %d, want %d", e.ID, n)
		}
	}
	if n == 0 || n > 8 {
		t.Fatalf("received %d events before the end", n)
	}
	var de *desk.Error
	if err := st.Err(); !errors.As(err, &de) || de.Code != desk.CodeSlowConsumer {
		t.Fatalf("ended with %v, want SLOW_CONSUMER", err)
	}
}

// A subscriber that keeps up is never counted as behind, however many
// events pass.
func TestStream_AConsumerThatKeepsUpIsNeverSlow(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{Buffer: 4})
	defer stopHub()
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		h.Committed([]*ent.Event{msg(i, 1)})
		if i%3 == 0 {
			expectIDs(t, st, i-2, i-1, i)
		}
	}
	expectIDs(t, st, 100)
}

// notify tells a consumer that does not wait on C when to read; driven by
// it alone (as the websocket transport is), every event arrives once and in
// order while the hub dispatches concurrently.
func TestStream_NotifyDrivenConsumerGetsEverything(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{Buffer: 10000})
	defer stopHub()
	wake := make(chan struct{}, 1)
	notify := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := h.Subscribe(ctx, &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, notify)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= n; i += 2 {
			h.Committed([]*ent.Event{msg(i, 1), msg(i+1, 1, 2)})
		}
	}()
	next := 1
	timeout := time.After(10 * time.Second)
	for next <= n {
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("stalled at event %d", next)
		}
		for st.Ready() {
			e := <-st.C
			if e.ID != next {
				t.Fatalf("got %d, want %d", e.ID, next)
			}
			next++
		}
	}
	wg.Wait()
}

// Scopes: the events of a chat and of a queue reach their subscribers; an
// audience that names an operator twice delivers once.
func TestStream_ChatAndQueueScopesAndRepeatedAudience(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{})
	defer stopHub()
	sub := func(scope live.Scope) *live.Stream {
		st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 9}, scope, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	chat, queue, panel := sub(live.Scope{Chat: 5}), sub(live.Scope{Queue: 3}), sub(live.Scope{Operator: 1})
	chatID := func(id int) *int { return &id }
	h.Committed([]*ent.Event{
		{ID: 1, Type: desk.EventMessageAdded, ChatID: chatID(5), QueueIds: []int{3, 3}, Audience: []int{1, 1}},
		{ID: 2, Type: desk.EventMessageAdded, ChatID: chatID(6), QueueIds: []int{4}, Audience: []int{2}},
		{ID: 3, Type: desk.EventMessageAdded, ChatID: chatID(5)},
		{ID: 4, Type: desk.EventMessageAdded, QueueIds: []int{4, 3}},
		{ID: 5, Type: desk.EventMessageAdded, Audience: []int{2, 1}},
	})
	expectIDs(t, chat, 1, 3)
	expectIDs(t, queue, 1, 4)
	expectIDs(t, panel, 1, 5)
	stopHub()
	expectEnd(t, chat, "")
	expectEnd(t, queue, "")
	expectEnd(t, panel, "")
}

// The credential a subscription runs under ends it (R32): a revoked API
// key, an operator an administrator deactivated; others stay.
func TestStream_RevokedKeyAndDeactivatedOperatorEndTheirSubscriptions(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{})
	defer stopHub()
	sub := func(a *desk.Actor) *live.Stream {
		st, err := h.Subscribe(context.Background(), a, live.Scope{Queue: 1}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	key, otherKey := sub(&desk.Actor{APIKeyID: 4}), sub(&desk.Actor{APIKeyID: 5})
	op, otherOp := sub(&desk.Actor{OperatorID: 7, SessionID: 70}), sub(&desk.Actor{OperatorID: 8, SessionID: 80})
	seven := 7
	h.Committed([]*ent.Event{
		{ID: 1, Type: desk.EventAPIKeyRevoked, Payload: map[string]any{"apiKeyId": float64(4)}, QueueIds: []int{1}},
		// A status change the operator made is no end; an administrator's
		// INACTIVE is.
		{ID: 2, Type: desk.EventOperatorStatus, OperatorID: &seven, Payload: map[string]any{"status": "INACTIVE", "reason": "SELF"}},
		{ID: 3, Type: desk.EventOperatorStatus, OperatorID: &seven, Payload: map[string]any{"status": "INACTIVE", "reason": "ADMIN"}, QueueIds: []int{1}},
		{ID: 4, Type: desk.EventMessageAdded, QueueIds: []int{1}},
	})
	expectEnd(t, key, desk.CodeUnauthenticated)
	expectEnd(t, op, desk.CodeUnauthenticated)
	expectIDs(t, otherKey, 1, 3, 4)
	expectIDs(t, otherOp, 1, 3, 4)
	if n := h.Subscribers(); n != 2 {
		t.Fatalf("%d subscriptions registered, want 2", n)
	}
}

// The client going away (its context) ends the stream without error and
// frees it; Close does the same.
func TestStream_ClientGoingAwayFreesTheSubscription(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	h, stopHub := start(t, log, live.Options{})
	defer stopHub()
	ctx, cancel := context.WithCancel(context.Background())
	notified := make(chan struct{}, 10)
	st, err := h.Subscribe(ctx, &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, func() { notified <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		h.Committed([]*ent.Event{msg(i, 1)}) // some wait in the overflow
	}
	cancel()
	// The end is announced (notify) and C closes after what it holds.
	for range st.C {
	}
	<-notified
	if err := st.Err(); err != nil {
		t.Fatalf("ended with %v, want nil", err)
	}
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("%d subscriptions registered, want 1", n)
	}
	other.Close()
	expectIDs(t, other, ids(1, 4)...) // what its channel held
	expectEnd(t, other, "")
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("%d subscriptions registered after Close, want 0", n)
	}
}

// blockingLog holds the replay's first read until released, so that the
// test dispatches live events while a resumption replays.
type blockingLog struct {
	*memLog
	reading chan struct{} // closed when the first replay read starts
	release chan struct{}
	once    sync.Once
}

func (l *blockingLog) EventsThrough(ctx context.Context, after, through, limit int) ([]*ent.Event, error) {
	first := false
	l.once.Do(func() { first = true })
	if first {
		close(l.reading)
		<-l.release
	}
	return l.memLog.EventsThrough(ctx, after, through, limit)
}

// startOn starts a hub over src (the pump woken explicitly).
func startOn(t *testing.T, src live.Source, opt live.Options) (*live.Hub, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opt.Poll = time.Hour
	h := live.New(src, opt)
	if err := h.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	return h, cancel
}

// The seam of a resumption: events committed while the replay reads the
// log are held, then spliced behind it; those the replay read too are not
// delivered twice.
func TestStream_ResumeSplicesLiveEventsDispatchedDuringTheReplay(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &blockingLog{memLog: &memLog{}, reading: make(chan struct{}), release: make(chan struct{})}
	for range 5 {
		log.append(1)
	}
	h, stopHub := startOn(t, log, live.Options{Buffer: 4})
	defer stopHub()
	after := 2
	type result struct {
		st  *live.Stream
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, &after, nil)
		done <- result{st, err}
	}()
	<-log.reading
	// Committed while the replay waits to read: in the log when it reads,
	// and dispatched live as well.
	log.append(1)
	log.append(2, 1)
	h.Committed([]*ent.Event{msg(6, 1), msg(7, 2, 1)})
	log.append(2)
	h.Committed([]*ent.Event{msg(8, 2)})
	close(log.release)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	h.Committed([]*ent.Event{msg(9, 1)})
	expectIDs(t, r.st, 3, 4, 5, 6, 7, 9)
	h.Committed([]*ent.Event{msg(10, 1)})
	expectIDs(t, r.st, 10)
}

// Events dispatched live during the replay but past what it read are
// delivered after it, in order.
func TestStream_ResumeKeepsLiveEventsPastTheReplay(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &blockingLog{memLog: &memLog{}, reading: make(chan struct{}), release: make(chan struct{})}
	log.append(1)
	h, stopHub := startOn(t, log, live.Options{})
	defer stopHub()
	after := 0
	done := make(chan *live.Stream, 1)
	go func() {
		st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, &after, nil)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	<-log.reading
	// Dispatched from a local commit that the log read below will not see
	// (as if committed just after the replay's read).
	h.Committed([]*ent.Event{msg(2, 1), msg(3, 1)})
	close(log.release)
	st := <-done
	if st == nil {
		t.FailNow()
	}
	expectIDs(t, st, 1, 2, 3)
}

// A credential ended while the replay reads ends the resumption.
func TestStream_CredentialEndedDuringTheReplayRefusesTheResumption(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &blockingLog{memLog: &memLog{}, reading: make(chan struct{}), release: make(chan struct{})}
	h, stopHub := startOn(t, log, live.Options{})
	defer stopHub()
	after := 0
	done := make(chan error, 1)
	go func() {
		_, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1, SessionID: 7}, live.Scope{Operator: 1}, &after, nil)
		done <- err
	}()
	<-log.reading
	h.Committed([]*ent.Event{{ID: 1, Type: desk.EventSessionEnded, Payload: map[string]any{"sessionId": float64(7)}}})
	close(log.release)
	wantRefused(t, h, <-done, desk.CodeUnauthenticated)
}

// A replay longer than Buffer is not a slow consumer: its events are not
// counted, only live ones behind them.
func TestStream_ALongReplayIsNotCountedAsBehind(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{}
	for range 30 {
		log.append(1)
	}
	h, stopHub := start(t, log, live.Options{Buffer: 4, Batch: 7})
	defer stopHub()
	after := 0
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, &after, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 31; i <= 34; i++ {
		h.Committed([]*ent.Event{msg(i, 1)}) // Buffer live events behind the replay
	}
	expectIDs(t, st, ids(1, 34)...)
	// Past the replay, the count is the usual one.
	for i := 35; i <= 39; i++ {
		h.Committed([]*ent.Event{msg(i, 1)})
	}
	expectIDs(t, st, ids(35, 38)...)
	expectEnd(t, st, desk.CodeSlowConsumer)
}

// A resumption replays the log up to the hub's cursor only: above it an
// event may be visible while a lower id is still in flight (PostgreSQL
// appends draw ids concurrently), and a replay that read it would mark the
// lower one replayed when it arrives live.
func TestHub_AResumptionReplaysNoFurtherThanTheCursor(t *testing.T) {
	defer goleak.VerifyNone(t)
	log := &memLog{inFlight: map[int]bool{}}
	h, stop := start(t, log, live.Options{GapWait: time.Hour}) // the gap timer never fires here
	defer stop()
	first := log.append(1)
	log.mu.Lock()
	log.inFlight[first] = true // drawn, not committed
	log.mu.Unlock()
	second := log.append(1)
	h.Committed([]*ent.Event{log.event(second)}) // held: first has not reported
	after := 0
	st, err := h.Subscribe(context.Background(), &desk.Actor{OperatorID: 1}, live.Scope{Operator: 1}, &after, nil)
	if err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	delete(log.inFlight, first)
	log.mu.Unlock()
	h.Committed([]*ent.Event{log.event(first)})
	expectIDs(t, st, first, second)
	stop()
	for range st.C {
	}
}
