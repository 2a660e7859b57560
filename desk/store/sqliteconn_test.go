package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
)

// cacheOf runs fn with the statement cache of one pooled connection.
func cacheOf(t *testing.T, conn *sql.Conn, fn func(c *sqliteConn)) {
	t.Helper()
	if err := conn.Raw(func(dc any) error { fn(dc.(*sqliteConn)); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestSQLiteConnectionsReuseTheirPreparedStatements(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "cache.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.SQL.Close()
	conn, err := db.SQL.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExec := func(q string, args ...any) {
		t.Helper()
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)") // no arguments: not cached
	const insert = "INSERT INTO t (id, v) VALUES (?, ?)"
	for i := range 5 {
		mustExec(insert, i, fmt.Sprint("v", i))
	}
	var first any
	cacheOf(t, conn, func(c *sqliteConn) {
		if c.cache.lru.Len() != 1 || c.cache.stmts[insert] == nil {
			t.Fatalf("cache holds %d statements, want the insert alone", c.cache.lru.Len())
		}
		first = c.cache.stmts[insert].Value.(*cachedStmt).stmt
	})

	// A query run again while its rows are open runs on a fresh statement;
	// both read the right rows, and the cached one is reused after.
	const sel = "SELECT v FROM t WHERE id >= ? ORDER BY id"
	outer, err := conn.QueryContext(ctx, sel, 3)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for outer.Next() {
		var v string
		if err := outer.Scan(&v); err != nil {
			t.Fatal(err)
		}
		inner, err := conn.QueryContext(ctx, sel, 4)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for inner.Next() {
			n++
		}
		inner.Close()
		got = append(got, fmt.Sprint(v, ":", n))
	}
	if err := outer.Close(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[v3:1 v4:1]" {
		t.Fatalf("rows = %v, want [v3:1 v4:1]", got)
	}
	var v string
	if err := conn.QueryRowContext(ctx, sel, 1).Scan(&v); err != nil || v != "v1" {
		t.Fatalf("after the nested run: %q, %v", v, err)
	}
	cacheOf(t, conn, func(c *sqliteConn) {
		if c.cache.lru.Len() != 2 || c.cache.stmts[insert].Value.(*cachedStmt).stmt != first {
			t.Fatalf("cache holds %d statements (want 2), insert statement replaced: %v", c.cache.lru.Len(), c.cache.stmts[insert].Value.(*cachedStmt).stmt != first)
		}
		if c.cache.stmts[sel].Value.(*cachedStmt).busy {
			t.Fatal("a statement whose rows were closed is still marked busy")
		}
	})

	// Errors reach the caller and cache nothing; a transaction commits
	// through cached statements.
	if _, err := conn.ExecContext(ctx, "INSERT INTO nowhere VALUES (?)", 1); err == nil {
		t.Fatal("an insert into a missing table succeeded")
	}
	if _, err := conn.ExecContext(ctx, insert, 1, "duplicate"); err == nil {
		t.Fatal("a duplicate primary key was accepted")
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, insert, 10, "in tx"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, sel, 10).Scan(&v); err != nil || v != "in tx" {
		t.Fatalf("row written in a transaction: %q, %v", v, err)
	}

	// The cache is bounded.
	for i := range stmtCacheSize + 20 {
		if err := conn.QueryRowContext(ctx, fmt.Sprintf("SELECT v FROM t WHERE id = ? AND %d = %d", i, i), 1).Scan(&v); err != nil {
			t.Fatal(err)
		}
	}
	cacheOf(t, conn, func(c *sqliteConn) {
		if c.cache.lru.Len() != stmtCacheSize || len(c.cache.stmts) != stmtCacheSize {
			t.Fatalf("cache holds %d statements (%d by text), want %d", c.cache.lru.Len(), len(c.cache.stmts), stmtCacheSize)
		}
		if _, ok := c.cache.stmts[insert]; ok {
			t.Fatal("the least recently used statement was kept")
		}
	})
}
