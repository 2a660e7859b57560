package store

import (
	"context"
	"database/sql/driver"
	"errors"
)

// forwardConn wraps a driver connection and forwards every optional
// interface database/sql looks for, so that a wrapper (pqConn, sqliteConn)
// overrides only what it changes.
type forwardConn struct{ driver.Conn }

var errNotSupported = errors.New("store: the database driver lacks a method Parley needs")

// CheckNamedValue implements driver.NamedValueChecker.
func (c forwardConn) CheckNamedValue(nv *driver.NamedValue) error {
	if vc, ok := c.Conn.(driver.NamedValueChecker); ok {
		return vc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

func (c forwardConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := c.Conn.(driver.QueryerContext); ok {
		return q.QueryContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c forwardConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := c.Conn.(driver.ExecerContext); ok {
		return e.ExecContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c forwardConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return c.Conn.Prepare(query)
}

func (c forwardConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return nil, errNotSupported
}

func (c forwardConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c forwardConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c forwardConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}
