package apptest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
	"github.com/parleydesk/parley/server/app"
)

// Fake providers for the outbound tests: an httptest server that answers the
// Telegram Bot API or the Graph API with the shared fixture bodies (or what a
// test scripts), records every request it receives and counts them, so that
// tests can prove what was sent, how often, and that nothing was sent twice.

// GraphVersion is the Graph API version test servers are configured with.
const GraphVersion = "v25.0"

// Fixture returns the exact bytes of shared/fixtures/<provider>/<name>
// (provider: telegram, whatsapp, messenger).
func Fixture(t testing.TB, provider, name string) []byte {
	t.Helper()
	return metagraphtest.Fixture(t, provider, name)
}

// MetaSignature is the X-Hub-Signature-256 of body under the app secret.
func MetaSignature(body []byte, appSecret string) string {
	m := hmac.New(sha256.New, []byte(appSecret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Reply is one scripted answer of a fake provider.
type Reply struct {
	Status int
	Header http.Header
	Body   []byte
	// Handler, when set, answers instead (to drop the connection, block, or
	// cancel the caller's context after the request was received).
	Handler http.HandlerFunc
}

// JSONReply answers body with the status as application/json.
func JSONReply(status int, body []byte) Reply { return Reply{Status: status, Body: body} }

// TelegramError answers a Bot API error fixture with HTTP status = its
// error_code, as Telegram does.
func TelegramError(t testing.TB, fixture string) Reply {
	t.Helper()
	body := Fixture(t, "telegram", fixture)
	var env struct {
		ErrorCode int `json:"error_code"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.ErrorCode == 0 {
		t.Fatalf("%s is not a Bot API error: %v", fixture, err)
	}
	return Reply{Status: env.ErrorCode, Body: body}
}

// GraphError answers a Graph error fixture of provider with HTTP 400.
func GraphError(t testing.TB, provider, fixture string) Reply {
	t.Helper()
	return Reply{Status: http.StatusBadRequest, Body: Fixture(t, provider, fixture)}
}

// UploadedFile is a file part of a multipart request a fake received.
type UploadedFile struct {
	Name        string
	ContentType string
	Data        []byte
}

// ProviderCall is one request a fake provider received.
type ProviderCall struct {
	// Key routes the call: the Bot API method ("sendMessage"), "file/<path>"
	// for a Telegram file download; "METHOD /<path after the version>" for
	// the Graph API ("POST /110293847561029/messages").
	Key    string
	Method string
	Path   string
	// Token is the bot token of a Telegram call, the Bearer token of a
	// Graph call.
	Token  string
	Header http.Header
	Body   []byte
	// Fields are the form fields of a multipart or urlencoded body.
	Fields map[string]string
	// Files are the file parts of a multipart body, by field name.
	Files map[string]UploadedFile
	// JSON is a JSON object body, decoded.
	JSON map[string]any
}

// FakeProvider is a fake Telegram Bot API or Graph API.
type FakeProvider struct {
	*httptest.Server
	kind string // "telegram" or "graph"

	mu      sync.Mutex
	scripts map[string][]Reply
	calls   []ProviderCall
}

// NewFakeTelegram starts a fake Bot API answering with the fixtures:
// sendMessage, sendPhoto, sendDocument and setWebhook succeed;
// getUserProfilePhotos finds no photo. Closed at the end of the test.
func NewFakeTelegram(t testing.TB) *FakeProvider {
	t.Helper()
	f := newFake(t, "telegram")
	f.Script("sendMessage", JSONReply(http.StatusOK, Fixture(t, "telegram", "send_message_success.json")))
	f.Script("sendPhoto", JSONReply(http.StatusOK, Fixture(t, "telegram", "send_photo_success.json")))
	f.Script("sendDocument", JSONReply(http.StatusOK, Fixture(t, "telegram", "send_document_success.json")))
	f.Script("setWebhook", JSONReply(http.StatusOK, Fixture(t, "telegram", "set_webhook_success.json")))
	f.Script("getUserProfilePhotos", JSONReply(http.StatusOK, []byte(`{"ok":true,"result":{"total_count":0,"photos":[]}}`)))
	return f
}

// NewFakeGraph starts a fake Graph API with nothing scripted (every call is
// a Graph 404 until the test scripts it). Closed at the end of the test.
func NewFakeGraph(t testing.TB) *FakeProvider {
	t.Helper()
	return newFake(t, "graph")
}

func newFake(t testing.TB, kind string) *FakeProvider {
	f := &FakeProvider{kind: kind, scripts: map[string][]Reply{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// Script sets the answers of the calls with key, in order; the last one
// answers every further call.
func (f *FakeProvider) Script(key string, replies ...Reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scripts[key] = replies
}

// Calls returns the calls received with key ("" for all), oldest first.
func (f *FakeProvider) Calls(key string) []ProviderCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ProviderCall
	for _, c := range f.calls {
		if key == "" || c.Key == key {
			out = append(out, c)
		}
	}
	return out
}

// Count is how many calls with key were received.
func (f *FakeProvider) Count(key string) int { return len(f.Calls(key)) }

// Last returns the last call with key, failing the test if there is none.
func (f *FakeProvider) Last(t testing.TB, key string) ProviderCall {
	t.Helper()
	calls := f.Calls(key)
	if len(calls) == 0 {
		t.Fatalf("the fake %s received no %s call; it received %v", f.kind, key, f.keys())
	}
	return calls[len(calls)-1]
}

func (f *FakeProvider) keys() []string {
	var ks []string
	for _, c := range f.Calls("") {
		ks = append(ks, c.Key)
	}
	return ks
}

func (f *FakeProvider) route(r *http.Request) (key, token string) {
	p := r.URL.Path
	if f.kind == "telegram" {
		if rest, ok := strings.CutPrefix(p, "/file/bot"); ok {
			token, path, _ := strings.Cut(rest, "/")
			return "file/" + path, token
		}
		if rest, ok := strings.CutPrefix(p, "/bot"); ok {
			token, method, _ := strings.Cut(rest, "/")
			return method, token
		}
		return p, ""
	}
	token = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if rest, ok := strings.CutPrefix(p, "/"+GraphVersion); ok {
		p = rest
	}
	return r.Method + " " + p, token
}

func (f *FakeProvider) serve(w http.ResponseWriter, r *http.Request) {
	key, token := f.route(r)
	call := ProviderCall{Key: key, Method: r.Method, Path: r.URL.Path, Token: token, Header: r.Header.Clone()}
	body, _ := io.ReadAll(r.Body)
	call.Body = body
	decodeBody(&call, r.Header.Get("Content-Type"), body)
	f.mu.Lock()
	f.calls = append(f.calls, call)
	var reply *Reply
	if s := f.scripts[key]; len(s) > 0 {
		reply = &s[0]
		if len(s) > 1 {
			f.scripts[key] = s[1:]
		}
	}
	f.mu.Unlock()
	if reply == nil {
		w.Header().Set("Content-Type", "application/json")
		if f.kind == "telegram" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"ok":false,"error_code":404,"description":"Not Found"}`)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error":{"message":"Unknown path components","type":"OAuthException","code":2500,"fbtrace_id":"fake"}}`)
		return
	}
	if reply.Handler != nil {
		r.Body = io.NopCloser(bytes.NewReader(body)) // read again by the handler
		reply.Handler(w, r)
		return
	}
	for k, vs := range reply.Header {
		w.Header()[k] = vs
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	status := reply.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(reply.Body)
}

func decodeBody(c *ProviderCall, contentType string, body []byte) {
	mt, params, _ := mime.ParseMediaType(contentType)
	switch {
	case mt == "application/json":
		_ = json.Unmarshal(body, &c.JSON)
	case strings.HasPrefix(mt, "multipart/"):
		c.Fields, c.Files = map[string]string{}, map[string]UploadedFile{}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				return
			}
			data, _ := io.ReadAll(p)
			if p.FileName() != "" {
				c.Files[p.FormName()] = UploadedFile{Name: p.FileName(), ContentType: p.Header.Get("Content-Type"), Data: data}
			} else {
				c.Fields[p.FormName()] = string(data)
			}
		}
	case mt == "application/x-www-form-urlencoded":
		c.Fields = map[string]string{}
		if vs, err := url.ParseQuery(string(body)); err == nil {
			for k := range vs {
				c.Fields[k] = vs.Get(k)
			}
		}
	}
}

// WithFakeProviders points the server's Telegram and Graph clients at the
// fakes (either may be nil) and keeps its files in a directory of the test.
func WithFakeProviders(t testing.TB, telegram, graph *FakeProvider) Option {
	dir := t.TempDir()
	return WithConfig(func(c *app.Config) {
		if telegram != nil {
			c.TelegramAPIURL = telegram.URL
		}
		if graph != nil {
			c.GraphAPIURL = graph.URL
			c.GraphAPIVersion = GraphVersion
		}
		c.FilesDir = dir
	})
}

// PostWebhook posts a delivery to /webhooks/<provider>/<channel id> with the
// headers and returns the HTTP status.
func (s *Server) PostWebhook(t testing.TB, provider string, channelID int, body []byte, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/webhooks/%s/%d", s.URL, provider, channelID), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := s.HTTP.Client().Do(req)
	if err != nil {
		t.Fatalf("POST webhook: %v", err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// Upload is one file of a GraphQL multipart request.
type Upload struct {
	// Variable is the path of the Upload variable, e.g. "variables.file".
	Variable    string
	Name        string
	ContentType string
	Data        []byte
}

// DoMultipart sends a GraphQL operation with files as a multipart request
// (graphql-multipart-request-spec: an "operations" part, a "map" part, then
// one part per file). The file variables must be null in vars.
func (s *Server) DoMultipart(t testing.TB, token, query string, vars map[string]any, files ...Upload) Response {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	ops, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		t.Fatal(err)
	}
	fileMap := map[string][]string{}
	for i, f := range files {
		fileMap[fmt.Sprint(i)] = []string{f.Variable}
	}
	m, _ := json.Marshal(fileMap)
	if err := w.WriteField("operations", string(ops)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteField("map", string(m)); err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		h := make(textproto.MIMEHeader)
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="%d"; filename="%s"`, i, f.Name))
		h.Set("Content-Type", f.ContentType)
		p, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(f.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return s.Post(t, token, w.FormDataContentType(), &buf)
}

// GetFile GETs a path of the server (e.g. an Attachment.url) with the bearer
// token (none when empty) and returns the status, headers and body.
func (s *Server) GetFile(t testing.TB, token, path string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := s.HTTP.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, b
}
