package store

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"

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
	return pqConn{cn}, nil
}

func (c pqConnector) Driver() driver.Driver { return c.c.Driver() }

// pqConn is a lib/pq connection whose JSON arguments are sent as text. It
// forwards every optional interface lib/pq's connection implements.
type pqConn struct{ driver.Conn }

var errNotSupported = errors.New("store: the PostgreSQL driver lacks a method Parley needs")

// CheckNamedValue implements driver.NamedValueChecker.
func (c pqConn) CheckNamedValue(nv *driver.NamedValue) error {
	if raw, ok := nv.Value.(json.RawMessage); ok {
		if raw == nil {
			nv.Value = nil
		} else {
			nv.Value = string(raw)
		}
		return nil
	}
	if vc, ok := c.Conn.(driver.NamedValueChecker); ok {
		return vc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

func (c pqConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := c.Conn.(driver.QueryerContext); ok {
		return q.QueryContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c pqConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := c.Conn.(driver.ExecerContext); ok {
		return e.ExecContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c pqConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return c.Conn.Prepare(query)
}

func (c pqConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return nil, errNotSupported
}

func (c pqConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c pqConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c pqConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}
