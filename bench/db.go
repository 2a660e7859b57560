package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	_ "github.com/lib/pq"  // PostgreSQL, as the server uses it
	_ "modernc.org/sqlite" // SQLite, as the server uses it

	"github.com/parleydesk/parley/desk/store"
)

const (
	dbPostgres = "postgres"
	dbSQLite   = "sqlite"
)

// checkLoopback refuses a PostgreSQL URL that does not point at this
// machine: the benchmark targets loopback only.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-pg-url: %v", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return errors.New("-pg-url must be a postgres:// URL")
	}
	host := u.Hostname()
	if host == "" || host == "localhost" || strings.HasPrefix(host, "/") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-pg-url host %q is not loopback: the benchmark only targets this machine", host)
}

// database is a fresh database for one server: a PostgreSQL database of its
// own (so that pg_stat_database counts only Parley's transactions), or, when
// the user may not create databases, a fresh schema selected with
// search_path; or a SQLite file.
type database struct {
	kind       string
	url        string // DATABASE_URL of the server
	adminURL   string
	name       string // PostgreSQL database created for the run
	schema     string // PostgreSQL schema, when no database could be created
	sqlitePath string

	mu    sync.Mutex
	db    *sql.DB
	stats *sql.Conn
}

// dedicated reports whether pg_stat_database counts only this run.
func (d *database) dedicated() bool { return d.kind == dbPostgres && d.name != "" }

func withQuery(raw string, set map[string]string) string {
	u, _ := url.Parse(raw)
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	for k, v := range set {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func newPostgres(ctx context.Context, pgURL, label string) (*database, error) {
	adminURL := withQuery(pgURL, nil)
	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if err := admin.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("PostgreSQL at %s: %w", redact(pgURL), err)
	}
	d := &database{kind: dbPostgres, adminURL: adminURL}
	name := "parley_bench_" + label + "_" + randomHex(3)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err == nil {
		d.name = name
		u, _ := url.Parse(adminURL)
		u.Path = "/" + name
		d.url = u.String()
	} else {
		logf("cannot create a database (%v): using a schema; transaction counts include other clients of the database", err)
		d.schema = "bench_" + label + "_" + randomHex(4)
		if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+d.schema); err != nil {
			return nil, fmt.Errorf("create schema: %w", err)
		}
		d.url = withQuery(adminURL, map[string]string{"search_path": d.schema})
	}
	return d, nil
}

func newSQLite(dir, label string) *database {
	p := filepath.Join(dir, label+".db")
	return &database{kind: dbSQLite, url: "sqlite://" + p, sqlitePath: p}
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "?"
	}
	return u.Redacted()
}

// sql returns the benchmark's own connection pool to the database.
func (d *database) sql() (*sql.DB, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.db != nil {
		return d.db, nil
	}
	var db *sql.DB
	var err error
	if d.kind == dbPostgres {
		db, err = sql.Open("postgres", d.url)
		db.SetMaxOpenConns(4)
	} else {
		db, err = sql.Open("sqlite", store.SQLiteDSN(d.sqlitePath))
		db.SetMaxOpenConns(2)
	}
	if err != nil {
		return nil, err
	}
	d.db = db
	return db, nil
}

// ph returns the i-th placeholder of the dialect.
func (d *database) ph(i int) string {
	if d.kind == dbPostgres {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// drop removes the database (or schema, or file is left in the temp dir).
func (d *database) drop() {
	d.mu.Lock()
	if d.stats != nil {
		d.stats.Close()
	}
	if d.db != nil {
		d.db.Close()
	}
	d.mu.Unlock()
	if d.kind != dbPostgres {
		return
	}
	admin, err := sql.Open("postgres", d.adminURL)
	if err != nil {
		return
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if d.name != "" {
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)"); err != nil {
			logf("drop database %s: %v", d.name, err)
		}
	} else if d.schema != "" {
		if _, err := admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+d.schema+" CASCADE"); err != nil {
			logf("drop schema %s: %v", d.schema, err)
		}
	}
}

// xactCommit reads pg_stat_database.xact_commit of the database. Each read
// commits two transactions of its own (subtracted by commitsBetween).
func (d *database) xactCommit(ctx context.Context) (int64, error) {
	if d.kind != dbPostgres {
		return 0, errors.New("not PostgreSQL")
	}
	db, err := d.sql()
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stats == nil {
		if d.stats, err = db.Conn(ctx); err != nil {
			return 0, err
		}
	}
	if _, err := d.stats.ExecContext(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return 0, err
	}
	var n int64
	err = d.stats.QueryRowContext(ctx, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").Scan(&n)
	return n, err
}

// statsFlush is how long PostgreSQL 15 keeps an idle backend's counters
// before flushing them to pg_stat_database (PGSTAT_IDLE_INTERVAL, 10 s, plus
// slack). A backend whose flush met a locked entry keeps them for another
// such interval, up to a minute (PGSTAT_MAX_INTERVAL): after a phase at
// c=8, whole phases' commits were seen arriving 7 to 20 s late.
const statsFlush = 11 * time.Second

// statsQuiet is how long the commit counter must stay still before a phase's
// count is read: late flushes came after quiet spells of up to 12 s.
const statsQuiet = 15 * time.Second

// settledCommits waits until the database's commit counter has stayed
// still for quiet (it moves by the reads themselves and the idle server's
// polls only, at most a few per second), and at most limit, and returns it.
// The counter has no event to wait for: it is read every half second.
func (d *database) settledCommits(ctx context.Context, quiet, limit time.Duration) (int64, error) {
	const still = 10 // commits per read that count as still (own reads, idle polls)
	last, err := d.xactCommit(ctx)
	if err != nil {
		return 0, err
	}
	since, deadline := time.Now(), time.Now().Add(limit)
	for time.Since(since) < quiet && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		n, err := d.xactCommit(ctx)
		if err != nil {
			return 0, err
		}
		if n-last > still {
			since = time.Now()
		}
		last = n
	}
	return last, nil
}

// pgSettingNames are the settings of the PostgreSQL under test that shape
// the figures, reported with each run: durability (fsync,
// synchronous_commit, wal_sync_method, commit_delay), memory
// (shared_buffers) and statistics upkeep (autovacuum: with it off, as on
// machines set up for CI, a database's statistics stay as they were when
// last analysed, however much it grows).
var pgSettingNames = []string{"fsync", "synchronous_commit", "wal_sync_method", "commit_delay", "shared_buffers", "autovacuum"}

// pgServerFacts returns how many more connections PostgreSQL accepts and a
// line naming its version and pgSettingNames.
func pgServerFacts(ctx context.Context, pgURL string) (free int, facts string, err error) {
	db, err := sql.Open("postgres", withQuery(pgURL, nil))
	if err != nil {
		return 0, "", err
	}
	defer db.Close()
	err = db.QueryRowContext(ctx, `SELECT current_setting('max_connections')::int
		- current_setting('superuser_reserved_connections')::int
		- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')`).Scan(&free)
	if err != nil {
		return 0, "", err
	}
	var version string
	if err = db.QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return 0, "", err
	}
	// "15.20 (Debian 15.20-0+deb12u1)": the number is enough.
	number, _, _ := strings.Cut(version, " ")
	parts := []string{"PostgreSQL " + number}
	for _, name := range pgSettingNames {
		var v string
		if err = db.QueryRowContext(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return 0, "", err
		}
		parts = append(parts, name+" "+v)
	}
	return free, strings.Join(parts, ", "), nil
}

// waitSampler samples what the server's PostgreSQL backends wait on (a
// poor man's wait profile of the database side).
type waitSampler struct {
	mu     sync.Mutex
	counts map[string]int
	n      int
	stop   chan struct{}
	done   chan struct{}
}

func (d *database) sampleWaits(ctx context.Context, every time.Duration) *waitSampler {
	w := &waitSampler{counts: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	db, err := d.sql()
	if err != nil || d.kind != dbPostgres {
		close(w.done)
		return w
	}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rows, err := db.QueryContext(ctx, `SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), left(query, 60)
				FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
				AND backend_type = 'client backend' AND coalesce(application_name, '') NOT LIKE 'parley-listener%'`)
			if err != nil {
				continue
			}
			w.mu.Lock()
			w.n++
			for rows.Next() {
				var state, wt, we, q string
				if rows.Scan(&state, &wt, &we, &q) != nil {
					continue
				}
				if state == "idle" {
					continue
				}
				key := state
				if wt != "" {
					key += " " + wt + ":" + we
				} else {
					key += " (on CPU)"
				}
				if wt == "Lock" || state == "active" {
					key += " | " + strings.Join(strings.Fields(q), " ")
				}
				w.counts[key]++
			}
			w.mu.Unlock()
			rows.Close()
		}
	}()
	return w
}

// finish stops sampling and returns the top entries as "avg backends  what".
func (w *waitSampler) finish(top int) []string {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range w.counts {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v })
	var out []string
	for _, e := range all[:min(top, len(all))] {
		out = append(out, fmt.Sprintf("%5.2f backends  %s", float64(e.v)/float64(max(w.n, 1)), e.k))
	}
	return slices.Clip(out)
}
