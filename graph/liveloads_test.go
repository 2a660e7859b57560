package graph

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// The subscribers an event reaches resolve its chat and message with one
// load per event and field, however many of them ask at once; another event
// or field loads again, and a failed load is shared as well (not retried by
// each subscriber).
func TestLiveLoadsOncePerEventAndField(t *testing.T) {
	var l liveLoads
	var calls atomic.Int32
	fn := func() (any, error) { calls.Add(1); return "chat", nil }
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			v, err := l.load(7, "chat", fn)
			if err != nil || v != "chat" {
				t.Errorf("load = %v, %v", v, err)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("50 subscribers of one event loaded its chat %d times, want 1", n)
	}
	if _, _ = l.load(7, "message", fn); calls.Load() != 2 {
		t.Fatalf("another field of the event was not loaded")
	}
	if _, _ = l.load(8, "chat", fn); calls.Load() != 3 {
		t.Fatalf("another event's chat was not loaded")
	}
	boom := errors.New("boom")
	fail := func() (any, error) { calls.Add(1); return nil, boom }
	for range 3 {
		if _, err := l.load(9, "chat", fail); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want the load's error", err)
		}
	}
	if calls.Load() != 4 {
		t.Fatalf("a failed load ran %d times for one event, want once", calls.Load()-3)
	}
}
