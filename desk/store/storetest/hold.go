package storetest

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/parleydesk/parley/desk/store"
)

// Holder holds transactions of a database open once begun, so that a test
// can keep a transaction slot taken (PostgreSQL) while it drives another
// caller into the wait.
type Holder struct {
	armed atomic.Pointer[Hold]
}

// Hold is one armed hold: the first transaction its pick accepts, once
// begun, waits until Release.
type Hold struct {
	pick     func(context.Context) bool
	held     chan struct{}
	release  chan struct{}
	released func()
}

// WithHolder returns db with a hook that holds the transactions a Hold
// picks (db.WithQueryHook), and the Holder that arms them.
func WithHolder(db *store.DB) (*store.DB, *Holder) {
	hd := &Holder{}
	return db.WithQueryHook(func(ctx context.Context, statement string) {
		// ent's debug driver logs "driver.Tx(…): started" as a
		// transaction begins.
		if !strings.HasSuffix(statement, ": started") {
			return
		}
		h := hd.armed.Load()
		if h == nil || !h.pick(ctx) || !hd.armed.CompareAndSwap(h, nil) {
			return
		}
		close(h.held)
		<-h.release
	}), hd
}

// Arm holds the next transaction that begins with a context pick accepts.
// A hold not released by the end of the test is released then, so that a
// failing test leaves no transaction, and no shutdown, waiting.
func (hd *Holder) Arm(t testing.TB, pick func(context.Context) bool) *Hold {
	h := &Hold{pick: pick, held: make(chan struct{}), release: make(chan struct{})}
	h.released = sync.OnceFunc(func() { close(h.release) })
	t.Cleanup(h.Release)
	hd.armed.Store(h)
	return h
}

// Held is closed once the picked transaction has begun and waits.
func (h *Hold) Held() <-chan struct{} { return h.held }

// Release lets the held transaction go on (idempotent).
func (h *Hold) Release() { h.released() }
