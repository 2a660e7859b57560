package store_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
)

// TestPostgresStatementsCanCommitTheirTransaction: a statement that ends with
// store.InlineCommit commits its transaction in the same round trip; the
// transaction's Commit then succeeds without sending anything, a failing
// statement leaves a transaction that rolls back, and the connection stays
// in the pool throughout (lib/pq would discard one whose state surprised it).
func TestPostgresStatementsCanCommitTheirTransaction(t *testing.T) {
	db := storetest.Open(t)
	if !db.Postgres() {
		t.Skip("PostgreSQL only: SQLite commits as usual (InlineCommit is a comment there)")
	}
	ctx := context.Background()
	conn, err := db.SQL.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pid := func() int {
		t.Helper()
		var p int
		if err := conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	backend := pid()
	if _, err := conn.ExecContext(ctx, "CREATE TABLE inline (v int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		var n int
		// Another connection: what is committed.
		if err := db.SQL.QueryRowContext(ctx, "SELECT count(*) FROM inline").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	insert := func(tx *sql.Tx, v string) ([]int, error) {
		rows, err := tx.QueryContext(ctx, "INSERT INTO inline VALUES ("+v+") RETURNING v"+store.InlineCommit)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var got []int
		for rows.Next() {
			var n int
			if err := rows.Scan(&n); err != nil {
				return nil, err
			}
			got = append(got, n)
		}
		return got, rows.Err()
	}

	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO inline VALUES ($1)", 1); err != nil {
		t.Fatal(err)
	}
	if got, err := insert(tx, "2"); err != nil || len(got) != 1 || got[0] != 2 {
		t.Fatalf("inline-commit insert = %v, %v", got, err)
	}
	if n := count(); n != 2 {
		t.Fatalf("before Commit another connection sees %d rows, want 2 (committed by the statement)", n)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("Commit after the statement committed: %v", err)
	}

	// A failing statement commits nothing: the transaction rolls back.
	tx, err = conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO inline VALUES ($1)", 3); err != nil {
		t.Fatal(err)
	}
	_, err = insert(tx, "1") // duplicate key
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "23505" {
		t.Fatalf("duplicate inline-commit insert: %v, want unique_violation", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback after the failed statement: %v", err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after the failed transaction %d rows, want 2", n)
	}

	// Commit of a transaction whose statement failed reports it, as lib/pq does.
	tx, err = conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = tx.ExecContext(ctx, "INSERT INTO inline VALUES ($1)", 1)
	if err := tx.Commit(); err == nil {
		t.Fatal("Commit of an aborted transaction succeeded")
	}
	if n := count(); n != 2 {
		t.Fatalf("after the aborted transaction %d rows, want 2", n)
	}
	if got := pid(); got != backend {
		t.Fatalf("the connection was replaced (backend %d, then %d)", backend, got)
	}
}

// TestPostgresConnectionsKeepTheirStatementsPrepared: a statement with
// arguments is prepared once per connection and reused.
func TestPostgresConnectionsKeepTheirStatementsPrepared(t *testing.T) {
	db := storetest.Open(t)
	if !db.Postgres() {
		t.Skip("PostgreSQL only: the SQLite cache has its own test")
	}
	ctx := context.Background()
	conn, err := db.SQL.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	prepared := func() int {
		t.Helper()
		var n int // no arguments: not itself cached
		if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := prepared()
	for i := range 3 {
		var n int
		if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM generate_series(1, $1::int)", 5+i).Scan(&n); err != nil || n != 5+i {
			t.Fatalf("count = %d, %v; want %d", n, err, 5+i)
		}
	}
	if got := prepared(); got != before+1 {
		t.Fatalf("%d statements prepared after three runs of one query, want %d", got, before+1)
	}
}
