// Package desk holds Parley's rules (SPEC.md): one use case per function, one
// transaction per use case. GraphQL resolvers and webhook handlers translate
// and authorise, then call a function here.
package desk

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"entgo.io/ent/dialect/sql/sqlgraph"
	"github.com/lib/pq"
	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk/files"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Clock tells the time. Tests inject a fake one so that timeouts are tested
// without sleeping.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// SystemClock is the wall clock.
var SystemClock Clock = systemClock{}

// Config holds the knobs of the rules that come from the environment rather
// than from the settings row.
type Config struct {
	// SessionTTL is how long an operator's bearer token lives (default 12h).
	SessionTTL time.Duration
	// PasswordCost is the bcrypt cost (default bcrypt.DefaultCost; tests lower it).
	PasswordCost int
	// MetaAppID is Parley's Meta app id: Messenger echoes of its own sends
	// are ignored.
	MetaAppID string
	// MaxFileBytes bounds a stored file (default 25 MiB).
	MaxFileBytes int64
	// EventRetention is how long the event log keeps events for clients
	// resuming a subscription (default 7 days).
	EventRetention time.Duration
	// Transactions bounds the use-case transactions this process runs at
	// once on PostgreSQL, releases of pending chats aside (default:
	// GOMAXPROCS + 1); see txSlots.
	Transactions int
}

// Desk is the entry point of every use case.
type Desk struct {
	client *ent.Client
	clock  Clock
	cfg    Config
	log    *slog.Logger
	// pg is set on PostgreSQL: rows are locked with SELECT … FOR NO KEY UPDATE
	// (SQLite has one writer at a time, so it needs no row locks).
	pg bool
	// kick wakes the scheduler when a transaction committed a job that is due.
	kick chan struct{}
	// instance names this process in its events' notifications
	// (EventsChannel).
	instance string
	// quiet: no other instance listens for this one's events (SetPeers), so
	// its commits send no notification.
	quiet atomic.Bool
	// txs holds the state of the transactions in flight (*ent.Tx → *txState).
	txs sync.Map
	// writeMu queues this process's write transactions on SQLite
	// (WithWriteLock).
	writeMu sync.Locker
	// slots queues them on PostgreSQL, Config.Transactions at a time;
	// releaseSlot is the releases' own (see txSlots).
	slots, releaseSlot *txSlots
	// onEvents is given, after each commit that appended events, those
	// events (ids in order).
	onEvents func(events []*ent.Event)
	// views: see WithCommitViews.
	views commitViews
	// senders are the senders this process has seen (PostgreSQL look-ups).
	senders knownSenders
	// adapters are the provider clients, by provider.
	adapters map[enum.Provider]channels.Adapter
	// files keeps inbound media, contact photos and uploads.
	files files.Store
	// channels caches channels for deliveries (see channelTTL).
	channels channelCache
	// wanted are the releases this process's commits asked for (release.go).
	wanted wantedReleases
	// dues tells the scheduler when the jobs its commits enqueued fall due.
	dues dueHint
}

// Option configures a Desk.
type Option func(*Desk)

// WithClock replaces the wall clock.
func WithClock(c Clock) Option { return func(d *Desk) { d.clock = c } }

// WithConfig sets the configuration.
func WithConfig(c Config) Option { return func(d *Desk) { d.cfg = c } }

// WithDialect tells the desk which database it runs on ("postgres" or
// "sqlite3"), for row locks.
func WithDialect(name string) Option { return func(d *Desk) { d.pg = name == dialect.Postgres } }

// WithWriteLock sets the lock that queues this process's write
// transactions on SQLite, shared with whatever else must wait for no
// transaction to be writing (store.DB.WriteLock: the checkpointer); by
// default the desk's own.
func WithWriteLock(l sync.Locker) Option { return func(d *Desk) { d.writeMu = l } }

// WithEventSink sets the function given, after each commit that appended
// events, those events as the log holds them (the live hub dispatches them
// without reading the log back when they follow what it has dispatched).
// It is called in commit order on SQLite; on PostgreSQL concurrent commits
// may report out of order, and one commit's ids need not be consecutive
// (see eventAppendLock).
func WithEventSink(fn func(events []*ent.Event)) Option { return func(d *Desk) { d.onEvents = fn } }

// WithCommitViews makes a commit whose events name one chat (and at most
// one message of it) read what they name, as EventView does, in the
// commit's own round trip, while want reports true (someone may render the
// events): on PostgreSQL a read sent after the COMMIT in the commit's
// message (store.AfterCommit), so it sees what the commit left, or a later
// state; SQLite reads none. fn is given the events and the view before the
// event sink (WithEventSink) is told of them. A view that could not be read
// is logged and not given: the events are reported all the same.
func WithCommitViews(want func() bool, fn func(events []*ent.Event, v CommitView)) Option {
	return func(d *Desk) { d.views = commitViews{want: want, fn: fn} }
}

// WithAdapters plugs provider adapters in (server wires them).
func WithAdapters(as ...channels.Adapter) Option {
	return func(d *Desk) {
		for _, a := range as {
			d.adapters[enum.Provider(a.Provider())] = a
		}
	}
}

// WithFiles sets the file storage.
func WithFiles(s files.Store) Option { return func(d *Desk) { d.files = s } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(d *Desk) { d.log = l } }

// New returns a Desk over client.
func New(client *ent.Client, opts ...Option) *Desk {
	d := &Desk{client: client, clock: SystemClock, log: slog.Default(), kick: make(chan struct{}, 1),
		adapters: map[enum.Provider]channels.Adapter{}, wanted: wantedReleases{wake: make(chan struct{}, 1)}}
	for _, o := range opts {
		o(d)
	}
	if d.writeMu == nil {
		d.writeMu = &sync.Mutex{}
	}
	d.instance = crand.Text()[:12]
	if d.cfg.SessionTTL <= 0 {
		d.cfg.SessionTTL = 12 * time.Hour
	}
	if d.cfg.EventRetention <= 0 {
		d.cfg.EventRetention = 7 * 24 * time.Hour
	}
	if d.cfg.MaxFileBytes <= 0 {
		d.cfg.MaxFileBytes = 25 << 20
	}
	if d.cfg.PasswordCost == 0 {
		d.cfg.PasswordCost = bcrypt.DefaultCost
	}
	if d.cfg.Transactions <= 0 {
		// A transaction per core, and one more whose commit waits for its
		// flush meanwhile.
		d.cfg.Transactions = runtime.GOMAXPROCS(0) + 1
	}
	if d.pg {
		d.slots = newTxSlots(d.cfg.Transactions)
		d.releaseSlot = newTxSlots(1)
	}
	return d
}

// Instance names this process in the notifications of the events it
// commits (EventsChannel): its listener skips them, since the commit
// reports its events to the live hub directly.
func (d *Desk) Instance() string { return d.instance }

// SetPeers tells whether other instances may be listening for this one's
// events (the live listener watches them). Until told otherwise a commit
// that appends events notifies EventsChannel; while no other instance
// listens it does not: the notification would wake only this instance's
// own listener, which skips it, and cost PostgreSQL a transaction on the
// listening connection and a database-wide lock at every commit.
func (d *Desk) SetPeers(present bool) { d.quiet.Store(!present) }

// Client is the ent client, for reads that need no rule (lists, node lookups).
func (d *Desk) Client() *ent.Client { return d.client }

// Now is the desk's clock, truncated to microseconds so that what is stored
// equals what is read back on both databases.
func (d *Desk) Now() time.Time { return d.clock.Now().UTC().Truncate(time.Microsecond) }

// txFunc is a use case's work in its transaction. Its context carries the
// caller's values but not its cancellation: a use case, once begun, runs to
// its commit or its own failure. A client that hangs up, or a shutdown past
// its grace period, stops use cases before they begin, not halfway (the
// transaction would be rolled back either way; a provider's retried delivery
// finds what the first one committed). It also spares every statement the
// goroutine lib/pq (and the SQLite driver) start to watch a context that
// can be cancelled, a thread wake-up each; store begins the transaction so
// that database/sql starts none either (connDriver). Together: about a sixth
// of the server's CPU per message on two cores (README, Performance).
type txFunc func(ctx context.Context, tx *ent.Tx) error

// inTx runs fn in one transaction: the transaction of a use case. On
// PostgreSQL a transaction chosen as a deadlock victim or failing to
// serialise is run again (fn must not keep state across attempts).
func (d *Desk) inTx(ctx context.Context, name string, fn txFunc) error {
	return d.inTxRetrying(ctx, d.slots, name, fn, retryable)
}

// inTxRacing is inTx for use cases that create rows a concurrent one may
// create first (a contact's identity, a contact's open chat on a channel, a
// provider message id): when a unique index refuses the row, the use case
// runs again and finds the row that won.
func (d *Desk) inTxRacing(ctx context.Context, name string, fn txFunc) error {
	return d.inTxRetrying(ctx, d.slots, name, fn, func(err error) bool {
		// A write held for the commit (d.atCommit) reports a refused row
		// at commit, as a driver error rather than ent's.
		return retryable(err) || ent.IsConstraintError(err) || sqlgraph.IsUniqueConstraintError(err)
	})
}

// inReleaseTx is inTx for a release of pending chats, which takes the
// releases' own slot on PostgreSQL (txSlots).
func (d *Desk) inReleaseTx(ctx context.Context, name string, fn txFunc) error {
	return d.inTxRetrying(ctx, d.releaseSlot, name, fn, retryable)
}

// inTxRetrying runs fn in a transaction begun once a slot of slots is free
// (PostgreSQL), as often as again allows.
func (d *Desk) inTxRetrying(ctx context.Context, slots *txSlots, name string, fn txFunc, again func(error) bool) error {
	for attempt := 1; ; attempt++ {
		// A cancelled context stops a use case before it begins (or
		// begins again), never inside a transaction (inTxOnce).
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		err := d.inTxOnce(ctx, slots, name, fn, attempt)
		if err == nil || attempt == maxTxAttempts || !again(err) {
			return err
		}
		d.log.Debug("transaction retried", "use_case", name, "attempt", attempt, "err", err)
		// A short random pause lets the transaction that won go first.
		select {
		case <-time.After(time.Duration(rand.IntN(attempt*5)+1) * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

const maxTxAttempts = 5

// retryable reports whether PostgreSQL aborted a transaction that may
// succeed when run again.
func retryable(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		switch pqErr.Code {
		case "40P01", "40001": // deadlock_detected, serialization_failure
			return true
		}
	}
	return false
}

func (d *Desk) inTxOnce(ctx context.Context, slots *txSlots, name string, fn txFunc, attempt int) error {
	free := func() {}
	if d.pg {
		var err error
		if free, err = slots.hold(ctx, name); err != nil {
			return err
		}
		defer free()
	} else {
		// SQLite has one writer at a time and makes the others poll
		// (busy_timeout); queueing them here instead is fairer and faster.
		// A mutex, not a slot: its wait does not end with the caller, but
		// a writer already running takes it at once, where a slot hands
		// it to the first waiter, who must be woken (a slot here read
		// 1,350–1,504 against 1,585–1,654 msg/s at c=8).
		d.writeMu.Lock()
		defer d.writeMu.Unlock()
	}
	// The wait for a connection ends with the caller's context; what runs
	// once the transaction has begun does not (txFunc).
	tx, err := d.client.Tx(ctx)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", name, err)
	}
	ctx = context.WithoutCancel(ctx)
	defer func() {
		if v := recover(); v != nil {
			_ = tx.Rollback()
			panic(v)
		}
	}()
	st := &txState{attempt: attempt}
	d.txs.Store(tx, st)
	defer d.txs.Delete(tx)
	err = fn(ctx, tx)
	if err == nil {
		err = d.flushReleases(ctx, tx, st)
	}
	var events []*ent.Event
	var view *CommitView
	if err == nil {
		// Events go in last, under the append lock, so that a read of the
		// log waits for them (see eventAppendLock).
		events, view, err = d.flushEvents(ctx, tx, st.events)
	}
	if err != nil {
		// database/sql has already rolled back a transaction whose context
		// was cancelled (a shutdown), and a connection broken by a
		// cancelled statement is closed, which ends its transaction on the
		// server: neither is a failure to report.
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) && !errors.Is(rerr, driver.ErrBadConn) {
			d.log.Error("rollback failed", "use_case", name, "err", rerr)
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("%s: commit: %w", name, err)
	}
	// What follows the commit touches no transaction: the next use case
	// may begin.
	free()
	d.published(events, view)
	if st.kick {
		d.Kick()
	}
	if !st.due.IsZero() {
		d.dues.note(st.due)
	}
	for q := range st.routeLater {
		d.wantRelease(q)
	}
	return nil
}

// txSlots bounds the use-case transactions a process runs at once on
// PostgreSQL; those beyond wait for a slot in arrival order (a channel's
// senders are served first come, first served). A use case's transaction
// is short but makes round trips, each a wake-up of the server and of its
// backend; with more transactions in flight than there are cores to run
// them, they wait for the CPU at every round trip, for one another's WAL
// flushes and locks (a queue's routing mark, the members' rows), and
// PostgreSQL spends more CPU on each message. A wait here, before the
// transaction begins, holds no connection and no lock. On two cores, with
// three slots the p99 of a message's path to the panels at c=8 was a half
// to a sixth of what it was without a bound, at the same rate, on a machine
// whose cores were the limit; two slots did as well for the tail but left
// the cores idle between round trips. The bound costs closed-loop ingest
// rate at c=8: about 7% there, about 20% on a machine with faster commits
// (README, Performance). Like SQLite's writeMu, a slot is held by the
// transaction alone: a use case never begins another inside its own.
//
// Releases of pending chats (release.go, inReleaseTx) take a slot of their
// own, one at a time, instead of queueing behind the webhooks: the chats they route
// were acknowledged already, and their offers wait for them. So at most
// Config.Transactions use cases and one release run at once.
type txSlots struct {
	ch chan struct{}
	// waiting counts the callers waiting for a slot (Desk.Transactions).
	waiting atomic.Int64
}

func newTxSlots(n int) *txSlots { return &txSlots{ch: make(chan struct{}, n)} }

// take waits for a slot, or for ctx to end.
func (s *txSlots) take(ctx context.Context) error {
	select {
	case s.ch <- struct{}{}:
		return nil
	default:
	}
	// Every slot is taken: a free one is handed to the first waiter (a
	// blocked send), so a caller arriving later cannot pass the waiters.
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	select {
	case s.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// give returns a slot taken.
func (s *txSlots) give() { <-s.ch }

// hold takes a slot for the use case name (its wait, like the wait for a
// connection, ends with the caller's context) and returns what gives it
// back, once however often it is called.
func (s *txSlots) hold(ctx context.Context, name string) (func(), error) {
	if err := s.take(ctx); err != nil {
		return nil, fmt.Errorf("%s: wait for a transaction slot: %w", name, err)
	}
	return sync.OnceFunc(s.give), nil
}

// published hands a commit's events, and the view read with them, to the
// process's subscribers.
func (d *Desk) published(events []*ent.Event, view *CommitView) {
	if view != nil {
		d.views.fn(events, *view)
	}
	if len(events) > 0 && d.onEvents != nil {
		d.onEvents(events)
	}
}

// TransactionLoad is how the use cases of this process occupy its
// transaction slots on PostgreSQL (Config.Transactions), at one moment:
// an instance whose callers often wait while PostgreSQL's cores idle may
// be given more (README, Running on PostgreSQL).
type TransactionLoad struct {
	Slots   int `json:"slots"`   // Config.Transactions
	InUse   int `json:"inUse"`   // use cases in a transaction
	Waiting int `json:"waiting"` // use cases waiting for a slot
}

// Transactions reports the load of the transaction slots; false on SQLite,
// whose writers queue on its write lock instead.
func (d *Desk) Transactions() (TransactionLoad, bool) {
	if d.slots == nil {
		return TransactionLoad{}, false
	}
	return TransactionLoad{Slots: cap(d.slots.ch), InUse: len(d.slots.ch), Waiting: int(d.slots.waiting.Load())}, true
}

// atCommit runs a write that the rest of the use case does not read back
// (no RETURNING, no count, no later read of its rows in the transaction)
// with the commit, saving it a round trip (store.AtCommit); if it fails,
// the commit fails. The builder's placeholders follow the desk's dialect.
func (d *Desk) atCommit(ctx context.Context, tx *ent.Tx, q entsql.Querier) error {
	query, args := q.Query()
	_, err := tx.ExecContext(store.AtCommit(ctx), query, args...)
	return err
}

// sql is the SQL builder of the desk's dialect (for d.atCommit).
func (d *Desk) sql() *entsql.DialectBuilder {
	if d.pg {
		return entsql.Dialect(dialect.Postgres)
	}
	return entsql.Dialect(dialect.SQLite)
}

// lockRows locks the rows a query reads (PostgreSQL) FOR NO KEY UPDATE: it
// keeps other writers of the row out as FOR UPDATE does, but not the
// transactions that insert rows referring to it (a message of the chat, an
// offer to the operator, an event), which take FOR KEY SHARE on it and would
// wait for FOR UPDATE until commit. Parley never changes a key. Use it as
// query.Modify(lockRows()): the modifier stays on the query.
func lockRows(opts ...entsql.LockOption) func(*entsql.Selector) {
	return func(s *entsql.Selector) { s.For(entsql.LockNoKeyUpdate, opts...) }
}

// txState is what a use case's transaction collects for its commit.
type txState struct {
	events []event
	// releases are the queues whose waiting chats to release (R9), enqueued
	// at the end (see flushReleases).
	releases map[int]bool
	// kick wakes the scheduler after commit: a job is due now; due is the
	// earliest due time of the jobs enqueued for later (dueHint).
	kick bool
	due  time.Time
	// routeLater are the queues to release right after commit (pending new
	// chats, see routeAfterCommit).
	routeLater map[int]bool
	// attempt counts the runs of the use case (1, then 2… after a retry).
	attempt int
}

// retried reports whether tx runs a use case again, after an earlier
// attempt failed (a unique index refused a row, a deadlock).
func (d *Desk) retried(tx *ent.Tx) bool {
	st, ok := d.txs.Load(tx)
	return ok && st.(*txState).attempt > 1
}
