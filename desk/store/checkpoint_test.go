package store

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// walFrames is the log's length in pages as SQLite reports it.
func walFrames(t *testing.T, db *DB) int64 {
	t.Helper()
	// A PASSIVE checkpoint reports the length; what it copies does not
	// shorten the log. While another connection checkpoints (the
	// checkpointer), it cannot run and reports -1: SQLite's busy case,
	// which a PASSIVE checkpoint does not wait out; it is tried again once
	// the checkpointer's round is over.
	var frames int64
	awaitRounds(t, db, "a checkpoint could run", func() bool {
		var busy, done int64
		if err := db.SQL.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done); err != nil {
			t.Fatal(err)
		}
		return frames >= 0
	})
	return frames
}

// awaitRounds waits until cond holds, testing it again each time a round
// of the checkpointer ends, for at most 10 s.
func awaitRounds(t *testing.T, db *DB, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		end := db.ckpt.roundEnd() // before cond: a round that ends between them is not missed
		if cond() {
			return
		}
		select {
		case <-end:
		case <-timeout:
			t.Fatalf("timed out (10 s) waiting until %s", what)
		}
	}
}

// openCheckpointed opens a SQLite file with a table t (id, v BLOB) and the
// checkpointer's lengths shortened (restarts every 200 pages), closed with
// the test; it returns the file's path.
func openCheckpointed(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wal.db")
	db, err := Open(context.Background(), "sqlite://"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.ckpt.delay, db.ckpt.restartFrames, db.ckpt.forceAt = 5*time.Millisecond, 200, 400
	if _, err := db.SQL.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"); err != nil {
		t.Fatal(err)
	}
	return db, path
}

// TestSQLiteCheckpointerKeepsTheLogShortUnderSteadyWrites writes without a
// pause, as the desk does (one transaction at a time under the write lock),
// many times the checkpointer's restart length: the log must start afresh
// again and again and its file stays a fraction of what was written; the
// writers' own automatic checkpoint is only the last resort, far past what
// this test writes.
func TestSQLiteCheckpointerKeepsTheLogShortUnderSteadyWrites(t *testing.T) {
	ctx := context.Background()
	db, path := openCheckpointed(t)
	var autocheckpoint int
	if err := db.SQL.QueryRow("PRAGMA wal_autocheckpoint").Scan(&autocheckpoint); err != nil {
		t.Fatal(err)
	}
	if autocheckpoint != walSafetyFrames {
		t.Fatalf("the writers' automatic checkpoint is at %d pages, want %d", autocheckpoint, walSafetyFrames)
	}

	// Readers alongside, as panels read while messages arrive.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				if err := db.SQL.QueryRow("SELECT count(*) FROM (SELECT id FROM t ORDER BY id DESC LIMIT 10)").Scan(&n); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	lock := db.WriteLock()
	blob := []byte(strings.Repeat("x", 3000)) // about a page a row
	const rows = 12000                        // 60 times the restart length
	for i := range rows {
		lock.Lock()
		tx, err := db.SQL.BeginTx(ctx, nil)
		if err == nil {
			_, err = tx.Exec("INSERT INTO t (v) VALUES (?)", blob)
			if err == nil {
				err = tx.Commit()
			} else {
				tx.Rollback()
			}
		}
		lock.Unlock()
		if err != nil {
			close(stop)
			t.Fatalf("row %d: %v", i, err)
		}
	}
	close(stop)
	readers.Wait()

	if r := db.ckpt.restarts.Load(); r < 5 {
		t.Errorf("the log was restarted %d times while %d pages were written, want several", r, rows)
	}
	st, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	// Every row writes at least its page, so a log never started again
	// would hold at least this much (three times as much, in fact).
	written := int64(rows * 4096)
	t.Logf("log file %d bytes, restarts %d", st.Size(), db.ckpt.restarts.Load())
	if st.Size() > written {
		t.Errorf("the log's file is %d bytes after at least %d written: it was not started again", st.Size(), written)
	}
	if f := walFrames(t, db); f > rows {
		t.Errorf("the log holds %d pages", f)
	}
}

// TestSQLiteCheckpointerRestsWhenNothingIsWritten: once the writes stop,
// so do the checkpoints (reads wake it no more).
func TestSQLiteCheckpointerRestsWhenNothingIsWritten(t *testing.T) {
	db, err := Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "idle.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.ckpt.delay = time.Millisecond
	if _, err := db.SQL.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	awaitRounds(t, db, "a checkpoint ran after a write", func() bool { return db.ckpt.runs.Load() > 0 })
	var n int
	for range 20 {
		if err := db.SQL.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	runs := db.ckpt.runs.Load()
	// Fifty checkpoint delays: a checkpointer that woke itself would have
	// run again many times.
	time.Sleep(50 * db.ckpt.delay)
	if got := db.ckpt.runs.Load(); got != runs {
		t.Fatalf("%d checkpoints ran while nothing was written", got-runs)
	}
}

// TestSQLiteCheckpointerWaitsForALongReaderOnlyAWhile: a read that lasts
// (a long report) keeps the log from starting again; the checkpointer's
// RESTART, which holds the writers, waits for it only restartWait at a
// time (not the writers' busy timeout of 10 s), and the log starts again
// once the reader is done.
func TestSQLiteCheckpointerWaitsForALongReaderOnlyAWhile(t *testing.T) {
	ctx := context.Background()
	db, _ := openCheckpointed(t)
	lock := db.WriteLock()
	blob := []byte(strings.Repeat("x", 3000))
	write := func(rows int) (slowest time.Duration) {
		t.Helper()
		for i := range rows {
			start := time.Now()
			lock.Lock()
			_, err := db.SQL.Exec("INSERT INTO t (v) VALUES (?)", blob)
			lock.Unlock()
			if err != nil {
				t.Fatalf("row %d: %v", i, err)
			}
			slowest = max(slowest, time.Since(start))
		}
		return slowest
	}
	write(100)

	// The reader: a read transaction left open on a snapshot of the log.
	reader, err := db.SQL.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	slowest := write(3000)
	if slowest > 2*time.Second {
		t.Errorf("a write waited %v behind the checkpointer's wait for the reader", slowest)
	}
	held := walFrames(t, db)
	if held < 3000 {
		t.Errorf("the log holds %d pages while the reader reads: it started again under the reader", held)
	}
	if err := reader.Rollback(); err != nil {
		t.Fatal(err)
	}
	// Writes go on until the checkpointer has copied the log under the
	// write lock twice since the reader ended (the first may have begun
	// before), then a last batch starts the log afresh. Counting those
	// copies, rather than writing a fixed number of rows, does not assume
	// how fast the checkpointer runs beside the writers (a loaded machine
	// once let 3,000 rows go by first).
	copies := db.ckpt.restarts.Load()
	for deadline := time.Now().Add(20 * time.Second); db.ckpt.restarts.Load() < copies+2; {
		if time.Now().After(deadline) {
			t.Fatalf("the checkpointer did not copy the log under the write lock twice in 20 s after the reader was done (%d times)",
				db.ckpt.restarts.Load()-copies)
		}
		write(100)
	}
	write(100)
	if f := walFrames(t, db); f >= held {
		t.Errorf("the log holds %d pages after the reader was done (%d before): it never started again", f, held)
	}
}

// TestSQLiteCheckpointerStopsWithTheDatabase: Close stops the goroutine.
func TestSQLiteCheckpointerStopsWithTheDatabase(t *testing.T) {
	db, err := Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "close.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.SQL.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY)"); err != nil { // wakes it
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-db.ckpt.done:
	default:
		t.Fatal("the checkpointer still runs after Close")
	}
}
