package store

import (
	"container/list"
	"context"
	"database/sql/driver"
	"reflect"
)

// stmtCache keeps a connection's prepared statements by their text and runs
// a call with arguments on its statement when that one is idle; a call whose
// statement still has rows open (a query inside a loop over the same query)
// runs unprepared, as without the cache. database/sql uses a connection from
// one goroutine at a time (rows are closed under the same connection lock),
// so the cache needs no lock of its own. The zero value is ready.
type stmtCache struct {
	stmts map[string]*list.Element // values *cachedStmt
	lru   list.List                // most recently used first
}

// stmtCacheSize bounds the statements one connection keeps (ent's query
// shapes, lists of ids in IN included, are a few hundred at most).
const stmtCacheSize = 256

type cachedStmt struct {
	query string
	stmt  driver.Stmt
	busy  bool // its rows are open
}

func (c *stmtCache) query(ctx context.Context, cn forwardConn, query string, args []driver.NamedValue) (driver.Rows, error) {
	cs, err := c.cached(ctx, cn, query, args)
	if err != nil || cs == nil {
		if err == nil {
			return cn.QueryContext(ctx, query, args)
		}
		return nil, err
	}
	cs.busy = true
	rows, err := cs.stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
	if err != nil {
		cs.busy = false
		return nil, err
	}
	return &cachedRows{Rows: rows, stmt: cs}, nil
}

func (c *stmtCache) exec(ctx context.Context, cn forwardConn, query string, args []driver.NamedValue) (driver.Result, error) {
	cs, err := c.cached(ctx, cn, query, args)
	if err != nil || cs == nil {
		if err == nil {
			return cn.ExecContext(ctx, query, args)
		}
		return nil, err
	}
	return cs.stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

// cached returns the idle cached statement of a query, preparing it on
// first use; nil when the call should not use the cache (no arguments: the
// driver's own path handles scripts of several statements; or the
// statement's rows are open).
func (c *stmtCache) cached(ctx context.Context, cn forwardConn, query string, args []driver.NamedValue) (*cachedStmt, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if el, ok := c.stmts[query]; ok {
		cs := el.Value.(*cachedStmt)
		if cs.busy {
			return nil, nil
		}
		c.lru.MoveToFront(el)
		return cs, nil
	}
	st, err := cn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	_, q := st.(driver.StmtQueryContext)
	_, e := st.(driver.StmtExecContext)
	if !q || !e {
		st.Close()
		return nil, nil
	}
	if c.stmts == nil {
		c.stmts = map[string]*list.Element{}
	}
	cs := &cachedStmt{query: query, stmt: st}
	c.stmts[query] = c.lru.PushFront(cs)
	for el := c.lru.Back(); c.lru.Len() > stmtCacheSize && el != nil; {
		prev := el.Prev()
		if old := el.Value.(*cachedStmt); !old.busy {
			c.lru.Remove(el)
			delete(c.stmts, old.query)
			old.stmt.Close()
		}
		el = prev
	}
	return cs, nil
}

// close closes the cached statements (before the connection closes).
func (c *stmtCache) close() {
	for el := c.lru.Front(); el != nil; el = el.Next() {
		el.Value.(*cachedStmt).stmt.Close()
	}
	c.stmts = nil
	c.lru.Init()
}

// cachedRows are the rows of a cached statement: closing them (which
// resets the statement) makes it available again. The column type methods
// database/sql looks for are forwarded.
type cachedRows struct {
	driver.Rows
	stmt *cachedStmt
}

func (r *cachedRows) Close() error {
	err := r.Rows.Close()
	r.stmt.busy = false
	return err
}

func (r *cachedRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *cachedRows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *cachedRows) ColumnTypeNullable(i int) (bool, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *cachedRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *cachedRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
