package telegram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/google/go-cmp/cmp"

	"github.com/parleydesk/parley/channels"
)

func TestSendText(t *testing.T) {
	f := newFake(t)
	f.ok("sendMessage", "send_message_success.json")

	res, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{
		To: "7712345678", Text: "Hi Olga, your order #A-1042 ships today.",
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != "7712345678:4127" {
		t.Errorf("MessageID = %q, want 7712345678:4127", res.MessageID)
	}

	// The request carries send_message_request.json's chat_id and text.
	var fx struct {
		ChatID int64  `json:"chat_id"`
		Text   string `json:"text"`
	}
	if err := json.Unmarshal(fixture(t, "send_message_request.json"), &fx); err != nil {
		t.Fatal(err)
	}
	calls := f.calls()
	if len(calls) != 1 || calls[0].Method != "sendMessage" {
		t.Fatalf("calls = %+v, want one sendMessage", calls)
	}
	if got := calls[0].Form; got["chat_id"] != fmt.Sprint(fx.ChatID) || got["text"] != fx.Text {
		t.Errorf("sendMessage form = %v, want chat_id=%d text=%q", got, fx.ChatID, fx.Text)
	}
}

func TestSendFiles(t *testing.T) {
	tests := []struct {
		name       string
		file       channels.OutboundFile
		method     string
		field      string
		fixture    string
		wantID     string
		wantUpload string
	}{
		{"photo", channels.OutboundFile{Kind: channels.KindPhoto, Name: "label.jpg", MimeType: "image/jpeg", Data: []byte("\xff\xd8jpeg-bytes")},
			"sendPhoto", "photo", "send_photo_success.json", "7712345678:4128", "label.jpg"},
		{"document", channels.OutboundFile{Kind: channels.KindDocument, Name: "return-form.pdf", MimeType: "application/pdf", Data: []byte("%PDF-1.7 form")},
			"sendDocument", "document", "send_document_success.json", "7712345678:4129", "return-form.pdf"},
		{"video goes as document", channels.OutboundFile{Kind: channels.KindVideo, Data: []byte("mp4")},
			"sendDocument", "document", "send_document_success.json", "7712345678:4129", "file"},
		{"photo over 10 MB goes as document", channels.OutboundFile{Kind: channels.KindPhoto, Name: "huge.png", Data: bytes.Repeat([]byte{1}, maxPhotoUpload+1)},
			"sendDocument", "document", "send_document_success.json", "7712345678:4129", "huge.png"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.ok(tt.method, tt.fixture)
			file := tt.file
			res, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{
				To: "7712345678", Text: "Replacement label", File: &file,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.MessageID != tt.wantID {
				t.Errorf("MessageID = %q, want %q", res.MessageID, tt.wantID)
			}
			calls := f.calls()
			if len(calls) != 1 || calls[0].Method != tt.method {
				t.Fatalf("calls = %v, want one %s", methods(calls), tt.method)
			}
			c := calls[0]
			if c.Form["chat_id"] != "7712345678" || c.Form["caption"] != "Replacement label" {
				t.Errorf("form = %v", c.Form)
			}
			up, ok := c.Files[tt.field]
			if !ok || up.Name != tt.wantUpload || !bytes.Equal(up.Data, tt.file.Data) {
				t.Errorf("upload %q = {%q, %d bytes}, want {%q, %d bytes}", tt.field, up.Name, len(up.Data), tt.wantUpload, len(tt.file.Data))
			}
		})
	}
}

// A text too long for a caption follows the file as its own message.
func TestSendFileWithLongText(t *testing.T) {
	f := newFake(t)
	f.ok("sendPhoto", "send_photo_success.json")
	f.ok("sendMessage", "send_message_success.json")
	text := strings.Repeat("a", MaxCaptionLength+1)
	res, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{
		To: "7712345678", Text: text, File: &channels.OutboundFile{Kind: channels.KindPhoto, Name: "p.jpg", Data: []byte("x")},
	})
	if err != nil {
		t.Fatal(err)
	}
	calls := f.calls()
	if diff := cmp.Diff([]string{"sendPhoto", "sendMessage"}, methods(calls)); diff != "" {
		t.Fatalf("calls (-want +got):\n%s", diff)
	}
	if _, has := calls[0].Form["caption"]; has || calls[1].Form["text"] != text {
		t.Errorf("caption sent with the photo or text lost: %v / %d chars", calls[0].Form, len(calls[1].Form["text"]))
	}
	if res.MessageID != "7712345678:4127" {
		t.Errorf("MessageID = %q, want the last message's", res.MessageID)
	}
}

func TestSendErrors(t *testing.T) {
	tests := []struct {
		fixture string
		want    channels.SendError
	}{
		{"error_429_retry_after.json", channels.SendError{Code: "429", Reason: "Too Many Requests: retry after 17", RetryAfter: 17 * time.Second}},
		{"error_403_blocked.json", channels.SendError{Permanent: true, Unreachable: true, Code: "403", Reason: "Forbidden: bot was blocked by the user"}},
		{"error_403_cant_initiate.json", channels.SendError{Permanent: true, Unreachable: true, Code: "403", Reason: "Forbidden: bot can't initiate conversation with a user"}},
		{"error_400_chat_not_found.json", channels.SendError{Permanent: true, Code: "400", Reason: "Bad Request: chat not found"}},
		{"error_401_unauthorized.json", channels.SendError{Permanent: true, Code: "401", Reason: "Unauthorized"}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			f := newFake(t)
			f.fail("sendMessage", tt.fixture)
			_, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{To: "7712345678", Text: "hi"})
			var se *channels.SendError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *SendError", err)
			}
			if diff := cmp.Diff(tt.want, *se); diff != "" {
				t.Errorf("SendError (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendServerFailures(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   channels.SendError
	}{
		{"5xx envelope", 500, `{"ok":false,"error_code":500,"description":"Internal Server Error"}`,
			channels.SendError{Code: "500", Reason: "Internal Server Error"}},
		{"proxy page without envelope", 502, `<html>Bad Gateway</html>`,
			channels.SendError{Code: "502", Reason: "Bad Gateway (no Bot API envelope)"}},
		{"group migrated", 400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}`,
			channels.SendError{Permanent: true, Code: "400", Reason: "Bad Request: group chat was upgraded to a supergroup chat (group moved to chat -1001234567890)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.on("sendMessage", reply{status: tt.status, body: []byte(tt.body)})
			_, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{To: "7712345678", Text: "hi"})
			if diff := cmp.Diff(tt.want, *channels.AsSendError(err)); diff != "" {
				t.Errorf("SendError (-want +got):\n%s", diff)
			}
		})
	}
}

// A wrong token is answered 401 by the fake (as by Telegram): permanent.
func TestSendWrongToken(t *testing.T) {
	f := newFake(t)
	ch := testChannel()
	ch.Token = "6001234567:WRONGtoken_wrongtoken_wrongtoken_xx"
	_, err := f.adapter().Send(context.Background(), ch, channels.Outbound{To: "7712345678", Text: "hi"})
	se := channels.AsSendError(err)
	if !se.Permanent || se.Code != "401" {
		t.Errorf("SendError = %+v, want permanent 401", se)
	}
	if strings.Contains(err.Error(), ch.Token) {
		t.Errorf("error leaks the token: %v", err)
	}
}

func TestSendTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		f := newFake(t)
		a := f.adapter()
		f.srv.Close()
		_, err := a.Send(context.Background(), testChannel(), channels.Outbound{To: "7712345678", Text: "hi"})
		se := channels.AsSendError(err)
		if se.Permanent || se.Code != "TRANSPORT" {
			t.Errorf("SendError = %+v, want transient TRANSPORT", se)
		}
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("error leaks the token: %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) })
		a := New(channels.Config{TelegramBaseURL: srv.URL, HTTPTimeout: 50 * time.Millisecond})
		_, err := a.Send(context.Background(), testChannel(), channels.Outbound{To: "7712345678", Text: "hi"})
		se := channels.AsSendError(err)
		if se.Permanent || se.Code != "TRANSPORT" {
			t.Errorf("SendError = %+v, want transient TRANSPORT", se)
		}
		if strings.Contains(err.Error(), testToken) {
			t.Errorf("error leaks the token: %v", err)
		}
	})
}

func TestSendRefusesBeforeCalling(t *testing.T) {
	f := newFake(t)
	noToken := testChannel()
	noToken.Token = ""
	for name, tc := range map[string]struct {
		ch  channels.Channel
		out channels.Outbound
	}{
		"no recipient": {testChannel(), channels.Outbound{Text: "hi"}},
		"empty text":   {testChannel(), channels.Outbound{To: "1", Text: " \n "}},
		"no token":     {noToken, channels.Outbound{To: "1", Text: "hi"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.adapter().Send(context.Background(), tc.ch, tc.out)
			if se := channels.AsSendError(err); !se.Permanent {
				t.Errorf("SendError = %+v, want permanent", se)
			}
		})
	}
	if n := len(f.calls()); n != 0 {
		t.Errorf("%d calls reached Telegram", n)
	}
}

// sendMessageReplies answers n sendMessage calls with message ids 5000,
// 5001, … in the envelope Telegram uses.
func sendMessageReplies(n int) []reply {
	var rs []reply
	for i := range n {
		rs = append(rs, reply{status: 200, body: fmt.Appendf(nil,
			`{"ok":true,"result":{"message_id":%d,"chat":{"id":7712345678,"type":"private"},"date":1784621300,"text":"…"}}`, 5000+i)})
	}
	return rs
}

func TestSendLongTextIsSplit(t *testing.T) {
	f := newFake(t)
	f.on("sendMessage", sendMessageReplies(3)...)
	line := strings.Repeat("word ", 99) + "end\n"              // 499 chars per line
	text := strings.TrimSuffix(strings.Repeat(line, 20), "\n") // ~10,000 chars

	res, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{To: "7712345678", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessageID != "7712345678:5002" {
		t.Errorf("MessageID = %q, want the last part's 7712345678:5002", res.MessageID)
	}
	calls := f.calls()
	if len(calls) != 3 {
		t.Fatalf("%d sendMessage calls, want 3", len(calls))
	}
	var joined []string
	for _, c := range calls {
		part := c.Form["text"]
		if n := utf16Len(part); n > MaxTextLength {
			t.Errorf("part of %d units exceeds %d", n, MaxTextLength)
		}
		if !strings.HasPrefix(part, "word") || !strings.HasSuffix(part, "end") {
			t.Errorf("part not cut at a line break: %q…%q", part[:10], part[len(part)-10:])
		}
		joined = append(joined, part)
	}
	if strings.Join(joined, "\n") != text {
		t.Error("parts do not rebuild the text")
	}
}

func TestSendLongTextPartialFailureIsPermanent(t *testing.T) {
	f := newFake(t)
	body := fixture(t, "error_429_retry_after.json")
	f.on("sendMessage", append(sendMessageReplies(1), reply{status: 429, body: body})...)

	_, err := f.adapter().Send(context.Background(), testChannel(), channels.Outbound{
		To: "7712345678", Text: strings.Repeat("x", MaxTextLength+10),
	})
	se := channels.AsSendError(err)
	if !se.Permanent || se.RetryAfter != 0 || se.Code != "429" ||
		!strings.Contains(se.Reason, "only 1 of 2 parts were delivered, last 7712345678:5000") {
		t.Errorf("SendError = %+v, want permanent 429 naming the delivered part", se)
	}
	if n := len(f.calls()); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}
}

func TestSplitText(t *testing.T) {
	emoji := "😀" // two UTF-16 units
	tests := []struct {
		name  string
		in    string
		limit int
		want  []string
	}{
		{"fits", "hello", 5, []string{"hello"}},
		{"line break preferred", "ab cd\nef gh", 8, []string{"ab cd", "ef gh"}},
		{"space when no line break", "abc def ghi", 8, []string{"abc def", "ghi"}},
		{"hard cut", "abcdefghij", 4, []string{"abcd", "efgh", "ij"}},
		{"surrogate pair not split", "a" + emoji + emoji, 4, []string{"a" + emoji, emoji}},
		{"blank parts dropped", "abcd\n\n\n\nefgh", 4, []string{"abcd", "efgh"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := splitText(tt.in, tt.limit)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("splitText(%q, %d) (-want +got):\n%s", tt.in, tt.limit, diff)
			}
			for _, p := range got {
				if len(utf16.Encode([]rune(p))) > tt.limit {
					t.Errorf("part %q over the limit", p)
				}
			}
		})
	}
}

func methods(calls []request) []string {
	var ms []string
	for _, c := range calls {
		ms = append(ms, c.Method)
	}
	return ms
}
