package graph

import (
	"context"
	"sync"
	"time"

	"github.com/parleydesk/parley/ent"
)

// LiveLoads shares what a live event's fields load between the subscribers
// the event reaches: its chat (with the contact, which panels show) and its
// message are read once per event instead of once per subscriber, and once
// per local commit for the events one commit appended (Committed): a new
// chat offered to four operators is one commit of six events, which name
// one chat. Entries live a few seconds, long enough for every subscriber of
// the event to resolve it; the entities are only read after loading.
type LiveLoads struct {
	mu sync.Mutex
	m  map[liveKey]*liveLoad
	// commits maps an event of a local commit to the commit's first event.
	commits map[int]commitOf
	swept   time.Time
}

// NewLiveLoads returns an empty LiveLoads.
func NewLiveLoads() *LiveLoads {
	return &LiveLoads{m: map[liveKey]*liveLoad{}, commits: map[int]commitOf{}}
}

type liveKey struct {
	// group is the first event of the event's commit when Committed told
	// it, the event itself otherwise.
	group int
	field string
	id    int
}

type liveLoad struct {
	once sync.Once
	at   time.Time
	v    any
	err  error
}

type commitOf struct {
	first int
	at    time.Time
}

// liveLoadTTL bounds how long a load is shared.
const liveLoadTTL = 5 * time.Second

// Committed records the events one local commit appended: their
// subscribers share one load of each chat and message they name (the state
// the commit left, or a later one, as a load per event would read). Events
// of other instances, read from the log, are loaded per event.
func (l *LiveLoads) Committed(events []*ent.Event) {
	if len(events) < 2 {
		return
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(now)
	for _, e := range events[1:] {
		l.commits[e.ID] = commitOf{first: events[0].ID, at: now}
	}
}

// load returns the value of field (the entity id) for event, loading it
// once per event, or per commit (Committed).
func (l *LiveLoads) load(event int, field string, id int, fn func() (any, error)) (any, error) {
	now := time.Now()
	l.mu.Lock()
	l.sweepLocked(now)
	k := liveKey{group: event, field: field, id: id}
	if c, ok := l.commits[event]; ok {
		k.group = c.first
	}
	e, ok := l.m[k]
	if !ok {
		e = &liveLoad{at: now}
		l.m[k] = e
	}
	l.mu.Unlock()
	e.once.Do(func() { e.v, e.err = fn() })
	return e.v, e.err
}

// sweepLocked drops, every liveLoadTTL, what is older than that.
func (l *LiveLoads) sweepLocked(now time.Time) {
	if now.Sub(l.swept) <= liveLoadTTL {
		return
	}
	for k, e := range l.m {
		if now.Sub(e.at) > liveLoadTTL {
			delete(l.m, k)
		}
	}
	for k, c := range l.commits {
		if now.Sub(c.at) > liveLoadTTL {
			delete(l.commits, k)
		}
	}
	l.swept = now
}

// eventChat is the chat of a live event, with its contact.
func (r *Resolver) eventChat(ctx context.Context, e *ent.Event) (*ent.Chat, error) {
	if e.ChatID == nil {
		return nil, nil
	}
	v, err := r.live.load(e.ID, "chat", *e.ChatID, func() (any, error) {
		// The context of the first subscriber may end while the others
		// wait for its load: it must not cancel theirs.
		return r.desk.EventChat(context.WithoutCancel(ctx), *e.ChatID)
	})
	if err != nil {
		return nil, err
	}
	return v.(*ent.Chat), nil
}

// eventMessage is the message of a live event (payload messageId).
func (r *Resolver) eventMessage(ctx context.Context, e *ent.Event, id int) (*ent.Message, error) {
	v, err := r.live.load(e.ID, "message", id, func() (any, error) {
		return r.client.Message.Get(context.WithoutCancel(ctx), id)
	})
	if err != nil {
		return nil, err
	}
	return v.(*ent.Message), nil
}
