package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/server/app"
)

// BenchmarkWebhookInProcess runs the whole server (the same app.New and
// App.Run as server/main.go) inside the test process, so that Go's profilers
// see it, and posts signed Telegram and WhatsApp webhooks to it over
// loopback HTTP at concurrency 8 (PARLEY_BENCH_CONC; 30% new contacts, as
// the ingest scenario).
// It reports, per delivery, the SQL statements the server sent through ent,
// the transactions it committed, the statements it sent outside any
// transaction (each one an implicit transaction of its own) and those held
// for their transaction's commit (no round trip of their own on
// PostgreSQL); -v lists the statements by shape ("held" for the latter).
// On PostgreSQL set PARLEY_BENCH_PG; SQLite otherwise:
//
//	PARLEY_BENCH_PG=postgres://postgres@127.0.0.1:5432/test?sslmode=disable \
//	  go test ./bench -run '^$' -bench WebhookInProcess -benchtime 3000x -v \
//	  -cpuprofile /tmp/cpu.out -mutexprofile /tmp/mutex.out -blockprofile /tmp/block.out
//
// On PostgreSQL it also reports every commit pg_stat_database counted in
// the run's database (pg-commits/op), statements sent below ent (the
// driver's, the LISTEN connection's) and the counter reads included.
func BenchmarkWebhookInProcess(b *testing.B) {
	ctx := context.Background()
	rec := &statementRecorder{statementCounts: statementCounts{shapes: map[string]int{}}}
	base, db := startInProcess(b, rec.record)
	c := &gqlClient{base: base, http: newHTTPClient(16)}
	admin, _, err := c.login(ctx, adminEmail, benchPass)
	if err != nil {
		b.Fatal(err)
	}
	set, err := newSet(ctx, c, db, admin, "InProcess", "TO_ALL", 4)
	if err != nil {
		b.Fatal(err)
	}
	tr := newTraffic(base, newShare, set)
	web := newHTTPClient(16)
	drive(ctx, web, tr, loadSpec{conc: 8, dur: time.Minute, maxN: 200}, hooks{})
	for i := 1; tr.room() < int(float64(b.N)*newShare)+100; i++ {
		s, err := newSet(ctx, c, db, admin, fmt.Sprintf("InProcess %d", i), "TO_ALL", 4)
		if err != nil {
			b.Fatal(err)
		}
		tr.add(s)
	}
	time.Sleep(time.Second) // the warm-up's jobs and events
	conc := 8
	if v, err := strconv.Atoi(os.Getenv("PARLEY_BENCH_CONC")); err == nil && v > 0 {
		conc = v
	}
	var x0 int64
	if db.kind == dbPostgres {
		if x0, err = db.settledCommits(ctx, statsQuiet, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	rec.reset()
	b.ResetTimer()
	res := drive(ctx, web, tr, loadSpec{conc: conc, dur: 10 * time.Minute, maxN: b.N}, hooks{})
	b.StopTimer()
	time.Sleep(1500 * time.Millisecond) // profile fetches and the event pump settle
	if res.failed > 0 {
		b.Fatalf("%d deliveries refused: %s", res.failed, res.errSummary())
	}
	n := float64(max(res.acked, 1))
	st := rec.snapshot()
	if db.kind == dbPostgres {
		// Every commit in the database, the driver's own statements and the
		// counter reads included (compare with commits/op and
		// autocommit-stmts/op, which count what ent sends).
		x1, err := db.settledCommits(ctx, statsQuiet, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(x1-x0)/n, "pg-commits/op")
	}
	b.ReportMetric(float64(st.statements)/n, "stmts/op")
	b.ReportMetric(float64(st.commits)/n, "commits/op")
	b.ReportMetric(float64(st.autocommit)/n, "autocommit-stmts/op")
	b.ReportMetric(float64(st.atCommit)/n, "held-stmts/op")
	b.ReportMetric(res.rate(), "msgs/s")
	b.ReportMetric(float64(res.ack.pct(99).Microseconds())/1000, "ack-p99-ms")
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range st.shapes {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v })
	var sb strings.Builder
	for _, e := range all[:min(40, len(all))] {
		fmt.Fprintf(&sb, "%6.2f/delivery  %s\n", float64(e.v)/n, e.k)
	}
	b.Logf("%d deliveries; statements by shape:\n%s", res.acked, sb.String())
}

// startInProcess starts app.New + App.Run in this process on a fresh
// database (PostgreSQL with PARLEY_BENCH_PG, else SQLite), ent's statements
// going through hook when given; everything stops at the end of the test.
func startInProcess(tb testing.TB, hook func(context.Context, string)) (string, *database) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var d *database
	var err error
	if u := os.Getenv("PARLEY_BENCH_PG"); u != "" {
		if err := checkLoopback(u); err != nil {
			tb.Fatal(err)
		}
		if d, err = newPostgres(ctx, u, "inproc"); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(d.drop)
	} else {
		d = newSQLite(tb.TempDir(), "parley")
	}
	fake := newFakeProviders()
	tb.Cleanup(fake.srv.Close)
	dataDir := tb.TempDir()
	env := map[string]string{"DATABASE_URL": d.url, "PARLEY_DATA_DIR": dataDir, "PARLEY_ADMIN_EMAIL": adminEmail,
		"PARLEY_ADMIN_PASSWORD": benchPass, "PARLEY_TELEGRAM_API_URL": fake.srv.URL, "PARLEY_GRAPH_API_URL": fake.srv.URL}
	cfg, err := app.LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatal(err)
	}
	sdb, err := store.Open(ctx, d.url, dataDir)
	if err != nil {
		tb.Fatal(err)
	}
	if hook != nil {
		sdb = sdb.WithQueryHook(hook)
	}
	a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), app.WithDB(sdb))
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	return "http://" + ln.Addr().String(), d
}

// TestSubscriptionMemoryInProcess holds PARLEY_BENCH_SUBS (default 2000)
// panel subscriptions on an in-process server and reports the goroutines
// and memory per subscription (the benchmark's client connections live in
// the same process: the goroutine list tells them apart); with
// PARLEY_BENCH_PROFILE_DIR it writes heap and goroutine profiles there for
// go tool pprof.
func TestSubscriptionMemoryInProcess(t *testing.T) {
	if os.Getenv("PARLEY_BENCH_TEST") == "" {
		t.Skip("set PARLEY_BENCH_TEST=1 to run the benchmark harness")
	}
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("PARLEY_BENCH_SUBS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	base, d := startInProcess(t, nil)
	ops, err := seedOperators(ctx, d, "mem", n, nil)
	if err != nil {
		t.Fatal(err)
	}
	measure := func() (runtime.MemStats, int) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m, runtime.NumGoroutine()
	}
	m0, g0 := measure()
	st := &subStats{}
	subs, err := connectMany(ctx, base, n, 32, func(i int) string { return ops[i].Token }, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(subs)
	time.Sleep(2 * time.Second)
	m1, g1 := measure()
	per := func(a, b uint64) string { return fmt.Sprintf("%.1f KB", (float64(b)-float64(a))/float64(n)/1024) }
	t.Logf("%d subscriptions (server and client in this process): %.1f goroutines each; heap in use %s, stacks %s, "+
		"runtime total (Sys) %s per subscription",
		n, float64(g1-g0)/float64(n), per(m0.HeapInuse, m1.HeapInuse), per(m0.StackInuse, m1.StackInuse), per(m0.Sys, m1.Sys))
	var sb strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&sb, 1)
	var lines []string
	for _, block := range strings.Split(sb.String(), "\n\n") {
		head, rest, _ := strings.Cut(block, "\n")
		cnt, _, _ := strings.Cut(head, " @")
		if c, err := strconv.Atoi(cnt); err == nil && c >= n/2 {
			// The innermost frame of ours or a library's, past the runtime.
			frames := strings.Split(rest, "\n")
			where := ""
			for _, f := range frames {
				f = strings.TrimSpace(strings.TrimPrefix(f, "#"))
				if fs := strings.Fields(f); len(fs) >= 2 && !strings.HasPrefix(fs[1], "runtime.") && !strings.HasPrefix(fs[1], "internal/") {
					where = fs[1]
					break
				}
			}
			lines = append(lines, fmt.Sprintf("%6d  %s", c, where))
		}
	}
	t.Logf("goroutines by where they wait (groups of at least n/2):\n%s", strings.Join(lines, "\n"))
	if dir := os.Getenv("PARLEY_BENCH_PROFILE_DIR"); dir != "" {
		for _, name := range []string{"heap", "goroutine"} {
			f, err := os.Create(filepath.Join(dir, "inprocess-"+name+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			_ = pprof.Lookup(name).WriteTo(f, 0)
			f.Close()
		}
	}
	if st.ended.Load() > 0 {
		t.Errorf("%d subscriptions ended: %v", st.ended.Load(), st.lastEnd.Load())
	}
}

// statementRecorder counts what ent sends to the database.
type statementRecorder struct {
	mu sync.Mutex
	statementCounts
}

type statementCounts struct {
	statements int
	commits    int
	autocommit int
	// atCommit counts the writes held for their transaction's commit
	// (store.AtCommit): on PostgreSQL they cost no round trip of their own.
	atCommit int
	shapes   map[string]int
}

func (r *statementRecorder) record(ctx context.Context, s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case strings.HasSuffix(s, ": committed"):
		r.commits++
		return
	case strings.HasSuffix(s, ": started"), strings.HasSuffix(s, ": rollbacked"):
		return
	}
	auto := strings.HasPrefix(s, "driver.")
	if auto {
		r.autocommit++
	}
	r.statements++
	held := store.IsAtCommit(ctx)
	if held {
		r.atCommit++
	}
	q := s
	if i := strings.Index(q, "query="); i >= 0 {
		q = q[i+len("query="):]
	}
	if i := strings.Index(q, " args=["); i >= 0 {
		q = q[:i]
	}
	q = strings.Join(strings.Fields(q), " ")
	if len(q) > 110 {
		q = q[:110]
	}
	kind := "tx   "
	switch {
	case auto:
		kind = "auto "
	case held:
		kind = "held "
	}
	r.shapes[kind+q]++
}

func (r *statementRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statements, r.commits, r.autocommit, r.atCommit = 0, 0, 0, 0
	r.shapes = map[string]int{}
}

func (r *statementRecorder) snapshot() statementCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := statementCounts{statements: r.statements, commits: r.commits, autocommit: r.autocommit, atCommit: r.atCommit,
		shapes: map[string]int{}}
	for k, v := range r.shapes {
		c.shapes[k] = v
	}
	return c
}
