package graph

import (
	"context"
	"sync"
	"time"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
)

// liveLoads shares what a live event's fields load between the subscribers
// the event reaches: its chat (with the contact, which panels show) and its
// message are read once per event instead of once per subscriber. Entries
// live a few seconds, long enough for every subscriber of the event to
// resolve it; the entities are only read after loading.
type liveLoads struct {
	mu    sync.Mutex
	m     map[liveKey]*liveLoad
	swept time.Time
}

type liveKey struct {
	event int
	field string
}

type liveLoad struct {
	once sync.Once
	at   time.Time
	v    any
	err  error
}

// liveLoadTTL bounds how long a load is shared.
const liveLoadTTL = 5 * time.Second

// load returns the value of field for event, loading it once.
func (l *liveLoads) load(event int, field string, fn func() (any, error)) (any, error) {
	now := time.Now()
	l.mu.Lock()
	if l.m == nil {
		l.m = map[liveKey]*liveLoad{}
	}
	if now.Sub(l.swept) > liveLoadTTL {
		for k, e := range l.m {
			if now.Sub(e.at) > liveLoadTTL {
				delete(l.m, k)
			}
		}
		l.swept = now
	}
	k := liveKey{event: event, field: field}
	e, ok := l.m[k]
	if !ok {
		e = &liveLoad{at: now}
		l.m[k] = e
	}
	l.mu.Unlock()
	e.once.Do(func() { e.v, e.err = fn() })
	return e.v, e.err
}

// eventChat is the chat of a live event, with its contact.
func (r *Resolver) eventChat(ctx context.Context, e *ent.Event) (*ent.Chat, error) {
	if e.ChatID == nil {
		return nil, nil
	}
	v, err := r.live.load(e.ID, "chat", func() (any, error) {
		// The context of the first subscriber may end while the others
		// wait for its load: it must not cancel theirs.
		return r.client.Chat.Query().Where(chat.ID(*e.ChatID)).WithContact().Only(context.WithoutCancel(ctx))
	})
	if err != nil {
		return nil, err
	}
	return v.(*ent.Chat), nil
}

// eventMessage is the message of a live event (payload messageId).
func (r *Resolver) eventMessage(ctx context.Context, e *ent.Event, id int) (*ent.Message, error) {
	v, err := r.live.load(e.ID, "message", func() (any, error) {
		return r.client.Message.Get(context.WithoutCancel(ctx), id)
	})
	if err != nil {
		return nil, err
	}
	return v.(*ent.Message), nil
}
