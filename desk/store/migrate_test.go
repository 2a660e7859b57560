package store_test

import (
	"context"
	"testing"

	"github.com/parleydesk/parley/desk/store/storetest"
)

// Migrating an up-to-date PostgreSQL schema again changes nothing: partial
// indexes (the one open chat per contact and channel, R1; the open-chat
// list) are kept, not dropped and rebuilt because PostgreSQL words their
// predicates its own way.
func TestMigrateKeepsPartialIndexes(t *testing.T) {
	db := storetest.Open(t)
	if !db.Postgres() {
		t.Skip("PostgreSQL only: SQLite keeps predicates as written")
	}
	ctx := context.Background()
	oids := func() map[string]int64 {
		rows, err := db.SQL.QueryContext(ctx, `SELECT c.relname, c.oid::bigint FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indpred IS NOT NULL AND n.nspname = current_schema()`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[string]int64{}
		for rows.Next() {
			var name string
			var oid int64
			if err := rows.Scan(&name, &oid); err != nil {
				t.Fatal(err)
			}
			out[name] = oid
		}
		return out
	}
	before := oids()
	if len(before) == 0 {
		t.Fatal("no partial index found")
	}
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	after := oids()
	for name, oid := range before {
		if after[name] != oid {
			t.Errorf("partial index %s was rebuilt by a migration with nothing to do", name)
		}
	}
}
