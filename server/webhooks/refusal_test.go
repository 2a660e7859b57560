package webhooks_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/parleydesk/parley/server/app"
)

// maxBody is the PARLEY_WEBHOOK_MAX_BYTES of the refusal tests: above
// every fixture used here, so that the limit is reached only on purpose.
const maxBody = 4096

// R3: a delivery is verified before anything is stored. Every refusal
// answers its status and leaves every table as it was; a delivery of
// exactly the size limit, correctly signed, is taken.
func TestRefusals(t *testing.T) {
	e := newEnv(t, withConfig(func(c *app.Config) { c.WebhookMaxBytes = maxBody }))
	// An inactive channel of each provider, with the same secrets.
	inactive := map[string]string{}
	for prov, ch := range e.Channels {
		var out struct {
			CreateChannel struct{ ID, WebhookPath string }
		}
		in := map[string]any{"provider": string(ch.Provider), "name": "Off " + prov, "queueID": fmt.Sprint(e.Queue.ID),
			"token": "t-" + prov, "webhookSecret": tgWebhookSecret, "appSecret": metaAppSecret, "verifyToken": verifyToken(t, "whatsapp"),
			"externalID": "off-" + prov}
		if prov == "telegram" {
			delete(in, "appSecret")
			delete(in, "verifyToken")
		} else {
			delete(in, "webhookSecret")
		}
		e.Do(t, e.AdminToken(t), `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id webhookPath } }`,
			map[string]any{"in": in}).OK(t).Decode(t, &out)
		if _, err := e.Desk().SetChannelActive(bg, mustAtoi(t, out.CreateChannel.ID), false); err != nil {
			t.Fatal(err)
		}
		inactive[prov] = out.CreateChannel.WebhookPath
	}
	tgBody := fixture(t, "telegram", "inbound_text.json")
	waBody := fixture(t, "whatsapp", "inbound_text.json")
	fbBody := fixture(t, "messenger", "inbound_text.json")
	for _, b := range [][]byte{tgBody, waBody, fbBody} {
		if len(b) >= maxBody {
			t.Fatalf("a fixture of %d bytes is over the test's limit", len(b))
		}
	}
	waSig, fbSig := e.sigs["whatsapp"]["inbound_text.json"], e.sigs["messenger"]["inbound_text.json"]
	tampered := func(b []byte) []byte { return bytes.Replace(b, []byte("A-1042"), []byte("A-1043"), 1) }
	const secretHeader, sigHeader = "X-Telegram-Bot-Api-Secret-Token", "X-Hub-Signature-256"
	// pad makes a body of exactly n bytes (JSON allows trailing spaces).
	pad := func(b []byte, n int) []byte { return append(bytes.Clone(b), bytes.Repeat([]byte(" "), n-len(b))...) }
	malformed := []byte(`{"object":"page","entry":[{"id":`)
	path := func(prov, id string) string { return "/webhooks/" + prov + "/" + id }
	idOf := func(prov string) string { return fmt.Sprint(e.Channels[prov].ID) }

	cases := []struct {
		name    string
		path    string
		body    []byte
		headers []string
		status  int
	}{
		// Telegram: the secret token header.
		{"telegram without the secret", e.Paths["telegram"], tgBody, nil, 401},
		{"telegram with a wrong secret", e.Paths["telegram"], tgBody, []string{secretHeader, "tg_whsec_wrong"}, 401},
		{"telegram with the secret's prefix", e.Paths["telegram"], tgBody, []string{secretHeader, tgWebhookSecret[:10]}, 401},
		{"telegram with a Meta signature", e.Paths["telegram"], tgBody, []string{sigHeader, sign(tgBody, metaAppSecret)}, 401},
		{"telegram unknown channel", path("telegram", "999999999"), tgBody, []string{secretHeader, tgWebhookSecret}, 404},
		{"telegram channel id not a number", path("telegram", "bot-6001234567"), tgBody, []string{secretHeader, tgWebhookSecret}, 404},
		{"telegram path of a WhatsApp channel", path("telegram", idOf("whatsapp")), tgBody, []string{secretHeader, tgWebhookSecret}, 404},
		{"telegram inactive channel", inactive["telegram"], tgBody, []string{secretHeader, tgWebhookSecret}, 403},
		{"telegram malformed JSON", e.Paths["telegram"], []byte(`{"update_id":1,"message":`), []string{secretHeader, tgWebhookSecret}, 400},
		{"telegram not an Update", e.Paths["telegram"], []byte(`{"message":{"chat":{"id":1}}}`), []string{secretHeader, tgWebhookSecret}, 400},
		{"telegram over the size limit", e.Paths["telegram"], pad(tgBody, maxBody+1), []string{secretHeader, tgWebhookSecret}, 413},
		// WhatsApp: X-Hub-Signature-256 over the exact bytes.
		{"whatsapp without a signature", e.Paths["whatsapp"], waBody, nil, 401},
		{"whatsapp signed with another secret", e.Paths["whatsapp"], waBody, []string{sigHeader, sign(waBody, "other_secret")}, 401},
		{"whatsapp with another body's signature", e.Paths["whatsapp"], waBody, []string{sigHeader, e.sigs["whatsapp"]["inbound_image.json"]}, 401},
		{"whatsapp tampered body", e.Paths["whatsapp"], tampered(waBody), []string{sigHeader, waSig}, 401},
		{"whatsapp re-serialised body", e.Paths["whatsapp"], bytes.ReplaceAll(waBody, []byte("\n"), nil), []string{sigHeader, waSig}, 401},
		{"whatsapp signature without sha256=", e.Paths["whatsapp"], waBody, []string{sigHeader, strings.TrimPrefix(waSig, "sha256=")}, 401},
		{"whatsapp signature not hex", e.Paths["whatsapp"], waBody, []string{sigHeader, "sha256=zz"}, 401},
		{"whatsapp unknown channel", path("whatsapp", "999999999"), waBody, []string{sigHeader, waSig}, 404},
		{"whatsapp path of the Messenger channel", path("whatsapp", idOf("messenger")), fbBody, []string{sigHeader, fbSig}, 404},
		{"whatsapp inactive channel", inactive["whatsapp"], waBody, []string{sigHeader, waSig}, 403},
		{"whatsapp malformed JSON, signed", e.Paths["whatsapp"], malformed, []string{sigHeader, sign(malformed, metaAppSecret)}, 400},
		{"whatsapp a Messenger body, signed", e.Paths["whatsapp"], fbBody, []string{sigHeader, fbSig}, 400},
		{"whatsapp over the size limit, signed", e.Paths["whatsapp"], pad(waBody, maxBody+1), []string{sigHeader, sign(pad(waBody, maxBody+1), metaAppSecret)}, 413},
		// Messenger: the same mechanism.
		{"messenger without a signature", e.Paths["messenger"], fbBody, nil, 401},
		{"messenger tampered body", e.Paths["messenger"], tampered(fbBody), []string{sigHeader, fbSig}, 401},
		{"messenger signed with another secret", e.Paths["messenger"], fbBody, []string{sigHeader, sign(fbBody, "other_secret")}, 401},
		{"messenger unknown channel", path("messenger", "999999999"), fbBody, []string{sigHeader, fbSig}, 404},
		{"messenger inactive channel", inactive["messenger"], fbBody, []string{sigHeader, fbSig}, 403},
		{"messenger malformed JSON, signed", e.Paths["messenger"], malformed, []string{sigHeader, sign(malformed, metaAppSecret)}, 400},
		{"messenger a WhatsApp body, signed", e.Paths["messenger"], waBody, []string{sigHeader, waSig}, 400},
		{"messenger over the size limit, signed", e.Paths["messenger"], pad(fbBody, maxBody+1), []string{sigHeader, sign(pad(fbBody, maxBody+1), metaAppSecret)}, 413},
	}
	before := e.dump(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.request(t, http.MethodPost, c.path, c.body, c.headers...)
			if r.Status != c.status {
				t.Errorf("status %d %q, want %d", r.Status, r.Body, c.status)
			}
			e.wantUnchanged(t, before, c.name)
		})
	}
	// The handshake of an inactive channel is refused too.
	for _, prov := range []string{"whatsapp", "messenger"} {
		t.Run(prov+" handshake of an inactive channel", func(t *testing.T) {
			q := url.Values{"hub.mode": {"subscribe"}, "hub.challenge": {"42"}, "hub.verify_token": {verifyToken(t, "whatsapp")}}
			if r := e.request(t, http.MethodGet, inactive[prov]+"?"+q.Encode(), nil); r.Status != http.StatusForbidden || r.Body == "42" {
				t.Errorf("answer %d %q, want 403", r.Status, r.Body)
			}
		})
	}
	e.wantUnchanged(t, before, "the handshakes")
	t.Run("meta handshake", func(t *testing.T) { testMetaHandshake(t, e) })
	if !strings.Contains(e.Logs(), `msg="webhook refused"`) {
		t.Error("refusals are not logged")
	}

	// The limit is inclusive: a correctly signed delivery of exactly the
	// limit is taken.
	t.Run("exactly the size limit", func(t *testing.T) {
		body := pad(waBody, maxBody)
		if r := e.request(t, http.MethodPost, e.Paths["whatsapp"], body, sigHeader, sign(body, metaAppSecret)); r.Status != http.StatusOK {
			t.Fatalf("status %d %q, want 200", r.Status, r.Body)
		}
		e.message(t, e.Channels["whatsapp"], "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUY0RTk2QkQ5QTlGQzc0MUI2NgA=")
	})
}

// Meta's GET handshake answers the challenge as text/plain with the right
// verify token and 403 otherwise (verify_request.json); it stores nothing.
func testMetaHandshake(t *testing.T, e *env) {
	before := e.dump(t)
	for _, prov := range []string{"whatsapp", "messenger"} {
		v := readVerifyRequest(t, prov)
		if v.Path != "/webhooks/"+prov {
			t.Fatalf("%s/verify_request.json: path %q", prov, v.Path)
		}
		query := func(edit func(q url.Values)) string {
			q := url.Values{}
			for k, val := range v.Query {
				q.Set(k, val)
			}
			if edit != nil {
				edit(q)
			}
			return "?" + q.Encode()
		}
		other := map[string]string{"whatsapp": "messenger", "messenger": "whatsapp"}[prov]
		t.Run(prov+" right token", func(t *testing.T) {
			r := e.request(t, http.MethodGet, e.Paths[prov]+query(nil), nil)
			want := v.ExpectedResponse
			if r.Status != want.Status || r.Body != want.Body || !strings.HasPrefix(r.ContentType, want.ContentType) {
				t.Errorf("answer %d %q %q, want %d %q %q", r.Status, r.ContentType, r.Body, want.Status, want.ContentType, want.Body)
			}
		})
		for name, c := range map[string]struct {
			path   string
			status int
		}{
			"wrong token":               {e.Paths[prov] + query(func(q url.Values) { q.Set("hub.verify_token", "wrong") }), v.OnTokenMismatch.Status},
			"the other channel's token": {e.Paths[prov] + query(func(q url.Values) { q.Set("hub.verify_token", verifyToken(t, other)) }), v.OnTokenMismatch.Status},
			"no token":                  {e.Paths[prov] + query(func(q url.Values) { q.Del("hub.verify_token") }), v.OnTokenMismatch.Status},
			"mode not subscribe":        {e.Paths[prov] + query(func(q url.Values) { q.Set("hub.mode", "unsubscribe") }), v.OnTokenMismatch.Status},
			"unknown channel":           {"/webhooks/" + prov + "/999999999" + query(nil), http.StatusNotFound},
			"the Telegram channel":      {"/webhooks/" + prov + "/" + fmt.Sprint(e.Channels["telegram"].ID) + query(nil), http.StatusNotFound},
		} {
			t.Run(prov+" "+name, func(t *testing.T) {
				r := e.request(t, http.MethodGet, c.path, nil)
				if r.Status != c.status || strings.Contains(r.Body, v.Query["hub.challenge"]) {
					t.Errorf("answer %d %q, want %d without the challenge", r.Status, r.Body, c.status)
				}
			})
		}
	}
	e.wantUnchanged(t, before, "the handshakes")
}

func mustAtoi(t testing.TB, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
