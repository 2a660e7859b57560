package graph

import (
	"context"
	"sync"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// LiveLoads shares what a live event's fields load between the subscribers
// the event reaches: its chat (with the contact, which panels show) and its
// message, read together, once per event instead of once per subscriber, and once
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
	// id, id2: the entities loaded (a chat and a message).
	id, id2 int
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

// Viewed shares the view a local commit read of what its events name
// (desk.WithCommitViews) with their subscribers: the events that name its
// chat, and its message or none, load nothing. Called before Committed.
func (l *LiveLoads) Viewed(events []*ent.Event, v desk.CommitView) {
	if len(events) == 0 {
		return
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(now)
	for _, e := range events {
		chatID, messageID := desk.EventNames(e)
		if chatID != v.ChatID || messageID != 0 && messageID != v.MessageID {
			continue
		}
		// The key load gives the event once Committed filed its commit.
		k := liveKey{group: events[0].ID, field: "view", id: v.ChatID, id2: messageID}
		if _, ok := l.m[k]; ok {
			continue
		}
		view := eventView{chat: v.Chat}
		if messageID != 0 {
			view.message = v.Message
		}
		ld := &liveLoad{at: now, v: view}
		ld.once.Do(func() {})
		l.m[k] = ld
	}
}

// load returns the value of k (its field and ids; the group is set here)
// for event, loading it once per event, or per commit (Committed).
func (l *LiveLoads) load(event int, k liveKey, fn func() (any, error)) (any, error) {
	now := time.Now()
	l.mu.Lock()
	l.sweepLocked(now)
	k.group = event
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

// eventView is what a live event names: its chat (with the contact) and
// its message (payload messageId), read together (Desk.EventView).
type eventView struct {
	chat    *ent.Chat
	message *ent.Message
}

// view loads the chat and message of a live event, once for the
// subscribers of its commit (or of the event).
func (r *Resolver) view(ctx context.Context, e *ent.Event) (eventView, error) {
	chatID, messageID := desk.EventNames(e)
	v, err := r.live.load(e.ID, liveKey{field: "view", id: chatID, id2: messageID}, func() (any, error) {
		// The context of the first subscriber may end while the others
		// wait for its load: it must not cancel theirs.
		c, m, err := r.desk.EventView(context.WithoutCancel(ctx), chatID, messageID)
		return eventView{chat: c, message: m}, err
	})
	if err != nil {
		return eventView{}, err
	}
	return v.(eventView), nil
}

// eventChat is the chat of a live event, with its contact.
func (r *Resolver) eventChat(ctx context.Context, e *ent.Event) (*ent.Chat, error) {
	if e.ChatID == nil {
		return nil, nil
	}
	v, err := r.view(ctx, e)
	return v.chat, err
}

// eventMessage is the message of a live event (payload messageId).
func (r *Resolver) eventMessage(ctx context.Context, e *ent.Event) (*ent.Message, error) {
	if _, messageID := desk.EventNames(e); messageID == 0 {
		return nil, nil
	}
	v, err := r.view(ctx, e)
	if err == nil && v.message == nil {
		err = desk.Fail(desk.CodeNotFound, "the event's message is gone")
	}
	return v.message, err
}
