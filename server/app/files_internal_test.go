package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/parleydesk/parley/desk"
)

// TestFiles_ALookUpCutShortByTheCallerIsNotAFailure: when the file's
// look-up fails because the request itself ended (the client hung up, a
// shutdown past its grace), the answer is CANCELLED and the log says so
// below ERROR; the same error while the request goes on (a timeout of the
// look-up's own) is still a failure of the server.
func TestFiles_ALookUpCutShortByTheCallerIsNotAFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		ended      bool
		status     int
		code, logs string
	}{
		{"the request ended", true, http.StatusServiceUnavailable, "CANCELLED", "level=INFO msg=\"serve file: the request ended first\""},
		{"the request goes on", false, http.StatusInternalServerError, "INTERNAL", "level=ERROR msg=\"serve file\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			a := &App{Log: slog.New(slog.NewTextHandler(&logs, nil))}
			h := a.serveFile(func(r *http.Request, id int) (*desk.StoredFile, error) {
				if r.Context().Err() != nil {
					return nil, fmt.Errorf("look up file %d: %w", id, r.Context().Err())
				}
				return nil, fmt.Errorf("look up file %d: %w", id, context.DeadlineExceeded)
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.ended {
				cancel()
			}
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/files/7", nil)
			req.SetPathValue("id", "7")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var body struct {
				Errors []struct{ Extensions map[string]string }
			}
			err := json.Unmarshal(rec.Body.Bytes(), &body)
			if err != nil || rec.Code != tc.status || len(body.Errors) != 1 || body.Errors[0].Extensions["code"] != tc.code {
				t.Errorf("answered %d %s (%v), want %d %s", rec.Code, rec.Body, err, tc.status, tc.code)
			}
			if got := logs.String(); strings.Count(got, "level=") != 1 || !strings.Contains(got, tc.logs) {
				t.Errorf("logged:\n%s\nwant one line with %s", got, tc.logs)
			}
		})
	}
}
