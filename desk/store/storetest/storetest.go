// Package storetest gives each test an empty, migrated database: a SQLite
// file by default, or a fresh PostgreSQL schema when TEST_DATABASE_URL is set
// (so the same suites run on both databases, see .ci/run).
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/parleydesk/parley/desk/store"
)

// Postgres reports whether tests run against PostgreSQL.
func Postgres() bool { return postgresURL() != "" }

func postgresURL() string { return getenv("TEST_DATABASE_URL") }

// URL returns a DATABASE_URL for a fresh, empty database that lives as long
// as the test: for processes started by a test (servers, benchmarks).
func URL(t testing.TB) string {
	t.Helper()
	base := postgresURL()
	if base == "" {
		return "sqlite://" + filepath.Join(t.TempDir(), "parley.db")
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("TEST_DATABASE_URL: %v", err)
	}
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	u.RawQuery = q.Encode()
	admin, err := sql.Open("postgres", u.String())
	if err != nil {
		t.Fatalf("open TEST_DATABASE_URL: %v", err)
	}
	defer admin.Close()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("PostgreSQL at TEST_DATABASE_URL is unreachable or refuses to create a schema: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("postgres", u.String())
		if err != nil {
			return
		}
		defer db.Close()
		_, _ = db.Exec("DROP SCHEMA " + schema + " CASCADE")
	})
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Open returns a migrated, empty database closed at the end of the test.
func Open(t testing.TB) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := store.Open(ctx, URL(t), "")
	if err != nil {
		t.Fatalf("open database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db
}
