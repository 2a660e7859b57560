package gcfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{20 * mib, 128 * mib, 540},    // a small heap: the next collection at the floor
		{64 * mib, 128 * mib, 100},    // twice the live heap reaches the floor: the default
		{200 * mib, 128 * mib, 100},   // above the floor: the default, never less
		{60 * mib, 128 * mib, 113},    // just below half the floor
		{0, 128 * mib, 100},           // nothing measured yet
		{1, 1 << 40, 1_000_000},       // bounded
		{20 * mib, 0, DefaultPercent}, // no floor
	} {
		if got := Percent(c.live, c.floor); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.floor, got, c.want)
		}
	}
}

// currentPercent reads the collector's percentage.
func currentPercent() int {
	p := debug.SetGCPercent(DefaultPercent)
	debug.SetGCPercent(p)
	return p
}

// TestTunerSetsThePercentAfterEachCollection: after a collection the
// tuner sets the percentage that starts the next one at the floor, and
// Stop gives the default back.
func TestTunerSetsThePercentAfterEachCollection(t *testing.T) {
	type tuning struct {
		live    uint64
		percent int
	}
	got := make(chan tuning, 16)
	const floor = 1 << 30
	tu := start(floor, func(live uint64, p int) { got <- tuning{live, p} })
	defer tu.Stop()
	var first tuning
	// The sentinel's finalizer runs after the collection that finds it
	// unreachable; a collection is asked for until it has run.
	for attempt := 0; ; attempt++ {
		runtime.GC()
		select {
		case first = <-got:
		case <-time.After(time.Second):
			if attempt == 10 {
				t.Fatal("the tuner did not run after ten collections")
			}
			continue
		}
		break
	}
	if first.live == 0 || first.percent != Percent(first.live, floor) || first.percent <= DefaultPercent {
		t.Fatalf("tuned %+v, want the percentage of a %d-byte floor", first, floor)
	}
	if p := currentPercent(); p != first.percent {
		t.Fatalf("the collector's percentage is %d, the tuner set %d", p, first.percent)
	}
	// It runs again after the next collection (the sentinel is re-armed).
	runtime.GC()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the tuner did not run after a second collection")
	}
	tu.Stop()
	if p := currentPercent(); p != DefaultPercent {
		t.Fatalf("after Stop the percentage is %d, want %d", p, DefaultPercent)
	}
	// Stopped, it sets nothing more.
	if _, p, ok := tu.tune(); ok || currentPercent() != DefaultPercent {
		t.Fatalf("a stopped tuner tuned (%d, %v); the percentage is %d", p, ok, currentPercent())
	}
}
