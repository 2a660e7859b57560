package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
)

// SQLite connections keep their prepared statements (stmtCache): database/sql
// prepares the statement of every call with arguments and finalises it
// afterwards, so SQLite parsed and planned each of the dozen statements of
// an inbound message again every time, about a third of the embedded
// default's ingest CPU.

// sqliteConnector opens connections of the SQLite driver wrapped in
// sqliteConn.
type sqliteConnector struct {
	dsn  string
	drv  driver.Driver
	ckpt *checkpointer
}

func (c sqliteConnector) Connect(ctx context.Context) (driver.Conn, error) {
	// The checkpointer checkpoints; the writers only as a last resort
	// (checkpoint.go).
	cn, err := openSQLiteConn(ctx, c.drv, c.dsn, fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", walSafetyFrames))
	if err != nil {
		return nil, err
	}
	return &sqliteConn{forwardConn: forwardConn{cn}, ckpt: c.ckpt}, nil
}

// openSQLiteConn opens a driver connection to dsn and runs pragma on it.
func openSQLiteConn(ctx context.Context, drv driver.Driver, dsn, pragma string) (driver.Conn, error) {
	cn, err := drv.Open(dsn)
	if err != nil {
		return nil, err
	}
	if _, err := (forwardConn{cn}).ExecContext(ctx, pragma, nil); err != nil {
		cn.Close()
		return nil, err
	}
	return cn, nil
}

func (c sqliteConnector) Driver() driver.Driver { return c.drv }

// sqliteConn is a SQLite connection with a statement cache.
// Its writes outside transactions, and its commits, wake the checkpointer.
type sqliteConn struct {
	forwardConn
	cache stmtCache
	ckpt  *checkpointer
}

func (c *sqliteConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := c.cache.query(ctx, c.forwardConn, query, args)
	if !readsOnly(query) {
		c.ckpt.wrote() // INSERT … RETURNING
	}
	return rows, err
}

func (c *sqliteConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	res, err := c.cache.exec(ctx, c.forwardConn, query, args)
	c.ckpt.wrote()
	return res, err
}

func (c *sqliteConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	tx, err := c.forwardConn.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return checkpointingTx{Tx: tx, c: c.ckpt}, nil
}

// readsOnly reports whether a query is a SELECT or a PRAGMA: it writes
// nothing, or nothing the checkpointer need hurry for.
func readsOnly(query string) bool {
	query = strings.TrimLeft(query, " \t\r\n")
	return len(query) >= 6 && (strings.EqualFold(query[:6], "SELECT") || strings.EqualFold(query[:6], "PRAGMA"))
}

// Close finalises the cached statements, then closes the connection.
func (c *sqliteConn) Close() error {
	c.cache.close()
	return c.Conn.Close()
}
