package store

import (
	"container/list"
	"context"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

// PostgreSQL connections run lib/pq in binary_parameters mode: a statement
// with arguments then goes out as one message sequence (Parse, Bind,
// Execute, Sync) and costs one round trip, where the default mode prepares
// first and costs two. Each connection keeps its statements prepared
// (stmtCache), so that PostgreSQL parses and plans each shape once per
// connection. In binary mode lib/pq sends []byte arguments in binary
// format, which is right for bytea columns but not for jsonb, whose binary
// format starts with a version byte: ent passes JSON values as
// json.RawMessage, and pqConn turns those into text.
//
// A transaction's first and last messages carry more than one statement,
// in the simple query protocol, which takes no parameters: there a
// statement with arguments runs as EXECUTE of a statement prepared once per
// connection (PREPARE, sent ahead of its first EXECUTE), its arguments
// written as literals, which EXECUTE converts to the prepared statement's
// parameter types as a bound text parameter is. The first message carries
// BEGIN with the first statement; the last one carries the writes the use
// case does not read back (AtCommit), held until then, with the statement
// that ends with InlineCommit, or COMMIT itself. PostgreSQL runs the
// statements of one message in order and stops at the first error, which
// aborts the transaction.

// pqConnector opens lib/pq connections wrapped in pqConn.
type pqConnector struct{ c *pq.Connector }

func (c pqConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cn, err := c.c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &pqConn{forwardConn: forwardConn{cn}}, nil
}

func (c pqConnector) Driver() driver.Driver { return c.c.Driver() }

// pqConn is a lib/pq connection whose JSON arguments are sent as text,
// whose statements stay prepared, and whose transactions may hold writes for
// their commit and end inside their last statement. database/sql uses a
// connection from one goroutine at a time, so its state needs no lock.
type pqConn struct {
	forwardConn
	// inTx: a transaction begun by BeginTx is open; begin: its BEGIN is
	// still to be sent, with its first statement.
	inTx, begin bool
	// The writes held for the commit (AtCommit), the PREPAREs they need and
	// the names those create.
	pending, pendingSetup, pendingFresh []string
	// committed: the transaction's last statement committed it.
	committed bool
	// cache keeps the statements sent on their own prepared (protocol
	// level); stmts names those prepared for EXECUTE (SQL level).
	cache stmtCache
	stmts pqStmts
	// messages counts the query messages sent, each a round trip (tests).
	messages int
}

// AtCommit marks a context for a write (INSERT, UPDATE or DELETE without
// RETURNING) that the rest of its transaction does not read back: inside a
// transaction on PostgreSQL, it is held and sent with the commit (the
// InlineCommit statement or COMMIT), saving its round trip, and its result
// reports nothing (RowsAffected is an error). If it fails, the commit fails
// and the transaction is rolled back. On SQLite, and outside transactions,
// it runs at once.
func AtCommit(ctx context.Context) context.Context {
	return context.WithValue(ctx, atCommitKey{}, true)
}

type atCommitKey struct{}

// IsAtCommit reports whether ctx marks an AtCommit write.
func IsAtCommit(ctx context.Context) bool { v, _ := ctx.Value(atCommitKey{}).(bool); return v }

// InlineCommit ends a statement that is the last of its transaction and
// commits it in the same round trip: on connections opened by this package
// the statement is sent followed by COMMIT, in one message, and the
// transaction's Commit then has nothing left to send. Elsewhere it is a
// comment and the transaction commits as usual. A statement that holds a
// lock until commit (the events' append lock) then holds it for the server's
// work only, never for a round trip to the process and back; and no empty
// transaction is left to commit.
const InlineCommit = "\n/* parley: commit */"

// Then separates the statements of a query that a transaction sends in
// one message, one round trip, on connections opened by this package
// (PostgreSQL; elsewhere the query fails). Each statement numbers its own
// parameters from $1, and takes the query's arguments in order, as many as
// its highest parameter (any "$n" in its text counts, even inside a quoted
// literal or a comment: keep those out of joined statements). The query's rows are those of its first statement
// that returns rows; rows.NextResultSet moves on to the next one's.
// PostgreSQL runs the statements in order, each with a snapshot of its own
// (READ COMMITTED): a statement after one that waited for a lock sees what
// the lock's holder committed, as a statement of its own round trip would.
// The first error ends the message and aborts the transaction.
const Then = "\n/* parley: then */\n"

// AfterCommit joins a read to a statement that ends with InlineCommit: the
// read is sent in the same message, after the COMMIT, on connections opened
// by this package (PostgreSQL; elsewhere the query fails). It runs in a
// transaction of its own, whose snapshot is taken after the commit: it sees
// what the commit left (or a later state), as a read sent once the commit
// returned would, without a round trip of its own. Its parameters number
// from $1 and take the arguments the first statement leaves (see Then); its
// rows are the query's next result set (rows.NextResultSet). The
// transaction is committed once PostgreSQL answered the COMMIT, whatever the
// read then does: an error of the read is an *AfterCommitError (from the
// rows' Err or Close), and the transaction's Commit returns nil.
const AfterCommit = "\n/* parley: after commit */\n"

// AfterCommitError is the error of a read joined by AfterCommit: the
// transaction before it committed.
type AfterCommitError struct{ Err error }

func (e *AfterCommitError) Error() string {
	return "the read after the commit failed (the transaction committed): " + e.Err.Error()
}

func (e *AfterCommitError) Unwrap() error { return e.Err }

// CheckNamedValue implements driver.NamedValueChecker: ent passes JSON
// values as json.RawMessage, sent as text.
func (c *pqConn) CheckNamedValue(nv *driver.NamedValue) error {
	if raw, ok := nv.Value.(json.RawMessage); ok {
		if raw == nil {
			nv.Value = nil
		} else {
			nv.Value = string(raw)
		}
		return nil
	}
	return c.forwardConn.CheckNamedValue(nv)
}

func (c *pqConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if strings.Contains(query, Then) {
		return c.queryChain(ctx, query, args)
	}
	if head, read, ok := strings.Cut(query, AfterCommit); ok {
		return c.queryAfterCommit(ctx, head, read, args)
	}
	commit := c.inTx && strings.HasSuffix(query, InlineCommit)
	if !commit && !c.begin {
		c.messages++
		if len(args) == 0 {
			return c.forwardConn.QueryContext(ctx, query, nil)
		}
		return c.cache.query(ctx, c.forwardConn, query, args)
	}
	b, err := c.batch(query, args, commit)
	if err != nil {
		return nil, err
	}
	if commit {
		b.stmts = append(b.stmts, "COMMIT")
	}
	c.messages++
	rows, err := c.forwardConn.QueryContext(ctx, b.text(), nil)
	c.sent(b, commit, err)
	if err != nil {
		return nil, err
	}
	if commit {
		return &committingRows{Rows: rows, conn: c}, nil
	}
	return rows, nil
}

func (c *pqConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.inTx && IsAtCommit(ctx) {
		if !deferrable(query) {
			return nil, fmt.Errorf("store: AtCommit takes writes without RETURNING only, not %.40q", query)
		}
		b, err := c.render(query, args)
		if err != nil {
			return nil, err
		}
		c.pending = append(c.pending, b.stmts...)
		c.pendingSetup = append(c.pendingSetup, b.setup...)
		c.pendingFresh = append(c.pendingFresh, b.fresh...)
		return atCommitResult{}, nil
	}
	if !c.begin {
		c.messages++
		if len(args) == 0 {
			return c.forwardConn.ExecContext(ctx, query, nil)
		}
		return c.cache.exec(ctx, c.forwardConn, query, args)
	}
	b, err := c.batch(query, args, false)
	if err != nil {
		return nil, err
	}
	c.messages++
	res, err := c.forwardConn.ExecContext(ctx, b.text(), nil)
	c.sent(b, false, err)
	return res, err
}

// queryChain sends the statements of a query joined by Then in one
// message (after the transaction's BEGIN when it is still to be sent), each
// with its share of the arguments.
func (c *pqConn) queryChain(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if !c.inTx {
		return nil, errors.New("store: statements joined by Then run inside a transaction only")
	}
	var b batch
	if c.begin {
		b.stmts = append(b.stmts, "BEGIN")
	}
	rest := args
	for _, stmt := range strings.Split(query, Then) {
		n := highestParam(stmt)
		if n > len(rest) {
			return nil, fmt.Errorf("store: a statement joined by Then takes %d arguments, %d left", n, len(rest))
		}
		q, err := c.render(stmt, rest[:n])
		if err != nil {
			return nil, err
		}
		b.setup = append(b.setup, q.setup...)
		b.fresh = append(b.fresh, q.fresh...)
		b.stmts = append(b.stmts, q.stmts...)
		rest = rest[n:]
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("store: %d arguments left over by the statements joined by Then", len(rest))
	}
	c.messages++
	rows, err := c.forwardConn.QueryContext(ctx, b.text(), nil)
	c.sent(b, false, err)
	return rows, err
}

// queryAfterCommit sends a statement that commits its transaction (with
// the held writes ahead of it) and, in the same message, a read after the
// COMMIT (AfterCommit).
func (c *pqConn) queryAfterCommit(ctx context.Context, head, read string, args []driver.NamedValue) (driver.Rows, error) {
	if !c.inTx || !strings.HasSuffix(head, InlineCommit) {
		return nil, errors.New("store: AfterCommit follows a statement that ends with InlineCommit, in a transaction")
	}
	n, m := highestParam(head), highestParam(read)
	if n+m != len(args) {
		return nil, fmt.Errorf("store: the statements joined by AfterCommit take %d and %d arguments, not %d", n, m, len(args))
	}
	b, err := c.batch(head, args[:n], true)
	if err != nil {
		return nil, err
	}
	r, err := c.render(read, args[n:])
	if err != nil {
		return nil, err
	}
	b.setup = append(b.setup, r.setup...)
	b.fresh = append(b.fresh, r.fresh...)
	b.stmts = append(append(b.stmts, "COMMIT"), r.stmts...)
	c.messages++
	rows, err := c.forwardConn.QueryContext(ctx, b.text(), nil)
	c.sent(b, true, err)
	if err != nil {
		return nil, err
	}
	tagged, ok := rows.(interface{ Tag() string })
	if !ok {
		rows.Close()
		return nil, errNotSupported
	}
	return &committingRows{Rows: rows, conn: c, tag: tagged}, nil
}

// highestParam is the highest parameter ($n) a statement names.
func highestParam(stmt string) int {
	high := 0
	for i := 0; i < len(stmt); i++ {
		if stmt[i] != '$' {
			continue
		}
		j := i + 1
		for j < len(stmt) && stmt[j] >= '0' && stmt[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(stmt[i+1 : j]); err == nil && n > high {
			high = n
		}
		i = j - 1
	}
	return high
}

// deferrable reports whether a statement is a write that returns no rows
// (a row-returning statement ahead of another one would hide its rows).
func deferrable(query string) bool {
	q := strings.ToUpper(strings.TrimSpace(query))
	if strings.Contains(q, "RETURNING") {
		return false
	}
	for _, w := range []string{"INSERT ", "UPDATE ", "DELETE "} {
		if strings.HasPrefix(q, w) {
			return true
		}
	}
	return false
}

// atCommitResult is the result of an AtCommit write: not known yet.
type atCommitResult struct{}

var errAtCommit = errors.New("store: the result of a write held for the commit is not known")

func (atCommitResult) LastInsertId() (int64, error) { return 0, errAtCommit }
func (atCommitResult) RowsAffected() (int64, error) { return 0, errAtCommit }

// batch is one message to send: the held writes and one more statement.
type batch struct {
	// setup are PREPAREs and DEALLOCATEs: they are not transactional and go
	// first, so that a later statement's failure leaves them done.
	setup []string
	// fresh are the names this batch prepares.
	fresh []string
	stmts []string
}

func (b batch) text() string {
	return strings.Join(append(b.setup, b.stmts...), ";\n")
}

// batch returns the message that sends query with its arguments: after the
// transaction's BEGIN when it is still to be sent, and after the held
// writes when held.
func (c *pqConn) batch(query string, args []driver.NamedValue, held bool) (batch, error) {
	var b batch
	if c.begin {
		b.stmts = append(b.stmts, "BEGIN")
	}
	if held {
		b.setup = slices.Clone(c.pendingSetup)
		b.fresh = slices.Clone(c.pendingFresh)
		b.stmts = append(b.stmts, c.pending...)
	}
	q, err := c.render(query, args)
	if err != nil {
		return batch{}, err
	}
	b.setup = append(b.setup, q.setup...)
	b.fresh = append(b.fresh, q.fresh...)
	b.stmts = append(b.stmts, q.stmts...)
	return b, nil
}

// render returns query with its arguments as one statement of a batch:
// itself without arguments, else EXECUTE of its prepared statement, with
// the PREPARE (and the DEALLOCATEs of statements evicted to make room) to
// send first.
func (c *pqConn) render(query string, args []driver.NamedValue) (batch, error) {
	if len(args) == 0 {
		return batch{stmts: []string{query}}, nil
	}
	lits := make([]string, len(args))
	for i, a := range args {
		l, err := literal(a.Value)
		if err != nil {
			return batch{}, fmt.Errorf("store: argument $%d: %w", i+1, err)
		}
		lits[i] = l
	}
	var b batch
	name, fresh, evicted := c.stmts.name(query)
	for _, old := range evicted {
		b.setup = append(b.setup, "DEALLOCATE "+old)
	}
	if fresh {
		b.setup = append(b.setup, "PREPARE "+name+" AS "+query)
		b.fresh = append(b.fresh, name)
	}
	b.stmts = []string{"EXECUTE " + name + "(" + strings.Join(lits, ", ") + ")"}
	return b, nil
}

// sent records the outcome of a batch: its BEGIN and held writes are gone
// either way. When it failed, the statements it prepared may not exist (a
// statement before them failed) or may (one after them failed): they are
// forgotten, and their names never reused.
func (c *pqConn) sent(b batch, held bool, err error) {
	c.begin = false
	if held {
		c.pending, c.pendingSetup, c.pendingFresh = c.pending[:0], c.pendingSetup[:0], c.pendingFresh[:0]
	}
	if err != nil {
		c.stmts.forget(b.fresh)
	}
}

// drop forgets what a transaction held (its end).
func (c *pqConn) drop() {
	c.stmts.forget(c.pendingFresh)
	c.inTx, c.begin, c.committed = false, false, false
	c.pending, c.pendingSetup, c.pendingFresh = c.pending[:0], c.pendingSetup[:0], c.pendingFresh[:0]
}

// literal writes an argument (a driver.Value) as an SQL literal. Strings
// and the rest are quoted and untyped: EXECUTE converts them to the
// prepared statement's parameter types, as a bound text parameter is.
func literal(v driver.Value) (string, error) {
	switch v := v.(type) {
	case nil:
		return "NULL", nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		return "'" + strconv.FormatFloat(v, 'g', -1, 64) + "'", nil
	case bool:
		return strconv.FormatBool(v), nil
	case string:
		if strings.IndexByte(v, 0) >= 0 {
			return "", errors.New("a string with a NUL byte")
		}
		return pq.QuoteLiteral(v), nil
	case []byte:
		if v == nil {
			return "NULL", nil
		}
		return `'\x` + hex.EncodeToString(v) + `'::bytea`, nil
	case time.Time:
		return "'" + string(pq.FormatTimestamp(v)) + "'", nil
	default:
		return "", fmt.Errorf("unsupported type %T", v)
	}
}

// Close closes the cached statements, then the connection.
func (c *pqConn) Close() error {
	c.cache.close()
	return c.Conn.Close()
}

// ResetSession drops what a transaction left held (none when it ended by
// Commit or Rollback).
func (c *pqConn) ResetSession(ctx context.Context) error {
	c.drop()
	return c.forwardConn.ResetSession(ctx)
}

// committingRows are the rows of a statement sent with its COMMIT: once
// they are read to the end without error (the COMMIT's outcome comes after
// the last row), the transaction is committed.
type committingRows struct {
	driver.Rows
	conn *pqConn
	// tag, with a read after the commit (AfterCommit), is lib/pq's tag of
	// the last statement that completed: "COMMIT" once the commit did.
	tag interface{ Tag() string }
}

func (r *committingRows) Next(dest []driver.Value) error {
	return r.afterCommit(r.Rows.Next(dest))
}

func (r *committingRows) Close() error {
	err := r.Rows.Close()
	if err == nil {
		r.conn.committed = true
	}
	return r.afterCommit(err)
}

// afterCommit marks the transaction committed when the COMMIT completed
// before err, the error of the read after it, which it wraps.
func (r *committingRows) afterCommit(err error) error {
	if err == nil || err == io.EOF || r.tag == nil || r.tag.Tag() != "COMMIT" {
		return err
	}
	r.conn.committed = true
	var done *AfterCommitError
	if errors.As(err, &done) {
		return err
	}
	return &AfterCommitError{Err: err}
}

// HasNextResultSet and NextResultSet move on to a read after the commit.
func (r *committingRows) HasNextResultSet() bool {
	n, ok := r.Rows.(driver.RowsNextResultSet)
	return ok && n.HasNextResultSet()
}

func (r *committingRows) NextResultSet() error {
	n, ok := r.Rows.(driver.RowsNextResultSet)
	if !ok {
		return io.EOF
	}
	return n.NextResultSet()
}

// BeginTx starts a transaction whose BEGIN goes out with its first
// statement (saving it a round trip), in the simple query protocol: a
// transaction's first statement with arguments runs as EXECUTE (see above).
// lib/pq's BeginTx is left out: it would wait for a Commit to end its watch
// of the context, which a transaction committed by its last statement never
// sends. Options other than the defaults go to lib/pq.
func (c *pqConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if opts.Isolation != 0 || opts.ReadOnly {
		return c.forwardConn.BeginTx(ctx, opts)
	}
	tx, ok := c.Conn.(driver.Tx)
	if !ok {
		return c.forwardConn.BeginTx(ctx, opts)
	}
	c.drop()
	c.inTx, c.begin = true, true
	return &pqTx{Tx: tx, conn: c}, nil
}

// pqTx is a transaction begun by pqConn.BeginTx.
type pqTx struct {
	driver.Tx // the lib/pq connection's Commit and Rollback
	conn      *pqConn
}

// Commit sends the held writes with COMMIT. When one fails, the
// transaction is rolled back.
func (t *pqTx) Commit() error {
	c := t.conn
	defer c.drop()
	switch {
	case c.committed:
		return nil // by its last statement
	case c.begin && len(c.pending) == 0:
		return nil // nothing was sent
	case len(c.pending) == 0:
		// lib/pq's Commit reports a transaction that failed earlier
		// (PostgreSQL answers its COMMIT with ROLLBACK).
		c.messages++
		return t.Tx.Commit()
	}
	b, _ := c.batch("COMMIT", nil, true)
	c.messages++
	_, err := c.forwardConn.ExecContext(context.Background(), b.text(), nil)
	c.sent(b, true, err)
	if err != nil {
		c.rollback()
		return err
	}
	return nil
}

// Rollback drops the held writes. After the last statement committed it
// has nothing to undo (only a cancelled context gets there: the caller then
// reports an error, as for a commit whose answer was lost); nor has a
// transaction whose BEGIN was never sent. A message that failed before its
// BEGIN ran left no transaction open: PostgreSQL then only warns.
func (t *pqTx) Rollback() error {
	c := t.conn
	committed, begun := c.committed, !c.begin
	c.drop()
	if committed || !begun {
		return nil
	}
	return c.rollback()
}

// rollback ends a transaction on the server.
func (c *pqConn) rollback() error {
	c.messages++
	_, err := c.forwardConn.ExecContext(context.Background(), "ROLLBACK", nil)
	return err
}

// pqStmts names a connection's prepared statements by their text, the
// most recently used first.
type pqStmts struct {
	byQuery map[string]*list.Element // values *pqStmt
	lru     list.List
	seq     int
}

type pqStmt struct{ query, name string }

// pqStmtsSize bounds the statements one connection keeps prepared (ent's
// query shapes, lists of ids in IN included, are a few hundred at most).
const pqStmtsSize = 256

// name returns the name of query's prepared statement; fresh when it is to
// be prepared, with the names of statements evicted to make room.
func (s *pqStmts) name(query string) (name string, fresh bool, evicted []string) {
	if el, ok := s.byQuery[query]; ok {
		s.lru.MoveToFront(el)
		return el.Value.(*pqStmt).name, false, nil
	}
	if s.byQuery == nil {
		s.byQuery = map[string]*list.Element{}
	}
	s.seq++
	st := &pqStmt{query: query, name: "parley_" + strconv.Itoa(s.seq)}
	s.byQuery[query] = s.lru.PushFront(st)
	for s.lru.Len() > pqStmtsSize {
		old := s.lru.Remove(s.lru.Back()).(*pqStmt)
		delete(s.byQuery, old.query)
		evicted = append(evicted, old.name)
	}
	return st.name, true, evicted
}

// forget drops statements that may not have been prepared.
func (s *pqStmts) forget(names []string) {
	for _, n := range names {
		for el := s.lru.Front(); el != nil; el = el.Next() {
			if st := el.Value.(*pqStmt); st.name == n {
				s.lru.Remove(el)
				delete(s.byQuery, st.query)
				break
			}
		}
	}
}
