// Package apptest runs a whole Parley server in-process for tests: a fresh
// database (SQLite, or PostgreSQL with TEST_DATABASE_URL), a fake clock, a
// low bcrypt cost, a seeded administrator, and a small GraphQL client that
// returns data and errors with their extensions.code. Suites of every issue
// (administration, routing, subscriptions) build on it.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/migrate"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
)

// The seeded administrator.
const (
	AdminEmail    = "admin@parley.test"
	AdminPassword = "admin-password-1"
)

// SessionTTL is the session lifetime of test servers (short, so that tests
// of expiry advance the clock by little; the clock is fake anyway).
const SessionTTL = time.Hour

// Server is a Parley instance behind an httptest server.
type Server struct {
	App   *app.App
	HTTP  *httptest.Server
	URL   string // base URL, without a trailing slash
	Clock *desktest.Clock

	logs       *syncBuffer
	adminToken string
	adminOnce  sync.Once
}

// Option adjusts a test server.
type Option func(*settings)

type settings struct {
	config func(*app.Config)
	db     *store.DB
	desk   []desk.Option
	rec    *Recorder
}

// WithConfig edits the configuration before the app is built (CORS
// origins, limits, introspection).
func WithConfig(fn func(*app.Config)) Option {
	return func(s *settings) {
		prev := s.config
		s.config = func(c *app.Config) {
			if prev != nil {
				prev(c)
			}
			fn(c)
		}
	}
}

// WithDB uses the given database (for instance one with a query hook)
// instead of a fresh storetest.Open(t).
func WithDB(db *store.DB) Option { return func(s *settings) { s.db = db } }

// WithRecorder records every SQL statement the server sends into rec.
func WithRecorder(rec *Recorder) Option { return func(s *settings) { s.rec = rec } }

// WithDeskOptions adds desk options after the test defaults (clock, bcrypt
// cost, SessionTTL), so they can override them.
func WithDeskOptions(opts ...desk.Option) Option {
	return func(s *settings) { s.desk = append(s.desk, opts...) }
}

// Config returns the configuration test servers start from: the defaults of
// LoadConfig with the seeded administrator and SessionTTL.
func Config(t testing.TB) app.Config {
	t.Helper()
	cfg, err := app.LoadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatalf("default config: %v", err)
	}
	cfg.AdminEmail, cfg.AdminPassword, cfg.AdminName = AdminEmail, AdminPassword, "Test Admin"
	cfg.SessionTTL = SessionTTL
	cfg.ShutdownTimeout = 10 * time.Second
	// Never inside the repository: every test server has its own files.
	cfg.DataDir = t.TempDir()
	cfg.FilesDir = filepath.Join(cfg.DataDir, "files")
	return cfg
}

// New builds and starts a test server; everything is closed at the end of
// the test.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var st settings
	for _, o := range opts {
		o(&st)
	}
	cfg := Config(t)
	if st.config != nil {
		st.config(&cfg)
	}
	// Migrations must not run concurrently in one process: ent's migrator
	// writes to the package-level table definitions of ent/migrate (a
	// "concurrent map writes" crash between parallel tests otherwise).
	migrateMu.Lock()
	defer migrateMu.Unlock()
	db := st.db
	if db == nil {
		db = storetest.Open(t)
	}
	if st.rec != nil {
		db = db.WithQueryHook(st.rec.record)
	}
	clock := desktest.NewClock()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	deskOpts := append([]desk.Option{
		desk.WithClock(clock),
		desk.WithConfig(desk.Config{SessionTTL: cfg.SessionTTL, PasswordCost: bcrypt.MinCost,
			MetaAppID: cfg.MetaAppID, EventRetention: cfg.EventRetention, Transactions: cfg.PGTransactions}),
	}, st.desk...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := app.New(ctx, cfg, log, app.WithDB(db), app.WithDeskOptions(deskOpts...))
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	// Requests run under a root context cancelled first at cleanup: long
	// requests (subscriptions over websockets, which httptest's Close does
	// not wait for) end before the database closes.
	root, cancelRoot := context.WithCancel(context.Background())
	srv := httptest.NewUnstartedServer(markRequests(a.Handler()))
	srv.Config.BaseContext = func(net.Listener) context.Context { return root }
	srv.Start()
	t.Cleanup(func() { // runs before a.Close: requests end first
		cancelRoot()
		srv.Close()
	})
	if st.rec != nil {
		st.rec.Reset() // forget the migration and the seeding
	}
	return &Server{App: a, HTTP: srv, URL: srv.URL, Clock: clock, logs: logs}
}

// Desk is the server's desk (use cases without HTTP).
func (s *Server) Desk() *desk.Desk { return s.App.Desk }

// Client is the ent client, for arranging rows directly.
func (s *Server) Client() *ent.Client { return s.App.DB.Client }

// DB is the database.
func (s *Server) DB() *store.DB { return s.App.DB }

// Logs returns what the server logged so far.
func (s *Server) Logs() string { return s.logs.String() }

// Response is a GraphQL answer.
type Response struct {
	Status int
	Header http.Header
	// Body is the raw answer, for assertions over everything returned.
	Body   []byte
	Data   json.RawMessage
	Errors []Error
}

// Error is one GraphQL error.
type Error struct {
	Message    string         `json:"message"`
	Path       []any          `json:"path"`
	Extensions map[string]any `json:"extensions"`
}

// Code is extensions.code.
func (e Error) Code() string { s, _ := e.Extensions["code"].(string); return s }

// Field is extensions.field (the input field of a VALIDATION error).
func (e Error) Field() string { s, _ := e.Extensions["field"].(string); return s }

// Code is the code of the first error, or "" without errors.
func (r Response) Code() string { return ErrorCode(r) }

// ErrorCode is the extensions.code of the first error of r, or "".
func ErrorCode(r Response) string {
	if len(r.Errors) == 0 {
		return ""
	}
	return r.Errors[0].Code()
}

// Codes lists the codes of all errors.
func (r Response) Codes() []string {
	var cs []string
	for _, e := range r.Errors {
		cs = append(cs, e.Code())
	}
	return cs
}

// OK fails the test if r has errors or a status other than 200, and
// returns r for chaining.
func (r Response) OK(t testing.TB) Response {
	t.Helper()
	if r.Status != http.StatusOK || len(r.Errors) > 0 {
		t.Fatalf("expected success, got status %d: %s", r.Status, r.Body)
	}
	return r
}

// Decode unmarshals data into v.
func (r Response) Decode(t testing.TB, v any) {
	t.Helper()
	if len(r.Data) == 0 || string(r.Data) == "null" {
		t.Fatalf("no data in response: %s", r.Body)
	}
	if err := json.Unmarshal(r.Data, v); err != nil {
		t.Fatalf("decode data: %v\n%s", err, r.Data)
	}
}

// Expect fails the test unless r's first error has the code; it returns
// that error.
func (r Response) Expect(t testing.TB, code string) Error {
	t.Helper()
	if len(r.Errors) == 0 || r.Errors[0].Code() != code {
		t.Fatalf("expected error %s, got status %d: %s", code, r.Status, r.Body)
	}
	return r.Errors[0]
}

// Do posts a GraphQL operation as JSON; token may be empty.
func (s *Server) Do(t testing.TB, token, query string, vars map[string]any) Response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		t.Fatalf("encode request: %v", err)
	}
	return s.Post(t, token, "application/json", bytes.NewReader(body))
}

// Post sends a raw body to /graphql.
func (s *Server) Post(t testing.TB, token, contentType string, body io.Reader) Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	return s.Send(t, token, req)
}

// Get sends a GraphQL operation as a GET request.
func (s *Server) Get(t testing.TB, token, query string, vars map[string]any) Response {
	t.Helper()
	u := s.URL + "/graphql?query=" + url.QueryEscape(query)
	if vars != nil {
		b, _ := json.Marshal(vars)
		u += "&variables=" + url.QueryEscape(string(b))
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s.Send(t, token, req)
}

// Send sends req with the bearer token and parses a GraphQL answer (a body
// that is not JSON leaves Data and Errors empty).
func (s *Server) Send(t testing.TB, token string, req *http.Request) Response {
	t.Helper()
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := s.HTTP.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	r := Response{Status: res.StatusCode, Header: res.Header, Body: b}
	var env struct {
		Data   json.RawMessage `json:"data"`
		Errors []Error         `json:"errors"`
	}
	if json.Unmarshal(b, &env) == nil {
		r.Data, r.Errors = env.Data, env.Errors
	}
	return r
}

// Login logs in through GraphQL and returns the bearer token.
func (s *Server) Login(t testing.TB, email, password string) string {
	t.Helper()
	var out struct {
		Login struct{ Token string }
	}
	s.Do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": email, "p": password}).OK(t).Decode(t, &out)
	if out.Login.Token == "" {
		t.Fatal("login returned no token")
	}
	return out.Login.Token
}

// AdminToken is a session of the seeded administrator (one per server).
func (s *Server) AdminToken(t testing.TB) string {
	t.Helper()
	s.adminOnce.Do(func() { s.adminToken = s.Login(t, AdminEmail, AdminPassword) })
	if s.adminToken == "" {
		t.Fatal("administrator login failed earlier")
	}
	return s.adminToken
}

// Operator is an operator created for a test, logged in.
type Operator struct {
	ID       int
	GID      string // the GraphQL ID
	Email    string
	Password string
	Token    string
}

var seq atomic.Int64

// migrateMu serialises the migrations of test servers (see New). Tests
// that open a database for a server themselves (WithDB) should hold it
// through OpenDB.
var migrateMu sync.Mutex

// OpenDB is storetest.Open serialised with the migrations of test servers,
// for tests that build a database before the server (WithDB).
func OpenDB(t testing.TB) *store.DB {
	t.Helper()
	migrateMu.Lock()
	defer migrateMu.Unlock()
	return storetest.Open(t)
}

// Unique returns a string unique in the test binary, for names and emails.
func Unique(prefix string) string { return fmt.Sprintf("%s%d", prefix, seq.Add(1)) }

// CreateOperator creates an operator with the role (through the desk, not
// the API under test) and logs them in.
func (s *Server) CreateOperator(t testing.TB, role enum.Role) Operator {
	t.Helper()
	email := Unique(strings.ToLower(string(role))) + "@parley.test"
	pw := "password-" + Unique("")
	op, err := s.Desk().CreateOperator(context.Background(), desk.CreateOperatorInput{
		Email: email, Name: "Test " + string(role), Password: pw, Role: role,
	})
	if err != nil {
		t.Fatalf("create operator: %v", err)
	}
	return Operator{ID: op.ID, GID: ID(op.ID), Email: email, Password: pw, Token: s.Login(t, email, pw)}
}

// APIKey is an integrator's key created for a test.
type APIKey struct {
	ID  int
	Key string
}

// CreateAPIKey creates an API key with the role through the desk.
func (s *Server) CreateAPIKey(t testing.TB, role enum.ApiKeyRole) APIKey {
	t.Helper()
	p, err := s.Desk().CreateAPIKey(context.Background(), desk.CreateAPIKeyInput{Name: Unique("key"), Role: role})
	if err != nil {
		t.Fatalf("create api key: %v", err)
	}
	return APIKey{ID: p.APIKey.ID, Key: p.Key}
}

// ID is the GraphQL form of an ent id.
func ID(id int) string { return strconv.Itoa(id) }

// ParseID reads a GraphQL ID back.
func ParseID(t testing.TB, gid string) int {
	t.Helper()
	id, err := strconv.Atoi(gid)
	if err != nil {
		t.Fatalf("ID %q is not an ent id: %v", gid, err)
	}
	return id
}

// RowCounts counts the rows of every table of the data model (for "nothing
// was written" assertions; new tables are covered automatically).
func (s *Server) RowCounts(t testing.TB) map[string]int {
	t.Helper()
	counts := make(map[string]int, len(migrate.Tables))
	for _, tbl := range migrate.Tables {
		var n int
		if err := s.App.DB.SQL.QueryRow(`SELECT count(*) FROM "` + tbl.Name + `"`).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", tbl.Name, err)
		}
		counts[tbl.Name] = n
	}
	return counts
}

// AssertNoWrites fails the test if any table's row count differs from before.
func (s *Server) AssertNoWrites(t testing.TB, before map[string]int) {
	t.Helper()
	after := s.RowCounts(t)
	for name, n := range before {
		if after[name] != n {
			t.Errorf("table %s: %d rows before, %d after", name, n, after[name])
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Recorder keeps the SQL statements a server sends while serving HTTP
// requests (see WithRecorder): tests count queries (no N+1) or prove that
// nothing was written. Statements of background goroutines are left out.
type Recorder struct {
	mu    sync.Mutex
	stmts []string
}

var writeStmt = regexp.MustCompile(`(?is)query=.*(\bINSERT\s+INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b)`)

// requestKey marks the context of an HTTP request to the test server, so
// that the Recorder keeps what requests cause and not the statements of
// background work (the scheduler, the event pump) that happen meanwhile.
type requestKey struct{}

func markRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, true)))
	})
}

func (r *Recorder) record(ctx context.Context, s string) {
	if !strings.Contains(s, "query=") {
		return // BEGIN, COMMIT and ROLLBACK are logged without a query
	}
	if ctx.Value(requestKey{}) == nil {
		return // background work, not caused by a request
	}
	r.mu.Lock()
	r.stmts = append(r.stmts, s)
	r.mu.Unlock()
}

// Reset forgets what was recorded.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.stmts = nil
	r.mu.Unlock()
}

// Statements returns what was recorded since the last Reset.
func (r *Recorder) Statements() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.stmts...)
}

// Writes returns the recorded INSERT, UPDATE and DELETE statements.
func (r *Recorder) Writes() []string {
	var w []string
	for _, s := range r.Statements() {
		if writeStmt.MatchString(s) {
			w = append(w, s)
		}
	}
	return w
}

// FromRequest reports whether ctx is (or derives from) the context of an
// HTTP request to a test server, as opposed to the server's background work.
func FromRequest(ctx context.Context) bool { return ctx.Value(requestKey{}) != nil }
