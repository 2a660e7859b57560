// Package metagraphtest helps test the Meta adapters: it finds the shared
// provider fixtures and runs a fake Graph API on httptest.
package metagraphtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/parleydesk/parley/channels"
)

// Version is the Graph version the fake serves.
const Version = "v25.0"

// UserAgent is the User-Agent Config sets, for tests to expect.
const UserAgent = "ParleyTest/1.0"

// FixtureDir returns shared/fixtures/<provider>: $PARLEY_FIXTURES/<provider>
// when set, otherwise found by walking up from the working directory (the
// package's directory under go test) to the folder holding "shared" beside
// the repository.
func FixtureDir(t testing.TB, provider string) string {
	t.Helper()
	if env := os.Getenv("PARLEY_FIXTURES"); env != "" {
		return filepath.Join(env, provider)
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		cand := filepath.Join(dir, "shared", "fixtures", provider)
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no shared/fixtures/%s above the working directory (set PARLEY_FIXTURES)", provider)
		}
		dir = parent
	}
}

// Fixture returns the exact bytes of one fixture file.
func Fixture(t testing.TB, provider, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(FixtureDir(t, provider), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WebhookFixtures lists the fixtures of provider that are webhook bodies
// (JSON objects with an "object" key), sorted.
func WebhookFixtures(t testing.TB, provider string) []string {
	t.Helper()
	dir := FixtureDir(t, provider)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), "_") {
			continue
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(Fixture(t, provider, e.Name()), &probe) != nil {
			continue
		}
		if _, ok := probe["object"]; ok {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

// Signatures returns the fixture → X-Hub-Signature-256 map of
// _signatures.json and its app secret.
func Signatures(t testing.TB, provider string) (map[string]string, string) {
	t.Helper()
	var s struct {
		AppSecret  string            `json:"app_secret"`
		Signatures map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(Fixture(t, provider, "_signatures.json"), &s); err != nil {
		t.Fatal(err)
	}
	return s.Signatures, s.AppSecret
}

// Request is one request the fake received.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	Header http.Header
	Body   []byte
}

// Server is a fake Graph API: routes "METHOD /path" answer what the test
// set; anything else is a 404 Graph error. It records every request.
type Server struct {
	*httptest.Server
	mu       sync.Mutex
	routes   map[string]http.HandlerFunc
	requests []Request
}

// NewServer starts a fake, closed at the end of the test.
func NewServer(t testing.TB) *Server {
	s := &Server{routes: map[string]http.HandlerFunc{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Header: r.Header.Clone(), Body: body})
	h := s.routes[r.Method+" "+r.URL.Path]
	s.mu.Unlock()
	if h == nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":{"message":"Unknown path components","type":"OAuthException","code":2500}}`)
		return
	}
	h(w, r)
}

// HandleFunc routes method and path (e.g. "/v25.0/123/messages") to h.
func (s *Server) HandleFunc(method, path string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[method+" "+path] = h
}

// Answer routes method and path to a JSON answer with status.
func (s *Server) Answer(method, path string, status int, body []byte) {
	s.HandleFunc(method, path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	})
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Config points the adapters at the fake.
func (s *Server) Config() channels.Config {
	return channels.Config{GraphBaseURL: s.URL, GraphVersion: Version, UserAgent: UserAgent}
}
