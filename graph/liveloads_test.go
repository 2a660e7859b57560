package graph

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// The subscribers an event reaches resolve its chat and message with one
// load per event and field, however many of them ask at once; another event
// or field loads again, and a failed load is shared as well (not retried by
// each subscriber).
func TestLiveLoadsOncePerEventAndField(t *testing.T) {
	l := NewLiveLoads()
	var calls atomic.Int32
	fn := func() (any, error) { calls.Add(1); return "chat", nil }
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			v, err := l.load(7, liveKey{field: "chat", id: 1}, fn)
			if err != nil || v != "chat" {
				t.Errorf("load = %v, %v", v, err)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("50 subscribers of one event loaded its chat %d times, want 1", n)
	}
	if _, _ = l.load(7, liveKey{field: "message", id: 1}, fn); calls.Load() != 2 {
		t.Fatalf("another field of the event was not loaded")
	}
	if _, _ = l.load(8, liveKey{field: "chat", id: 1}, fn); calls.Load() != 3 {
		t.Fatalf("another event's chat was not loaded")
	}
	boom := errors.New("boom")
	fail := func() (any, error) { calls.Add(1); return nil, boom }
	for range 3 {
		if _, err := l.load(9, liveKey{field: "chat", id: 1}, fail); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want the load's error", err)
		}
	}
	if calls.Load() != 4 {
		t.Fatalf("a failed load ran %d times for one event, want once", calls.Load()-3)
	}
}

// The events one local commit appended (a new chat's creation, its message
// and one offer per operator) share one load of each chat and message they
// name; another chat of the commit, or the same chat in the next commit,
// loads again.
func TestLiveLoadsOncePerCommitAndEntity(t *testing.T) {
	l := NewLiveLoads()
	var calls atomic.Int32
	fn := func() (any, error) { calls.Add(1); return "chat", nil }
	events := func(ids ...int) []*ent.Event {
		out := make([]*ent.Event, len(ids))
		for i, id := range ids {
			out[i] = &ent.Event{ID: id}
		}
		return out
	}
	l.Committed(events(10, 11, 12, 13))
	for _, id := range []int{12, 10, 13, 11} {
		if _, err := l.load(id, liveKey{field: "view", id: 5}, fn); err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("four events of one commit naming one chat loaded it %d times, want 1", n)
	}
	if _, _ = l.load(11, liveKey{field: "view", id: 6}, fn); calls.Load() != 2 {
		t.Fatalf("another chat of the commit was not loaded")
	}
	if _, _ = l.load(11, liveKey{field: "view", id: 5, id2: 9}, fn); calls.Load() != 3 {
		t.Fatalf("the chat with a message of the commit was not loaded apart from the chat alone")
	}
	l.Committed(events(14, 15))
	if _, _ = l.load(15, liveKey{field: "view", id: 5}, fn); calls.Load() != 4 {
		t.Fatalf("the chat was not loaded again for the next commit")
	}
	if _, _ = l.load(16, liveKey{field: "view", id: 5}, fn); calls.Load() != 5 {
		t.Fatalf("an event no commit reported (another instance's) was not loaded on its own")
	}
}

// A commit's view (desk.WithCommitViews) serves its events that name its
// chat, with its message or none, without a load; an event of the commit
// naming another message, or another chat, loads its own.
func TestLiveLoadsServeTheViewReadWithTheCommit(t *testing.T) {
	l := NewLiveLoads()
	chatID := func(id int) *int { return &id }
	events := []*ent.Event{
		{ID: 20, ChatID: chatID(5)},
		{ID: 21, ChatID: chatID(5), Payload: map[string]any{"messageId": float64(9)}},
		{ID: 22, ChatID: chatID(5), Payload: map[string]any{"messageId": float64(8)}},
		{ID: 23, ChatID: chatID(6)},
	}
	c, m := &ent.Chat{ID: 5}, &ent.Message{ID: 9}
	l.Viewed(events, desk.CommitView{ChatID: 5, MessageID: 9, Chat: c, Message: m})
	l.Committed(events)
	var calls atomic.Int32
	fn := func() (any, error) { calls.Add(1); return eventView{}, nil }
	for _, k := range []struct {
		event int
		key   liveKey
		want  eventView
	}{{20, liveKey{field: "view", id: 5}, eventView{chat: c}}, {21, liveKey{field: "view", id: 5, id2: 9}, eventView{chat: c, message: m}}} {
		v, err := l.load(k.event, k.key, fn)
		if err != nil || v != k.want {
			t.Fatalf("event %d: %v, %v; want the commit's view %v", k.event, v, err, k.want)
		}
	}
	if calls.Load() != 0 {
		t.Fatalf("the events the view serves loaded %d times", calls.Load())
	}
	l.load(22, liveKey{field: "view", id: 5, id2: 8}, fn) //nolint:errcheck
	l.load(23, liveKey{field: "view", id: 6}, fn)         //nolint:errcheck
	if calls.Load() != 2 {
		t.Fatalf("another message and another chat of the commit loaded %d times, want 2", calls.Load())
	}
}
