// Package live delivers the event log to subscribers as it grows (R12,
// DESIGN principles 4–6). One pump per process reads committed events in id
// order from the database, whatever wrote them (this process or another
// instance), and hands each to the subscriptions it concerns; a subscription
// that resumes after an event id first replays the log from the database,
// then continues live with no gap and no duplicate at the seam.
//
// A read of the log is final up to the last id it returns: on PostgreSQL
// it waits for the appends in flight (desk.eventAppendLock), so a reader
// that has seen id N has seen every committed event below it and no event
// below N can appear later. Local commits hand their events over
// (Committed) and those that follow what was dispatched go out without a
// read. The pump is woken when a gap outlasts GapWait, by PostgreSQL
// notifications from other instances (see Listener), and by a poll that
// bounds the delay if a notification is lost.
//
// A subscription costs no goroutine: the hub (under its lock, in id order)
// puts each event straight into the subscription's small handoff channel,
// or, while the subscriber has not taken the previous ones yet, into an
// overflow list that the subscriber's side moves into the channel as it
// drains it (Stream.Ready, Stream.Next). Subscriptions are indexed by the
// operator, chat or queue they follow and by the credential they run under,
// so dispatching an event touches its audience only, not every subscription:
// with ten thousand panels open, the commit that hands its events over
// (Committed) pays for the few subscribers concerned.
package live

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// Source is where events come from (the desk).
type Source interface {
	// EventsThrough returns up to limit events with an id above after and
	// at most through, oldest first, without waiting for appends in flight:
	// the hub asks only through its cursor, every id up to which is final.
	// It fails with EVENTS_EXPIRED when events after after were pruned.
	EventsThrough(ctx context.Context, after, through, limit int) ([]*ent.Event, error)
	// ReadEvents returns up to limit events with an id above after, oldest
	// first, once the appends in flight have ended, so that no event below
	// the last it returns can appear later; without the retention check
	// (the pump starts at the newest event and never resumes from before
	// the window).
	ReadEvents(ctx context.Context, after, limit int) ([]*ent.Event, error)
	// LastEventID is the newest event's id, once the appends in flight
	// have ended; on a log that never had an event, the id just below the
	// first one it will draw (the hub starts there).
	LastEventID(ctx context.Context) (int, error)
}

// Scope says which events a subscription receives; events carry their
// audience, so matching reads nothing else.
type Scope struct {
	// Operator receives events whose audience contains this operator (panel).
	Operator int
	// Chat receives the events of one chat.
	Chat int
	// Queue receives the events of one queue (supervisors).
	Queue int
}

func (s Scope) match(e *ent.Event) bool {
	switch {
	case s.Operator != 0:
		return slices.Contains(e.Audience, s.Operator)
	case s.Chat != 0:
		return e.ChatID != nil && *e.ChatID == s.Chat
	case s.Queue != 0:
		return slices.Contains(e.QueueIds, s.Queue)
	}
	return false
}

// key is the index entry of the scope (the same precedence as match); ok is
// false for a scope that matches nothing.
func (s Scope) key() (k indexKey, ok bool) {
	switch {
	case s.Operator != 0:
		return indexKey{byOperator, s.Operator}, true
	case s.Chat != 0:
		return indexKey{byChat, s.Chat}, true
	case s.Queue != 0:
		return indexKey{byQueue, s.Queue}, true
	}
	return indexKey{}, false
}

// Options tune a hub.
type Options struct {
	// Buffer is how many events a subscription may have undelivered before
	// it is ended with SLOW_CONSUMER (default 256). The events of a
	// resumption's replay are not counted.
	Buffer int
	// Poll bounds how late the pump reads events when no wake-up arrives
	// (default 1s).
	Poll time.Duration
	// Batch is how many events one read takes (default 500).
	Batch int
	// GapWait is how long local events reported ahead of an earlier local
	// commit are held for it before the pump reads the log (default 20ms).
	GapWait time.Duration
	Logger  *slog.Logger
}

// handoff is the capacity of a subscription's channel. Small, since every
// open subscription holds one; a subscriber that falls further behind has
// the rest in its overflow list, which costs nothing while empty.
const handoff = 4

// Hub fans committed events out to subscriptions.
type Hub struct {
	src  Source
	opt  Options
	wake chan struct{}

	mu     sync.Mutex
	cursor int // the last event id dispatched
	// held are local commits' events reported before an earlier id's, by
	// id, until that one is dispatched (or the gap timer wakes the pump).
	held map[int]*ent.Event
	// gapTimer wakes the pump GapWait after the gap that follows the
	// cursor opened; gapAt is the cursor it was armed at, gapGen tells a
	// timer replaced or stopped while its callback waited for h.mu.
	gapTimer stopper
	gapAt    int
	gapGen   uint64
	// afterFunc arms timers (time.AfterFunc; tests give a clock of their
	// own).
	afterFunc func(time.Duration, func()) stopper
	subs      map[*Stream]struct{}
	index     map[indexKey][]*Stream
	closed    bool
	// count is len(subs), read without the lock (Subscribers).
	count atomic.Int64
}

// indexKey files a subscription under what it follows (byOperator, byChat,
// byQueue: one per subscription) and under each credential whose end ends
// it (bySession, byAPIKey, byActor).
type indexKey struct {
	kind keyKind
	id   int
}

type keyKind uint8

const (
	byOperator keyKind = iota + 1
	byChat
	byQueue
	bySession
	byAPIKey
	byActor // the operator the actor is: ended when an administrator deactivates them
)

// New returns a hub reading from src; Start it before subscribing.
func New(src Source, opt Options) *Hub {
	if opt.Buffer <= 0 {
		opt.Buffer = 256
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	if opt.Batch <= 0 {
		opt.Batch = 500
	}
	if opt.GapWait <= 0 {
		opt.GapWait = 20 * time.Millisecond
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Hub{src: src, opt: opt, wake: make(chan struct{}, 1), subs: map[*Stream]struct{}{},
		index: map[indexKey][]*Stream{}, afterFunc: realAfterFunc}
}

// stopper is a timer as the hub uses it.
type stopper interface{ Stop() bool }

func realAfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }

// Start positions the pump at the newest event and runs it until ctx ends;
// then every subscription ends.
func (h *Hub) Start(ctx context.Context) error {
	last, err := h.src.LastEventID(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.cursor = last
	h.mu.Unlock()
	go h.run(ctx)
	return nil
}

// Committed is given the events a local commit appended (ids in order).
// Each event that follows the last one dispatched is dispatched at once,
// without reading it back from the log, with any held events it makes
// follow. The others are held for up to GapWait: on PostgreSQL concurrent
// appends draw their ids concurrently (desk.eventAppendLock), so a
// commit's ids need not be consecutive, and an earlier id may belong to a
// commit that has not reported yet (it reports right after its commit).
// When the gap outlasts GapWait (another instance's events come between,
// or a rolled-back transaction left an id unused), the pump reads the log,
// which waits for the appends in flight: nothing is skipped or delivered
// twice.
//
// The dispatch runs on the committing goroutine; it touches only the
// subscriptions of each event's audience (see the index) and never blocks
// on a subscriber.
func (h *Hub) Committed(events []*ent.Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for _, e := range events {
		switch {
		case e.ID <= h.cursor: // the pump read it
		case e.ID == h.cursor+1:
			h.dispatchLocked([]*ent.Event{e})
			h.drainHeldLocked()
		default:
			h.holdLocked(e)
		}
	}
}

// holdLocked keeps a local commit's event until the gap before it fills
// and arms the gap timer (h.mu held).
func (h *Hub) holdLocked(e *ent.Event) {
	if h.held == nil {
		h.held = map[int]*ent.Event{}
	}
	h.held[e.ID] = e
	h.armGapTimerLocked()
}

// armGapTimerLocked makes the pump read the log GapWait after the gap
// that follows the cursor opened: from now, unless the timer already runs
// for this gap. A timer armed for an earlier gap, which has filled since
// (the cursor moved on while later events stayed held), starts again:
// under steady concurrent commits some event is nearly always held, and a
// timer kept from the first of them would make the pump read the log
// (waiting for every append in flight, desk.eventReadLock) every GapWait,
// though no gap lasted that long (h.mu held).
func (h *Hub) armGapTimerLocked() {
	if h.gapTimer != nil && h.gapAt == h.cursor {
		return
	}
	h.stopGapTimerLocked()
	gen := h.gapGen
	h.gapAt = h.cursor
	h.gapTimer = h.afterFunc(h.opt.GapWait, func() {
		h.mu.Lock()
		current := gen == h.gapGen
		if current {
			h.gapTimer = nil
		}
		h.mu.Unlock()
		if current {
			h.Wake()
		}
	})
}

// stopGapTimerLocked stops the gap timer, if armed; a callback already
// waiting for h.mu then does nothing (h.mu held).
func (h *Hub) stopGapTimerLocked() {
	if h.gapTimer != nil {
		h.gapTimer.Stop()
		h.gapTimer = nil
	}
	h.gapGen++
}

// drainHeldLocked dispatches the held events that now follow the cursor,
// forgets those the pump dispatched meanwhile, and stops the gap timer once
// none is held, or arms it while some still are (h.mu held).
func (h *Hub) drainHeldLocked() {
	if len(h.held) == 0 {
		return
	}
	for e, ok := h.held[h.cursor+1]; ok; e, ok = h.held[h.cursor+1] {
		delete(h.held, e.ID)
		h.dispatchLocked([]*ent.Event{e})
	}
	for id := range h.held {
		if id <= h.cursor {
			delete(h.held, id)
		}
	}
	if len(h.held) > 0 {
		h.armGapTimerLocked()
	} else {
		h.stopGapTimerLocked()
	}
}

// Wake makes the pump read new events now (without blocking).
func (h *Hub) Wake() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Cursor is the id of the last event the pump dispatched.
func (h *Hub) Cursor() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cursor
}

func (h *Hub) run(ctx context.Context) {
	t := time.NewTicker(h.opt.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.shutdown()
			return
		case <-h.wake:
		case <-t.C:
		}
		for ctx.Err() == nil {
			n, err := h.pumpOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					h.opt.Logger.Error("live: read events", "err", err)
				}
				break
			}
			if n < h.opt.Batch {
				break
			}
		}
	}
}

// pumpOnce dispatches one batch of new events.
func (h *Hub) pumpOnce(ctx context.Context) (int, error) {
	h.mu.Lock()
	cursor := h.cursor
	h.mu.Unlock()
	events, err := h.readAfter(ctx, cursor)
	if err != nil || len(events) == 0 {
		return 0, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dispatchLocked(events)
	h.drainHeldLocked()
	return len(events), nil
}

// dispatchLocked hands events above the cursor to their subscribers and
// moves the cursor (h.mu held). An event that ends a credential ends its
// subscriptions first, so they do not receive it.
func (h *Hub) dispatchLocked(events []*ent.Event) {
	var slow []*Stream
	for _, e := range events {
		if e.ID <= h.cursor {
			continue
		}
		h.cursor = e.ID
		if k, ok := endsKey(e); ok {
			for len(h.index[k]) > 0 {
				h.endLocked(h.index[k][0], desk.ErrUnauthenticated)
			}
		}
		for i, op := range e.Audience {
			if !slices.Contains(e.Audience[:i], op) {
				slow = h.deliverLocked(indexKey{byOperator, op}, e, slow)
			}
		}
		if e.ChatID != nil {
			slow = h.deliverLocked(indexKey{byChat, *e.ChatID}, e, slow)
		}
		for i, q := range e.QueueIds {
			if !slices.Contains(e.QueueIds[:i], q) {
				slow = h.deliverLocked(indexKey{byQueue, q}, e, slow)
			}
		}
		// Ended after the walk: ending edits the index being walked.
		for _, st := range slow {
			h.endLocked(st, h.slowConsumer())
		}
		slow = slow[:0]
	}
}

// deliverLocked offers e to the subscriptions filed under k and returns
// slow with those that fell too far behind appended (h.mu held).
func (h *Hub) deliverLocked(k indexKey, e *ent.Event, slow []*Stream) []*Stream {
	for _, st := range h.index[k] {
		if !st.push(e, h.opt.Buffer) {
			slow = append(slow, st)
		}
	}
	return slow
}

func (h *Hub) slowConsumer() error {
	return desk.Fail(desk.CodeSlowConsumer, "the subscription fell more than %d events behind; resume with after", h.opt.Buffer)
}

// readAfter reads the log for the pump.
func (h *Hub) readAfter(ctx context.Context, after int) ([]*ent.Event, error) {
	return h.src.ReadEvents(ctx, after, h.opt.Batch)
}

// endsKey tells whether an event ends live subscriptions, and which (the
// index key of their credential): a session that ended, an API key revoked,
// an operator set INACTIVE by an administrator (R32).
func endsKey(e *ent.Event) (indexKey, bool) {
	id := func(key string) int { return desk.PayloadInt(e.Payload, key) }
	switch e.Type {
	case desk.EventSessionEnded:
		if sid := id("sessionId"); sid != 0 {
			return indexKey{bySession, sid}, true
		}
	case desk.EventAPIKeyRevoked:
		if kid := id("apiKeyId"); kid != 0 {
			return indexKey{byAPIKey, kid}, true
		}
	case desk.EventOperatorStatus:
		if e.Payload["reason"] == "ADMIN" && e.Payload["status"] == "INACTIVE" && e.OperatorID != nil {
			return indexKey{byActor, *e.OperatorID}, true
		}
	}
	return indexKey{}, false
}

// actorKeys are the index keys of the credentials an actor runs under.
func actorKeys(a *desk.Actor) []indexKey {
	if a == nil {
		return nil
	}
	var keys []indexKey
	if a.SessionID != 0 {
		keys = append(keys, indexKey{bySession, a.SessionID})
	}
	if a.APIKeyID != 0 {
		keys = append(keys, indexKey{byAPIKey, a.APIKeyID})
	}
	if a.OperatorID != 0 {
		keys = append(keys, indexKey{byActor, a.OperatorID})
	}
	return keys
}

// endsActor tells whether e ends the subscriptions of a (the replay's check).
func endsActor(e *ent.Event, a *desk.Actor) bool {
	k, ok := endsKey(e)
	return ok && slices.Contains(actorKeys(a), k)
}

func (h *Hub) shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	clear(h.held)
	h.stopGapTimerLocked()
	for st := range h.subs {
		h.endLocked(st, nil)
	}
}

// addLocked registers a subscription and files it in the index (h.mu held).
func (h *Hub) addLocked(st *Stream) {
	h.subs[st] = struct{}{}
	h.count.Store(int64(len(h.subs)))
	if k, ok := st.scope.key(); ok {
		h.index[k] = append(h.index[k], st)
	}
	for _, k := range actorKeys(st.actor) {
		h.index[k] = append(h.index[k], st)
	}
}

// removeLocked unregisters a subscription; false if it was not registered
// (h.mu held).
func (h *Hub) removeLocked(st *Stream) bool {
	if _, ok := h.subs[st]; !ok {
		return false
	}
	delete(h.subs, st)
	h.count.Store(int64(len(h.subs)))
	unfile := func(k indexKey) {
		list := h.index[k]
		if i := slices.Index(list, st); i >= 0 {
			last := len(list) - 1
			list[i] = list[last]
			list[last] = nil
			list = list[:last]
		}
		if len(list) == 0 {
			delete(h.index, k)
		} else {
			h.index[k] = list
		}
	}
	if k, ok := st.scope.key(); ok {
		unfile(k)
	}
	for _, k := range actorKeys(st.actor) {
		unfile(k)
	}
	return true
}

// endLocked ends a subscription: err says why (nil: the client went away or
// the server shut down). Events already in its channel stay receivable, in
// order, before the channel reports closed (h.mu held).
func (h *Hub) endLocked(st *Stream, err error) {
	if !h.removeLocked(st) {
		return
	}
	if st.stop != nil {
		st.stop()
	}
	st.mu.Lock()
	st.ended = true
	st.err = err
	st.overflow = nil
	st.pending = nil
	close(st.c)
	st.mu.Unlock()
	st.wakeConsumer()
}

// Stream is a subscription's events: receive them from C, which is closed
// when the subscription ends (Err tells why). C holds a few events; while
// the subscriber is behind, the hub keeps the next ones in an overflow list,
// moved into C by Ready (and by Next, which calls it). A consumer must call
// Ready (or use Next) before each receive, or it only ever sees what fits in
// C, until the hub's next event for it.
type Stream struct {
	C <-chan *ent.Event

	h     *Hub
	scope Scope
	actor *desk.Actor
	// notify is told that C has something to receive (or was closed).
	notify func()
	// stop cancels the context.AfterFunc that ends the stream with its
	// context (h.mu).
	stop func() bool

	mu sync.Mutex // lock order: h.mu, then mu; guards what follows
	c  chan *ent.Event
	// overflow is what does not fit in c yet, oldest first.
	overflow []*ent.Event
	// replaying: the replay of a resumption is being read; live events
	// dispatched meanwhile wait in pending and are spliced behind it.
	replaying bool
	pending   []*ent.Event
	// replayed is the id the replay read up to: the pump may still
	// dispatch events up to it live, and they are skipped.
	replayed int
	// queued counts every event ever put in c or overflow, and backlog
	// how many of the first of them were the replay: together they tell
	// how many live events are undelivered (Options.Buffer).
	queued  int
	backlog int
	ended   bool
	err     error
}

// Err is why the stream ended: nil when the client went away or the server
// shut down, else a *desk.Error (EVENTS_EXPIRED, SLOW_CONSUMER,
// UNAUTHENTICATED).
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

// Ready moves overflowing events into C and reports whether a receive from
// C would return at once: an event is there, or C is closed.
func (st *Stream) Ready() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.refillLocked()
	return len(st.c) > 0 || st.ended
}

// Next receives the next event (ok false when the stream ended, or when ctx
// ended first).
func (st *Stream) Next(ctx context.Context) (e *ent.Event, ok bool) {
	st.Ready()
	select {
	case e, ok = <-st.c:
		return e, ok
	case <-ctx.Done():
		return nil, false
	}
}

// Close ends the stream as if its client went away.
func (st *Stream) Close() {
	st.h.mu.Lock()
	defer st.h.mu.Unlock()
	st.h.endLocked(st, nil)
}

// push offers a live event (h.mu held). It returns false when the
// subscriber already has Buffer live events undelivered: the caller ends it
// with SLOW_CONSUMER (it may resume with after). It never blocks.
func (st *Stream) push(e *ent.Event, limit int) bool {
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		return true
	}
	if st.replaying {
		if len(st.pending) >= maxReplay+limit {
			st.mu.Unlock()
			return false
		}
		st.pending = append(st.pending, e)
		st.mu.Unlock()
		return true
	}
	if e.ID <= st.replayed {
		st.mu.Unlock()
		return true // replayed already
	}
	if st.liveUndeliveredLocked() >= limit {
		st.mu.Unlock()
		return false
	}
	handed := st.enqueueLocked(e)
	st.mu.Unlock()
	if handed {
		st.wakeConsumer()
	}
	return true
}

// enqueueLocked puts e behind everything queued, in c when nothing waits in
// overflow and c has room; it reports whether e went into c.
func (st *Stream) enqueueLocked(e *ent.Event) bool {
	st.queued++
	st.refillLocked()
	if len(st.overflow) == 0 {
		select {
		case st.c <- e:
			return true
		default:
		}
	}
	st.overflow = append(st.overflow, e)
	return false
}

// refillLocked moves overflow into c while it has room (st.mu held: the
// hub, which also sends to c, holds it too, so order is kept).
func (st *Stream) refillLocked() {
	if st.ended {
		return
	}
	n := 0
	for n < len(st.overflow) {
		select {
		case st.c <- st.overflow[n]:
			st.overflow[n] = nil
			n++
			continue
		default:
		}
		break
	}
	if n == len(st.overflow) {
		st.overflow = nil // an emptied list gives its memory back
	} else {
		st.overflow = st.overflow[n:]
	}
}

// liveUndeliveredLocked counts the live events queued and not yet received
// (the replay's events, queued first, are not counted).
func (st *Stream) liveUndeliveredLocked() int {
	undelivered := len(st.c) + len(st.overflow)
	received := st.queued - undelivered
	return undelivered - max(0, st.backlog-received)
}

func (st *Stream) wakeConsumer() {
	if st.notify != nil {
		st.notify()
	}
}

// maxReplay bounds the events one resumption replays.
const maxReplay = 10000

// Subscribe streams the events of scope for actor until ctx ends: when
// after is given, first those after that id from the log (in order), then
// live ones. notify, when not nil, is called whenever C gets an event or is
// closed (also spuriously): a consumer that does not wait on C can call
// Ready then. It runs under the hub's lock: it must return at once and must
// not call back into the hub or the stream.
func (h *Hub) Subscribe(ctx context.Context, actor *desk.Actor, scope Scope, after *int, notify func()) (*Stream, error) {
	c := make(chan *ent.Event, min(handoff, h.opt.Buffer))
	st := &Stream{C: c, c: c, h: h, scope: scope, actor: actor, notify: notify, replaying: after != nil}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, shuttingDown()
	}
	// Registered before the replay reads the log: every event dispatched
	// from now on, all above the cursor, waits in pending; the replay reads
	// up to the cursor, every id up to which is final, so nothing falls
	// between the replay and the live stream, and the replay need not wait
	// for the appends in flight.
	h.addLocked(st)
	if after == nil {
		st.stop = context.AfterFunc(ctx, st.Close)
		h.mu.Unlock()
		return st, nil
	}
	through := h.cursor
	h.mu.Unlock()

	backlog, last, err := h.replay(ctx, actor, scope, *after, through)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil && st.ended {
		// Ended while replaying: a credential ended, the subscriber fell
		// too far behind, or the hub shut down.
		if err = st.Err(); err == nil {
			err = shuttingDown()
		}
	}
	if err != nil {
		h.removeLocked(st)
		return nil, err
	}
	if !h.spliceLocked(st, backlog, last) {
		h.removeLocked(st)
		return nil, h.slowConsumer()
	}
	st.stop = context.AfterFunc(ctx, st.Close)
	return st, nil
}

func shuttingDown() error { return desk.Fail(desk.CodeInternal, "the server is shutting down") }

// replay reads the log after the client's id, through the given one: the
// events of scope (at most maxReplay), and the id it read up to. It
// refuses an actor whose credential ended meanwhile.
func (h *Hub) replay(ctx context.Context, actor *desk.Actor, scope Scope, after, through int) ([]*ent.Event, int, error) {
	var backlog []*ent.Event
	// The first read happens even when there seems to be nothing to replay,
	// so that an id older than the retention window is refused whatever the
	// pump has seen.
	last := after
	for {
		events, err := h.src.EventsThrough(ctx, last, through, h.opt.Batch)
		if err != nil {
			return nil, 0, err
		}
		for _, e := range events {
			if endsActor(e, actor) {
				return nil, 0, desk.ErrUnauthenticated
			}
			if scope.match(e) {
				if len(backlog) == maxReplay {
					return nil, 0, desk.Fail(desk.CodeEventsExpired, "more than %d events to replay; refetch and subscribe again", maxReplay)
				}
				backlog = append(backlog, e)
			}
			last = e.ID
		}
		if len(events) < h.opt.Batch {
			return backlog, max(last, after), nil
		}
	}
}

// spliceLocked queues the replay, then the live events dispatched during
// it, and makes the stream live. Those at or below last are skipped: a
// client that resumes after an id this hub has not dispatched yet (it saw
// it on another instance) has them already. It returns false when the live
// events alone are more than Buffer (h.mu held).
func (h *Hub) spliceLocked(st *Stream, backlog []*ent.Event, last int) bool {
	st.mu.Lock()
	pending := st.pending
	st.pending = nil
	st.replaying = false
	st.replayed = last
	st.backlog = len(backlog)
	for _, e := range backlog {
		st.enqueueLocked(e)
	}
	ok := true
	for _, e := range pending {
		if e.ID <= last {
			continue
		}
		if st.liveUndeliveredLocked() >= h.opt.Buffer {
			ok = false
			break
		}
		st.enqueueLocked(e)
	}
	queued := len(st.c) > 0
	st.mu.Unlock()
	if ok && queued {
		st.wakeConsumer()
	}
	return ok
}

// Subscribers is the number of live subscriptions (without waiting for
// the hub's lock: it is asked at every commit, see desk.WithCommitViews).
func (h *Hub) Subscribers() int { return int(h.count.Load()) }
