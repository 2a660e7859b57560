package main

import (
	"testing"

	"github.com/parleydesk/parley/server/app"
)

// TestGCFloorYieldsToTheOperatorsGOGC: the heap floor runs by default, not
// when it is 0, nor when the operator set GOGC.
func TestGCFloorYieldsToTheOperatorsGOGC(t *testing.T) {
	cfg, err := app.LoadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	unset := func(string) (string, bool) { return "", false }
	gogc := func(k string) (string, bool) { return "200", k == "GOGC" }
	if tu := gcFloor(cfg, unset); tu == nil {
		t.Error("no heap floor by default")
	} else {
		tu.Stop()
	}
	if tu := gcFloor(cfg, gogc); tu != nil {
		tu.Stop()
		t.Error("a heap floor though GOGC is set")
	}
	cfg.GCHeapFloor = 0
	if tu := gcFloor(cfg, unset); tu != nil {
		tu.Stop()
		t.Error("a heap floor though PARLEY_GC_HEAP_FLOOR_BYTES is 0")
	}
}
