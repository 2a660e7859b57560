// Package store opens Parley's database, SQLite (the embedded default) or
// PostgreSQL, and migrates its schema. Both go through one ent client: the
// rest of the code never asks which one it has, except where a PostgreSQL
// feature hides behind an interface with an SQLite twin.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"ariga.io/atlas/sql/postgres"
	atlas "ariga.io/atlas/sql/schema"
	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"
	"github.com/lib/pq"    // PostgreSQL driver
	_ "modernc.org/sqlite" // SQLite driver, pure Go

	"github.com/parleydesk/parley/ent"
	_ "github.com/parleydesk/parley/ent/runtime" // hooks and defaults
)

// DB is an open database.
type DB struct {
	Client  *ent.Client
	SQL     *sql.DB
	Dialect string
	// URL is the PostgreSQL connection string (empty for SQLite); the event
	// bus opens its LISTEN connection with it.
	URL string
	// ckpt checkpoints a SQLite database's log (nil on PostgreSQL).
	ckpt *checkpointer
}

// WithQueryHook returns a DB whose client calls fn before every statement it
// sends (tests count queries with it); the pool is shared.
func (db *DB) WithQueryHook(fn func(ctx context.Context, statement string)) *DB {
	drv := dialect.DebugWithContext(newDriver(db.Dialect, db.SQL), func(ctx context.Context, v ...any) {
		fn(ctx, fmt.Sprint(v...))
	})
	c := *db
	c.Client = ent.NewClient(ent.Driver(drv))
	return &c
}

// Close closes the client and the pool.
func (db *DB) Close() error {
	if db.ckpt != nil {
		db.ckpt.close()
	}
	return db.Client.Close()
}

// WriteLock is the lock that queues this process's write transactions on
// SQLite (desk.WithWriteLock), which the checkpointer also takes to restart
// the log; nil on PostgreSQL, where the desk takes none.
func (db *DB) WriteLock() sync.Locker {
	if db.ckpt == nil {
		return nil
	}
	return &db.ckpt.writers
}

// SetLogger gives the database a logger for what fails in the background
// (SQLite's checkpoints).
func (db *DB) SetLogger(l *slog.Logger) {
	if db.ckpt != nil {
		db.ckpt.log.Store(l)
	}
}

// Postgres reports whether the database is PostgreSQL.
func (db *DB) Postgres() bool { return db.Dialect == dialect.Postgres }

// SQLiteDSN is the DSN of a SQLite file with the pragmas Parley needs:
// foreign keys, WAL, a busy timeout, and BEGIN IMMEDIATE so that a
// read-then-write transaction never fails with "database is locked".
func SQLiteDSN(path string) string {
	return "file:" + path + "?_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)" +
		"&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

// Open opens the database named by databaseURL: a postgres:// URL, a sqlite
// DSN ("file:…" or "sqlite://path"), or, when empty, the SQLite file
// parley.db in dataDir (created if missing).
func Open(ctx context.Context, databaseURL, dataDir string) (*DB, error) {
	switch {
	case strings.HasPrefix(databaseURL, "postgres://"), strings.HasPrefix(databaseURL, "postgresql://"):
		return openPostgres(ctx, databaseURL)
	case databaseURL == "":
		if dataDir == "" {
			dataDir = "data"
		}
		if err := os.MkdirAll(dataDir, 0o750); err != nil {
			return nil, fmt.Errorf("create data directory %s: %w", dataDir, err)
		}
		return openSQLite(ctx, SQLiteDSN(filepath.Join(dataDir, "parley.db")))
	case strings.HasPrefix(databaseURL, "sqlite://"):
		return openSQLite(ctx, SQLiteDSN(strings.TrimPrefix(databaseURL, "sqlite://")))
	case strings.HasPrefix(databaseURL, "file:"):
		return openSQLite(ctx, databaseURL)
	}
	return nil, errors.New("DATABASE_URL must start with postgres://, postgresql://, sqlite:// or file:")
}

func openSQLite(ctx context.Context, dsn string) (*DB, error) {
	raw, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	drvr := raw.Driver()
	raw.Close()
	ckpt := newCheckpointer()
	db := sql.OpenDB(sqliteConnector{dsn: dsn, drv: drvr, ckpt: ckpt})
	// One writer at a time is SQLite's nature; a few connections let readers
	// run beside it under WAL.
	db.SetMaxOpenConns(8)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	ckpt.start(dsn, drvr)
	drv := newDriver(dialect.SQLite, db)
	return &DB{Client: ent.NewClient(ent.Driver(drv)), SQL: db, Dialect: dialect.SQLite, ckpt: ckpt}, nil
}

func openPostgres(ctx context.Context, rawURL string) (*DB, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("DATABASE_URL is not a valid URL")
	}
	// lib/pq defaults to sslmode=require; say it explicitly either way.
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	// One round trip per statement (see pqConn).
	if q.Get("binary_parameters") == "" {
		q.Set("binary_parameters", "yes")
	}
	u.RawQuery = q.Encode()
	connector, err := pq.NewConnector(u.String())
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db := sql.OpenDB(pqConnector{connector})
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	drv := newDriver(dialect.Postgres, db)
	return &DB{Client: ent.NewClient(ent.Driver(drv)), SQL: db, Dialect: dialect.Postgres, URL: u.String()}, nil
}

// migrationLockKey is the PostgreSQL advisory lock that serialises schema
// migrations of instances starting at the same time.
const migrationLockKey = 7_311_050_001

// Migrate brings the schema up to date. On PostgreSQL it holds an advisory
// lock so that several instances starting together migrate one at a time.
func (db *DB) Migrate(ctx context.Context) error {
	if db.Postgres() {
		conn, err := db.SQL.Conn(ctx)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", migrationLockKey); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLockKey) //nolint:errcheck
	}
	// ent's migrator rewrites the package-level table definitions of
	// ent/migrate while it runs: two migrations in one process (parallel
	// tests) must not overlap.
	migrateMu.Lock()
	defer migrateMu.Unlock()
	if err := db.Client.Schema.Create(ctx, schema.WithDiffHook(keepPartialIndexes)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if db.ckpt != nil {
		// SQLite's planner statistics, at every start (statistics.go): a
		// failure (another process holding the file's write lock) costs
		// plans, not the start.
		if err := db.ckpt.optimize(); err != nil {
			db.ckpt.warn("SQLite statistics not updated at start (PRAGMA optimize); tried again after an hour of writes", err)
		}
	}
	return nil
}

var migrateMu sync.Mutex

// keepPartialIndexes drops from a migration the changes of partial indexes
// whose predicate only reads differently: PostgreSQL stores a predicate in
// its own words (casts, = ANY (ARRAY[…])), so the migrator would otherwise
// drop and rebuild every partial index at every start, leaving a unique one
// unenforced meanwhile. A partial index whose predicate really changes must
// therefore get a new name.
func keepPartialIndexes(next schema.Differ) schema.Differ {
	return schema.DiffFunc(func(current, desired *atlas.Schema) ([]atlas.Change, error) {
		changes, err := next.Diff(current, desired)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			m, ok := c.(*atlas.ModifyTable)
			if !ok {
				continue
			}
			m.Changes = slices.DeleteFunc(m.Changes, func(c atlas.Change) bool {
				mi, ok := c.(*atlas.ModifyIndex)
				return ok && mi.Change == atlas.ChangeAttr && partial(mi.From) && partial(mi.To)
			})
		}
		return slices.DeleteFunc(changes, func(c atlas.Change) bool {
			m, ok := c.(*atlas.ModifyTable)
			return ok && len(m.Changes) == 0
		}), nil
	})
}

func partial(idx *atlas.Index) bool {
	for _, a := range idx.Attrs {
		if p, ok := a.(*postgres.IndexPredicate); ok && p.P != "" {
			return true
		}
	}
	return false
}
