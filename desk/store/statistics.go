package store

import (
	"context"
	"time"
)

// SQLite's query planner chooses among indexes by the statistics ANALYZE
// stores (sqlite_stat1); without them it guesses, and on a database that
// grew large it guessed badly: the panel query's p99 on a million messages
// read 7.45 ms without statistics against 2.50 ms with them (bench, growth
// scenario). SQLite gathers none by itself. As its documentation advises
// for long-lived connections, Parley runs PRAGMA optimize with the options
// 0x10002 (analyse, looking at every table rather than those this
// connection used) when it starts, once the schema is up to date
// (DB.Migrate), and then, while the database is written, at most once per
// optimizeEvery, after a checkpoint. It re-analyses only the tables whose
// size changed much since they were last analysed, each under SQLite's
// temporary analysis limit, so a run takes milliseconds even on a large
// database; a new analysis makes every connection load the new statistics
// (it changes the schema's version). PostgreSQL needs none of this: its
// autovacuum analyses tables as they change.
const (
	sqliteOptimize = "PRAGMA optimize=0x10002"
	// optimizeEvery is the longest SQLite's statistics go without an
	// update while the database is written.
	optimizeEvery = time.Hour
)

// optimize brings SQLite's statistics up to date, under the process's
// write lock (ANALYZE writes them; the desk's writers wait a moment rather
// than meet SQLite's busy lock), on the checkpointer's connection.
func (c *checkpointer) optimize() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.writers.Lock()
	defer c.writers.Unlock()
	// PRAGMA optimize answers with a row per statement it ran only in
	// its debugging mode; Exec reads none.
	_, err := c.db.ExecContext(ctx, sqliteOptimize)
	c.optimized.Store(time.Now().UnixNano())
	c.optimizes.Add(1)
	return err
}

// optimizeDue reports whether the statistics were last brought up to date
// optimizeEvery ago or more.
func (c *checkpointer) optimizeDue() bool {
	return time.Since(time.Unix(0, c.optimized.Load())) >= c.optimizeEvery
}
