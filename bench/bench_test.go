package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the bare websocket child too (the
// subscribers scenario re-executes the running program).
func TestMain(m *testing.M) {
	if os.Getenv(bareEnv) == "1" {
		runBareServer()
		return
	}
	os.Exit(m.Run())
}

// TestQuickIngestSQLite runs the harness's setup and ingest on SQLite for a
// few seconds, so that `go test ./...` stays fast unless asked:
//
//	PARLEY_BENCH_TEST=1 go test ./bench/
//
// CI can run `go run ./bench -quick -db sqlite` instead (every scenario).
func TestQuickIngestSQLite(t *testing.T) {
	if os.Getenv("PARLEY_BENCH_TEST") == "" {
		t.Skip("set PARLEY_BENCH_TEST=1 to run the benchmark harness")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-quick", "-db", "sqlite", "-scenario", "ingest"}, &out); err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	for _, want := range []string{"| SQLite | Ingest c=8: messages/s |", "Ingest c=8: stored / routed / evented"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report has no %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "| LOST |") {
		t.Errorf("messages were lost:\n%s", out.String())
	}
}
