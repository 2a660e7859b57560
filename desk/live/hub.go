// Package live delivers the event log to subscribers as it grows (R12,
// DESIGN principles 4–6). One pump per process reads committed events in id
// order from the database, whatever wrote them (this process or another
// instance), and hands each to the subscriptions it concerns; a subscription
// that resumes after an event id first replays the log from the database,
// then continues live with no gap and no duplicate at the seam.
//
// Event ids are handed out in commit order (desk.flushEvents), so a reader
// that has seen id N has seen every committed event below it. The pump is
// woken by local commits, by PostgreSQL notifications from other instances
// (see Listener), and by a poll that bounds the delay if a notification is
// lost.
package live

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// Source is where events come from (the desk).
type Source interface {
	// EventsAfter returns events with an id above after, oldest first; it
	// fails with EVENTS_EXPIRED when some were pruned.
	EventsAfter(ctx context.Context, after, limit int) ([]*ent.Event, error)
	// ReadEvents is EventsAfter without the retention check (the pump
	// starts at the newest event and never resumes from before the window).
	ReadEvents(ctx context.Context, after, limit int) ([]*ent.Event, error)
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

// Options tune a hub.
type Options struct {
	// Buffer is how many events a subscription may have undelivered before
	// it is ended with SLOW_CONSUMER (default 256).
	Buffer int
	// Poll bounds how late the pump reads events when no wake-up arrives
	// (default 1s).
	Poll time.Duration
	// Batch is how many events one read takes (default 500).
	Batch  int
	Logger *slog.Logger
}

// Hub fans committed events out to subscriptions.
type Hub struct {
	src  Source
	opt  Options
	wake chan struct{}

	mu     sync.Mutex
	cursor int // the last event id dispatched
	subs   map[*sub]struct{}
	closed bool
}

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
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Hub{src: src, opt: opt, wake: make(chan struct{}, 1), subs: map[*sub]struct{}{}}
}

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
// When they follow the last event dispatched they are dispatched at once,
// without reading them back from the log. Otherwise (another instance's
// events come between, a concurrent commit reports before an earlier one,
// or a rolled-back transaction left an id unused) the pump reads the log,
// which is in commit order: nothing is skipped or delivered twice.
func (h *Hub) Committed(events []*ent.Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	if !h.closed && events[0].ID == h.cursor+1 && consecutive(events) {
		h.dispatchLocked(events)
	}
	behind := events[len(events)-1].ID > h.cursor
	h.mu.Unlock()
	if behind {
		h.Wake()
	}
}

func consecutive(events []*ent.Event) bool {
	for i := 1; i < len(events); i++ {
		if events[i].ID != events[i-1].ID+1 {
			return false
		}
	}
	return true
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
	return len(events), nil
}

// dispatchLocked hands events above the cursor to their subscribers and
// moves the cursor (h.mu held).
func (h *Hub) dispatchLocked(events []*ent.Event) {
	for _, e := range events {
		if e.ID <= h.cursor {
			continue
		}
		h.cursor = e.ID
		ends := endsSessions(e)
		for s := range h.subs {
			if ends(s.actor) {
				h.endLocked(s, desk.ErrUnauthenticated)
				continue
			}
			if s.scope.match(e) {
				s.offer(h, e)
			}
		}
	}
}

// readAfter reads the log for the pump.
func (h *Hub) readAfter(ctx context.Context, after int) ([]*ent.Event, error) {
	return h.src.ReadEvents(ctx, after, h.opt.Batch)
}

// endsSessions returns a predicate telling whether an event ends the live
// subscriptions of an actor: a session that ended, an API key revoked, an
// operator set INACTIVE by an administrator (R32).
func endsSessions(e *ent.Event) func(*desk.Actor) bool {
	id := func(key string) int { return desk.PayloadInt(e.Payload, key) }
	switch e.Type {
	case desk.EventSessionEnded:
		sid := id("sessionId")
		return func(a *desk.Actor) bool { return a != nil && a.SessionID != 0 && a.SessionID == sid }
	case desk.EventAPIKeyRevoked:
		kid := id("apiKeyId")
		return func(a *desk.Actor) bool { return a != nil && a.APIKeyID != 0 && a.APIKeyID == kid }
	case desk.EventOperatorStatus:
		if e.Payload["reason"] == "ADMIN" && e.Payload["status"] == "INACTIVE" && e.OperatorID != nil {
			op := *e.OperatorID
			return func(a *desk.Actor) bool { return a != nil && a.OperatorID == op }
		}
	}
	return func(*desk.Actor) bool { return false }
}

func (h *Hub) shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		h.endLocked(s, nil)
	}
}

// endLocked ends a subscription (h.mu held).
func (h *Hub) endLocked(s *sub, err error) {
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	s.err = err
	close(s.ended)
}

func (h *Hub) remove(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}

// sub is one subscription as the pump sees it.
type sub struct {
	scope Scope
	actor *desk.Actor
	queue chan *ent.Event
	ended chan struct{} // closed when the hub ends the subscription
	err   error         // why (nil: the hub shut down); read after ended
}

// offer queues an event without ever blocking the pump (h.mu held): a
// subscriber that falls Buffer events behind is ended with SLOW_CONSUMER
// and may resume with after.
func (s *sub) offer(h *Hub, e *ent.Event) {
	select {
	case s.queue <- e:
	default:
		h.endLocked(s, desk.Fail(desk.CodeSlowConsumer, "the subscription fell more than %d events behind; resume with after", h.opt.Buffer))
	}
}

// Stream is a subscription's events, closed when it ends; Err tells why.
type Stream struct {
	C   <-chan *ent.Event
	err error
	mu  sync.Mutex
}

// Err is why the stream ended: nil when the client went away or the server
// shut down, else a *desk.Error (EVENTS_EXPIRED, SLOW_CONSUMER,
// UNAUTHENTICATED).
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

func (st *Stream) fail(err error) {
	st.mu.Lock()
	st.err = err
	st.mu.Unlock()
}

// maxReplay bounds the events one resumption replays.
const maxReplay = 10000

// Subscribe streams the events of scope for actor until ctx ends: when
// after is given, first those after that id from the log (in order), then
// live ones.
func (h *Hub) Subscribe(ctx context.Context, actor *desk.Actor, scope Scope, after *int) (*Stream, error) {
	s := &sub{scope: scope, actor: actor, queue: make(chan *ent.Event, h.opt.Buffer), ended: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, desk.Fail(desk.CodeInternal, "the server is shutting down")
	}
	// Registered before the replay reads the log: every event the pump
	// dispatches from now on (ids above hwm) reaches the queue, so nothing
	// falls between the replay and the live stream.
	hwm := h.cursor
	h.subs[s] = struct{}{}
	h.mu.Unlock()

	var backlog []*ent.Event
	last := hwm
	if after != nil {
		// Replay the log after the client's id. Reading past hwm is safe:
		// those events also reach the queue, where ids up to last are
		// skipped. The first read happens even when there seems to be
		// nothing to replay, so that an id older than the retention window
		// is refused whatever the pump has seen.
		last = *after
		for {
			events, err := h.src.EventsAfter(ctx, last, h.opt.Batch)
			if err != nil {
				h.remove(s)
				return nil, err
			}
			for _, e := range events {
				if endsSessions(e)(actor) {
					h.remove(s)
					return nil, desk.ErrUnauthenticated
				}
				if scope.match(e) {
					if len(backlog) == maxReplay {
						h.remove(s)
						return nil, desk.Fail(desk.CodeEventsExpired, "more than %d events to replay; refetch and subscribe again", maxReplay)
					}
					backlog = append(backlog, e)
				}
				last = e.ID
			}
			if len(events) < h.opt.Batch {
				break
			}
		}
		last = max(last, *after)
	}
	out := make(chan *ent.Event)
	st := &Stream{C: out}
	go func() {
		defer close(out)
		defer h.remove(s)
		send := func(e *ent.Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			case <-s.ended:
				st.fail(s.err)
				return false
			}
		}
		for _, e := range backlog {
			if !send(e) {
				return
			}
		}
		for {
			select {
			case e := <-s.queue:
				if e.ID <= last {
					continue // replayed already
				}
				if !send(e) {
					return
				}
			case <-s.ended:
				st.fail(s.err)
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return st, nil
}

// Subscribers is the number of live subscriptions.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
