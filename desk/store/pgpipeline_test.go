package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
)

// pipeline is a PostgreSQL connection of a store opened on
// TEST_DATABASE_URL, with a table of its own.
type pipeline struct {
	t     *testing.T
	db    *DB
	conn  *sql.Conn
	table string
}

func newPipeline(t *testing.T) *pipeline {
	t.Helper()
	url := os.Getenv("TEST_DATABASE_URL")
	if url == "" {
		t.Skip("PostgreSQL only: set TEST_DATABASE_URL")
	}
	ctx := context.Background()
	db, err := Open(ctx, url, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	conn, err := db.SQL.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p := &pipeline{t: t, db: db, conn: conn, table: fmt.Sprintf("pipeline_%d", time.Now().UnixNano())}
	if _, err := db.SQL.ExecContext(ctx, "CREATE TABLE "+p.table+" (v int PRIMARY KEY, s text)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.SQL.ExecContext(context.Background(), "DROP TABLE "+p.table) }) //nolint:errcheck
	return p
}

// q replaces T with the test's table.
func (p *pipeline) q(query string) string { return strings.ReplaceAll(query, " T ", " "+p.table+" ") }

// messages is the count of query messages the connection has sent.
func (p *pipeline) messages() int {
	p.t.Helper()
	var n int
	if err := p.conn.Raw(func(dc any) error { n = dc.(*pqConn).messages; return nil }); err != nil {
		p.t.Fatal(err)
	}
	return n
}

// committed lists the values committed, read on another connection.
func (p *pipeline) committed() string {
	p.t.Helper()
	rows, err := p.db.SQL.QueryContext(context.Background(), "SELECT v FROM "+p.table+" ORDER BY v")
	if err != nil {
		p.t.Fatal(err)
	}
	defer rows.Close()
	var vs []string
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			p.t.Fatal(err)
		}
		vs = append(vs, fmt.Sprint(v))
	}
	return strings.Join(vs, ",")
}

func (p *pipeline) begin() *sql.Tx {
	p.t.Helper()
	tx, err := p.conn.BeginTx(context.Background(), nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return tx
}

func (p *pipeline) hold(tx *sql.Tx, query string, args ...any) {
	p.t.Helper()
	if _, err := tx.ExecContext(AtCommit(context.Background()), p.q(query), args...); err != nil {
		p.t.Fatalf("%s: %v", query, err)
	}
}

func (p *pipeline) backend() int {
	p.t.Helper()
	var pid int
	if err := p.conn.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		p.t.Fatal(err)
	}
	return pid
}

func isUnique(err error) bool {
	var pqErr *pq.Error
	return errors.As(err, &pqErr) && pqErr.Code == "23505"
}

// TestPostgresWritesHeldForTheCommitTravelWithIt: AtCommit writes cost no
// round trip of their own: they go with COMMIT, or with the statement that
// commits the transaction, in order; nor does BEGIN, which goes with the
// transaction's first statement.
func TestPostgresWritesHeldForTheCommitTravelWithIt(t *testing.T) {
	p := newPipeline(t)
	ctx := context.Background()
	before := p.messages()
	tx := p.begin()
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", 1, "a")
	p.hold(tx, "UPDATE T SET s = $1 WHERE v = $2", "b", 1)
	var n int
	if err := tx.QueryRowContext(ctx, p.q("SELECT count(*) FROM T WHERE v = $1"), 1).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the transaction counts %d rows, %v; want 0 (its writes are held for the commit)", n, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := p.messages() - before; got != 2 {
		t.Fatalf("BEGIN, a query and a commit with two held writes took %d messages, want 2", got)
	}
	var s string
	if err := p.db.SQL.QueryRowContext(ctx, p.q("SELECT s FROM T WHERE v = $1"), 1).Scan(&s); err != nil || s != "b" {
		t.Fatalf("committed s = %q, %v; want b (the writes ran in order)", s, err)
	}

	// Rollback drops them; a transaction that sent nothing sends nothing
	// at its end.
	before = p.messages()
	tx = p.begin()
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", 5, "held")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := p.begin().Commit(); err != nil {
		t.Fatal(err)
	}
	if got := p.messages() - before; got != 0 {
		t.Fatalf("a transaction rolled back before sending and an empty one took %d messages, want 0", got)
	}
	if got := p.committed(); got != "1" {
		t.Fatalf("after the rollback committed %q, want 1 (the held write dropped)", got)
	}

	// A statement that commits its transaction takes them along.
	before = p.messages()
	tx = p.begin()
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", 6, "x")
	var v int
	if err := tx.QueryRowContext(ctx, p.q("INSERT INTO T VALUES ($1, $2) RETURNING v")+InlineCommit, 7, "y").Scan(&v); err != nil || v != 7 {
		t.Fatalf("inline-commit insert = %d, %v", v, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := p.messages() - before; got != 1 {
		t.Fatalf("BEGIN, a held write and an inline commit took %d messages, want 1", got)
	}
	if got := p.committed(); got != "1,6,7" {
		t.Fatalf("committed %q, want 1,6,7", got)
	}
}

// TestPostgresAHeldWriteFailsTheTransaction: a held write's error is
// reported by the commit (or the statement that commits), the transaction
// changes nothing, and the connection stays usable.
func TestPostgresAHeldWriteFailsTheTransaction(t *testing.T) {
	p := newPipeline(t)
	ctx := context.Background()
	if _, err := p.conn.ExecContext(ctx, p.q("INSERT INTO T VALUES ($1, $2)"), 1, "a"); err != nil {
		t.Fatal(err)
	}
	backend := p.backend()

	tx := p.begin()
	if _, err := tx.ExecContext(ctx, p.q("INSERT INTO T VALUES ($1, $2)"), 2, "b"); err != nil {
		t.Fatal(err)
	}
	// A shape never held on this connection: its PREPARE goes in the
	// failing message.
	p.hold(tx, "UPDATE T SET s = $1 WHERE v = $2 AND s <> $3", "c", 1, "z")
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", 1, "duplicate")
	if err := tx.Commit(); !isUnique(err) {
		t.Fatalf("Commit with a duplicate held insert: %v, want unique_violation", err)
	}
	if got := p.committed(); got != "1" {
		t.Fatalf("after the failed commit committed %q, want 1", got)
	}
	// The shape runs again, prepared afresh.
	tx = p.begin()
	p.hold(tx, "UPDATE T SET s = $1 WHERE v = $2 AND s <> $3", "c", 1, "z")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := p.db.SQL.QueryRowContext(ctx, p.q("SELECT s FROM T WHERE v = $1"), 1).Scan(&s); err != nil || s != "c" {
		t.Fatalf("s = %q, %v; want c", s, err)
	}

	// With the statement that commits.
	tx = p.begin()
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", 1, "duplicate")
	var v int
	if err := tx.QueryRowContext(ctx, p.q("INSERT INTO T VALUES ($1, $2) RETURNING v")+InlineCommit, 8, "h").Scan(&v); !isUnique(err) {
		t.Fatalf("inline commit after a duplicate held insert: %v, want unique_violation", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback: %v", err)
	}

	// A held write whose PREPARE fails (no such column).
	tx = p.begin()
	p.hold(tx, "UPDATE T SET nosuch = $1 WHERE v = $2", "x", 1)
	if err := tx.Commit(); err == nil {
		t.Fatal("a held write of a missing column committed")
	}

	// A first statement whose PREPARE fails, ahead of the BEGIN it
	// carries: no transaction was opened, and Rollback says nothing.
	tx = p.begin()
	if err := tx.QueryRowContext(ctx, p.q("SELECT nosuch FROM T WHERE v = $1"), 1).Scan(&v); err == nil {
		t.Fatal("a query of a missing column succeeded")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback after a first statement that failed: %v", err)
	}

	// The connection is the same and out of any transaction: an
	// autocommit write is committed.
	if _, err := p.conn.ExecContext(ctx, p.q("INSERT INTO T VALUES ($1, $2)"), 5, "e"); err != nil {
		t.Fatal(err)
	}
	if got := p.committed(); got != "1,5" {
		t.Fatalf("committed %q, want 1,5", got)
	}
	if got := p.backend(); got != backend {
		t.Fatalf("the connection was replaced (backend %d, then %d)", backend, got)
	}
}

// TestPostgresAtCommitTakesWritesOnly: a statement that returns rows cannot
// be held (its rows would be lost), and a held write reports no count.
func TestPostgresAtCommitTakesWritesOnly(t *testing.T) {
	p := newPipeline(t)
	ctx := context.Background()
	tx := p.begin()
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.ExecContext(AtCommit(ctx), p.q("INSERT INTO T VALUES ($1, $2) RETURNING v"), 1, "a"); err == nil {
		t.Fatal("AtCommit took an INSERT … RETURNING")
	}
	if _, err := tx.ExecContext(AtCommit(ctx), p.q("SELECT v FROM T WHERE v = $1"), 1); err == nil {
		t.Fatal("AtCommit took a SELECT")
	}
	res, err := tx.ExecContext(AtCommit(ctx), p.q("DELETE FROM T WHERE v = $1"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.RowsAffected(); err == nil {
		t.Fatal("a held write reported a row count")
	}
}

// TestPostgresArgumentsKeepTheirValues: arguments written as literals (in
// the message that commits) read back as they were bound.
func TestPostgresArgumentsKeepTheirValues(t *testing.T) {
	p := newPipeline(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 13, 5, 7, 123456000, time.FixedZone("", 5*3600+1800))
	text := "it's a \\ back\"slash, ünïcode 'quoted' \n line; DROP TABLE x; --"
	blob := []byte{0, 1, 2, 'a', '\\', '\'', 255}
	var (
		i          int64
		f, nan     float64
		b          bool
		s, null    sql.NullString
		by, empty  []byte
		ts         time.Time
		j          string
		neg, small float64
	)
	tx := p.begin()
	err := tx.QueryRowContext(ctx, `SELECT $1::int8, $2::float8, $3::float8, $4::bool, $5::text, $6::text, $7::bytea,
		$8::bytea, $9::timestamptz, $10::jsonb::text, $11::float8, $12::float8`+InlineCommit,
		int64(-42), 1.5, math.NaN(), true, text, nil, blob, []byte{}, at, `{"a": "b'c"}`, -1e300, 5e-324).
		Scan(&i, &f, &nan, &b, &s, &null, &by, &empty, &ts, &j, &neg, &small)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	switch {
	case i != -42, f != 1.5, !math.IsNaN(nan), !b, neg != -1e300, small != 5e-324:
		t.Fatalf("numbers and bool: %d %v %v %v %v %v", i, f, nan, b, neg, small)
	case s.String != text || !s.Valid:
		t.Fatalf("text %q, want %q", s.String, text)
	case null.Valid:
		t.Fatalf("nil read back as %q", null.String)
	case !bytes.Equal(by, blob) || empty == nil || len(empty) != 0:
		t.Fatalf("bytea %v and %v, want %v and empty", by, empty, blob)
	case !ts.Equal(at):
		t.Fatalf("timestamptz %v, want %v", ts, at)
	case j != `{"a": "b'c"}`:
		t.Fatalf("jsonb %s", j)
	}
	tx = p.begin()
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.ExecContext(AtCommit(ctx), p.q("INSERT INTO T VALUES ($1, $2)"), 1, "nul\x00byte"); err == nil ||
		!strings.Contains(err.Error(), "NUL") {
		t.Fatalf("a string with a NUL byte: %v, want an error naming it", err)
	}
}

// TestPostgresStatementsJoinedByThenTravelTogether: statements joined by
// Then go in one message, BEGIN included, each with its own arguments, and
// their rows are read one result set after the other. A statement after one
// that waited for a row lock sees what the lock's holder committed meanwhile
// (its own snapshot), which a subquery of the locking statement would not.
func TestPostgresStatementsJoinedByThenTravelTogether(t *testing.T) {
	p := newPipeline(t)
	ctx := context.Background()
	if _, err := p.conn.ExecContext(ctx, p.q("INSERT INTO T VALUES (1, 'a'), (2, 'b')")); err != nil {
		t.Fatal(err)
	}
	// Another transaction holds row 1 and adds row 3.
	other, err := p.db.SQL.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback() //nolint:errcheck
	if _, err := other.ExecContext(ctx, p.q("UPDATE T SET s = 'held' WHERE v = 1")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.ExecContext(ctx, p.q("INSERT INTO T VALUES (3, 'c')")); err != nil {
		t.Fatal(err)
	}

	backend := p.backend()
	before := p.messages()
	tx := p.begin()
	type result struct {
		locked     []string
		count      int
		sub, after int
		err        error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = func() error {
			rows, err := tx.QueryContext(ctx, p.q("SELECT s, (SELECT count(*) FROM T WHERE v > $1) FROM T WHERE v <= $2 ORDER BY v FOR UPDATE")+Then+
				p.q("SELECT count(*) FROM T WHERE v > $1"), 0, 2, 0)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var s string
				if err := rows.Scan(&s, &r.sub); err != nil {
					return err
				}
				r.locked = append(r.locked, s)
			}
			if !rows.NextResultSet() || !rows.Next() {
				return fmt.Errorf("no second result set (%v)", rows.Err())
			}
			if err := rows.Scan(&r.after); err != nil {
				return err
			}
			return rows.Err()
		}()
		done <- r
	}()
	// The chain waits for row 1's lock; then the holder commits.
	for waiting := false; !waiting; {
		if err := p.db.SQL.QueryRowContext(ctx, "SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
			backend).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			t.Fatalf("the chain ended before the lock was released: %+v", r)
		default:
		}
	}
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if strings.Join(r.locked, ",") != "held,b" {
		t.Fatalf("the locking statement read %v, want [held b] (the row after its holder's commit)", r.locked)
	}
	if r.sub != 2 || r.after != 3 {
		t.Fatalf("rows counted by the locking statement's subquery %d and by the next statement %d, want 2 and 3", r.sub, r.after)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := p.messages() - before; got != 2 {
		t.Fatalf("BEGIN and two joined statements, then COMMIT, took %d messages, want 2", got)
	}

	// Arguments that do not match the statements fail before anything is sent.
	tx = p.begin()
	if _, err := tx.QueryContext(ctx, p.q("SELECT v FROM T WHERE v = $1")+Then+p.q("SELECT v FROM T WHERE v = $2"), 1, 2); err == nil ||
		!strings.Contains(err.Error(), "arguments") {
		t.Fatalf("a chain given 2 arguments for 3: %v, want an error", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	// A statement that fails while it runs reports PostgreSQL's error with
	// its rows (a deadlock would be retried on its code), the next one does
	// not run and the transaction changes nothing.
	tx = p.begin()
	rows, err := tx.QueryContext(ctx, p.q("SELECT 10 / (v - $1) FROM T ORDER BY v")+Then+p.q("INSERT INTO T VALUES ($1, $2) RETURNING v"), 3, 9, "never")
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "22012" {
		t.Fatalf("a chain whose first statement divides by zero: %v, want division_by_zero", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := p.committed(); got != "1,2,3" {
		t.Fatalf("after the failed chain committed %q, want 1,2,3", got)
	}
}

// afterCommit runs, in a new transaction with one held write (v, "held"),
// the inline-commit insert of v+1 followed by read (AfterCommit, taking
// readArgs): the inserted value, the read's first column as text, and the
// first error.
func (p *pipeline) afterCommit(v int, read string, readArgs ...any) (inserted int, got string, tx *sql.Tx, err error) {
	p.t.Helper()
	ctx := context.Background()
	tx = p.begin()
	p.hold(tx, "INSERT INTO T VALUES ($1, $2)", v, "held")
	rows, err := tx.QueryContext(ctx, p.q("INSERT INTO T VALUES ($1, $2) RETURNING v")+InlineCommit+AfterCommit+p.q(read),
		append([]any{v + 1, "committing"}, readArgs...)...)
	if err != nil {
		return 0, "", tx, err
	}
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(&inserted); err != nil {
			return 0, "", tx, err
		}
	}
	if !rows.NextResultSet() {
		return inserted, "", tx, fmt.Errorf("no result set after the commit (%w)", rows.Err())
	}
	for rows.Next() {
		if err := rows.Scan(&got); err != nil {
			return inserted, "", tx, err
		}
	}
	if err := rows.Err(); err != nil {
		return inserted, got, tx, err
	}
	return inserted, got, tx, rows.Close()
}

// TestPostgresAReadAfterTheCommitTravelsWithIt: a read joined by
// AfterCommit goes in the committing statement's message, runs outside the
// committed transaction and sees what it committed; when the read fails,
// the transaction is still committed and its Commit succeeds, and the error
// says so; when the commit fails, the read's error is not mistaken for one
// after the commit.
func TestPostgresAReadAfterTheCommitTravelsWithIt(t *testing.T) {
	p := newPipeline(t)
	backend := p.backend()
	before := p.messages()
	ins, got, tx, err := p.afterCommit(1, "SELECT count(*)::text || ' ' || (pg_current_xact_id_if_assigned() IS NULL)::text FROM T WHERE v >= $1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if ins != 2 || got != "2 true" {
		t.Fatalf("inserted %d, read %q; want 2 and \"2 true\" (both rows, read outside the writing transaction)", ins, got)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("Commit after the committing statement: %v", err)
	}
	if got := p.messages() - before; got != 1 {
		t.Fatalf("BEGIN, a held write, an inline commit and a read after it took %d messages, want 1", got)
	}

	// The read fails after the commit: once its result set began (division
	// by zero while it runs), and before (an argument its parameter's type
	// refuses, converted by EXECUTE).
	for i, c := range []struct {
		v    int
		read string
		arg  any
	}{{3, "SELECT (1 / $1::int)::text", 0}, {5, "SELECT v::text FROM T WHERE v = $1::int", "not a number"}} {
		_, _, tx, err := p.afterCommit(c.v, c.read, c.arg)
		var after *AfterCommitError
		if !errors.As(err, &after) {
			t.Fatalf("case %d: a read failing after the commit: %v, want an AfterCommitError", i, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("case %d: Commit after the committed statement and a failed read: %v", i, err)
		}
	}
	if got := p.committed(); got != "1,2,3,4,5,6" {
		t.Fatalf("committed %q, want 1,2,3,4,5,6 (the failed reads changed nothing)", got)
	}

	// The commit fails (a duplicate held write): nothing is committed and
	// the error is the commit's.
	_, _, tx, err = p.afterCommit(1, "SELECT $1::text", "x")
	var after *AfterCommitError
	if !isUnique(err) || errors.As(err, &after) {
		t.Fatalf("a failed commit with a read after it: %v, want unique_violation, not an AfterCommitError", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if got := p.committed(); got != "1,2,3,4,5,6" {
		t.Fatalf("after the failed commit committed %q, want 1,2,3,4,5,6", got)
	}

	// Arguments that do not match the statements fail before anything is sent.
	before = p.messages()
	tx = p.begin()
	if _, err := tx.QueryContext(context.Background(), p.q("INSERT INTO T VALUES ($1, $2)")+InlineCommit+AfterCommit+"SELECT $1::int", 9, "x"); err == nil {
		t.Fatal("too few arguments for the read after the commit were accepted")
	}
	if _, err := tx.QueryContext(context.Background(), p.q("INSERT INTO T VALUES ($1, $2)")+AfterCommit+"SELECT 1", 9, "x"); err == nil {
		t.Fatal("a read after a statement that does not commit was accepted")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := p.messages() - before; got != 0 {
		t.Fatalf("refused statements sent %d messages, want 0", got)
	}
	if got := p.backend(); got != backend {
		t.Fatalf("the connection was replaced (backend %d, then %d)", backend, got)
	}
}
