package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: body is not JSON: %v", url, err)
	}
	return res.StatusCode, body
}

func TestHTTP_HealthAndReadiness(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	if code, body := get(t, s.URL+"/healthz"); code != 200 || body["status"] != "ok" {
		t.Errorf("/healthz = %d %v", code, body)
	}
	if code, body := get(t, s.URL+"/readyz"); code != 200 || body["status"] != "ready" {
		t.Errorf("/readyz = %d %v", code, body)
	} else if _, ok := body["transactions"]; ok != s.DB().Postgres() {
		t.Errorf("/readyz = %v: the transaction slots' load belongs there on PostgreSQL only", body)
	}
	// Without its database the instance is alive but not ready.
	if err := s.App.DB.SQL.Close(); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, s.URL+"/readyz"); code != http.StatusServiceUnavailable || body["status"] != "unavailable" {
		t.Errorf("/readyz with the database closed = %d %v", code, body)
	} else if reason, _ := body["reason"].(string); strings.Contains(reason, "sql") {
		t.Errorf("/readyz leaks driver text: %v", body)
	}
	if code, _ := get(t, s.URL+"/healthz"); code != 200 {
		t.Errorf("/healthz with the database closed = %d", code)
	}
	// Health checks are GET only.
	res, err := http.Post(s.URL+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d", res.StatusCode)
	}
}

func TestHTTP_GraphQLOverGET(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	var out struct {
		Me struct{ Operator struct{ Email string } }
	}
	s.Get(t, op.Token, `query Me { me { operator { email } } }`, nil).OK(t).Decode(t, &out)
	if out.Me.Operator.Email != op.Email {
		t.Errorf("GET query: %+v", out)
	}
	s.Get(t, "", `{ me { operator { email } } }`, nil).Expect(t, "UNAUTHENTICATED")

	// Mutations are refused over GET (a link must never change state) and
	// have no effect.
	r := s.Get(t, op.Token, `mutation { logout }`, nil)
	if r.Status != http.StatusNotAcceptable && r.Status != http.StatusMethodNotAllowed && r.Status != http.StatusBadRequest {
		t.Errorf("GET mutation: status %d %s", r.Status, r.Body)
	}
	if len(r.Errors) == 0 || (len(r.Data) > 0 && string(r.Data) != "null") {
		t.Errorf("GET mutation answered %s", r.Body)
	}
	s.Do(t, op.Token, `{ me { __typename } }`, nil).OK(t) // still logged in
	admin := s.AdminToken(t)
	before := s.RowCounts(t)
	s.Get(t, admin, `mutation { createQueue(input: {name: "via GET"}) { id } }`, nil)
	s.AssertNoWrites(t, before)
}

func TestHTTP_CORSAllowsOnlyConfiguredOrigins(t *testing.T) {
	t.Parallel()
	const allowed = "https://panel.example.com"
	s := apptest.New(t, apptest.WithConfig(func(c *app.Config) { c.CORSOrigins = []string{allowed} }))
	preflight := func(origin string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, s.URL+"/graphql", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	res := preflight(allowed)
	if res.StatusCode >= 300 || res.Header.Get("Access-Control-Allow-Origin") != allowed ||
		res.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("preflight from %s: %d %v", allowed, res.StatusCode, res.Header)
	}
	if h := strings.ToLower(res.Header.Get("Access-Control-Allow-Headers")); !strings.Contains(h, "authorization") || !strings.Contains(h, "content-type") {
		t.Errorf("allowed headers %q must include Authorization and Content-Type", h)
	}
	if m := res.Header.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "POST") {
		t.Errorf("allowed methods %q", m)
	}
	for _, origin := range []string{"https://evil.example.com", "https://panel.example.com.evil.example", "null"} {
		res := preflight(origin)
		if v := res.Header.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("preflight from %s allowed: Access-Control-Allow-Origin %q", origin, v)
		}
	}
	// An actual request: the allowed origin can read the answer, another cannot.
	for origin, want := range map[string]string{allowed: allowed, "https://evil.example.com": ""} {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ __typename }"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		r := s.Send(t, "", req)
		if got := r.Header.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("POST from %s: Access-Control-Allow-Origin %q, want %q", origin, got, want)
		}
	}
}

// closeNotifyingListener tells when the server stopped accepting.
type closeNotifyingListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *closeNotifyingListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}

// TestHTTP_RunShutsDownGracefully: cancelling Run's context stops accepting
// connections, lets the request in flight finish with its answer, and
// returns without error, leaving no goroutine of its own behind. (Not
// parallel: the leak check must not see other tests' goroutines.)
func TestHTTP_RunShutsDownGracefully(t *testing.T) {
	s := apptest.New(t)
	tok := s.AdminToken(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &closeNotifyingListener{Listener: inner, closed: make(chan struct{})}
	addr := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.App.Run(ctx, ln) }()

	// A request in flight: with "Expect: 100-continue" the server answers
	// 100 Continue when its handler starts reading the body, and the
	// client then waits for the body, which the test sends only once the
	// shutdown has begun.
	got100 := make(chan struct{})
	var once sync.Once
	trace := &httptrace.ClientTrace{Got100Continue: func() { once.Do(func() { close(got100) }) }}
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodPost, addr+"/graphql", pr)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Expect", "100-continue")
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
	defer client.CloseIdleConnections()
	type result struct {
		status int
		body   string
		err    error
	}
	resc := make(chan result, 1)
	go func() {
		res, err := client.Do(req)
		if err != nil {
			resc <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		resc <- result{res.StatusCode, string(b), err}
	}()
	select {
	case <-got100:
	case r := <-resc:
		t.Fatalf("request ended before its body was sent: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never started reading the body")
	}

	cancel()
	select {
	case <-ln.closed:
	case err := <-done:
		t.Fatalf("Run returned %v before the request in flight finished", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop accepting after its context was cancelled")
	}
	// New connections are refused from now on.
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the listener accepts after the shutdown began")
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v with a request in flight", err)
	default:
	}

	if _, err := pw.Write([]byte(`{"query": "{ me { operator { email } } }"}`)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	res := <-resc
	if res.err != nil || res.status != 200 || !strings.Contains(res.body, `"email":"`+apptest.AdminEmail+`"`) {
		t.Errorf("request in flight during shutdown: %d %q %v\n%s", res.status, res.body, res.err, s.Logs())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the last request finished")
	}
}
