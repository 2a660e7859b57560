package store

import (
	"context"
	"database/sql/driver"
	"encoding/json"

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
	return pqConn{forwardConn{cn}}, nil
}

func (c pqConnector) Driver() driver.Driver { return c.c.Driver() }

// pqConn is a lib/pq connection whose JSON arguments are sent as text.
type pqConn struct{ forwardConn }

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
	return c.forwardConn.CheckNamedValue(nv)
}
