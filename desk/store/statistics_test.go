package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rowsStat is what SQLite's statistics say of table t: its row count as the
// last analysis found it ("" when t was never analysed).
func rowsStat(t *testing.T, db *DB) string {
	t.Helper()
	var stat string
	err := db.SQL.QueryRow("SELECT stat FROM sqlite_stat1 WHERE tbl = 't' AND idx = 't_v'").Scan(&stat)
	switch {
	case errors.Is(err, sql.ErrNoRows), err != nil && strings.Contains(err.Error(), "no such table"):
		return ""
	case err != nil:
		t.Fatal(err)
	}
	return strings.Fields(stat)[0]
}

// migrated opens the SQLite file at path with Parley's schema, closed with
// the test; the checkpointer's lengths are shortened to 1 ms and
// optimizeEvery to every (before anything is written: what the checkpointer
// reads, it reads after a write wakes it).
func migrated(t *testing.T, path string, every time.Duration) *DB {
	t.Helper()
	db, err := Open(context.Background(), "sqlite://"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.ckpt.delay, db.ckpt.optimizeEvery = time.Millisecond, every
	if err := db.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// fill creates table t with an index and n rows, in one transaction.
func fill(t *testing.T, db *DB, n int) {
	t.Helper()
	tx, err := db.SQL.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck
	for _, q := range []string{"CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", "CREATE INDEX t_v ON t (v)"} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := tx.Exec("INSERT INTO t (v) VALUES (?)", i%7); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestSQLiteStatisticsAreUpdatedAtStart: a database that grew since it was
// last opened gets its planner statistics when the server starts
// (DB.Migrate), not only an hour of writes later.
func TestSQLiteStatisticsAreUpdatedAtStart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stats.db")
	first := migrated(t, path, optimizeEvery)
	fill(t, first, 3000)
	if got := rowsStat(t, first); got != "" {
		t.Fatalf("statistics of t before any restart: %q, want none (the hour has not passed)", got)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rowsStat(t, migrated(t, path, optimizeEvery)); got != "3000" {
		t.Fatalf("statistics of t after a restart: %q rows, want 3000", got)
	}
}

// TestSQLiteStatisticsFollowTheWritesHourly: while the database is
// written, its statistics are brought up to date once optimizeEvery has
// passed since the last time, after a checkpoint, and not before.
func TestSQLiteStatisticsFollowTheWritesHourly(t *testing.T) {
	t.Parallel()
	within := migrated(t, filepath.Join(t.TempDir(), "within.db"), optimizeEvery)
	runs := within.ckpt.runs.Load()
	fill(t, within, 3000)
	awaitCheckpoint(t, within, runs)
	// A second checkpoint: the first one's round, and whatever it ran
	// after the checkpoint, is over.
	runs = within.ckpt.runs.Load()
	if _, err := within.SQL.Exec("INSERT INTO t (v) VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	awaitCheckpoint(t, within, runs)
	if n, got := within.ckpt.optimizes.Load(), rowsStat(t, within); n != 1 || got != "" {
		t.Fatalf("within the hour: %d updates (want only the start's), statistics of t %q (want none)", n, got)
	}

	past := migrated(t, filepath.Join(t.TempDir(), "past.db"), 0) // the hour has always passed
	fill(t, past, 3000)
	awaitRounds(t, past, "t has statistics of 3000 rows once the hour passed", func() bool { return rowsStat(t, past) == "3000" })
}

// awaitCheckpoint waits until the checkpointer has run after runs.
func awaitCheckpoint(t *testing.T, db *DB, runs int64) {
	t.Helper()
	awaitRounds(t, db, "a checkpoint ran after a write", func() bool { return db.ckpt.runs.Load() != runs })
}

// TestSQLiteStatisticsThatCannotBeUpdatedDoNotStopTheStart: another
// process holding the file's write lock when the server starts keeps the
// statistics from being updated; the start goes on and says so in the log.
func TestSQLiteStatisticsThatCannotBeUpdatedDoNotStopTheStart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "held.db")
	first := migrated(t, path, optimizeEvery)
	fill(t, first, 3000) // t has no statistics yet: the next start analyses it
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	other, err := sql.Open("sqlite", SQLiteDSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	holder, err := other.Begin() // BEGIN IMMEDIATE (_txlock): the write lock
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback() //nolint:errcheck
	if _, err := holder.Exec("INSERT INTO t (v) VALUES (1)"); err != nil {
		t.Fatal(err)
	}

	db, err := Open(context.Background(), "sqlite://"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var logs bytes.Buffer
	db.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	if err := db.Migrate(context.Background()); err != nil {
		t.Fatalf("a start whose statistics could not be updated failed: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "SQLite statistics not updated at start") {
		t.Errorf("the failed update was logged as:\n%s", logs.String())
	}
	if got := rowsStat(t, db); got != "" {
		t.Errorf("statistics of t while another process held the write lock: %q", got)
	}
}
