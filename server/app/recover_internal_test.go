package app

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHTTP_PanicsBecomeInternalErrors: a panic in a handler answers 500
// with a GraphQL-shaped INTERNAL error (no panic text), is logged with its
// stack, and leaves the server serving.
func TestHTTP_PanicsBecomeInternalErrors(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	h := recoverPanics(log, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			panic("secret internal state")
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()

	res, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Errors []struct {
			Message    string
			Extensions map[string]string
		}
	}
	err = json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusInternalServerError || len(body.Errors) != 1 ||
		body.Errors[0].Extensions["code"] != "INTERNAL" || body.Errors[0].Message != "internal error" {
		t.Errorf("panic answered %d %+v (%v)", res.StatusCode, body, err)
	}
	if !strings.Contains(logs.String(), "secret internal state") || !strings.Contains(logs.String(), "recover_internal_test.go") {
		t.Errorf("the panic and its stack were not logged:\n%s", logs.String())
	}
	// The server goes on.
	res, err = http.Get(srv.URL + "/fine")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Errorf("after a panic: %d", res.StatusCode)
	}
}

// TestHTTP_AbortHandlerIsNotSwallowed: http.ErrAbortHandler is how a
// handler aborts a response on purpose; net/http must still see it.
func TestHTTP_AbortHandlerIsNotSwallowed(t *testing.T) {
	t.Parallel()
	h := recoverPanics(slog.New(slog.DiscardHandler), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	defer func() {
		if v := recover(); v != http.ErrAbortHandler {
			t.Errorf("recovered %v, want http.ErrAbortHandler re-panicked", v)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	t.Error("ErrAbortHandler was swallowed")
}
