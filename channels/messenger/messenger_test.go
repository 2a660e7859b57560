package messenger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

const token = "EAAPage-access-token-SECRET"

var channel = channels.Channel{ID: 3, Provider: channels.Messenger, ExternalID: pageID, Token: token, AppID: ourAppID}

const messagesPath = "/" + metagraphtest.Version + "/" + pageID + "/messages"

const sentMid = "m_h6dP9Wk1rC5tW8sF4q7eZ2xG0yJ3lM6nP8qR1fD4iB7hT0sW3cK6xZ9eA2oU5vG8yJ1lM4nP7qR0"

func fixture(t *testing.T, name string) []byte {
	return metagraphtest.Fixture(t, "messenger", name)
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

func noTokenInURL(t *testing.T, fake *metagraphtest.Server) {
	t.Helper()
	for _, r := range fake.Requests() {
		if strings.Contains(r.Path+r.Query.Encode(), token) {
			t.Errorf("the token is in the URL %s?%s", r.Path, r.Query.Encode())
		}
	}
}

func TestAdapterBasics(t *testing.T) {
	a := New(channels.Config{})
	if a.Provider() != channels.Messenger {
		t.Errorf("provider %q", a.Provider())
	}
	if err := a.RegisterWebhook(context.Background(), channel, "https://x"); !errors.Is(err, channels.ErrUnsupported) {
		t.Errorf("RegisterWebhook: %v", err)
	}
}

func TestSendText(t *testing.T) {
	for _, c := range []struct {
		fixture string
		tag     bool
	}{
		{"send_text_request.json", false},
		{"send_text_human_agent_tag_request.json", true},
	} {
		fake := metagraphtest.NewServer(t)
		fake.Answer(http.MethodPost, messagesPath, 200, fixture(t, "send_text_success.json"))
		want := decode(t, fixture(t, c.fixture))
		msg := want["message"].(map[string]any)
		msg["metadata"] = EchoMetadata // ours, to recognise the echo
		res, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{
			To: psid, Text: msg["text"].(string), HumanAgentTag: c.tag,
		})
		if err != nil {
			t.Fatalf("%s: %v", c.fixture, err)
		}
		if res.MessageID != sentMid {
			t.Errorf("message id %q", res.MessageID)
		}
		reqs := fake.Requests()
		if len(reqs) != 1 {
			t.Fatalf("%d requests", len(reqs))
		}
		r := reqs[0]
		if r.Header.Get("Authorization") != "Bearer "+token || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("headers %v", r.Header)
		}
		if got := decode(t, r.Body); !reflect.DeepEqual(got, want) {
			t.Errorf("%s body\n got %v\nwant %v", c.fixture, got, want)
		}
		noTokenInURL(t, fake)
	}
}

type part struct {
	fileName, contentType string
	data                  string
}

func readMultipart(t *testing.T, r metagraphtest.Request) map[string]part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		t.Fatalf("Content-Type %q", r.Header.Get("Content-Type"))
	}
	parts := map[string]part{}
	mr := multipart.NewReader(bytes.NewReader(r.Body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(p)
		parts[p.FormName()] = part{p.FileName(), p.Header.Get("Content-Type"), string(data)}
	}
}

func TestSendFileThenText(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	success := fixture(t, "send_text_success.json")
	fake.HandleFunc(http.MethodPost, messagesPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			_, _ = w.Write([]byte(`{"recipient_id":"` + psid + `","message_id":"m_file"}`))
			return
		}
		_, _ = w.Write(success)
	})
	png := "\x89PNG\r\n\x1a\nlabel"
	res, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{
		To: psid, Text: "Your label", HumanAgentTag: true,
		File: &channels.OutboundFile{Kind: channels.KindPhoto, Name: "label-A-1042.png", MimeType: "image/png", Data: []byte(png)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != sentMid {
		t.Errorf("message id %q, want the text's", res.MessageID)
	}
	reqs := fake.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if reqs[0].Header.Get("Authorization") != "Bearer "+token {
		t.Errorf("upload Authorization %q", reqs[0].Header.Get("Authorization"))
	}
	parts := readMultipart(t, reqs[0])
	if f := parts["filedata"]; f != (part{"label-A-1042.png", "image/png", png}) {
		t.Errorf("filedata %+v", f)
	}
	if got := decode(t, []byte(parts["recipient"].data)); !reflect.DeepEqual(got, map[string]any{"id": psid}) {
		t.Errorf("recipient %v", got)
	}
	if parts["messaging_type"].data != "MESSAGE_TAG" || parts["tag"].data != "HUMAN_AGENT" {
		t.Errorf("messaging_type %q tag %q", parts["messaging_type"].data, parts["tag"].data)
	}
	wantMsg := map[string]any{"attachment": map[string]any{"type": "image", "payload": map[string]any{"is_reusable": false}}, "metadata": EchoMetadata}
	if got := decode(t, []byte(parts["message"].data)); !reflect.DeepEqual(got, wantMsg) {
		t.Errorf("message %v", got)
	}
	if got := decode(t, reqs[1].Body); got["message"].(map[string]any)["text"] != "Your label" || got["tag"] != "HUMAN_AGENT" {
		t.Errorf("text body %v", got)
	}

	// A file alone gives the file's mid.
	res, err = New(fake.Config()).Send(context.Background(), channel, channels.Outbound{
		To: psid, File: &channels.OutboundFile{Kind: channels.KindDocument, Name: "a.pdf", Data: []byte("%PDF-1.7")},
	})
	if err != nil || res.MessageID != "m_file" {
		t.Fatalf("file alone: %+v, %v", res, err)
	}
	parts = readMultipart(t, fake.Requests()[2])
	if parts["messaging_type"].data != "RESPONSE" || parts["filedata"].contentType != "application/pdf" {
		t.Errorf("file alone parts %+v", parts)
	}
	if !strings.Contains(parts["message"].data, `"type":"file"`) {
		t.Errorf("file alone message %s", parts["message"].data)
	}
}

func TestAttachmentType(t *testing.T) {
	for kind, want := range map[string]string{
		channels.KindPhoto: "image", channels.KindVideo: "video", channels.KindAudio: "audio",
		channels.KindVoice: "audio", channels.KindDocument: "file", "": "file",
	} {
		if got := attachmentType(kind); got != want {
			t.Errorf("%q: %s, want %s", kind, got, want)
		}
	}
}

func graphError(code, subcode int, msg string) []byte {
	e := map[string]any{"message": msg, "type": "OAuthException", "code": code, "fbtrace_id": "T"}
	if subcode != 0 {
		e["error_subcode"] = subcode
	}
	b, _ := json.Marshal(map[string]any{"error": e})
	return b
}

func TestSendErrorClassification(t *testing.T) {
	cases := []struct {
		name   string
		status int
		body   []byte
		want   channels.SendError
	}{
		{"10/2018278 outside window", 400, fixture(t, "error_outside_window.json"), channels.SendError{
			Permanent: true, WindowClosed: true, Code: "10/2018278",
			Reason: "This message is sent outside of allowed window. Learn more about the new policy here: https://developers.facebook.com/docs/messenger-platform/policy-overview"}},
		{"551/1545041 unavailable", 400, fixture(t, "error_user_unavailable.json"), channels.SendError{
			Permanent: true, Unreachable: true, Code: "551/1545041", Reason: "This person isn't available right now."}},
		{"190 invalid token", 400, fixture(t, "error_invalid_token.json"), channels.SendError{
			Permanent: true, Code: "190", Reason: "Invalid OAuth access token - Cannot parse access token"}},
		{"613 rate limit", 400, graphError(613, 0, "(#613) Calls to this api have exceeded the rate limit."), channels.SendError{
			Code: "613", Reason: "Calls to this api have exceeded the rate limit.", RetryAfter: RateRetry}},
		{"2 temporary", 500, graphError(2, 0, "An unexpected error has occurred. Please retry your request later."), channels.SendError{
			Code: "2", Reason: "An unexpected error has occurred. Please retry your request later."}},
		{"2 temporary as 400", 400, graphError(2, 0, "Service temporarily unavailable"), channels.SendError{
			Code: "2", Reason: "Service temporarily unavailable"}},
		{"10/1893063 page restricted", 400, graphError(10, 1893063, "(#10) This Page is temporarily restricted from sending messages"), channels.SendError{
			Code: "10/1893063", Reason: "This Page is temporarily restricted from sending messages", RetryAfter: RestrictedRetry}},
		{"10 other subcode", 400, graphError(10, 2018065, "(#10) This message is sent outside of allowed window."), channels.SendError{
			Permanent: true, Code: "10/2018065", Reason: "This message is sent outside of allowed window."}},
		{"200 permissions", 403, graphError(200, 0, "(#200) Requires pages_messaging permission"), channels.SendError{
			Permanent: true, Code: "200", Reason: "Requires pages_messaging permission"}},
		{"5xx", 502, []byte("bad gateway"), channels.SendError{Code: "502", Reason: "Bad Gateway"}},
	}
	for _, c := range cases {
		fake := metagraphtest.NewServer(t)
		fake.Answer(http.MethodPost, messagesPath, c.status, c.body)
		_, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{To: psid, Text: "hi"})
		var se *channels.SendError
		if !errors.As(err, &se) {
			t.Errorf("%s: error %v, want a *SendError", c.name, err)
			continue
		}
		if *se != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, *se, c.want)
		}
		if strings.Contains(err.Error(), token) {
			t.Errorf("%s: the token is in %q", c.name, err)
		}
	}
}

func TestSendTransportErrorIsTransient(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	cfg := fake.Config()
	fake.Close()
	_, err := New(cfg).Send(context.Background(), channel, channels.Outbound{To: psid, Text: "hi"})
	if err == nil {
		t.Fatal("no error")
	}
	if se := channels.AsSendError(err); se.Permanent {
		t.Errorf("transport failure classified permanent: %+v", se)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("the token is in %q", err)
	}
}

func TestSendRefusesWhatCannotGo(t *testing.T) {
	a := New(channels.Config{GraphBaseURL: "http://127.0.0.1:1"})
	for name, c := range map[string]struct {
		ch  channels.Channel
		out channels.Outbound
	}{
		"no page id":      {channels.Channel{Token: token}, channels.Outbound{To: psid, Text: "x"}},
		"no recipient":    {channel, channels.Outbound{Text: "x"}},
		"nothing to send": {channel, channels.Outbound{To: psid}},
	} {
		_, err := a.Send(context.Background(), c.ch, c.out)
		var se *channels.SendError
		if !errors.As(err, &se) || !se.Permanent {
			t.Errorf("%s: %v, want a permanent SendError", name, err)
		}
	}
}

func TestProfile(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	invalid, profile := fixture(t, "error_invalid_token.json"), fixture(t, "user_profile_success.json")
	fake.HandleFunc(http.MethodGet, "/"+metagraphtest.Version+"/"+psid, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(400)
			_, _ = w.Write(invalid)
			return
		}
		if r.URL.Query().Get("fields") != "first_name,last_name,profile_pic" {
			w.WriteHeader(400)
			return
		}
		_, _ = w.Write(profile)
	})
	a := New(fake.Config())
	p, err := a.Profile(context.Background(), channel, psid)
	if err != nil {
		t.Fatal(err)
	}
	want := channels.Profile{Name: "Peter Chang",
		PhotoRef: "https://platform-lookaside.fbsbx.com/platform/profilepic/?psid=7391045528817342&width=1024&ext=1787212800&hash=AbZ9yX8wV7uT"}
	if p != want {
		t.Errorf("profile %+v", p)
	}
	_, err = a.Profile(context.Background(), channels.Channel{ExternalID: pageID, Token: "wrong"}, psid)
	var ge *metagraph.Error
	if !errors.As(err, &ge) || ge.Code != 190 {
		t.Errorf("profile with a bad token: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong") {
		t.Errorf("the token is in %q", err)
	}
	if _, err := a.Profile(context.Background(), channel, ""); err == nil {
		t.Error("empty psid accepted")
	}
	noTokenInURL(t, fake)
}

func TestDownloadSendsNoToken(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	content := []byte("%PDF-1.7 invoice")
	fake.HandleFunc(http.MethodGet, "/v/t59.2708-21/invoice-A-1042.pdf", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" || r.URL.Query().Get("access_token") != "" {
			w.WriteHeader(400) // the CDN must never see the token
			return
		}
		if r.Header.Get("User-Agent") != metagraphtest.UserAgent || r.URL.Query().Get("oh") != "03_Q7cD1QHdef" {
			w.WriteHeader(403)
			return
		}
		w.Header().Set("Content-Type", "application/pdf")
		_, _ = w.Write(content)
	})
	a := New(fake.Config())
	ref := fake.URL + "/v/t59.2708-21/invoice-A-1042.pdf?_nc_cat=104&oh=03_Q7cD1QHdef&oe=66F0B3C4"
	f, err := a.Download(context.Background(), channel, ref)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(f.Body)
	f.Body.Close()
	if !bytes.Equal(data, content) || f.MimeType != "application/pdf" || f.Name != "invoice-A-1042.pdf" || f.Size != int64(len(content)) {
		t.Errorf("file %+v %q", f, data)
	}
	// An expired URL.
	_, err = a.Download(context.Background(), channel, fake.URL+"/gone.png?oh=secret-hash")
	var ge *metagraph.Error
	if !errors.As(err, &ge) || ge.Status != 404 {
		t.Errorf("expired: %v", err)
	}
	// Not a URL.
	if _, err := a.Download(context.Background(), channel, "1013859600285441"); err == nil {
		t.Error("a media id was downloaded as a URL")
	}
}
