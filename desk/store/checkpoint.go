package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// SQLite checkpoints its write-ahead log in the background.
//
// By default SQLite copies the log back into the database file (a
// checkpoint) in whichever commit finds it past 1,000 pages, inside that
// commit and so inside the single writer's lock: with synchronous=NORMAL the
// checkpoint's two fsyncs are the only ones SQLite makes, and every writer
// waited for them. An inbound message writes about twenty pages, so one
// commit in about fifty checkpointed: on a machine with slow fsyncs the
// acknowledgement p99 at c=1 was 15–20 ms against a p50 under one, and the
// ingest rate a third lower (bench/HISTORY.md, twenty-fifth run).
//
// Here the writers' connections checkpoint only as a last resort
// (walSafetyFrames), and a goroutine of the process checkpoints on a
// connection of the pool, beside the writers, a short while after writes:
// PASSIVE, which copies what no reader still needs and never blocks a
// writer. Copying does not shorten the log, though: SQLite starts it again
// from the top only when a writer begins with every frame copied, which
// under a steady load never happens (the next writer is always already
// writing). So when the log has grown past walRestartFrames, the
// checkpointer takes the process's write lock (desk.WithWriteLock), copies
// the frames written meanwhile, and lets go: the next writer starts the log
// afresh. The writers wait for that copy of a few pages and its fsyncs, once
// every several thousand pages instead of every thousand. A reader still
// reading old frames keeps the log from starting again (as it would keep
// SQLite's own checkpoints from it), and readers that overlap without a
// pause can keep it up for ever: when the log has grown past twice
// walRestartFrames, the copy under the write lock is a RESTART, which also
// waits for the readers of the moment to finish (busy_timeout), so that the
// log stays bounded.
const (
	// checkpointDelay is how long after a write the checkpointer runs:
	// the writes of that while share one checkpoint of their pages.
	checkpointDelay = 100 * time.Millisecond
	// walRestartFrames is the log's length (pages) past which the
	// checkpointer restarts it.
	walRestartFrames = 16000
	// walSafetyFrames is the writers' own automatic checkpoint (SQLite's
	// wal_autocheckpoint): only if the checkpointer falls this far behind.
	walSafetyFrames = 4 * walRestartFrames
)

// checkpointer runs SQLite's checkpoints off the writers' path.
type checkpointer struct {
	// delay, restartFrames: checkpointDelay and walRestartFrames (tests
	// shorten them).
	delay         time.Duration
	restartFrames int64

	db   *sql.DB
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
	log  atomic.Pointer[slog.Logger]
	// writers queues the process's write transactions (DB.WriteLock).
	writers sync.Mutex
	// runs counts the checkpoints run, restarts those run under the write
	// lock (tests).
	runs, restarts atomic.Int64
}

func newCheckpointer() *checkpointer {
	return &checkpointer{delay: checkpointDelay, restartFrames: walRestartFrames,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// wrote tells the checkpointer that the log grew (or may have).
func (c *checkpointer) wrote() {
	if c == nil {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// start runs the checkpointer on db until close.
func (c *checkpointer) start(db *sql.DB) {
	c.db = db
	go c.run()
}

// close stops the checkpointer (idempotent); SQLite checkpoints the rest
// when its last connection closes.
func (c *checkpointer) close() {
	c.once.Do(func() { close(c.stop) })
	if c.db != nil {
		<-c.done
	}
}

func (c *checkpointer) run() {
	defer close(c.done)
	delay := time.NewTimer(0)
	<-delay.C
	for {
		select {
		case <-c.stop:
			return
		case <-c.wake:
		}
		delay.Reset(c.delay)
		select {
		case <-c.stop:
			delay.Stop()
			return
		case <-delay.C:
		}
		frames, err := c.checkpoint("PASSIVE")
		if err == nil && frames >= c.restartFrames {
			// The frames written meanwhile, with no writer: the next one
			// starts the log afresh (unless a reader still reads it; past
			// twice the length, RESTART waits for them).
			mode := "PASSIVE"
			if frames >= 2*c.restartFrames {
				mode = "RESTART"
			}
			c.writers.Lock()
			_, err = c.checkpoint(mode)
			c.writers.Unlock()
			c.restarts.Add(1)
		}
		if err != nil {
			if l := c.log.Load(); l != nil {
				l.Warn("SQLite checkpoint failed; the next write tries again", "err", err)
			}
		}
	}
}

// checkpoint runs a checkpoint in mode and returns the log's length in
// pages as SQLite reported it.
func (c *checkpointer) checkpoint(mode string) (frames int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var busy, checkpointed int64
	err = c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &frames, &checkpointed)
	c.runs.Add(1)
	return frames, err
}

// checkpointingTx tells the checkpointer of a commit.
type checkpointingTx struct {
	driver.Tx
	c *checkpointer
}

func (t checkpointingTx) Commit() error {
	err := t.Tx.Commit()
	t.c.wrote()
	return err
}
