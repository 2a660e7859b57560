package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/parleydesk/parley/desk/store"
)

// runner holds what the scenarios share.
type runner struct {
	opt  options
	rep  *report
	tmp  string
	bin  string
	fake *fakeProviders
	// base is the bare insert+commit result per database and concurrency;
	// bare keeps PostgreSQL's bare insert bench open for the ingest
	// scenario's measurements around its phases.
	base map[string]map[int]baseStat
	bare map[string]*bareInserts
	// capacity is the ingest rate at c=8 per database (half of it loads the
	// latency scenario).
	capacity map[string]float64
	// pipe is the bare pipeline's webhook → panel latency per database (the
	// limit the latency scenarios stand beside).
	pipe map[string]pipeLimit
}

type baseStat struct {
	tps float64
	lat samples
}

var concurrencies = []int{1, 8, 32}

func dbLabel(kind string) string {
	if kind == dbPostgres {
		return "PostgreSQL"
	}
	return "SQLite"
}

// ---------------------------------------------------------------------------
// Scenario 1: the bare write rate of the database.

func (r *runner) baseline(ctx context.Context, kind string) error {
	b, err := r.openBare(ctx, kind)
	if err != nil {
		return err
	}
	r.base[kind] = map[int]baseStat{}
	for _, c := range concurrencies {
		st, err := b.measure(ctx, c, r.opt.duration)
		if err != nil {
			b.close()
			return err
		}
		r.base[kind][c] = st
		r.rep.add(row{DB: dbLabel(kind), Figure: fmt.Sprintf("Bare insert+commit, c=%d: transactions/s", c),
			Value: num(st.tps), Limit: "(the limit)"})
		r.rep.add(row{DB: dbLabel(kind), Figure: fmt.Sprintf("Bare insert+commit, c=%d: latency p50 / p99", c),
			Value: p50p99(st.lat), Limit: "(the limit)"})
	}
	// The ingest scenario measures PostgreSQL's bare rate again around each
	// of its phases (see ingest); runDB closes it.
	if kind == dbPostgres && b.d.dedicated() {
		r.bare[kind] = b
	} else {
		b.close()
	}
	return nil
}

// bareInserts measures a database's bare write rate: BEGIN; INSERT one row
// into an indexed table; COMMIT, on c connections at once. Each measurement
// writes a fresh table and drops it, so that earlier ones leave it no
// larger index and no table for autovacuum to work on later.
type bareInserts struct {
	d    *database
	db   *sql.DB
	keep bool
	n    int
}

func (r *runner) openBare(ctx context.Context, kind string) (*bareInserts, error) {
	b := &bareInserts{keep: r.opt.keep}
	var err error
	if kind == dbPostgres {
		if b.d, err = newPostgres(ctx, r.opt.pgURL, "base"); err != nil {
			return nil, err
		}
		b.db, err = sql.Open("postgres", b.d.url)
	} else {
		b.d = newSQLite(r.tmp, "baseline")
		b.db, err = sql.Open("sqlite", store.SQLiteDSN(b.d.sqlitePath))
	}
	if err != nil {
		b.close()
		return nil, err
	}
	// No idle connections: the bench stays open through the run (see
	// baseline) and should hold none of PostgreSQL's between measurements.
	b.db.SetMaxOpenConns(32)
	b.db.SetMaxIdleConns(0)
	return b, nil
}

// measure runs a short warm-up and then the measured phase of dur at
// concurrency c.
func (b *bareInserts) measure(ctx context.Context, c int, dur time.Duration) (baseStat, error) {
	b.n++
	table := fmt.Sprintf("bench_insert_%d", b.n)
	ins, err := createInsertTable(ctx, b.db, b.d.kind, table)
	if err != nil {
		return baseStat{}, err
	}
	defer func() {
		if !b.keep {
			_, _ = b.db.ExecContext(context.WithoutCancel(ctx), "DROP TABLE "+table)
		}
	}()
	conns := make([]*sql.Conn, c)
	defer func() {
		for _, cn := range conns {
			if cn != nil {
				cn.Close()
			}
		}
	}()
	for i := range conns {
		if conns[i], err = b.db.Conn(ctx); err != nil {
			return baseStat{}, fmt.Errorf("c=%d: connection %d: %w", c, i, err)
		}
	}
	body := strings.Repeat("Hello! Where is my order #A-1042? ", 2)
	var st baseStat
	for _, d := range []time.Duration{dur / 5, dur} {
		if st, err = insertLoop(ctx, conns, ins, body, d); err != nil {
			return st, fmt.Errorf("c=%d: %w", c, err)
		}
	}
	return st, nil
}

func (b *bareInserts) close() {
	if b.db != nil {
		b.db.Close()
	}
	if !b.keep {
		b.d.drop()
	}
}

// createInsertTable creates the indexed table a bare insert+commit writes
// and returns its insert statement.
func createInsertTable(ctx context.Context, db *sql.DB, kind, name string) (string, error) {
	ddl := []string{`CREATE TABLE ` + name + ` (id bigserial PRIMARY KEY, k bigint NOT NULL, body text NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now())`, `CREATE INDEX ` + name + `_k ON ` + name + ` (k)`}
	ins := `INSERT INTO ` + name + ` (k, body) VALUES ($1, $2)`
	if kind == dbSQLite {
		ddl[0] = `CREATE TABLE ` + name + ` (id integer PRIMARY KEY AUTOINCREMENT, k integer NOT NULL, body text NOT NULL,
			created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP)`
		ins = `INSERT INTO ` + name + ` (k, body) VALUES (?, ?)`
	}
	for _, q := range ddl {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return "", err
		}
	}
	return ins, nil
}

// insertLoop runs BEGIN; INSERT one row; COMMIT on every connection for dur.
func insertLoop(ctx context.Context, conns []*sql.Conn, ins, body string, dur time.Duration) (baseStat, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		all   samples
		first error
	)
	start := time.Now()
	deadline := start.Add(dur)
	for w, cn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat samples
			k := int64(w) << 40
			for n := 0; n < 2_000_000 && time.Now().Before(deadline) && ctx.Err() == nil; n++ {
				t0 := time.Now()
				tx, err := cn.BeginTx(ctx, nil)
				if err == nil {
					if _, err = tx.ExecContext(ctx, ins, k+int64(n)*7919%1_000_003, body); err != nil {
						_ = tx.Rollback()
					} else {
						err = tx.Commit()
					}
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					break
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	return baseStat{tps: float64(len(all)) / el.Seconds(), lat: all}, first
}

// ---------------------------------------------------------------------------
// The server under test.

// env is a running server over a fresh database, with an administrator.
type env struct {
	kind  string
	label string
	db    *database
	srv   *serverProc
	gql   *gqlClient
	web   *http.Client
	admin string
	keep  bool
}

func (r *runner) startEnv(ctx context.Context, kind, label string, extraEnv ...string) (*env, error) {
	e := &env{kind: kind, label: label, keep: r.opt.keep}
	var err error
	if kind == dbPostgres {
		if e.db, err = newPostgres(ctx, r.opt.pgURL, label); err != nil {
			return nil, err
		}
	} else {
		e.db = newSQLite(filepath.Join(r.tmp, kind+"-"+label), "parley")
		_ = os.MkdirAll(filepath.Dir(e.db.sqlitePath), 0o750)
	}
	start := time.Now()
	e.srv, err = startServer(ctx, r.bin, e.db.url, filepath.Join(r.tmp, kind+"-"+label), r.fake.srv.URL, extraEnv...)
	if err != nil {
		e.db.drop()
		return nil, err
	}
	e.gql = &gqlClient{base: e.srv.base, http: newHTTPClient(64)}
	e.web = newHTTPClient(64)
	if e.admin, _, err = e.gql.login(ctx, adminEmail, benchPass); err != nil {
		e.close()
		return nil, fmt.Errorf("admin login: %w", err)
	}
	logf("%s: server %s started (pid %d) on %s in %.1fs", dbLabel(kind), label, e.srv.pid, e.srv.addr, time.Since(start).Seconds())
	return e, nil
}

// died is an error with the end of the server's log when its process has
// exited, else nil.
func (e *env) died() error {
	if e.srv.alive() {
		return nil
	}
	return fmt.Errorf("the server died:\n%s", e.srv.logTail(30))
}

func (e *env) close() {
	e.srv.stop()
	if n := e.srv.logCount("ERROR"); n > 0 {
		logf("%s: the server logged %d errors; last lines:\n%s", dbLabel(e.kind), n, e.srv.logTail(10))
	}
	if !e.keep {
		e.db.drop()
	}
}

// noteLog adds the server's warnings and errors, by message, to the notes.
func (r *runner) noteLog(e *env) {
	var parts []string
	for msg, n := range e.srv.logSummary() {
		parts = append(parts, fmt.Sprintf("%d× %s", n, msg))
	}
	if len(parts) > 0 {
		sort.Strings(parts)
		r.rep.note("%s server (%s) logged: %s", dbLabel(e.kind), e.label, strings.Join(parts[:min(len(parts), 8)], "; "))
	}
}

// verify counts, over the sets, the inbound messages of their channels, the
// chats of their queues, those offered, and their MESSAGE_ADDED events.
func (e *env) verify(ctx context.Context, sets []*benchSet) (msgs, chats, offered, events int64, err error) {
	db, err := e.db.sql()
	if err != nil {
		return
	}
	p := e.db.ph
	for _, s := range sets {
		var m, c, o, ev int64
		err = db.QueryRowContext(ctx, fmt.Sprintf(`SELECT
		(SELECT count(*) FROM messages WHERE channel_id IN (%s, %s) AND direction = 'INBOUND'),
		(SELECT count(*) FROM chats WHERE queue_id = %s),
		(SELECT count(*) FROM chats WHERE queue_id = %s AND offered_at IS NOT NULL),
		(SELECT count(*) FROM events WHERE type = 'MESSAGE_ADDED' AND chat_id IN (SELECT id FROM chats WHERE queue_id = %s))`,
			p(1), p(2), p(3), p(4), p(5)), s.TG.ID, s.WA.ID, s.QueueID, s.QueueID, s.QueueID).Scan(&m, &c, &o, &ev)
		if err != nil {
			return
		}
		msgs, chats, offered, events = msgs+m, chats+c, offered+o, events+ev
	}
	return
}

// drain waits until the jobs a burst of deliveries left due now (profile
// fetches of new contacts, releases) are done, so that one phase does not
// pay for the previous one. It stops early when the count stops falling
// (a job backing off after failures), and logs what is left.
func (e *env) drain(ctx context.Context, timeout time.Duration) int {
	db, err := e.db.sql()
	if err != nil {
		return -1
	}
	const immediate = `status = 'PENDING' AND kind IN ('FETCH_PROFILE', 'DOWNLOAD', 'SEND', 'RELEASE', 'LATE_STATUS')`
	deadline := time.Now().Add(timeout)
	last, since := -1, time.Now()
	for {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM jobs WHERE "+immediate).Scan(&n); err != nil {
			return -1
		}
		if n != last {
			last, since = n, time.Now()
		}
		if n == 0 || time.Now().After(deadline) || time.Since(since) > 3*time.Second || ctx.Err() != nil {
			if n > 0 {
				var sb strings.Builder
				rows, err := db.QueryContext(ctx, "SELECT kind, attempts, coalesce(last_error, '') FROM jobs WHERE "+immediate+" LIMIT 3")
				if err == nil {
					for rows.Next() {
						var kind, lastErr string
						var attempts int
						if rows.Scan(&kind, &attempts, &lastErr) == nil {
							fmt.Fprintf(&sb, "; %s attempt %d %.120s", kind, attempts, lastErr)
						}
					}
					rows.Close()
				}
				logf("%s: %d jobs still pending%s", dbLabel(e.kind), n, sb.String())
			}
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ensureRoom adds sets made by mk until the traffic takes n more new chats
// without saturating its operators. It is called before a measured phase:
// the overflow count starts again (a warm-up may overflow its first set).
func ensureRoom(t *traffic, n int, mk func() (*benchSet, error)) error {
	for t.room() < n {
		s, err := mk()
		if err != nil {
			return err
		}
		t.add(s)
	}
	t.overflow.Store(0)
	return nil
}

// expectedNew estimates the new chats of a phase at rate, with a margin: a
// one-second warm-up on cold caches ran at a third of the phase's rate in
// some runs, so the rate counts as at least 1,000 messages/s.
func expectedNew(rate, newFrac float64, dur time.Duration) int {
	return int(max(rate, 1000)*2*newFrac*dur.Seconds()) + 50
}

// ---------------------------------------------------------------------------
// Scenario 2: ingest.

// newShare is the share of deliveries from new contacts (each opens a chat);
// the rest go to contacts whose chat is open.
const newShare = 0.3

func (r *runner) ingest(ctx context.Context, e *env) error {
	o := r.opt
	label := dbLabel(e.kind)
	traffics := map[int]*traffic{}
	for _, c := range concurrencies {
		k := 0
		mk := func() (*benchSet, error) {
			k++
			return newSet(ctx, e.gql, e.db, e.admin, fmt.Sprintf("Ingest c%d-%d", c, k), "TO_ALL", o.operators)
		}
		s, err := mk()
		if err != nil {
			return err
		}
		traffics[c] = newTraffic(e.srv.base, newShare, s)
		// Warm-up: connections, caches, a first population of contacts; and
		// enough operators for the phase at the rate it showed.
		w := drive(ctx, e.web, traffics[c], loadSpec{conc: c, dur: o.duration / 5}, hooks{})
		if err := ensureRoom(traffics[c], expectedNew(w.rate(), newShare, o.duration), mk); err != nil {
			return err
		}
	}
	countTx := e.kind == dbPostgres
	e.drain(ctx, 30*time.Second)
	// commits reads the commit counter once PostgreSQL has flushed what
	// its backends hold (see settledCommits).
	commits := func() (int64, error) {
		if o.quick {
			return e.db.xactCommit(ctx)
		}
		logf("%s: waiting for PostgreSQL to flush its transaction counters (still for %s)", label, statsQuiet)
		return e.db.settledCommits(ctx, statsQuiet, 60*time.Second)
	}
	// While waiting for the counters, PostgreSQL's bare insert rate is
	// measured again, in its own database (whose commits the server's
	// counter does not see): before each phase at the phase's concurrency,
	// and after it. A virtual machine's speed drifts by tens of percent
	// within minutes, so each phase's ratio compares it with the machine as
	// it was around it, not a minute or two earlier.
	bare := r.bare[e.kind]
	if !countTx || !e.db.dedicated() {
		bare = nil
	}
	around := map[int][]baseStat{}
	settle := func(cs ...int) (int64, error) {
		done := make(chan error, 1)
		go func() {
			for _, c := range cs {
				if bare == nil {
					break
				}
				st, err := bare.measure(ctx, c, o.duration)
				if err != nil {
					done <- fmt.Errorf("bare insert around the phase: %w", err)
					return
				}
				around[c] = append(around[c], st)
			}
			done <- nil
		}()
		x, err := commits()
		return x, errors.Join(err, <-done)
	}
	var x0 int64
	if countTx {
		var err error
		if x0, err = settle(concurrencies[0]); err != nil {
			return err
		}
	}
	txPerMsg := map[int]float64{}
	phaseDur := map[int]time.Duration{}
	msgs := map[int]int{}
	for i, c := range concurrencies {
		sets := traffics[c].allSets()
		m0, ch0, of0, ev0, err := e.verify(ctx, sets)
		if err != nil {
			return err
		}
		var prof *profiler
		if c == 8 && o.profileDir != "" {
			prof = startProfile(ctx, e, o.profileDir, o.duration)
		}
		t0 := time.Now()
		split := startCPUSplit(e.srv.pid)
		res := drive(ctx, e.web, traffics[c], loadSpec{conc: c, dur: o.duration}, hooks{})
		cpu := split.finish()
		if prof != nil {
			prof.finish()
		}
		e.drain(ctx, 30*time.Second)
		phaseDur[c] = time.Since(t0)
		msgs[c] = res.acked
		if countTx {
			next := []int{c}
			if i+1 < len(concurrencies) {
				next = append(next, concurrencies[i+1])
			}
			x1, err := settle(next...)
			if err != nil {
				return err
			}
			// The counted transactions include the counter reads (about
			// two a second while waiting) and the idle server's polls over
			// the wait: the "net" figure below takes the idle rate out.
			txPerMsg[c] = float64(x1-x0) / float64(max(res.acked, 1))
			phaseDur[c] = time.Since(t0)
			x0 = x1
		}
		m1, ch1, of1, ev1, err := e.verify(ctx, sets)
		if err != nil {
			return err
		}
		bs, bareLimit := r.base[e.kind][c], num(r.base[e.kind][c].tps)+" tx/s bare"
		if a := around[c]; len(a) == 2 {
			bs = baseStat{tps: (a[0].tps + a[1].tps) / 2, lat: append(slices.Clone(a[0].lat), a[1].lat...)}
			bareLimit = fmt.Sprintf("%s tx/s bare around the phase (%s before, %s after; %s at the run's start)",
				num(bs.tps), num(a[0].tps), num(a[1].tps), num(r.base[e.kind][c].tps))
		}
		rate := res.rate()
		if c == 8 {
			r.capacity[e.kind] = rate
		}
		target, verdict := "", ""
		if c == 8 && e.kind == dbPostgres {
			target, verdict = "≥ 20% of bare", r.rep.verdict(rate >= 0.2*bs.tps)
		}
		if c == 8 && e.kind == dbSQLite {
			target, verdict = "≥ 1,000 msg/s", r.rep.verdict(rate >= 1000)
		}
		val := num(rate) + " msg/s"
		if res.failed > 0 {
			val += fmt.Sprintf(" (%d refused: %s)", res.failed, res.errSummary())
		}
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("Ingest c=%d: messages/s", c), Value: val,
			Limit: bareLimit, Ratio: pctOf(rate, bs.tps), Target: target, Result: verdict})
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("Ingest c=%d: CPU used (cores)", c), Value: cpu})
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("Ingest c=%d: acknowledgement p50 / p99", c), Value: p50p99(res.ack),
			Limit: p50p99(bs.lat) + " bare", Ratio: ratio(float64(res.ack.pct(99)), float64(bs.lat.pct(99)))})
		dm, dch, dof, dev := m1-m0, ch1-ch0, of1-of0, ev1-ev0
		ok := dm == int64(res.acked) && dof == dch && dev == dm
		res2 := "ok"
		if !ok {
			res2 = "LOST"
		}
		val = fmt.Sprintf("%s acked: %s stored, %s/%s new chats offered, %s events", num(float64(res.acked)), num(float64(dm)), num(float64(dof)), num(float64(dch)), num(float64(dev)))
		if n := traffics[c].overflow.Load(); n > 0 {
			// The phase outran the operators provisioned from the
			// warm-up's rate: nothing is lost, routing only counted
			// more open offers than intended.
			val += fmt.Sprintf(" (%d new chats beyond the %d-offer rotation)", n, rotateAt)
		}
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("Ingest c=%d: stored / routed / evented", c),
			Value: val, Target: "all", Result: res2})
	}
	if countTx {
		bg := 0.0
		if !o.quick {
			// The idle server's own transactions (scheduler and event pump
			// polls) and the counter reads, over a window with nothing else.
			// Read as often as while settling, so that the reads count
			// alike.
			x1, t1 := x0, time.Now()
			x2 := x1
			for time.Since(t1) < statsFlush {
				time.Sleep(500 * time.Millisecond)
				var err error
				if x2, err = e.db.xactCommit(ctx); err != nil {
					return err
				}
			}
			bg = float64(x2-x1) / time.Since(t1).Seconds()
		}
		for _, c := range concurrencies {
			target, verdict := "", ""
			if c == 8 {
				target, verdict = "≤ 2", r.rep.verdict(txPerMsg[c] <= 2)
			}
			net := txPerMsg[c] - bg*phaseDur[c].Seconds()/float64(max(msgs[c], 1))
			val := fmt.Sprintf("%.2f", txPerMsg[c])
			if !o.quick {
				val += fmt.Sprintf(" (%.2f net of the idle %.1f/s)", net, bg)
			} else {
				val += " (quick: counters not settled)"
			}
			if !e.db.dedicated() {
				val += " (shared database: includes other clients)"
			}
			r.rep.add(row{DB: label, Figure: fmt.Sprintf("Ingest c=%d: committed transactions per message", c), Value: val,
				Limit: "1 (one commit)", Ratio: fmt.Sprintf("%.2f×", txPerMsg[c]), Target: target, Result: verdict})
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Scenarios 3 and 4: webhook → panel, inbound → offer.

// latencySet is a run of bench sets whose operators each hold a panel
// subscription.
type latencySet struct {
	e    *env
	r    *runner
	name string
	tr   *traffic
	subs []*subscription
	trk  *tracker
	st   *subStats
	k    int
}

func (r *runner) newLatencySet(ctx context.Context, e *env, name string, newFrac float64) (*latencySet, error) {
	ls := &latencySet{e: e, r: r, name: name, tr: newTraffic(e.srv.base, newFrac), trk: newTracker(), st: &subStats{}, k: r.opt.operators}
	s, err := ls.mk(ctx)
	if err != nil {
		return nil, err
	}
	ls.tr.add(s)
	// Warm-up: every operator receives the events of a few deliveries.
	ph := &deliveryPhase{}
	drive(ctx, e.web, ls.tr, loadSpec{conc: 1, dur: 10 * time.Second, maxN: 30}, ls.hooks(ph))
	if got := ls.trk.wait(ph, 10*time.Second); got.got < got.expected {
		ls.close()
		return nil, fmt.Errorf("warm-up: %d of %d events reached the panels (%v)", got.got, got.expected, ls.st.lastEnd.Load())
	}
	return ls, nil
}

// mk creates a set and subscribes each of its operators' panels.
func (ls *latencySet) mk(ctx context.Context) (*benchSet, error) {
	s, err := newSet(ctx, ls.e.gql, ls.e.db, ls.e.admin, fmt.Sprintf("%s %d", ls.name, len(ls.subs)/ls.k+1), "TO_ALL", ls.k)
	if err != nil {
		return nil, err
	}
	subs, err := connectMany(ctx, ls.e.srv.base, len(s.Ops), 4, func(i int) string { return s.Ops[i].Token }, ls.st,
		func(int) func(time.Time, *liveEvent) { return ls.trk.receive })
	if err != nil {
		return nil, err
	}
	ls.subs = append(ls.subs, subs...)
	// A subscription is live once the server has registered it, a moment
	// after the subscribe message: wait until a delivery reaches every
	// panel of the set.
	for attempt := 1; ; attempt++ {
		ph := &deliveryPhase{}
		d := delivery{seq: msgSeq.Add(1), isNew: true, contact: contactRef{n: contactSeq.Add(1), set: s}}
		d.req = s.telegramRequest(ls.e.srv.base, d.contact, d.seq).WithContext(ctx)
		ls.trk.expect(d, time.Now(), ls.k, ph)
		resp, err := ls.e.web.Do(d.req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := ls.trk.wait(ph, time.Second); got.got == got.expected {
			break
		}
		if attempt == 20 {
			return nil, fmt.Errorf("the panel subscriptions of %s receive nothing (%v)", s.Name, ls.st.lastEnd.Load())
		}
	}
	return s, nil
}

// prepare makes room for a phase of dur at rate.
func (ls *latencySet) prepare(ctx context.Context, rate float64, dur time.Duration) error {
	return ensureRoom(ls.tr, expectedNew(rate, ls.tr.newFrac, dur), func() (*benchSet, error) { return ls.mk(ctx) })
}

func (ls *latencySet) hooks(ph *deliveryPhase) hooks { return trackHooks(ls.trk, ls.k, ph) }

// trackHooks make trk expect k receipts of each delivery into ph.
func trackHooks(trk *tracker, k int, ph *deliveryPhase) hooks {
	return hooks{
		before: func(d delivery, start time.Time) { trk.expect(d, start, k, ph) },
		after: func(d delivery, _ time.Time, ok bool) {
			if !ok {
				trk.failed(d)
			} else {
				trk.acked(d, time.Now())
			}
		},
	}
}

func (ls *latencySet) close() { closeAll(ls.subs) }

func delivered(ph deliveryPhase) string {
	return fmt.Sprintf("%s of %s delivered", num(float64(ph.got)), num(float64(ph.expected)))
}

func (r *runner) panelLatency(ctx context.Context, e *env) error {
	label := dbLabel(e.kind)
	capacity := r.capacity[e.kind]
	if r.opt.panelRate > 0 {
		// Set by -panel-rate: runs of different builds compare at one rate.
		capacity = 2 * r.opt.panelRate
		r.rep.note("%s: the webhook → panel scenario's c=8 rate is set to %s msg/s (-panel-rate).", label, num(r.opt.panelRate))
	}
	if capacity == 0 {
		// The ingest scenario did not run: measure the capacity at c=8.
		s, err := newSet(ctx, e.gql, e.db, e.admin, "Calibration", "TO_ALL", r.opt.operators)
		if err != nil {
			return err
		}
		tr := newTraffic(e.srv.base, newShare, s)
		capacity = drive(ctx, e.web, tr, loadSpec{conc: 8, dur: min(r.opt.duration, 3*time.Second), maxN: 2400}, hooks{}).rate()
		r.rep.note("%s: ingest capacity at c=8 calibrated at %s msg/s for the webhook → panel scenario.", label, num(capacity))
	}
	pipe, err := r.barePipeline(ctx, e, capacity/2)
	if err != nil {
		return err
	}
	r.pipe[e.kind] = pipe
	ls, err := r.newLatencySet(ctx, e, "Panel", newShare)
	if err != nil {
		return err
	}
	defer ls.close()
	c1 := drive(ctx, e.web, ls.tr, loadSpec{conc: 1, dur: r.opt.duration / 5}, hooks{}).rate()
	if err := ls.measure(ctx, "c=1", loadSpec{conc: 1, dur: r.opt.duration}, c1, 5*time.Millisecond, pipe.c1, ""); err != nil {
		return err
	}
	if err := ls.measure(ctx, fmt.Sprintf("c=8 at half capacity (%s/s)", num(capacity/2)),
		loadSpec{conc: 8, rate: capacity / 2, dur: r.opt.duration}, capacity/2, 12*time.Millisecond, pipe.c8, ""); err != nil {
		return err
	}
	if err := ls.withPanelsCapacity(ctx, capacity, pipe.c8); err != nil {
		return err
	}
	if n := ls.st.ended.Load(); n > 0 {
		r.rep.note("%s: %d panel subscriptions ended during the webhook → panel scenario (%v).", label, n, ls.st.lastEnd.Load())
	}
	return nil
}

// measure runs one phase of the webhook → panel scenario, with room for
// its new chats at rate (messages/s), and reports its receipts beside the
// bare pipeline's (measured at bareAt, said in the limit when set); a
// target of 0 reports without a verdict.
func (ls *latencySet) measure(ctx context.Context, name string, spec loadSpec, rate float64, target time.Duration, bare samples, bareAt string) error {
	e, r, label := ls.e, ls.r, dbLabel(ls.e.kind)
	res, got, cpu, err := ls.phase(ctx, rate, spec, 10*time.Second)
	if err != nil {
		return err
	}
	targetText, verdict := "", ""
	if e.kind == dbPostgres && target > 0 {
		targetText, verdict = "p99 ≤ "+ms(target), r.rep.verdict(got.receipts.pct(99) <= target && got.got == got.expected)
	}
	r.rep.add(row{DB: label, Figure: "Webhook → panel " + name + ": p50 / p99",
		Value: p50p99(got.receipts) + fmt.Sprintf(" (%d operators per chat; %s; ack p50 / p99 %s, new contacts' %s; after the ack %s, new chats' offers %s)",
			ls.k, delivered(got), p50p99(res.ack), p50p99(res.ackNew), p50p99(got.afterAck), p50p99(got.afterAckNew)),
		Limit: p50p99(bare) + " bare pipeline" + bareAt, Ratio: ratio(float64(got.receipts.pct(99)), float64(bare.pct(99))),
		Target: targetText, Result: verdict})
	r.rep.add(row{DB: label, Figure: "Webhook → panel " + name + ": CPU per message (delivered to every panel)", Value: cpu})
	return nil
}

// phase makes room for a phase of spec at rate, lets the server settle,
// drives spec and waits up to wait for every receipt: it returns the
// drive's result, the receipts, and the CPU per acknowledged message.
func (ls *latencySet) phase(ctx context.Context, rate float64, spec loadSpec, wait time.Duration) (phaseResult, deliveryPhase, string, error) {
	if err := ls.prepare(ctx, rate, spec.dur); err != nil {
		return phaseResult{}, deliveryPhase{}, "", err
	}
	ls.e.drain(ctx, 30*time.Second)
	ph := &deliveryPhase{}
	split := startCPUSplit(ls.e.srv.pid)
	res := drive(ctx, ls.e.web, ls.tr, spec, ls.hooks(ph))
	got := ls.trk.wait(ph, wait)
	return res, got, split.perMessage(res.acked), nil
}

// withPanelsCapacity measures, for the record and with no target, the
// ingest capacity at c=8 while every message is delivered to the panels
// (the target's rate is half the capacity the ingest scenario measured with
// no panel connected), then the webhook → panel latency at half of it: the
// figure an alternative definition of the target's rate would give.
func (ls *latencySet) withPanelsCapacity(ctx context.Context, ingestCapacity float64, bare samples) error {
	r, label := ls.r, dbLabel(ls.e.kind)
	res, got, _, err := ls.phase(ctx, ingestCapacity, loadSpec{conc: 8, dur: min(r.opt.duration, 3*time.Second)}, 30*time.Second)
	if err != nil {
		return err
	}
	capacity := res.rate()
	limit := num(ingestCapacity) + " msg/s with no panel (the target's capacity)"
	if r.opt.panelRate > 0 {
		limit = num(ingestCapacity) + " msg/s (twice -panel-rate)"
	}
	r.rep.add(row{DB: label, Figure: "Ingest c=8 with every message delivered to the panels: messages/s",
		Value: num(capacity) + " msg/s (" + delivered(got) + ")", Limit: limit, Ratio: ratio(capacity, ingestCapacity)})
	if capacity == 0 {
		return nil
	}
	return ls.measure(ctx, fmt.Sprintf("c=8 at half the capacity with panels (%s/s, no target)", num(capacity/2)),
		loadSpec{conc: 8, rate: capacity / 2, dur: r.opt.duration}, capacity/2, 0, bare, " at "+num(ingestCapacity/2)+"/s")
}

func (r *runner) offerLatency(ctx context.Context, e *env) error {
	label := dbLabel(e.kind)
	pipe, ok := r.pipe[e.kind]
	if !ok {
		var err error
		if pipe, err = r.barePipeline(ctx, e, 0); err != nil {
			return err
		}
		r.pipe[e.kind] = pipe
	}
	ls, err := r.newLatencySet(ctx, e, "Offer", 1)
	if err != nil {
		return err
	}
	defer ls.close()
	c1 := drive(ctx, e.web, ls.tr, loadSpec{conc: 1, dur: r.opt.duration / 5, maxN: 400}, hooks{}).rate()
	res, got, cpu, err := ls.phase(ctx, c1, loadSpec{conc: 1, dur: r.opt.duration}, 10*time.Second)
	if err != nil {
		return err
	}
	bare := pipe.c1
	target, verdict := "", ""
	if e.kind == dbPostgres {
		target, verdict = "p99 ≤ 10 ms", r.rep.verdict(got.first.pct(99) <= 10*time.Millisecond && got.got == got.expected)
	}
	r.rep.add(row{DB: label, Figure: "Inbound → offer on a panel, c=1: p50 / p99",
		Value: p50p99(got.first) + fmt.Sprintf(" (first of %d operators; all: %s; %s; ack p99 %s)", ls.k,
			p50p99(got.receipts), delivered(got), ms(res.ack.pct(99))),
		Limit: p50p99(bare) + " bare pipeline", Ratio: ratio(float64(got.first.pct(99)), float64(bare.pct(99))),
		Target: target, Result: verdict})
	r.rep.add(row{DB: label, Figure: "Inbound → offer: CPU per message (offered on every panel)", Value: cpu})
	return nil
}

// ---------------------------------------------------------------------------
// Scenario 5: many subscribers.

// targetedMembers is how many of the subscribed operators are members of the
// queue whose chats are offered to one operator at a time.
const targetedMembers = 50

func (r *runner) subscribers(ctx context.Context, e *env) error {
	label := dbLabel(e.kind)
	o := r.opt
	maxN := o.subscribers[len(o.subscribers)-1]
	members := min(targetedMembers, o.subscribers[0])
	start := time.Now()
	ops, err := seedOperatorsRetrying(ctx, e.db, "sub", maxN, func(i int) bool { return i < members })
	if err != nil {
		return fmt.Errorf("seed operators: %w", err)
	}
	logf("%s: seeded %d operators with sessions in %.1fs", label, maxN, time.Since(start).Seconds())
	// A queue offering each chat to one member (TO_AVAILABLE), so that its
	// events target single operators among all the subscribers.
	set, err := newQueueSet(ctx, e.gql, e.admin, "Targeted", "TO_AVAILABLE", ops[:members])
	if err != nil {
		return err
	}
	tr := newTraffic(e.srv.base, 1, set)

	// The bare websocket server, measured at the same counts first.
	bare, err := startBareServer()
	if err != nil {
		return err
	}
	type bareFig struct {
		perConn float64
		idleCPU float64
		push    samples
	}
	bareAt := map[int]bareFig{}
	func() {
		defer bare.stop()
		time.Sleep(300 * time.Millisecond)
		rss0 := rss(bare.pid())
		var mu sync.Mutex
		starts := map[string]time.Time{}
		var lat samples
		sink := func(at time.Time, b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if t, ok := starts[string(b)]; ok {
				lat = append(lat, at.Sub(t))
				delete(starts, string(b))
			}
		}
		var conns []*bareConn
		defer func() { closeBare(conns) }()
		for _, n := range o.subscribers {
			more, err := connectBare(ctx, bare.base, len(conns), n, 32, sink)
			if err != nil {
				logf("%s: bare websocket server: %v", label, err)
				return
			}
			conns = append(conns, more...)
			time.Sleep(time.Second)
			f := bareFig{perConn: float64(rss(bare.pid())-rss0) / float64(n)}
			c0 := cpuTime(bare.pid())
			time.Sleep(2 * time.Second)
			f.idleCPU = (cpuTime(bare.pid()) - c0).Seconds() / 2
			mu.Lock()
			lat = nil
			mu.Unlock()
			rng := rand.New(rand.NewPCG(1, uint64(n)))
			deadline := time.Now().Add(o.duration)
			for k := 0; k < 50*int(o.duration/time.Second+1) && time.Now().Before(deadline); k++ {
				key := "p" + strconv.Itoa(k)
				i := rng.IntN(n)
				mu.Lock()
				starts[key] = time.Now()
				mu.Unlock()
				resp, err := e.web.Post(bare.base+"/push?i="+strconv.Itoa(i), "text/plain", strings.NewReader(key))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			f.push = append(samples(nil), lat...)
			mu.Unlock()
			bareAt[n] = f
		}
	}()

	// Parley: the same counts of authenticated panel subscriptions.
	trk := newTracker()
	st := &subStats{}
	time.Sleep(time.Second)
	rss0 := rss(e.srv.pid)
	var subs []*subscription
	defer func() { closeAll(subs) }()
	for _, n := range o.subscribers {
		t0 := time.Now()
		more, err := connectMany(ctx, e.srv.base, n-len(subs), 32,
			func(i int) string { return ops[len(subs)+i].Token }, st,
			func(int) func(time.Time, *liveEvent) { return trk.receive })
		if err != nil {
			return err
		}
		subs = append(subs, more...)
		logf("%s: %d panel subscriptions open (%d added in %.1fs)", label, len(subs), len(more), time.Since(t0).Seconds())
		time.Sleep(2 * time.Second)
		perSub := float64(rss(e.srv.pid)-rss0) / float64(n)
		c0 := cpuTime(e.srv.pid)
		idle := 5 * time.Second
		if o.quick {
			idle = time.Second
		}
		time.Sleep(idle)
		idleCPU := (cpuTime(e.srv.pid) - c0).Seconds() / idle.Seconds()
		// Chats offered to one operator each, at a modest pace.
		ph := &deliveryPhase{}
		res := drive(ctx, e.web, tr, loadSpec{conc: 4, rate: 50, dur: o.duration}, hooks{
			before: func(d delivery, s time.Time) { trk.expect(d, s, 1, ph) },
			after: func(d delivery, _ time.Time, ok bool) {
				if !ok {
					trk.failed(d)
				}
			},
		})
		got := trk.wait(ph, 10*time.Second)
		bf := bareAt[n]
		isMax := n == maxN && n >= 10_000
		memTarget, memVerdict, latTarget, latVerdict := "", "", "", ""
		if e.kind == dbPostgres && (isMax || o.quick && n == maxN) {
			memTarget, memVerdict = "≤ 48 KB", r.rep.verdict(perSub <= 48*1024)
			latTarget, latVerdict = "p99 ≤ 50 ms", r.rep.verdict(got.receipts.pct(99) <= 50*time.Millisecond && got.got == got.expected)
		}
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("%s subscriptions: server memory per subscription", num(float64(n))),
			Value: fmt.Sprintf("%.1f KB (RSS %s MB)", perSub/1024, num(float64(rss(e.srv.pid))/(1<<20))),
			Limit: fmt.Sprintf("%.1f KB bare websocket", bf.perConn/1024), Ratio: ratio(perSub, bf.perConn),
			Target: memTarget, Result: memVerdict})
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("%s subscriptions: idle server CPU", num(float64(n))),
			Value: fmt.Sprintf("%.1f%% of a core", 100*idleCPU), Limit: fmt.Sprintf("%.1f%% bare websocket", 100*bf.idleCPU)})
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("%s subscriptions: event targeted to one operator, p50 / p99", num(float64(n))),
			Value: p50p99(got.receipts) + fmt.Sprintf(" (%s; ack p99 %s)", delivered(got), ms(res.ack.pct(99))),
			Limit: p50p99(bf.push) + " bare push", Ratio: ratio(float64(got.receipts.pct(99)), float64(bf.push.pct(99))),
			Target: latTarget, Result: latVerdict})
	}
	if n := st.ended.Load(); n > 0 {
		r.rep.note("%s: %d of the panel subscriptions ended during the subscribers scenario (%v).", label, n, st.lastEnd.Load())
	}
	return nil
}

// ---------------------------------------------------------------------------
// Scenario 6: growth.

const panelQuery = `query { panel { me { availability load limit }
  newChats { chat { id status contact { name } } lastMessage { id text createdAt } unreadCount waitingSeconds }
  activeChats { chat { id status contact { name } } lastMessage { id text createdAt } unreadCount waitingSeconds } } }`

const chatListQuery = `query { chats(first: 20, where: {statusIn: [WAITING, IN_PROGRESS]}, orderBy: {field: CREATED_AT, direction: DESC}) {
  totalCount
  edges { node { id status createdAt lastMessageAt contact { name } channel { name provider } queue { name } owner { name }
    messages(first: 5) { edges { node { direction text createdAt } } } } } } }`

// queryLatency runs a query sequentially for dur (at most n times), as the
// token(i) of the i-th run.
func queryLatency(ctx context.Context, c *gqlClient, query string, token func(int) string, dur time.Duration, n int) (samples, error) {
	var lat samples
	deadline := time.Now().Add(dur)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		t0 := time.Now()
		if err := c.do(ctx, token(i), query, nil, nil); err != nil {
			return lat, err
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// growthSetup creates the seeded queue and API channel (through GraphQL)
// and the operators who own the seeded chats (in the database).
func (r *runner) growthSetup(ctx context.Context, e *env) (growthPlan, error) {
	o := r.opt
	var q struct {
		CreateQueue struct{ ID string } `json:"createQueue"`
	}
	if err := e.gql.do(ctx, e.admin, `mutation { createQueue(input: {name: "Seeded", routingRule: TO_AVAILABLE}) { id } }`, nil, &q); err != nil {
		return growthPlan{}, err
	}
	var ch struct {
		CreateChannel struct{ ID string } `json:"createChannel"`
	}
	if err := e.gql.do(ctx, e.admin, `mutation($q: ID!) { createChannel(input: {provider: API, name: "Seeded API", queueID: $q}) { id } }`,
		map[string]any{"q": q.CreateQueue.ID}, &ch); err != nil {
		return growthPlan{}, err
	}
	nOps := (o.seedOpenChats + openChatsPerOperator - 1) / openChatsPerOperator
	ops, err := seedOperators(ctx, e.db, "owner", nOps, nil)
	if err != nil {
		return growthPlan{}, err
	}
	plan := growthPlan{ops: ops, messagesPerChat: max(1, o.seedMessages/(2*o.seedOpenChats))}
	plan.channelID, _ = strconv.ParseInt(ch.CreateChannel.ID, 10, 64)
	plan.queueID, _ = strconv.ParseInt(q.CreateQueue.ID, 10, 64)
	return plan, nil
}

// seedOnly is -seed: the growth data set in a fresh database, kept for
// exploring by hand.
func (r *runner) seedOnly(ctx context.Context, e *env) error {
	plan, err := r.growthSetup(ctx, e)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := seedChats(ctx, e.db, plan, 0, r.opt.seedOpenChats, nil); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := settle(ctx, e.db); err != nil {
		return err
	}
	e.keep = true
	r.rep.note("%s: seeded %s messages and %s open chats in %.0f s; kept: DATABASE_URL=%s (administrator %s, password %s; operator %s has a panel: Authorization: Bearer %s)",
		dbLabel(e.kind), num(float64(2*r.opt.seedOpenChats*plan.messagesPerChat)), num(float64(r.opt.seedOpenChats)),
		time.Since(start).Seconds(), e.db.url, adminEmail, benchPass, plan.ops[0].ID, plan.ops[0].Token)
	return nil
}

func (r *runner) growth(ctx context.Context, e *env) error {
	label := dbLabel(e.kind)
	o := r.opt
	openChats := o.seedOpenChats
	plan, err := r.growthSetup(ctx, e)
	if err != nil {
		return err
	}
	ops, nOps := plan.ops, len(plan.ops)
	// The measured operators' own chats exist in both databases: the empty
	// one holds only them, the grown one everything else too.
	const measuredOps = 10
	small := measuredOps * openChatsPerOperator
	if err := seedChats(ctx, e.db, plan, 0, small, nil); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := settle(ctx, e.db); err != nil {
		return err
	}
	measure := func(phase string) (panel, list samples, rate float64, err error) {
		qd := o.duration
		if panel, err = queryLatency(ctx, e.gql, panelQuery, func(i int) string { return ops[i%measuredOps].Token }, qd, 2000); err != nil {
			return
		}
		if list, err = queryLatency(ctx, e.gql, chatListQuery, func(int) string { return e.admin }, qd, 2000); err != nil {
			return
		}
		s, err := newSet(ctx, e.gql, e.db, e.admin, "Growth "+phase, "TO_ALL", o.operators)
		if err != nil {
			return
		}
		tr := newTraffic(e.srv.base, newShare, s)
		w := drive(ctx, e.web, tr, loadSpec{conc: 8, dur: o.duration / 5}, hooks{})
		k := 0
		if err = ensureRoom(tr, expectedNew(w.rate(), newShare, o.duration), func() (*benchSet, error) {
			k++
			return newSet(ctx, e.gql, e.db, e.admin, fmt.Sprintf("Growth %s %d", phase, k), "TO_ALL", o.operators)
		}); err != nil {
			return
		}
		// Statistics that describe the database as the phase finds it, as
		// autovacuum keeps them on a desk in service. Without this the
		// empty database's statistics, gathered when it held 200 contacts,
		// kept the server's cached plans scanning contact_identities and
		// chat_offers whole as they grew through the phase (seen in
		// pg_stat_user_tables), and its rate, the ratio's denominator, fell
		// by a fifth.
		e.drain(ctx, 30*time.Second)
		if err = settle(ctx, e.db); err != nil {
			return
		}
		res := drive(ctx, e.web, tr, loadSpec{conc: 8, dur: o.duration}, hooks{})
		if res.failed > 0 {
			r.rep.note("%s growth (%s): %d deliveries refused: %s", label, phase, res.failed, res.errSummary())
		}
		return panel, list, res.rate(), nil
	}
	p0, l0, rate0, err := measure("empty")
	if err != nil {
		return err
	}
	start := time.Now()
	lastLog := time.Now()
	if err := seedChats(ctx, e.db, plan, small, openChats, func(done int) {
		if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			logf("%s: seed: %d of %d contacts", label, done, openChats-small)
		}
	}); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	seedTook := time.Since(start)
	if err := settle(ctx, e.db); err != nil {
		return err
	}
	totalMsgs := 2 * openChats * plan.messagesPerChat
	logf("%s: seed: %s messages, %s open chats (%s chats) in %.1fs (+vacuum or statistics, and checkpoint: %.1fs); database %s MB",
		label, num(float64(totalMsgs)), num(float64(openChats)), num(float64(2*openChats)), seedTook.Seconds(),
		time.Since(start).Seconds()-seedTook.Seconds(), num(float64(dbSize(ctx, e.db))/(1<<20)))
	r.rep.note("%s growth: the seed step wrote %s messages, %s open and %s completed chats, %s contacts and %s operators in %.0f s, directly in the database.",
		label, num(float64(totalMsgs)), num(float64(openChats)), num(float64(openChats)), num(float64(openChats)), num(float64(nOps)), seedTook.Seconds())
	p1, l1, rate1, err := measure("grown")
	if err != nil {
		return err
	}
	size := fmt.Sprintf("%s msgs, %s open chats", compact(totalMsgs), compact(openChats))
	for _, q := range []struct {
		name         string
		empty, grown samples
	}{{"panel query", p0, p1}, {"chat-list query (20 of the open chats, totalCount)", l0, l1}} {
		target, verdict := "", ""
		if e.kind == dbPostgres {
			target, verdict = "p99 ≤ 20 ms", r.rep.verdict(q.grown.pct(99) <= 20*time.Millisecond)
		}
		r.rep.add(row{DB: label, Figure: fmt.Sprintf("Growth (%s): %s p50 / p99", size, q.name), Value: p50p99(q.grown),
			Limit: p50p99(q.empty) + " empty DB", Ratio: ratio(float64(q.grown.pct(99)), float64(q.empty.pct(99))),
			Target: target, Result: verdict})
	}
	target, verdict := "", ""
	if e.kind == dbPostgres {
		target, verdict = "≥ 80% of empty", r.rep.verdict(rate1 >= 0.8*rate0)
	}
	r.rep.add(row{DB: label, Figure: fmt.Sprintf("Growth (%s): ingest c=8", size), Value: num(rate1) + " msg/s",
		Limit: num(rate0) + " msg/s empty DB", Ratio: pctOf(rate1, rate0), Target: target, Result: verdict})
	return nil
}

func compact(n int) string {
	switch {
	case n >= 1_000_000 && n%100_000 == 0:
		return strconv.FormatFloat(float64(n)/1e6, 'f', -1, 64) + "M"
	case n >= 1000 && n%100 == 0:
		return strconv.FormatFloat(float64(n)/1e3, 'f', -1, 64) + "k"
	}
	return strconv.Itoa(n)
}

// ---------------------------------------------------------------------------
// Profiling hooks (-profile-dir).

type profiler struct {
	waits *waitSampler
	perf  *exec.Cmd
	dir   string
	label string
	out   bytes.Buffer
}

// startProfile samples what the server's PostgreSQL backends wait on and,
// when perf is installed, records the server's stacks.
func startProfile(ctx context.Context, e *env, dir string, dur time.Duration) *profiler {
	_ = os.MkdirAll(dir, 0o750)
	p := &profiler{dir: dir, label: dbLabel(e.kind)}
	if e.kind == dbPostgres {
		p.waits = e.db.sampleWaits(ctx, 10*time.Millisecond)
	}
	if path, err := exec.LookPath("perf"); err == nil {
		// perf report needs the binary to name the functions.
		if b, err := os.ReadFile(e.srv.cmd.Path); err == nil {
			_ = os.WriteFile(filepath.Join(dir, "parley"), b, 0o750)
		}
		out := filepath.Join(dir, "perf-"+e.kind+".data")
		p.perf = exec.Command(path, "record", "-F", "499", "-g", "-p", strconv.Itoa(e.srv.pid), "-o", out, "--", "sleep", strconv.Itoa(int(dur.Seconds())))
		p.perf.Stdout, p.perf.Stderr = &p.out, &p.out
		if err := p.perf.Start(); err != nil {
			p.perf = nil
		}
	}
	return p
}

func (p *profiler) finish() {
	var lines []string
	if p.waits != nil {
		lines = p.waits.finish(25)
	}
	if p.perf != nil {
		_ = p.perf.Process.Signal(syscall.SIGINT)
		_ = p.perf.Wait()
	}
	if p.waits != nil {
		f := filepath.Join(p.dir, "pg-waits-"+strings.ToLower(p.label)+".txt")
		_ = os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o640)
		logf("profile: PostgreSQL waits during ingest c=8 (average backends in each state):\n%s", strings.Join(lines, "\n"))
	}
}
