package store

import (
	"container/list"
	"context"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
// A transaction's last message can carry more than one statement, in the
// simple query protocol, which takes no parameters: there statements with
// arguments run as EXECUTE of a statement prepared once per connection
// (PREPARE, sent ahead of its first EXECUTE), their arguments written as
// literals, which EXECUTE converts to the prepared statement's parameter
// types as a bound text parameter is. That message carries
//   - the writes a use case does not read back (AtCommit), held until then;
//   - the statement that ends with InlineCommit, or COMMIT itself.
// PostgreSQL runs the statements of one message in order and stops at the
// first error, which aborts the transaction.

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
	// inTx: a transaction begun by BeginTx is open.
	inTx bool
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

func atCommit(ctx context.Context) bool { v, _ := ctx.Value(atCommitKey{}).(bool); return v }

// IsAtCommit reports whether ctx marks an AtCommit write (statement counts).
func IsAtCommit(ctx context.Context) bool { return atCommit(ctx) }

// InlineCommit ends a statement that is the last of its transaction and
// commits it in the same round trip: on connections opened by this package
// the statement is sent followed by COMMIT, in one message, and the
// transaction's Commit then has nothing left to send. Elsewhere it is a
// comment and the transaction commits as usual. A statement that holds a
// lock until commit (the event-order lock) then holds it for the server's
// work only, never for a round trip to the process and back; and no empty
// transaction is left to commit.
const InlineCommit = "\n/* parley: commit */"

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
	if !c.inTx || !strings.HasSuffix(query, InlineCommit) {
		c.messages++
		if len(args) == 0 {
			return c.forwardConn.QueryContext(ctx, query, nil)
		}
		return c.cache.query(ctx, c.forwardConn, query, args)
	}
	b, err := c.batch(query, args)
	if err != nil {
		return nil, err
	}
	b.stmts = append(b.stmts, "COMMIT")
	c.messages++
	rows, err := c.forwardConn.QueryContext(ctx, b.text(), nil)
	c.sent(b, err)
	if err != nil {
		return nil, err
	}
	return &committingRows{Rows: rows, conn: c}, nil
}

func (c *pqConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.inTx && atCommit(ctx) {
		if !deferrable(query) {
			return nil, fmt.Errorf("store: AtCommit takes writes without RETURNING only, not %.40q", query)
		}
		b, err := c.batch(query, args)
		if err != nil {
			return nil, err
		}
		// The statement joins the held ones, and the PREPARE it needs the
		// held setup.
		c.pending = append(c.pending, b.stmts[len(b.stmts)-1])
		c.pendingSetup = append(c.pendingSetup, b.setup[len(c.pendingSetup):]...)
		c.pendingFresh = append(c.pendingFresh, b.fresh[len(c.pendingFresh):]...)
		return atCommitResult{}, nil
	}
	c.messages++
	if len(args) == 0 {
		return c.forwardConn.ExecContext(ctx, query, nil)
	}
	return c.cache.exec(ctx, c.forwardConn, query, args)
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

// batch returns the held statements followed by query with its arguments.
func (c *pqConn) batch(query string, args []driver.NamedValue) (batch, error) {
	b := batch{setup: slices.Clone(c.pendingSetup), fresh: slices.Clone(c.pendingFresh), stmts: slices.Clone(c.pending)}
	if len(args) == 0 {
		b.stmts = append(b.stmts, query)
		return b, nil
	}
	lits := make([]string, len(args))
	for i, a := range args {
		l, err := literal(a.Value)
		if err != nil {
			return batch{}, fmt.Errorf("store: argument $%d: %w", i+1, err)
		}
		lits[i] = l
	}
	name, fresh, evicted := c.stmts.name(query)
	for _, old := range evicted {
		b.setup = append(b.setup, "DEALLOCATE "+old)
	}
	if fresh {
		b.setup = append(b.setup, "PREPARE "+name+" AS "+query)
		b.fresh = append(b.fresh, name)
	}
	b.stmts = append(b.stmts, "EXECUTE "+name+"("+strings.Join(lits, ", ")+")")
	return b, nil
}

// sent records the outcome of a batch: the held statements are gone either
// way. When it failed, the statements it prepared may not exist (a
// statement before them failed) or may (one after them failed): they are
// forgotten, and their names never reused.
func (c *pqConn) sent(b batch, err error) {
	c.pending, c.pendingSetup, c.pendingFresh = c.pending[:0], c.pendingSetup[:0], c.pendingFresh[:0]
	if err != nil {
		c.stmts.forget(b.fresh)
	}
}

// drop forgets what a transaction held (its end).
func (c *pqConn) drop() {
	c.stmts.forget(c.pendingFresh)
	c.inTx, c.committed = false, false
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
}

func (r *committingRows) Close() error {
	err := r.Rows.Close()
	if err == nil {
		r.conn.committed = true
	}
	return err
}

// BeginTx starts a transaction with a plain BEGIN, so that one committed by
// its last statement needs no cleanup in lib/pq (whose own BeginTx would
// wait for a Commit to end its watch of the context); lib/pq's Commit and
// Rollback, which check the transaction's state, end the others. Options
// other than the defaults go to lib/pq.
func (c *pqConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if opts.Isolation != 0 || opts.ReadOnly {
		return c.forwardConn.BeginTx(ctx, opts)
	}
	tx, ok := c.Conn.(driver.Tx)
	if !ok {
		return c.forwardConn.BeginTx(ctx, opts)
	}
	c.drop()
	c.messages++
	if _, err := c.forwardConn.ExecContext(ctx, "BEGIN", nil); err != nil {
		return nil, err
	}
	c.inTx = true
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
	case len(c.pending) == 0:
		// lib/pq's Commit reports a transaction that failed earlier
		// (PostgreSQL answers its COMMIT with ROLLBACK).
		c.messages++
		return t.Tx.Commit()
	}
	b, _ := c.batch("COMMIT", nil)
	c.messages++
	_, err := c.forwardConn.ExecContext(context.Background(), b.text(), nil)
	c.sent(b, err)
	if err != nil {
		c.rollback()
		return err
	}
	return nil
}

// Rollback drops the held writes. After the last statement committed it
// has nothing to undo (only a cancelled context gets there: the caller then
// reports an error, as for a commit whose answer was lost).
func (t *pqTx) Rollback() error {
	c := t.conn
	committed := c.committed
	c.drop()
	if committed {
		return nil
	}
	c.messages++
	return t.Tx.Rollback()
}

// rollback ends a transaction whose commit message failed.
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
