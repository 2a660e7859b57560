package store

import (
	"context"
	"database/sql"
	"database/sql/driver"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
)

// connDriver is ent's driver with transactions begun on a connection taken
// from the pool (sql.Conn), on the database driver itself, rather than
// through database/sql's Tx.
//
// database/sql starts a goroutine for every Tx, to roll it back when its
// context ends, and, since a Tx's own context can always end, one for
// every result set read in it. Each is a thread woken on another core: a
// use case paid two to four, about as many as the statements it sends. The
// desk never needs them: a use case's transaction is not cancelled halfway
// (its context cannot end, desk.txFunc) and always ends with Commit or
// Rollback. Result sets read on a sql.Conn under such a context start none.
type connDriver struct{ *entsql.Driver }

func newDriver(name string, db *sql.DB) dialect.Driver { return connDriver{entsql.OpenDB(name, db)} }

// Tx begins a transaction (ent's Client.Tx).
func (d connDriver) Tx(ctx context.Context) (dialect.Tx, error) { return d.BeginTx(ctx, nil) }

// BeginTx begins a transaction with options (ent's Client.BeginTx). The wait
// for a pooled connection ends with ctx; the transaction does not.
func (d connDriver) BeginTx(ctx context.Context, opts *sql.TxOptions) (dialect.Tx, error) {
	conn, err := d.DB().Conn(ctx)
	if err != nil {
		return nil, err
	}
	var o driver.TxOptions
	if opts != nil {
		o = driver.TxOptions{Isolation: driver.IsolationLevel(opts.Isolation), ReadOnly: opts.ReadOnly}
	}
	var tx driver.Tx
	err = conn.Raw(func(dc any) error {
		b, ok := dc.(driver.ConnBeginTx)
		if !ok {
			return errNotSupported
		}
		var err error
		tx, err = b.BeginTx(context.WithoutCancel(ctx), o)
		return err
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &connTx{Conn: entsql.Conn{ExecQuerier: conn}, conn: conn, tx: tx}, nil
}

// connTx is a transaction on a pooled connection. Like database/sql's Tx, it
// ends once (then sql.ErrTxDone) and gives the connection back to the pool;
// a connection the driver reports broken (driver.ErrBadConn, or invalid) is
// discarded by database/sql. Its result sets are closed before it ends (ent
// closes those it reads; the desk those it reads itself): unlike a Tx, it
// does not wait for them.
type connTx struct {
	entsql.Conn
	conn *sql.Conn
	tx   driver.Tx
	done bool
}

func (t *connTx) Commit() error   { return t.end(driver.Tx.Commit) }
func (t *connTx) Rollback() error { return t.end(driver.Tx.Rollback) }

func (t *connTx) end(f func(driver.Tx) error) error {
	if t.done {
		return sql.ErrTxDone
	}
	t.done = true
	err := t.conn.Raw(func(any) error { return f(t.tx) })
	_ = t.conn.Close() // sql.ErrConnDone once Raw has discarded a bad connection
	return err
}
