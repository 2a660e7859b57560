package store

import (
	"context"
	"database/sql/driver"
)

// SQLite connections keep their prepared statements (stmtCache): database/sql
// prepares the statement of every call with arguments and finalises it
// afterwards, so SQLite parsed and planned each of the dozen statements of
// an inbound message again every time, about a third of the embedded
// default's ingest CPU.

// sqliteConnector opens connections of the SQLite driver wrapped in
// sqliteConn.
type sqliteConnector struct {
	dsn string
	drv driver.Driver
}

func (c sqliteConnector) Connect(context.Context) (driver.Conn, error) {
	cn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return &sqliteConn{forwardConn: forwardConn{cn}}, nil
}

func (c sqliteConnector) Driver() driver.Driver { return c.drv }

// sqliteConn is a SQLite connection with a statement cache.
type sqliteConn struct {
	forwardConn
	cache stmtCache
}

func (c *sqliteConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.cache.query(ctx, c.forwardConn, query, args)
}

func (c *sqliteConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.cache.exec(ctx, c.forwardConn, query, args)
}

// Close finalises the cached statements, then closes the connection.
func (c *sqliteConn) Close() error {
	c.cache.close()
	return c.Conn.Close()
}
