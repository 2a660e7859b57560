package webhooks_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

// The provider accounts of the fixtures and the secrets the test channels
// are configured with (shared/fixtures/README.md).
const (
	tgToken         = "6001234567:AAtest-Bot-Token_for-webhook-tests"
	tgWebhookSecret = "tg_whsec_9f8e7d6c5b4a3210"
	metaAppSecret   = "test_app_secret"
	waPhoneNumberID = "110293847561029"
	waToken         = "wa-system-user-token"
	fbPageID        = "104857392018473"
	fbPageToken     = "fb-page-access-token"
	graphVersion    = "v25.0"
	ourMetaAppID    = "882731940561234" // new_owner_app_id of handover_pass_thread_control: our app
)

// The fixtures' CDN hosts: Messenger attachment and profile-photo URLs are
// absolute, so the adapters fetch them directly; cdnRedirect sends those
// requests to the fake provider instead.
var cdnHosts = map[string]bool{
	"scontent.xx.fbcdn.net":        true,
	"cdn.fbsbx.com":                true,
	"platform-lookaside.fbsbx.com": true,
	"lookaside.fbsbx.com":          true,
}

// provider is the fake of the three providers' APIs, shared by every test
// of the package (it is stateless but for its request log).
var provider *fakeProvider

func TestMain(m *testing.M) {
	provider = newFakeProvider()
	target, _ := url.Parse(provider.srv.URL)
	// The Meta adapters' HTTP clients use http.DefaultTransport: wrap it so
	// that the fixtures' CDN hosts resolve to the fake (nothing else leaves
	// the process through it in this package).
	orig := http.DefaultTransport
	http.DefaultTransport = cdnRedirect{target: target, next: orig}
	code := m.Run()
	http.DefaultTransport = orig
	provider.srv.Close()
	os.Exit(code)
}

// cdnRedirect rewrites requests to the fixtures' CDN hosts to
// {fake}/cdn/{host}{path}?{query}.
type cdnRedirect struct {
	target *url.URL
	next   http.RoundTripper
}

func (c cdnRedirect) RoundTrip(r *http.Request) (*http.Response, error) {
	if !cdnHosts[r.URL.Hostname()] {
		return c.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	orig := *r.URL
	r.URL.Scheme, r.URL.Host = c.target.Scheme, c.target.Host
	r.URL.Path = "/cdn/" + orig.Host + orig.Path
	r.URL.RawPath = ""
	r.Host = c.target.Host
	return c.next.RoundTrip(r)
}

// fakeFile is what the fake serves for a file: bytes that name it, so that
// a test can tell which file was stored.
func fakeFile(kind, id string) []byte { return []byte("fake " + kind + " file: " + id) }

// cdnMime is the Content-Type the fake CDN answers, by extension.
var cdnMime = map[string]string{".jpg": "image/jpeg", ".png": "image/png", ".pdf": "application/pdf"}

// fakeProvider answers like the Telegram Bot API, the Graph API and Meta's
// CDN, from the fixtures' success bodies:
//
//	POST /bot{token}/getFile               get_file_success.json (file_id and file_path of the request)
//	POST /bot{token}/getUserProfilePhotos  get_user_profile_photos_success.json
//	GET  /file/bot{token}/{path}           fakeFile("telegram", file id)
//	GET  /v25.0/{psid}?fields=…            user_profile_success.json, id = psid (page token)
//	GET  /v25.0/{media id}                 media_retrieve_success.json, url → /wa-media/{id} (WhatsApp token)
//	GET  /wa-media/{id}                    fakeFile("whatsapp", id) (WhatsApp token)
//	POST /v25.0/{phone number id}/messages send_text_success.json (WhatsApp token)
//	GET  /cdn/{host}/{path}                fakeFile("cdn", host+path), no token
//
// A wrong token is answered 401 (Telegram) or 400 with a Graph 190 error.
type fakeProvider struct {
	srv *httptest.Server

	fixtures map[string][]byte // "provider/name" → bytes

	mu    sync.Mutex
	sends [][]byte // bodies of the WhatsApp sends
}

func newFakeProvider() *fakeProvider {
	f := &fakeProvider{fixtures: map[string][]byte{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

// fixture reads (once) a fixture's bytes.
func (f *fakeProvider) fixture(t testing.TB, prov, name string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := prov + "/" + name
	if b, ok := f.fixtures[key]; ok {
		return b
	}
	b := metagraphtest.Fixture(t, prov, name)
	f.fixtures[key] = b
	return b
}

func (f *fakeProvider) cached(prov, name string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fixtures[prov+"/"+name]
}

// preload reads every body the fake serves (the handler has no testing.TB).
func (f *fakeProvider) preload(t testing.TB) {
	for _, n := range []string{"get_file_success.json", "get_user_profile_photos_success.json", "error_401_unauthorized.json"} {
		f.fixture(t, "telegram", n)
	}
	for _, n := range []string{"media_retrieve_success.json", "send_text_success.json", "error_190_token_expired.json"} {
		f.fixture(t, "whatsapp", n)
	}
	for _, n := range []string{"user_profile_success.json", "error_invalid_token.json"} {
		f.fixture(t, "messenger", n)
	}
}

// Sends returns the bodies of the WhatsApp sends that contain substr.
func (f *fakeProvider) Sends(substr string) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]byte
	for _, b := range f.sends {
		if strings.Contains(string(b), substr) {
			out = append(out, b)
		}
	}
	return out
}

func (f *fakeProvider) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/bot"):
		f.telegramMethod(w, r)
	case strings.HasPrefix(p, "/file/bot"):
		token, filePath, _ := strings.Cut(strings.TrimPrefix(p, "/file/bot"), "/")
		id, ok := strings.CutPrefix(filePath, "files/")
		if r.Method != http.MethodGet || token != tgToken || !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(fakeFile("telegram", id))
	case strings.HasPrefix(p, "/"+graphVersion+"/"):
		f.graph(w, r, strings.Split(strings.TrimPrefix(p, "/"+graphVersion+"/"), "/"))
	case strings.HasPrefix(p, "/wa-media/"):
		if r.Header.Get("Authorization") != "Bearer "+waToken {
			graphError(w, f.cached("whatsapp", "error_190_token_expired.json"))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(fakeFile("whatsapp", strings.TrimPrefix(p, "/wa-media/")))
	case strings.HasPrefix(p, "/cdn/"):
		if r.Header.Get("Authorization") != "" {
			// CDN URLs are signed: a token sent there would leak.
			http.Error(w, "unexpected Authorization header", http.StatusBadRequest)
			return
		}
		rest := strings.TrimPrefix(p, "/cdn/")
		if ct := cdnMime[path.Ext(rest)]; ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		_, _ = w.Write(fakeFile("cdn", rest))
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeProvider) telegramMethod(w http.ResponseWriter, r *http.Request) {
	token, method, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/bot"), "/")
	w.Header().Set("Content-Type", "application/json")
	if token != tgToken {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write(f.cached("telegram", "error_401_unauthorized.json"))
		return
	}
	if err := r.ParseMultipartForm(1 << 20); err != nil && err != http.ErrNotMultipart {
		_ = r.ParseForm()
	}
	switch method {
	case "getFile":
		var env map[string]any
		_ = json.Unmarshal(f.cached("telegram", "get_file_success.json"), &env)
		res := env["result"].(map[string]any)
		id := r.FormValue("file_id")
		res["file_id"], res["file_path"] = id, "files/"+id
		_ = json.NewEncoder(w).Encode(env)
	case "getUserProfilePhotos":
		_, _ = w.Write(f.cached("telegram", "get_user_profile_photos_success.json"))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = fmt.Fprintf(w, `{"ok":false,"error_code":404,"description":"Not Found: method %s"}`, method)
	}
}

func (f *fakeProvider) graph(w http.ResponseWriter, r *http.Request, seg []string) {
	auth := r.Header.Get("Authorization")
	switch {
	case len(seg) == 1 && r.Method == http.MethodGet && r.URL.Query().Get("fields") != "":
		// Messenger User Profile API.
		if auth != "Bearer "+fbPageToken {
			graphError(w, f.cached("messenger", "error_invalid_token.json"))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if seg[0] == peterPSID {
			_, _ = w.Write(f.cached("messenger", "user_profile_success.json"))
			return
		}
		// Another customer: the same profile under their id.
		var prof map[string]any
		_ = json.Unmarshal(f.cached("messenger", "user_profile_success.json"), &prof)
		prof["id"] = seg[0]
		_ = json.NewEncoder(w).Encode(prof)
	case len(seg) == 1 && r.Method == http.MethodGet:
		// WhatsApp media retrieve: the URL points back at the fake.
		if auth != "Bearer "+waToken {
			graphError(w, f.cached("whatsapp", "error_190_token_expired.json"))
			return
		}
		var meta map[string]any
		_ = json.Unmarshal(f.cached("whatsapp", "media_retrieve_success.json"), &meta)
		meta["id"], meta["url"] = seg[0], f.srv.URL+"/wa-media/"+seg[0]
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(meta)
	case len(seg) == 2 && seg[0] == waPhoneNumberID && seg[1] == "messages" && r.Method == http.MethodPost:
		if auth != "Bearer "+waToken {
			graphError(w, f.cached("whatsapp", "error_190_token_expired.json"))
			return
		}
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.sends = append(f.sends, body)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(f.cached("whatsapp", "send_text_success.json"))
	default:
		graphError(w, []byte(`{"error":{"message":"Unknown path components","type":"OAuthException","code":2500}}`))
	}
}

func graphError(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(body)
}
