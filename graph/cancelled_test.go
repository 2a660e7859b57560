package graph

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// An operation whose request ended while it waited to begin (a transaction
// slot, a pooled connection) is CANCELLED and logged as a refusal, not as a
// failure of the server; the same error while the request goes on (the
// server's own deadline) stays INTERNAL and is logged as an error.
func TestAnOperationWhoseRequestEndedIsCancelledNotInternal(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	waited := resolverError{fmt.Errorf("ingest: wait for a transaction slot: %w", context.Canceled)}

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	ge := presentError(ended, log, waited)
	if code := ge.Extensions["code"]; code != string(CodeCancelled) || strings.Contains(ge.Message, "slot") {
		t.Errorf("the request's end: code %v, message %q; want CANCELLED without the cause", code, ge.Message)
	}
	if !strings.Contains(logs.String(), "level=INFO") || !strings.Contains(logs.String(), "code=CANCELLED") || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the request's end was logged as:\n%s\nwant one refusal at INFO with its code", logs.String())
	}

	logs.Reset()
	ge = presentError(context.Background(), log, waited)
	if code := ge.Extensions["code"]; code != "INTERNAL" {
		t.Errorf("the same error while the request goes on: code %v, want INTERNAL", code)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the same error while the request goes on was logged as:\n%s\nwant an error", logs.String())
	}
}
