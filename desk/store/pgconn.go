package store

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"strings"

	"github.com/lib/pq"
)

// PostgreSQL connections run lib/pq in binary_parameters mode: a statement
// with arguments then goes out as one message sequence (Parse, Bind,
// Execute, Sync) and costs one round trip and, outside a transaction, one
// implicit transaction, where the default mode prepares first and costs two
// of each. In that mode lib/pq sends []byte arguments in binary format,
// which is right for bytea columns (token hashes, delivery bodies) but not
// for jsonb, whose binary format starts with a version byte: ent passes JSON
// values as json.RawMessage, and pqConn turns those into text.

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

// pqConn is a lib/pq connection whose JSON arguments are sent as text, and
// whose transactions may end inside their last statement (InlineCommit).
type pqConn struct {
	forwardConn
	// committed: the transaction's last statement committed it.
	committed bool
	// cache keeps the connection's statements prepared, so that
	// PostgreSQL parses each once per connection rather than once per call
	// (a message runs a dozen; parsing and planning were the larger part of
	// PostgreSQL's CPU). A cached call costs one round trip, as an
	// unprepared one does in binary_parameters mode.
	cache stmtCache
}

// CheckNamedValue implements driver.NamedValueChecker.
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

// InlineCommit ends a statement, without arguments, that is the last of its
// transaction and commits it in the same round trip: on connections opened
// by this package the statement is sent followed by COMMIT, in one message
// (the simple query protocol runs them in order and stops at an error), and
// the transaction's Commit then has nothing left to send. Elsewhere it is a
// comment and the transaction commits as usual. A statement that holds a
// lock until commit (the event-order lock) then holds it for the server's
// work only, never for a round trip to the process and back; and no empty
// transaction is left to commit.
const InlineCommit = "\n/* parley: commit */"

func (c *pqConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) > 0 || !strings.HasSuffix(query, InlineCommit) {
		return c.cache.query(ctx, c.forwardConn, query, args)
	}
	rows, err := c.forwardConn.QueryContext(ctx, query+";\nCOMMIT", nil)
	if err != nil {
		return nil, err
	}
	return &committingRows{Rows: rows, conn: c}, nil
}

func (c *pqConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.cache.exec(ctx, c.forwardConn, query, args)
}

// Close closes the prepared statements, then the connection.
func (c *pqConn) Close() error {
	c.cache.close()
	return c.Conn.Close()
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
	if _, err := c.forwardConn.ExecContext(ctx, "BEGIN", nil); err != nil {
		return nil, err
	}
	c.committed = false
	return &pqTx{Tx: tx, conn: c}, nil
}

// pqTx is a transaction begun by pqConn.BeginTx.
type pqTx struct {
	driver.Tx // the lib/pq connection's Commit and Rollback
	conn      *pqConn
}

func (t *pqTx) Commit() error {
	if t.conn.committed {
		t.conn.committed = false
		return nil
	}
	return t.Tx.Commit()
}

// Rollback after the last statement committed has nothing to undo (only a
// cancelled context gets there: the caller then reports an error, as for
// a commit whose answer was lost).
func (t *pqTx) Rollback() error {
	if t.conn.committed {
		t.conn.committed = false
		return nil
	}
	return t.Tx.Rollback()
}
