// Package gcfloor keeps Go's garbage collector from running often while the
// live heap is small. With the runtime's default (GOGC=100) a collection
// starts whenever the heap has grown by as much as survived the last one: a
// server whose live heap is 20 MB collects every 20 MB of allocation, every
// fifth of a second under load, and on two cores each cycle's marking (a
// fourth of the processors, plus the assists it asks of the goroutines
// that allocate meanwhile) shows in every request that overlaps it
// (README, Performance).
//
// Start raises the collector's percentage after each collection so that the
// next one starts when the heap reaches the floor, or twice the live heap
// (the default's target) when that is more: a small heap costs up to the
// floor in memory and collects rarely; a heap above half the floor
// collects exactly as with the default.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultPercent is the collector's percentage the floor never goes below
// (the runtime's default, GOGC=100).
const DefaultPercent = 100

// maxPercent bounds the percentage (a live heap of a few hundred kilobytes
// would ask for more than the runtime's int holds meaningfully).
const maxPercent = 1_000_000

// Percent is the collector's percentage that starts the next collection
// when the heap reaches floor, given the heap that survived the last one
// (live), and never less than DefaultPercent.
func Percent(live, floor uint64) int {
	if live == 0 || floor <= 2*live {
		return DefaultPercent
	}
	p := (floor - live) * 100 / live
	return int(min(max(p, DefaultPercent), maxPercent))
}

// Tuner sets the percentage after each collection until stopped.
type Tuner struct {
	floor uint64
	// mu orders tune and Stop: no percentage is set after Stop.
	mu      sync.Mutex
	stopped bool
	sample  []metrics.Sample
	percent int
	// tuned, when set, is told the live heap and the percentage after each
	// tuning, once the next cycle's sentinel is armed (tests).
	tuned func(live uint64, percent int)
}

const liveHeap = "/gc/heap/live:bytes"

// Start tunes the collector for floor bytes until Stop, starting now. The
// process should run one Tuner at most, and none when the operator set
// GOGC (the server checks).
func Start(floor uint64) *Tuner {
	return start(floor, nil)
}

func start(floor uint64, tuned func(uint64, int)) *Tuner {
	t := &Tuner{floor: floor, sample: []metrics.Sample{{Name: liveHeap}}, percent: DefaultPercent, tuned: tuned}
	t.arm()
	return t
}

// Stop ends the tuning and restores the default percentage.
func (t *Tuner) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	debug.SetGCPercent(DefaultPercent)
}

// sentinel is an object nothing refers to: its finalizer runs after the
// collection that finds it unreachable, once per cycle (it holds a pointer,
// so it is never one of the runtime's tiny allocations, whose finalizers
// may never run).
type sentinel struct{ t *Tuner }

// arm allocates the next cycle's sentinel.
func (t *Tuner) arm() {
	runtime.SetFinalizer(&sentinel{t: t}, func(s *sentinel) {
		if live, p, ok := s.t.tune(); ok {
			s.t.arm()
			if s.t.tuned != nil {
				s.t.tuned(live, p)
			}
		}
	})
}

// tune sets the percentage from the heap the last collection left (it runs
// on the finalizer goroutine) and returns both; ok is false once stopped.
func (t *Tuner) tune() (live uint64, percent int, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return 0, 0, false
	}
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0, t.percent, true
	}
	live = t.sample[0].Value.Uint64()
	if p := Percent(live, t.floor); p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
	return live, t.percent, true
}
