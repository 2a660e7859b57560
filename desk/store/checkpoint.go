package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
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
// connection of its own, beside the writers, a short while after writes:
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
// waits for the readers of the moment to finish, but no longer than
// restartWait (the checkpointer's connection is its own, with that busy
// timeout): a reader that goes on longer (a long report) costs the writers
// one such wait per walRestartFrames pages, and the log grows until it is
// done.
const (
	// checkpointDelay is how long after a write the checkpointer runs:
	// the writes of that while share one checkpoint of their pages.
	checkpointDelay = 100 * time.Millisecond
	// walRestartFrames is the log's length (pages) past which the
	// checkpointer restarts it.
	walRestartFrames = 16000
	// restartWait is the longest a RESTART waits for readers, holding the
	// writers (its connection's busy_timeout).
	restartWait = 50 * time.Millisecond
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
	// forceAt is the log's length from which the copy under the write lock
	// is a RESTART: twice restartFrames, or a restart length past a RESTART
	// that readers kept busy.
	forceAt int64

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
	// optimizeEvery is optimizeEvery (tests shorten it); optimized is when
	// the statistics were last brought up to date (Unix nanoseconds),
	// optimizes how many times (statistics.go).
	optimizeEvery time.Duration
	optimized     atomic.Int64
	optimizes     atomic.Int64
	// roundMu guards round, which is closed (and replaced) when a round
	// of run ends: its checkpoints and what follows them (tests await it
	// instead of polling the counters).
	roundMu sync.Mutex
	round   chan struct{}
}

func newCheckpointer() *checkpointer {
	c := &checkpointer{delay: checkpointDelay, restartFrames: walRestartFrames, forceAt: 2 * walRestartFrames,
		optimizeEvery: optimizeEvery, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		round: make(chan struct{})}
	c.optimized.Store(time.Now().UnixNano()) // and again by DB.Migrate
	return c
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

// start runs the checkpointer until close, on a connection of its own to
// the database of dsn (with drv).
func (c *checkpointer) start(dsn string, drv driver.Driver) {
	c.db = sql.OpenDB(checkpointConnector{dsn: dsn, drv: drv})
	c.db.SetMaxOpenConns(1)
	go c.run()
}

// close stops the checkpointer (idempotent); SQLite checkpoints the rest
// when its last connection closes.
func (c *checkpointer) close() {
	c.once.Do(func() { close(c.stop) })
	if c.db != nil {
		<-c.done
		c.db.Close()
	}
}

// checkpointConnector opens the checkpointer's connection: it waits for
// readers no longer than restartWait.
type checkpointConnector struct {
	dsn string
	drv driver.Driver
}

func (c checkpointConnector) Connect(ctx context.Context) (driver.Conn, error) {
	return openSQLiteConn(ctx, c.drv, c.dsn, fmt.Sprintf("PRAGMA busy_timeout = %d", restartWait.Milliseconds()))
}

func (c checkpointConnector) Driver() driver.Driver { return c.drv }

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
		frames, _, err := c.checkpoint("PASSIVE")
		switch {
		case err != nil:
		case frames < c.restartFrames:
			c.forceAt = 2 * c.restartFrames // the log started again
		default:
			// The frames written meanwhile, with no writer: the next one
			// starts the log afresh (unless a reader still reads it; past
			// forceAt, RESTART waits for them a while).
			mode := "PASSIVE"
			if frames >= c.forceAt {
				mode = "RESTART"
			}
			c.writers.Lock()
			var busy bool
			_, busy, err = c.checkpoint(mode)
			c.writers.Unlock()
			c.restarts.Add(1)
			if mode == "RESTART" && busy {
				c.forceAt = frames + c.restartFrames
			}
		}
		if err != nil {
			c.warn("SQLite checkpoint failed; the next write tries again", err)
		}
		if c.optimizeDue() {
			if err := c.optimize(); err != nil {
				c.warn("SQLite statistics not updated (PRAGMA optimize); tried again in an hour of writes", err)
			}
		}
		c.roundMu.Lock()
		close(c.round)
		c.round = make(chan struct{})
		c.roundMu.Unlock()
	}
}

// roundEnd returns a channel closed when the round of run that is under
// way (or the next one) ends.
func (c *checkpointer) roundEnd() <-chan struct{} {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	return c.round
}

func (c *checkpointer) warn(msg string, err error) {
	if l := c.log.Load(); l != nil {
		l.Warn(msg, "err", err)
	}
}

// checkpoint runs a checkpoint in mode and returns the log's length in
// pages as SQLite reported it, and whether readers or another checkpoint
// kept it from completing.
func (c *checkpointer) checkpoint(mode string) (frames int64, busy bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var blocked, checkpointed int64
	err = c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&blocked, &frames, &checkpointed)
	c.runs.Add(1)
	return frames, blocked != 0, err
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
