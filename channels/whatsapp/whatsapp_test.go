package whatsapp

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
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

const token = "EAAG-system-user-token-SECRET"

var channel = channels.Channel{ID: 7, Provider: channels.WhatsApp, ExternalID: phoneNumberID, Token: token}

const messagesPath = "/" + metagraphtest.Version + "/" + phoneNumberID + "/messages"

func fixture(t *testing.T, name string) []byte {
	return metagraphtest.Fixture(t, "whatsapp", name)
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return m
}

func checkJSON(t *testing.T, r metagraphtest.Request) {
	t.Helper()
	if got := r.Header.Get("Authorization"); got != "Bearer "+token {
		t.Errorf("Authorization %q", got)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	if strings.Contains(r.Path+r.Query.Encode(), token) {
		t.Error("the token is in the URL")
	}
}

func TestAdapterBasics(t *testing.T) {
	a := New(channels.Config{})
	if a.Provider() != channels.WhatsApp {
		t.Errorf("provider %q", a.Provider())
	}
	if _, err := a.Profile(context.Background(), channel, bsuid); !errors.Is(err, channels.ErrUnsupported) {
		t.Errorf("Profile: %v", err)
	}
	if err := a.RegisterWebhook(context.Background(), channel, "https://x"); !errors.Is(err, channels.ErrUnsupported) {
		t.Errorf("RegisterWebhook: %v", err)
	}
}

func TestSendTextToPhone(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.Answer(http.MethodPost, messagesPath, 200, fixture(t, "send_text_success.json"))
	want := decode(t, fixture(t, "send_text_request.json"))
	delete(want, "context") // Outbound does not quote messages
	text := want["text"].(map[string]any)["body"].(string)

	res, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{To: waID, Phone: waID, Text: text})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != outboundWamid {
		t.Errorf("message id %q", res.MessageID)
	}
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	checkJSON(t, reqs[0])
	if got := decode(t, reqs[0].Body); !reflect.DeepEqual(got, want) {
		t.Errorf("body\n got %v\nwant %v", got, want)
	}
}

func TestSendTextToBSUID(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.Answer(http.MethodPost, messagesPath, 200, fixture(t, "send_text_success.json"))
	want := decode(t, fixture(t, "send_text_request_bsuid.json"))
	want["text"].(map[string]any)["preview_url"] = false
	text := want["text"].(map[string]any)["body"].(string)

	a := New(fake.Config())
	if _, err := a.Send(context.Background(), channel, channels.Outbound{To: bsuid, Text: text}); err != nil {
		t.Fatal(err)
	}
	// With the phone known, it goes along as "to".
	if _, err := a.Send(context.Background(), channel, channels.Outbound{To: bsuid, Phone: waID, Text: text}); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests()
	if got := decode(t, reqs[0].Body); !reflect.DeepEqual(got, want) {
		t.Errorf("body\n got %v\nwant %v", got, want)
	}
	want["to"] = waID
	if got := decode(t, reqs[1].Body); !reflect.DeepEqual(got, want) {
		t.Errorf("body with phone\n got %v\nwant %v", got, want)
	}
}

func TestSendFileUploadsThenSendsByID(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	fake.Answer(http.MethodPost, "/"+metagraphtest.Version+"/"+phoneNumberID+"/media", 200, []byte(`{"id":"1479537139650973"}`))
	fake.Answer(http.MethodPost, messagesPath, 200, fixture(t, "send_text_success.json"))
	png := []byte("\x89PNG\r\n\x1a\nlabel")

	res, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{
		To: waID, Text: "Replacement label",
		File: &channels.OutboundFile{Kind: channels.KindPhoto, Name: "label.png", MimeType: "image/png", Data: png},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != outboundWamid {
		t.Errorf("message id %q", res.MessageID)
	}
	reqs := fake.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	up := reqs[0]
	if up.Header.Get("Authorization") != "Bearer "+token {
		t.Errorf("upload Authorization %q", up.Header.Get("Authorization"))
	}
	mt, params, err := mime.ParseMediaType(up.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		t.Fatalf("upload Content-Type %q", up.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(bytes.NewReader(up.Body), params["boundary"])
	fields := map[string]string{}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(p)
		if p.FormName() == "file" {
			if p.FileName() != "label.png" || p.Header.Get("Content-Type") != "image/png" || !bytes.Equal(data, png) {
				t.Errorf("file part %q %q %q", p.FileName(), p.Header.Get("Content-Type"), data)
			}
			continue
		}
		fields[p.FormName()] = string(data)
	}
	if !reflect.DeepEqual(fields, map[string]string{"messaging_product": "whatsapp", "type": "image/png"}) {
		t.Errorf("upload fields %v", fields)
	}
	checkJSON(t, reqs[1])
	if got, want := decode(t, reqs[1].Body), decode(t, fixture(t, "send_image_request.json")); !reflect.DeepEqual(got, want) {
		t.Errorf("body\n got %v\nwant %v", got, want)
	}
}

func TestMediaObject(t *testing.T) {
	cases := []struct {
		kind, name, text string
		typ              string
		obj              map[string]any
	}{
		{channels.KindDocument, "a.pdf", "see", "document", map[string]any{"id": "M", "caption": "see", "filename": "a.pdf"}},
		{channels.KindVideo, "v.mp4", "", "video", map[string]any{"id": "M"}},
		{channels.KindVoice, "v.ogg", "", "audio", map[string]any{"id": "M"}},
		// Audio takes no caption: with a text it goes as a document.
		{channels.KindAudio, "a.mp3", "listen", "document", map[string]any{"id": "M", "caption": "listen", "filename": "a.mp3"}},
		{"", "x.bin", "", "document", map[string]any{"id": "M", "filename": "x.bin"}},
	}
	for _, c := range cases {
		typ, obj := mediaObject(&channels.OutboundFile{Kind: c.kind, Name: c.name}, "M", c.text)
		if typ != c.typ || !reflect.DeepEqual(obj, c.obj) {
			t.Errorf("%s/%q: %s %v, want %s %v", c.kind, c.text, typ, obj, c.typ, c.obj)
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
		header map[string]string
		want   channels.SendError
	}{
		{"131047 window closed", 400, fixture(t, "error_131047_response.json"), nil, channels.SendError{
			Permanent: true, WindowClosed: true, Code: "131047",
			Reason: "Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number."}},
		{"131056 pair rate limit", 400, fixture(t, "error_131056_pair_rate_limit.json"), nil, channels.SendError{
			Code: "131056", RetryAfter: PairRateRetry,
			Reason: "(Business Account, Consumer Account) pair rate limit hit: Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time."}},
		{"190 token expired", 400, fixture(t, "error_190_token_expired.json"), nil, channels.SendError{
			Permanent: true, Code: "190/463", Reason: "Error validating access token: Session has expired on Tuesday, 21-Jul-26 10:00:00 PDT."}},
		{"130429 throughput", 400, graphError(130429, 0, "(#130429) Rate limit hit"), nil, channels.SendError{
			Code: "130429", Reason: "Rate limit hit", RetryAfter: ThroughputRetry}},
		{"4 app rate limit", 400, graphError(4, 0, "(#4) Application request limit reached"), nil, channels.SendError{
			Code: "4", Reason: "Application request limit reached", RetryAfter: AppRateRetry}},
		{"80007 account rate limit", 400, graphError(80007, 0, "(#80007) Rate limit issues"), nil, channels.SendError{
			Code: "80007", Reason: "Rate limit issues", RetryAfter: AccountRateRetry}},
		{"131026 undeliverable", 400, graphError(131026, 0, "(#131026) Message undeliverable"), nil, channels.SendError{
			Permanent: true, Code: "131026", Reason: "Message undeliverable"}},
		{"other 4xx", 400, graphError(100, 0, "(#100) Invalid parameter"), nil, channels.SendError{
			Permanent: true, Code: "100", Reason: "Invalid parameter"}},
		{"401 without envelope", 401, []byte("nope"), nil, channels.SendError{
			Permanent: true, Code: "401", Reason: "Unauthorized"}},
		{"5xx", 503, []byte("<html>busy</html>"), nil, channels.SendError{
			Code: "503", Reason: "Service Unavailable"}},
		{"5xx graph", 500, graphError(131000, 0, "(#131000) Something went wrong"), nil, channels.SendError{
			Code: "131000", Reason: "Something went wrong"}},
		{"429 with Retry-After", 429, []byte(""), map[string]string{"Retry-After": "7"}, channels.SendError{
			Code: "429", Reason: "Too Many Requests", RetryAfter: 7 * time.Second}},
		{"token echoed", 400, graphError(190, 0, "Malformed access token "+token), nil, channels.SendError{
			Permanent: true, Code: "190", Reason: "Malformed access token [redacted]"}},
	}
	for _, c := range cases {
		fake := metagraphtest.NewServer(t)
		fake.HandleFunc(http.MethodPost, messagesPath, func(w http.ResponseWriter, _ *http.Request) {
			for k, v := range c.header {
				w.Header().Set(k, v)
			}
			w.WriteHeader(c.status)
			_, _ = w.Write(c.body)
		})
		_, err := New(fake.Config()).Send(context.Background(), channel, channels.Outbound{To: waID, Text: "hi"})
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
	_, err := New(cfg).Send(context.Background(), channel, channels.Outbound{To: waID, Text: "hi"})
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
		"no phone number id": {channels.Channel{Token: token}, channels.Outbound{To: waID, Text: "x"}},
		"no recipient":       {channel, channels.Outbound{Text: "x"}},
		"nothing to send":    {channel, channels.Outbound{To: waID}},
	} {
		_, err := a.Send(context.Background(), c.ch, c.out)
		var se *channels.SendError
		if !errors.As(err, &se) || !se.Permanent {
			t.Errorf("%s: %v, want a permanent SendError", name, err)
		}
	}
}

func TestDownloadTwoSteps(t *testing.T) {
	fake := metagraphtest.NewServer(t)
	const mediaID = "1013859600285441"
	meta := decode(t, fixture(t, "media_retrieve_success.json"))
	meta["url"] = fake.URL + "/whatsapp_business/attachments/?mid=" + mediaID + "&ext=1784621160&hash=ATtQd3BfZ0aS8Xyz"
	metaBody, _ := json.Marshal(meta)
	content := bytes.Repeat([]byte{0xff, 0xd8, 'j'}, 303833/3)
	content = append(content, 'x', 'y')
	fake.HandleFunc(http.MethodGet, "/"+metagraphtest.Version+"/"+mediaID, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(401)
			_, _ = w.Write(graphError(190, 0, "Invalid OAuth access token"))
			return
		}
		_, _ = w.Write(metaBody)
	})
	fake.HandleFunc(http.MethodGet, "/whatsapp_business/attachments/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(401)
			return
		}
		if r.Header.Get("User-Agent") != metagraphtest.UserAgent {
			w.WriteHeader(403) // lookaside refuses some default agents
			return
		}
		if r.URL.Query().Get("mid") != mediaID {
			w.WriteHeader(404)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(content)
	})
	a := New(fake.Config())
	f, err := a.Download(context.Background(), channel, mediaID)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f.Body)
	f.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, content) || f.MimeType != "image/jpeg" || f.Size != 303833 || len(content) != 303833 {
		t.Errorf("file %q %d, %d bytes", f.MimeType, f.Size, len(data))
	}

	// Without the token, Graph refuses: the error is Graph's, token-free.
	_, err = a.Download(context.Background(), channels.Channel{ExternalID: phoneNumberID}, mediaID)
	var ge *metagraph.Error
	if !errors.As(err, &ge) || ge.Code != 190 || ge.Status != 401 {
		t.Errorf("download without token: %v", err)
	}
	// An unknown media id.
	if _, err := a.Download(context.Background(), channel, "404"); err == nil {
		t.Error("unknown media downloaded")
	}
	// The default User-Agent would be refused by the fake lookaside.
	cfg := fake.Config()
	cfg.UserAgent = ""
	if _, err := New(cfg).Download(context.Background(), channel, mediaID); !errors.As(err, &ge) || ge.Status != 403 {
		// channels.Config's default UA is "Parley/1.0", not the test's.
		t.Errorf("download with another UA: %v", err)
	}
	for _, r := range fake.Requests() {
		if strings.Contains(r.Path+r.Query.Encode(), token) {
			t.Errorf("the token is in the URL %s", r.Path)
		}
	}
}
