package app_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// A request whose client hangs up (or that a shutdown past its grace ends)
// while its credential is being checked is answered CANCELLED, not as
// unauthenticated, changes nothing and is logged below ERROR: it is the
// request's end, not a failure of the server.
func TestARequestThatEndsWhileAuthenticatedIsNotAFailure(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	before := s.RowCounts(t)
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodPost, "/graphql", `{"query":"{ me { operator { id } } }"}`},
		{http.MethodGet, "/files/1", ""},
	} {
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		req := httptest.NewRequestWithContext(ended, tc.method, tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+op.Token)
		rec := httptest.NewRecorder()
		s.App.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"code":"CANCELLED"`) {
			t.Errorf("%s %s: %d %s, want 503 CANCELLED", tc.method, tc.path, rec.Code, rec.Body)
		}
	}
	s.AssertNoWrites(t, before)
	logs := s.Logs()
	if strings.Contains(logs, "level=ERROR") || strings.Count(logs, "authenticate: the request ended first") != 2 {
		t.Errorf("the requests that ended were logged as:\n%s\nwant each once, below ERROR", logs)
	}
}
