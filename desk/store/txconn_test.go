package store_test

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"runtime/metrics"
	"testing"

	"github.com/parleydesk/parley/desk/store/storetest"
)

// goroutinesCreated is how many goroutines the process has started so far.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestTransactionsStartNoWatchers: a transaction of the client (what a use
// case runs in, under a context that cannot end) reads and writes without
// a goroutine watching it, where database/sql's own Tx starts one for
// itself and one per result set; it commits, rolls back and ends once like
// a Tx, and gives its connection back to the pool.
func TestTransactionsStartNoWatchers(t *testing.T) {
	db := storetest.Open(t)
	ctx := context.Background()
	if _, err := db.SQL.ExecContext(ctx, "CREATE TABLE txconn (k TEXT)"); err != nil {
		t.Fatal(err)
	}

	// readInTx writes a row and reads the table back in tx, and returns how
	// many goroutines were started meanwhile.
	readInTx := func(tx interface {
		ExecContext(context.Context, string, ...any) (sql.Result, error)
		QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	}, k string) uint64 {
		t.Helper()
		before := goroutinesCreated()
		if _, err := tx.ExecContext(ctx, "INSERT INTO txconn (k) VALUES ('"+k+"')"); err != nil {
			t.Fatal(err)
		}
		rows, err := tx.QueryContext(ctx, "SELECT k FROM txconn")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		return goroutinesCreated() - before
	}

	// The count is process-wide: a first collection starts the runtime's
	// mark workers, so one runs before anything is counted.
	runtime.GC()

	// The control: database/sql's Tx, whose result set the count must see.
	sqlTx, err := db.SQL.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := readInTx(sqlTx, "control"); n == 0 {
		t.Fatal("no goroutine started for a result set of a database/sql Tx: the count sees nothing")
	}
	if err := sqlTx.Rollback(); err != nil {
		t.Fatal(err)
	}

	before := goroutinesCreated()
	tx, err := db.Client.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := readInTx(tx, "kept")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if all := goroutinesCreated() - before; n != 0 || all != 0 {
		t.Fatalf("goroutines started by a transaction: %d, %d of them while it read and wrote; want none", all, n)
	}
	if err := tx.Rollback(); !errors.Is(err, sql.ErrTxDone) {
		t.Fatalf("rollback after commit: %v, want sql.ErrTxDone", err)
	}

	tx, err = db.Client.Tx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	readInTx(tx, "dropped")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	rows, err := db.SQL.QueryContext(ctx, "SELECT k FROM txconn")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if err := rows.Close(); err != nil || len(keys) != 1 || keys[0] != "kept" {
		t.Fatalf("rows = %v (%v), want the committed one only", keys, err)
	}
	if n := db.SQL.Stats().InUse; n != 0 {
		t.Fatalf("%d connections still in use after the transactions ended", n)
	}
}
