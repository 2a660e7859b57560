package webhooks_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// R3: a delivery whose request ended before it could be applied (the
// provider hung up, a shutdown past its grace) is not acknowledged and
// changes nothing, so the provider delivers it again; it is logged as the
// request's end, not as a failure of the server.
func TestADeliveryWhoseRequestEndedIsNotAFailure(t *testing.T) {
	e := newEnv(t)
	before := e.dump(t)
	for _, prov := range []string{"telegram", "whatsapp"} {
		name := webhookFixtures(t, prov)[0]
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		req := httptest.NewRequestWithContext(ended, http.MethodPost, e.Paths[prov], bytes.NewReader(fixture(t, prov, name)))
		req.Header.Set("Content-Type", "application/json")
		k, v := e.authHeader(t, prov, name)
		req.Header.Set(k, v)
		rec := httptest.NewRecorder()
		e.App.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"UNAVAILABLE"`) {
			t.Errorf("%s %s: %d %s, want 503 UNAVAILABLE", prov, name, rec.Code, rec.Body)
		}
	}
	e.wantUnchanged(t, before, "deliveries whose request ended")
	logs := e.Logs()
	if strings.Contains(logs, "level=ERROR") || strings.Count(logs, "the request ended first") != 2 {
		t.Errorf("the deliveries whose request ended were logged as:\n%s\nwant each once, below ERROR", logs)
	}
}
