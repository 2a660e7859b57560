package telegram

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
)

// testToken is shaped like a real token and distinctive enough that any
// leak into an error message is found by a substring search.
const testToken = "6001234567:AAHsecret-Token_ForTests0123456789abcd"

// fixturesDir finds shared/fixtures/telegram by walking up from the
// package directory: shared/ sits beside the repository root (locally and
// in CI), so no fixed depth is assumed.
func fixturesDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		candidate := filepath.Join(dir, "shared", "fixtures", "telegram")
		if st, err := os.Stat(candidate); err == nil && st.IsDir() {
			return candidate
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("shared/fixtures/telegram not found above the package directory")
		}
		dir = parent
	}
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixturesDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// errorStatus is the HTTP status Telegram uses for an error body: its
// error_code.
func errorStatus(t testing.TB, body []byte) int {
	t.Helper()
	var env struct {
		ErrorCode int `json:"error_code"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.ErrorCode == 0 {
		t.Fatalf("not an error envelope: %s", body)
	}
	return env.ErrorCode
}

// request is one Bot API call as the fake received it.
type request struct {
	Method string
	Form   map[string]string
	Files  map[string]upload
}

type upload struct {
	Name string
	Data []byte
}

// reply is what the fake answers to one method call.
type reply struct {
	status int
	body   []byte
}

// fakeTelegram answers like the Bot API: POST /bot<token>/<method> with
// multipart or form bodies, the {"ok":…} envelope with HTTP status =
// error_code, and files at GET /file/bot<token>/<path>. A wrong token gets
// 401 as from Telegram.
type fakeTelegram struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	replies  map[string][]reply // per method, consumed in order; the last one repeats
	files    map[string][]byte  // file_path → bytes
	requests []request

	unauthorized []byte // error_401_unauthorized.json
}

func newFake(t *testing.T) *fakeTelegram {
	f := &fakeTelegram{t: t, replies: map[string][]reply{}, files: map[string][]byte{},
		unauthorized: fixture(t, "error_401_unauthorized.json")}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// adapter returns an Adapter pointed at the fake.
func (f *fakeTelegram) adapter() *Adapter {
	return New(channels.Config{TelegramBaseURL: f.srv.URL, HTTPTimeout: 5 * time.Second})
}

// on queues answers for method.
func (f *fakeTelegram) on(method string, replies ...reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies[method] = append(f.replies[method], replies...)
}

// ok answers with a fixture body and 200; fail with an error fixture and
// its error_code as status.
func (f *fakeTelegram) ok(method, fixtureName string) {
	f.on(method, reply{status: http.StatusOK, body: fixture(f.t, fixtureName)})
}

func (f *fakeTelegram) fail(method, fixtureName string) {
	body := fixture(f.t, fixtureName)
	f.on(method, reply{status: errorStatus(f.t, body), body: body})
}

// serveFile makes data downloadable at /file/bot<token>/<filePath>.
func (f *fakeTelegram) serveFile(filePath string, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[filePath] = data
}

func (f *fakeTelegram) calls() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.requests...)
}

func (f *fakeTelegram) serve(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, "/file/bot"); ok {
		token, filePath, _ := strings.Cut(rest, "/")
		f.mu.Lock()
		data, found := f.files[filePath]
		f.mu.Unlock()
		if r.Method != http.MethodGet || token != testToken || !found {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
		return
	}

	rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
	token, method, _ := strings.Cut(rest, "/")
	if !ok || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	if token != testToken {
		w.WriteHeader(http.StatusUnauthorized)
		w.Write(f.unauthorized)
		return
	}

	req := request{Method: method, Form: map[string]string{}, Files: map[string]upload{}}
	if err := r.ParseMultipartForm(32 << 20); err != nil && err != http.ErrNotMultipart {
		f.t.Errorf("fake telegram: %s body: %v", method, err)
	}
	if r.MultipartForm != nil {
		for k, v := range r.MultipartForm.Value {
			req.Form[k] = v[0]
		}
		for k, fhs := range r.MultipartForm.File {
			fh := fhs[0]
			file, err := fh.Open()
			if err != nil {
				f.t.Errorf("fake telegram: open upload: %v", err)
				continue
			}
			data, _ := io.ReadAll(file)
			file.Close()
			req.Files[k] = upload{Name: fh.Filename, Data: data}
		}
	}

	f.mu.Lock()
	f.requests = append(f.requests, req)
	queue := f.replies[method]
	var rep reply
	if len(queue) > 0 {
		rep = queue[0]
		if len(queue) > 1 {
			f.replies[method] = queue[1:]
		}
	}
	f.mu.Unlock()

	if rep.body == nil {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"ok":false,"error_code":404,"description":"Not Found"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	w.Write(rep.body)
}

// testChannel is the channel the tests use, with the fixtures' secret.
func testChannel() channels.Channel {
	return channels.Channel{ID: 1, Provider: channels.Telegram, Token: testToken, WebhookSecret: "tg_whsec_9f8e7d6c5b4a3210"}
}
