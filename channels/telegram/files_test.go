package telegram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/parleydesk/parley/channels"
)

const docFileID = "BQACAgIAAxkBAAIQG2bNw1Rz9kPq0Jt8x2mVbL0cYt7sAAKnUAACq0VwSOQ1t0kFZ0bYNgQ"

func TestDownload(t *testing.T) {
	f := newFake(t)
	f.ok("getFile", "get_file_success.json")
	pdf := bytes.Repeat([]byte("%PDF"), 84213/4+1)[:84213] // get_file_success.json's file_size
	f.serveFile("documents/file_17.pdf", pdf)

	file, err := f.adapter().Download(context.Background(), testChannel(), docFileID)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Body.Close()
	data, err := io.ReadAll(file.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, pdf) {
		t.Errorf("downloaded %d bytes, want the served %d", len(data), len(pdf))
	}
	if file.Size != 84213 || file.MimeType != "application/pdf" || file.Name != "file_17.pdf" {
		t.Errorf("File = {Size %d, MimeType %q, Name %q}, want {84213, application/pdf, file_17.pdf}", file.Size, file.MimeType, file.Name)
	}
	calls := f.calls()
	if len(calls) != 1 || calls[0].Method != "getFile" || calls[0].Form["file_id"] != docFileID {
		t.Errorf("calls = %+v, want getFile(file_id=%s)", calls, docFileID)
	}
}

func TestDownloadTooBig(t *testing.T) {
	t.Run("declared by getFile", func(t *testing.T) {
		f := newFake(t)
		f.on("getFile", reply{status: 200, body: []byte(`{"ok":true,"result":{"file_id":"BIG","file_unique_id":"u","file_size":` +
			strconv.Itoa(MaxDownloadSize+1) + `,"file_path":"videos/file_1.mp4"}}`)})
		f.serveFile("videos/file_1.mp4", []byte("never fetched"))
		_, err := f.adapter().Download(context.Background(), testChannel(), "BIG")
		if !errors.Is(err, ErrFileTooBig) {
			t.Fatalf("err = %v, want ErrFileTooBig", err)
		}
	})
	t.Run("refused by getFile", func(t *testing.T) {
		f := newFake(t)
		f.on("getFile", reply{status: 400, body: []byte(`{"ok":false,"error_code":400,"description":"Bad Request: file is too big"}`)})
		_, err := f.adapter().Download(context.Background(), testChannel(), "BIG")
		if !errors.Is(err, ErrFileTooBig) {
			t.Fatalf("err = %v, want ErrFileTooBig", err)
		}
	})
	t.Run("body runs past the limit", func(t *testing.T) {
		body := &cappedBody{r: io.NopCloser(strings.NewReader("0123456789")), limit: 4}
		if _, err := io.ReadAll(body); !errors.Is(err, ErrFileTooBig) {
			t.Fatalf("err = %v, want ErrFileTooBig", err)
		}
		exact := &cappedBody{r: io.NopCloser(strings.NewReader("0123")), limit: 4}
		if data, err := io.ReadAll(exact); err != nil || string(data) != "0123" {
			t.Fatalf("ReadAll = %q, %v; want the whole body at exactly the limit", data, err)
		}
	})
}

func TestDownloadErrorsHideToken(t *testing.T) {
	t.Run("file missing on the file host", func(t *testing.T) {
		f := newFake(t)
		f.ok("getFile", "get_file_success.json") // no file served: 404
		_, err := f.adapter().Download(context.Background(), testChannel(), docFileID)
		if err == nil || !strings.Contains(err.Error(), "404") || strings.Contains(err.Error(), testToken) {
			t.Fatalf("err = %v, want an HTTP 404 error without the token", err)
		}
	})
	t.Run("file host drops the connection", func(t *testing.T) {
		// net/http quotes the full URL, token included, in *url.Error.
		getFile := fixture(t, "get_file_success.json")
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/file/") {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
			w.Write(getFile)
		}))
		t.Cleanup(srv.Close)
		a := New(channels.Config{TelegramBaseURL: srv.URL})
		_, err := a.Download(context.Background(), testChannel(), docFileID)
		if err == nil || strings.Contains(err.Error(), testToken) {
			t.Fatalf("err = %v, want an error without the token", err)
		}
		if !strings.Contains(err.Error(), "<token>") {
			t.Errorf("err = %v, want the URL kept with the token masked", err)
		}
	})
	t.Run("invalid file_id", func(t *testing.T) {
		f := newFake(t)
		f.on("getFile", reply{status: 400, body: []byte(`{"ok":false,"error_code":400,"description":"Bad Request: invalid file_id"}`)})
		_, err := f.adapter().Download(context.Background(), testChannel(), "nope")
		var apiErr *APIError
		if !errors.As(err, &apiErr) || apiErr.Code != 400 || apiErr.Method != "getFile" {
			t.Fatalf("err = %v, want APIError 400 from getFile", err)
		}
	})
}

func TestGuessMime(t *testing.T) {
	for _, tt := range []struct{ path, contentType, want string }{
		{"photos/file_1.jpg", "application/octet-stream", "image/jpeg"},
		{"voice/file_2.oga", "", "audio/ogg"},
		{"stickers/file_3.webp", "", "image/webp"},
		{"stickers/file_4.tgs", "", "application/x-tgsticker"},
		{"documents/file_5", "text/csv", "text/csv"},
		{"documents/file_6", "application/octet-stream", "application/octet-stream"},
	} {
		if got := guessMime(tt.path, tt.contentType); got != tt.want {
			t.Errorf("guessMime(%q, %q) = %q, want %q", tt.path, tt.contentType, got, tt.want)
		}
	}
}

func TestProfile(t *testing.T) {
	f := newFake(t)
	f.ok("getUserProfilePhotos", "get_user_profile_photos_success.json")
	p, err := f.adapter().Profile(context.Background(), testChannel(), "7712345678")
	if err != nil {
		t.Fatal(err)
	}
	want := channels.Profile{PhotoRef: "AgACAgIAAxUAAWbNxPa1profile640AAJ7yjEbq0VwSAEAAwIAA2MAAzYE"}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("Profile (-want +got):\n%s", diff)
	}
	calls := f.calls()
	if len(calls) != 1 || calls[0].Form["user_id"] != "7712345678" || calls[0].Form["limit"] != "1" {
		t.Errorf("calls = %+v, want getUserProfilePhotos(user_id=7712345678, limit=1)", calls)
	}
}

func TestProfileWithoutPhoto(t *testing.T) {
	f := newFake(t)
	f.on("getUserProfilePhotos", reply{status: 200, body: []byte(`{"ok":true,"result":{"total_count":0,"photos":[]}}`)})
	p, err := f.adapter().Profile(context.Background(), testChannel(), "7712345678")
	if err != nil || p != (channels.Profile{}) {
		t.Fatalf("Profile = %+v, %v; want empty, nil", p, err)
	}
}

func TestProfileGroupAndBadID(t *testing.T) {
	f := newFake(t)
	if p, err := f.adapter().Profile(context.Background(), testChannel(), "-1001234567890"); err != nil || p != (channels.Profile{}) {
		t.Errorf("group Profile = %+v, %v; want empty, nil", p, err)
	}
	if _, err := f.adapter().Profile(context.Background(), testChannel(), "olga_p"); err == nil {
		t.Error("non-numeric id accepted")
	}
	if n := len(f.calls()); n != 0 {
		t.Errorf("%d calls reached Telegram", n)
	}
}

func TestRegisterWebhook(t *testing.T) {
	f := newFake(t)
	f.ok("setWebhook", "set_webhook_success.json")

	var want struct {
		URL                string   `json:"url"`
		SecretToken        string   `json:"secret_token"`
		AllowedUpdates     []string `json:"allowed_updates"`
		MaxConnections     int      `json:"max_connections"`
		DropPendingUpdates bool     `json:"drop_pending_updates"`
	}
	if err := json.Unmarshal(fixture(t, "set_webhook_request.json"), &want); err != nil {
		t.Fatal(err)
	}
	ch := testChannel()
	ch.WebhookSecret = want.SecretToken
	if err := f.adapter().RegisterWebhook(context.Background(), ch, want.URL); err != nil {
		t.Fatal(err)
	}

	calls := f.calls()
	if len(calls) != 1 || calls[0].Method != "setWebhook" {
		t.Fatalf("calls = %v, want one setWebhook", methods(calls))
	}
	form := calls[0].Form
	var allowed []string
	if err := json.Unmarshal([]byte(form["allowed_updates"]), &allowed); err != nil {
		t.Fatalf("allowed_updates %q: %v", form["allowed_updates"], err)
	}
	if form["url"] != want.URL || form["secret_token"] != want.SecretToken || form["max_connections"] != strconv.Itoa(want.MaxConnections) {
		t.Errorf("setWebhook form = %v, want %+v", form, want)
	}
	if diff := cmp.Diff(want.AllowedUpdates, allowed); diff != "" {
		t.Errorf("allowed_updates (-want +got):\n%s", diff)
	}
	// drop_pending_updates=false is Telegram's default; absent means false.
	if v, ok := form["drop_pending_updates"]; ok && v != strconv.FormatBool(want.DropPendingUpdates) {
		t.Errorf("drop_pending_updates = %q, want %v", v, want.DropPendingUpdates)
	}
}

func TestRegisterWebhookRefusals(t *testing.T) {
	f := newFake(t)
	for name, secret := range map[string]string{
		"no secret":      "",
		"bad characters": "secret with spaces",
		"too long":       strings.Repeat("a", 257),
	} {
		ch := testChannel()
		ch.WebhookSecret = secret
		if err := f.adapter().RegisterWebhook(context.Background(), ch, "https://chat.example.com/hook"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := len(f.calls()); n != 0 {
		t.Errorf("%d calls reached Telegram", n)
	}

	f.fail("setWebhook", "error_401_unauthorized.json")
	err := f.adapter().RegisterWebhook(context.Background(), testChannel(), "https://chat.example.com/hook")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusUnauthorized {
		t.Errorf("err = %v, want APIError 401", err)
	}
}
