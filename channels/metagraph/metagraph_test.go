package metagraph_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

func TestEndpoint(t *testing.T) {
	c := metagraph.New(channels.Config{})
	got, err := c.Endpoint("123", "messages")
	if err != nil || got != "https://graph.facebook.com/v25.0/123/messages" {
		t.Errorf("default endpoint %q, %v", got, err)
	}
	c = metagraph.New(channels.Config{GraphBaseURL: "http://fake:1/prefix/", GraphVersion: "v99.0"})
	got, _ = c.Endpoint("a/b?c")
	if got != "http://fake:1/prefix/v99.0/a%2Fb%3Fc" {
		t.Errorf("escaped endpoint %q", got)
	}
	for _, bad := range []string{"", ".", ".."} {
		if _, err := c.Endpoint("x", bad); err == nil {
			t.Errorf("segment %q accepted", bad)
		}
	}
}

func TestFlexStringAndTimes(t *testing.T) {
	var v struct{ A, B, C, D metagraph.FlexString }
	if err := json.Unmarshal([]byte(`{"A":"x1","B":882731940561234,"C":null}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != "x1" || v.B != "882731940561234" || v.C != "" || v.D != "" {
		t.Errorf("%+v", v)
	}
	if err := json.Unmarshal([]byte(`{"A":true}`), &v); err == nil {
		t.Error("a boolean accepted")
	}
	if got := metagraph.UnixSeconds("1784620800"); !got.Equal(time.Unix(1784620800, 0)) || got.Location() != time.UTC {
		t.Errorf("seconds %v", got)
	}
	if got := metagraph.UnixMillis("1784620799871"); !got.Equal(time.UnixMilli(1784620799871)) {
		t.Errorf("millis %v", got)
	}
	if !metagraph.UnixSeconds("").IsZero() || !metagraph.UnixMillis("x").IsZero() {
		t.Error("unreadable times are not zero")
	}
}

func TestDecodeEnvelope(t *testing.T) {
	if _, err := metagraph.DecodeEnvelope([]byte(`{"object":"page","entry":[{}]}`), "page"); err != nil {
		t.Error(err)
	}
	for _, body := range []string{`x`, `{"object":"user"}`} {
		if _, err := metagraph.DecodeEnvelope([]byte(body), "page"); !errors.Is(err, channels.ErrMalformed) {
			t.Errorf("%s: %v", body, err)
		}
	}
	if k := metagraph.BodyKey([]byte("abc")); k != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("key %s", k)
	}
}

func TestCallDecodesGraphErrors(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.Answer(http.MethodGet, "/v25.0/str", 400, []byte(`{"error":{"message":"(#100) Bad","code":100,"error_subcode":33,"error_data":"{\"details\":\"as a string\"}","fbtrace_id":"F"}}`))
	fake.Answer(http.MethodGet, "/v25.0/transient", 400, []byte(`{"error":{"message":"Try again","code":17,"is_transient":true}}`))
	fake.Answer(http.MethodGet, "/v25.0/garbage", 200, []byte(`<html>`))
	c := metagraph.New(fake.Config())
	ctx := context.Background()

	err := c.Call(ctx, metagraph.Request{Path: []string{"str"}, Token: "tok"}, nil)
	var ge *metagraph.Error
	if !errors.As(err, &ge) || ge.Code != 100 || ge.Subcode != 33 || ge.Details != "as a string" || ge.FBTraceID != "F" {
		t.Fatalf("%#v", err)
	}
	if ge.CodeString() != "100/33" || ge.Reason() != "Bad: as a string" {
		t.Errorf("code %q reason %q", ge.CodeString(), ge.Reason())
	}
	if msg := ge.Error(); msg != "graph HTTP 400 code 100/33: Bad: as a string (fbtrace_id F)" {
		t.Errorf("message %q", msg)
	}
	se := channels.AsSendError(metagraph.Classify(err, nil))
	if !se.Permanent || se.Code != "100/33" {
		t.Errorf("default 4xx %+v", se)
	}

	err = c.Call(ctx, metagraph.Request{Path: []string{"transient"}}, nil)
	if se := channels.AsSendError(metagraph.Classify(err, nil)); se.Permanent {
		t.Errorf("is_transient ignored: %+v", se)
	}

	var out struct{}
	err = c.Call(ctx, metagraph.Request{Path: []string{"garbage"}}, &out)
	if se := channels.AsSendError(metagraph.Classify(err, nil)); !se.Permanent || se.Code != "BAD_ANSWER" {
		t.Errorf("undecodable 2xx: %+v", se)
	}
	if metagraph.Classify(nil, nil) != nil {
		t.Error("nil classified")
	}
	other := errors.New("boom")
	if metagraph.Classify(other, nil) != other {
		t.Error("a transport error was changed")
	}
}

func TestRulesMatchCodeAndSubcode(t *testing.T) {
	rules := []metagraph.Rule{
		{Code: 10, Subcode: 1, WindowClosed: true},
		{Code: 10, Subcode: 2, Transient: true, RetryAfter: time.Hour},
		{Code: 20, Unreachable: true},
	}
	for _, c := range []struct {
		code, sub int
		want      channels.SendError
	}{
		{10, 1, channels.SendError{Permanent: true, WindowClosed: true, Code: "10/1"}},
		{10, 2, channels.SendError{RetryAfter: time.Hour, Code: "10/2"}},
		{10, 3, channels.SendError{Permanent: true, Code: "10/3"}},
		{20, 9, channels.SendError{Permanent: true, Unreachable: true, Code: "20/9"}},
	} {
		err := metagraph.Classify(&metagraph.Error{Status: 400, Code: c.code, Subcode: c.sub}, rules)
		if se := channels.AsSendError(err); *se != c.want {
			t.Errorf("%d/%d: %+v, want %+v", c.code, c.sub, *se, c.want)
		}
	}
}

func TestRequestsCarryTokenInHeaderOnly(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.Answer(http.MethodPost, "/v25.0/p/messages", 200, []byte(`{"ok":1}`))
	c := metagraph.New(fake.Config())
	var out map[string]any
	err := c.Call(context.Background(), metagraph.Request{
		Method: http.MethodPost, Path: []string{"p", "messages"}, Query: url.Values{"x": {"1"}},
		Token: "tok", JSON: map[string]any{"a": 1},
	}, &out)
	if err != nil || out["ok"] != 1.0 {
		t.Fatal(out, err)
	}
	r := fake.Requests()[0]
	if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("User-Agent") != metagraphtest.UserAgent ||
		r.Query.Get("x") != "1" || r.Query.Has("access_token") || string(r.Body) != `{"a":1}` {
		t.Errorf("request %+v %s", r, r.Body)
	}
}

func TestTransportErrorsLoseTheQuery(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	base := fake.URL
	fake.Close()
	c := metagraph.New(channels.Config{GraphBaseURL: base})
	_, err := c.Fetch(context.Background(), base+"/media?hash=SIGNED", "tok")
	if err == nil || strings.Contains(err.Error(), "SIGNED") || strings.Contains(err.Error(), "tok") {
		t.Errorf("error %v", err)
	}
	err = c.Call(context.Background(), metagraph.Request{Path: []string{"x"}, Query: url.Values{"q": {"SIGNED"}}}, nil)
	if err == nil || strings.Contains(err.Error(), "SIGNED") {
		t.Errorf("error %v", err)
	}
}

func TestFetch(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.HandleFunc(http.MethodGet, "/f", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Disposition", `attachment; filename="notes.txt"`)
		_, _ = io.WriteString(w, r.Header.Get("Authorization")+"|"+r.Header.Get("User-Agent"))
	})
	c := metagraph.New(fake.Config())
	for token, want := range map[string]string{"": "|" + metagraphtest.UserAgent, "tok": "Bearer tok|" + metagraphtest.UserAgent} {
		f, err := c.Fetch(context.Background(), fake.URL+"/f", token)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(f.Body)
		f.Body.Close()
		if string(b) != want || f.Name != "notes.txt" || f.MimeType != "text/plain" || f.Size != int64(len(want)) {
			t.Errorf("token %q: %q %+v", token, b, f)
		}
	}
	for _, bad := range []string{"file:///etc/passwd", "/relative", "12345", "http://"} {
		if _, err := c.Fetch(context.Background(), bad, ""); err == nil {
			t.Errorf("%q fetched", bad)
		}
	}
}

func TestMultipartDetectsTheType(t *testing.T) {
	body, ct, err := metagraph.Multipart([]metagraph.Field{{Name: "a", Value: "1"}}, "file", "", "", []byte("%PDF-1.7"))
	if err != nil || !strings.HasPrefix(ct, "multipart/form-data; boundary=") {
		t.Fatal(ct, err)
	}
	b, _ := io.ReadAll(body)
	for _, want := range []string{`name="a"`, `name="file"; filename="file"`, "Content-Type: application/pdf", "%PDF-1.7"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("body lacks %q:\n%s", want, b)
		}
	}
}
