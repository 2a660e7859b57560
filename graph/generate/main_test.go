package main

import (
	"os"
	"strings"
	"testing"
)

// TestTheExecutorResolvesFieldsInOneGoroutine checks the generated executor
// against the plugin: gqlgen schedules a field on a goroutine of its own
// with FieldSet.ResolveConcurrently (or Concurrently, in older releases);
// graph/generated.go, generated without sequentialFields, calls it for
// every field whose resolver takes a context.
func TestTheExecutorResolvesFieldsInOneGoroutine(t *testing.T) {
	b, err := os.ReadFile("../generated.go")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	if !strings.Contains(src, "func (ec *executionContext) _LiveEvent(") {
		t.Fatal("graph/generated.go has no executor for LiveEvent: not gqlgen's output?")
	}
	for _, call := range []string{".ResolveConcurrently(", ".Concurrently("} {
		if n := strings.Count(src, call); n > 0 {
			t.Errorf("graph/generated.go calls %s %d times: run go generate ./... (graph/generate adds sequentialFields)", call, n)
		}
	}
}
