package app_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/ent/job"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// Files (R14, R24, R2): an operator's upload through a GraphQL multipart
// request is stored, sent to the provider with its bytes and served back at
// Attachment.url to those allowed to read the chat; contact photos are
// copied from the provider and served at Contact.photoUrl.

var (
	pngBytes = append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), bytes.Repeat([]byte{0x5a, 0x00, 0xa5}, 700)...)
	pdfBytes = append([]byte("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), bytes.Repeat([]byte("return form line\n"), 300)...)
)

const sendFileMutation = `mutation($chat: ID!, $text: String, $file: Upload) {
  sendMessage(chatId: $chat, text: $text, file: $file) { id ` + msgFields + ` }
}`

// sendFile sends a file (and text) through a multipart request.
func (r *rig) sendFile(t *testing.T, token string, chatID int, text, name, contentType string, data []byte) apptest.Response {
	t.Helper()
	vars := map[string]any{"chat": apptest.ID(chatID), "file": nil}
	if text != "" {
		vars["text"] = text
	}
	return r.s.DoMultipart(t, token, sendFileMutation, vars,
		apptest.Upload{Variable: "variables.file", Name: name, ContentType: contentType, Data: data})
}

type sentFile struct {
	ID string
	msgView
}

// storedFiles counts the files in the server's storage.
func storedFiles(t *testing.T, r *rig) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(r.s.App.Config.FilesDir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestR14_SendFiles: a photo goes by sendPhoto with its caption, a PDF by
// sendDocument, each with the uploaded bytes; the stored file is served to
// the chat's operator and supervisors, hidden from other operators while
// the chat is open (R24) and served to everyone once it is completed.
func TestR14_SendFiles(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	bob := r.addOperator(t, enum.RoleOperator)
	sup := r.s.CreateOperator(t, enum.RoleSupervisor)
	_, chatID := r.openChat(t, "TELEGRAM")
	r.run(t)

	var photo struct{ SendMessage sentFile }
	r.sendFile(t, r.op.Token, chatID, "Your replacement label", "label.png", "image/png", pngBytes).OK(t).Decode(t, &photo)
	p := photo.SendMessage
	if p.DeliveryStatus != "PENDING" || p.Kind != "PHOTO" || p.Text != "Your replacement label" || len(p.Attachments) != 1 {
		t.Fatalf("sendMessage with a photo = %+v", p)
	}
	pa := p.Attachments[0]
	if pa.Status != "STORED" || pa.Kind != "PHOTO" || str(pa.FileName) != "label.png" || str(pa.MimeType) != "image/png" ||
		pa.Size == nil || *pa.Size != len(pngBytes) || str(pa.URL) != "/files/"+pa.ID {
		t.Fatalf("photo attachment = %+v", pa)
	}

	var doc struct{ SendMessage sentFile }
	r.sendFile(t, r.op.Token, chatID, "", "return-form.pdf", "application/pdf", pdfBytes).OK(t).Decode(t, &doc)
	d := doc.SendMessage
	if d.Kind != "DOCUMENT" || len(d.Attachments) != 1 || d.Attachments[0].Status != "STORED" || str(d.Attachments[0].URL) == "" {
		t.Fatalf("sendMessage with a PDF = %+v", d)
	}
	if n := r.tg.Count("sendPhoto") + r.tg.Count("sendDocument"); n != 0 {
		t.Fatalf("the provider was called %d times before the outbox ran", n)
	}

	r.run(t)
	call := r.tg.Last(t, "sendPhoto")
	if f := call.Files["photo"]; call.Token != tgToken || call.Fields["chat_id"] != tgChatID || call.Fields["caption"] != "Your replacement label" ||
		f.Name != "label.png" || !bytes.Equal(f.Data, pngBytes) {
		t.Fatalf("sendPhoto fields %v, file %q (%d bytes)", call.Fields, f.Name, len(f.Data))
	}
	call = r.tg.Last(t, "sendDocument")
	if f := call.Files["document"]; call.Fields["chat_id"] != tgChatID || call.Fields["caption"] != "" ||
		f.Name != "return-form.pdf" || !bytes.Equal(f.Data, pdfBytes) {
		t.Fatalf("sendDocument fields %v, file %q (%d bytes)", call.Fields, f.Name, len(f.Data))
	}
	if n := r.tg.Count("sendMessage"); n != 0 {
		t.Fatalf("%d sendMessage calls: the caption went separately", n)
	}
	for _, c := range []struct {
		id   string
		want string
	}{{p.ID, tgChatID + ":4128"}, {d.ID, tgChatID + ":4129"}} {
		if m := r.message(t, r.op.Token, apptest.ParseID(t, c.id)); m.DeliveryStatus != "SENT" || str(m.ProviderMessageID) != c.want {
			t.Fatalf("message %s = %+v, want SENT as %s", c.id, m, c.want)
		}
	}

	url := str(pa.URL)
	status, h, body := r.s.GetFile(t, r.op.Token, url)
	if status != http.StatusOK || !bytes.Equal(body, pngBytes) || h.Get("Content-Type") != "image/png" ||
		!strings.Contains(h.Get("Content-Disposition"), `filename=label.png`) || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("GET %s by the owner = %d %v (%d bytes)", url, status, h, len(body))
	}
	if status, _, body := r.s.GetFile(t, r.op.Token, str(d.Attachments[0].URL)); status != http.StatusOK || !bytes.Equal(body, pdfBytes) {
		t.Fatalf("GET the PDF = %d (%d bytes)", status, len(body))
	}
	for _, c := range []struct {
		who    string
		token  string
		status int
	}{
		{"another operator", bob.Token, http.StatusNotFound},
		{"a supervisor", sup.Token, http.StatusOK},
		{"the administrator", r.admin, http.StatusOK},
		{"no credentials", "", http.StatusUnauthorized},
		{"a forged token", "not-a-session-token", http.StatusUnauthorized},
	} {
		status, _, body := r.s.GetFile(t, c.token, url)
		if status != c.status || (status == http.StatusOK) != bytes.Equal(body, pngBytes) {
			t.Errorf("GET %s by %s = %d (%d bytes), want %d", url, c.who, status, len(body), c.status)
		}
		if status != http.StatusOK && bytes.Contains(body, pngBytes[:8]) {
			t.Errorf("GET %s by %s leaked the file", url, c.who)
		}
	}
	for _, path := range []string{"/files/999999999", "/files/not-a-number", "/files/" + apptest.ID(chatID)} {
		if status, _, _ := r.s.GetFile(t, r.op.Token, path); status != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, status)
		}
	}

	// Bob may not send files into Alice's chat: refused before anything is
	// stored.
	before := storedFiles(t, r)
	r.sendFile(t, bob.Token, chatID, "", "x.png", "image/png", pngBytes).Expect(t, "NOT_CHAT_OWNER")
	if n := storedFiles(t, r); n != before {
		t.Errorf("a refused upload was stored: %d files, want %d", n, before)
	}

	// R24: once the chat is completed, every operator sees its files.
	r.complete(t, r.op, chatID)
	if status, _, body := r.s.GetFile(t, bob.Token, url); status != http.StatusOK || !bytes.Equal(body, pngBytes) {
		t.Fatalf("GET %s by another operator after completion = %d", url, status)
	}
	r.sendFile(t, r.op.Token, chatID, "", "late.png", "image/png", pngBytes).Expect(t, "CHAT_COMPLETED")
	if n := storedFiles(t, r); n != before {
		t.Errorf("a refused upload was stored: %d files, want %d", n, before)
	}
}

// TestR14_SendFileOnMetaChannels: WhatsApp uploads the file to /media and
// sends it by media id with its caption; Messenger uploads it with the
// message (multipart filedata) and sends the text after it.
func TestR14_SendFileOnMetaChannels(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	t.Run("WHATSAPP", func(t *testing.T) {
		r.graph.Script("POST /"+waPhoneID+"/media", apptest.JSONReply(http.StatusOK, []byte(`{"id":"1037543291543636"}`)))
		r.graph.Script("POST /"+waPhoneID+"/messages", apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "whatsapp", "send_text_success.json")))
		_, chatID := r.openChat(t, "WHATSAPP")
		var out struct{ SendMessage sentFile }
		r.sendFile(t, r.op.Token, chatID, "Your label", "label.png", "image/png", pngBytes).OK(t).Decode(t, &out)
		r.run(t)
		up := r.graph.Last(t, "POST /"+waPhoneID+"/media")
		if f := up.Files["file"]; up.Token != waToken || up.Fields["messaging_product"] != "whatsapp" || !bytes.Equal(f.Data, pngBytes) || f.ContentType != "image/png" {
			t.Fatalf("media upload fields %v file %q %q (%d bytes)", up.Fields, f.Name, f.ContentType, len(f.Data))
		}
		send := r.graph.Last(t, "POST /"+waPhoneID+"/messages")
		img, _ := send.JSON["image"].(map[string]any)
		if send.JSON["type"] != "image" || img["id"] != "1037543291543636" || img["caption"] != "Your label" || send.JSON["recipient"] != waBSUID {
			t.Fatalf("image send = %s", send.Body)
		}
		if m := r.message(t, r.op.Token, apptest.ParseID(t, out.SendMessage.ID)); m.DeliveryStatus != "SENT" {
			t.Fatalf("message = %+v", m)
		}
	})
	t.Run("MESSENGER", func(t *testing.T) {
		key := "POST /" + fbPageID + "/messages"
		r.graph.Script(key,
			apptest.JSONReply(http.StatusOK, []byte(`{"recipient_id":"`+fbPSID+`","message_id":"m_file_1"}`)),
			apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "messenger", "send_text_success.json")))
		_, chatID := r.openChat(t, "MESSENGER")
		var out struct{ SendMessage sentFile }
		r.sendFile(t, r.op.Token, chatID, "Your label", "label.png", "image/png", pngBytes).OK(t).Decode(t, &out)
		r.run(t)
		calls := r.graph.Calls(key)
		if len(calls) != 2 {
			t.Fatalf("%d Send API calls, want the file then the text", len(calls))
		}
		var recipient map[string]any
		_ = json.Unmarshal([]byte(calls[0].Fields["recipient"]), &recipient)
		if f := calls[0].Files["filedata"]; recipient["id"] != fbPSID || !bytes.Equal(f.Data, pngBytes) || !strings.Contains(calls[0].Fields["message"], `"image"`) {
			t.Fatalf("file send fields %v (%d bytes)", calls[0].Fields, len(f.Data))
		}
		if msg, _ := calls[1].JSON["message"].(map[string]any); msg["text"] != "Your label" {
			t.Fatalf("text send = %s", calls[1].Body)
		}
		if m := r.message(t, r.op.Token, apptest.ParseID(t, out.SendMessage.ID)); m.DeliveryStatus != "SENT" {
			t.Fatalf("message = %+v", m)
		}

		// The file goes out, then the text meets a transient error: a
		// retry of the whole message would show the customer the file
		// twice (at most once, as Telegram's multi-part sends do).
		t.Run("text fails after the file", func(t *testing.T) {
			base := r.graph.Count(key)
			r.graph.Script(key,
				apptest.JSONReply(http.StatusOK, []byte(`{"recipient_id":"`+fbPSID+`","message_id":"m_file_2"}`)),
				apptest.JSONReply(http.StatusInternalServerError, []byte(`{"error":{"message":"An unexpected error has occurred. Please retry your request later.","type":"OAuthException","code":2,"is_transient":true,"fbtrace_id":"Fk3"}}`)),
				apptest.JSONReply(http.StatusOK, []byte(`{"recipient_id":"`+fbPSID+`","message_id":"m_later"}`)))
			r.sendFile(t, r.op.Token, chatID, "Second label", "label2.png", "image/png", pngBytes).OK(t).Decode(t, &out)
			r.run(t)
			for range 3 {
				r.advance(t, time.Hour)
			}
			files := 0
			for _, c := range r.graph.Calls(key)[base:] {
				if _, ok := c.Files["filedata"]; ok {
					files++
				}
			}
			if files != 1 {
				t.Errorf("the file was sent %d times, want once", files)
			}
			if m := r.message(t, r.op.Token, apptest.ParseID(t, out.SendMessage.ID)); m.DeliveryStatus != "FAILED" {
				t.Errorf("message = %+v, want FAILED (part of it was delivered)", m)
			}
		})
	})
}

// TestR2_ContactPhoto: a new Telegram contact's photo is fetched by the
// FETCH_PROFILE job (getUserProfilePhotos, getFile of the largest size,
// download from the file host), stored, and served at Contact.photoUrl to
// authenticated callers. An inbound photo is copied the same way (DOWNLOAD)
// and served at its Attachment.url.
func TestR2_ContactPhoto(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	avatar := append([]byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), bytes.Repeat([]byte("avatar"), 500)...)
	inboundPhoto := append([]byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), bytes.Repeat([]byte("inbound"), 500)...)
	r.tg.Script("getUserProfilePhotos", apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "telegram", "get_user_profile_photos_success.json")))
	// getFile answers each file id with a path on the file host.
	paths := map[string]string{
		"AgACAgIAAxUAAWbNxPa1profile640AAJ7yjEbq0VwSAEAAwIAA2MAAzYE":                "photos/file_7.jpg",
		"AgACAgIAAxkBAAIQGmbNw0Xk1aQfZ9r2s3_big1280AJ4yjEbq0VwSJ7n1pYAAQMAA3kAAzYE": "photos/file_8.jpg",
	}
	var getFile map[string]any
	if err := json.Unmarshal(apptest.Fixture(t, "telegram", "get_file_success.json"), &getFile); err != nil {
		t.Fatal(err)
	}
	r.tg.Script("getFile", apptest.Reply{Handler: func(w http.ResponseWriter, req *http.Request) {
		id := req.FormValue("file_id")
		res := getFile["result"].(map[string]any)
		out := map[string]any{"ok": true, "result": map[string]any{"file_id": id, "file_unique_id": res["file_unique_id"], "file_path": paths[id]}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}})
	r.tg.Script("file/photos/file_7.jpg", apptest.Reply{Header: http.Header{"Content-Type": {"image/jpeg"}}, Body: avatar})
	r.tg.Script("file/photos/file_8.jpg", apptest.Reply{Header: http.Header{"Content-Type": {"image/jpeg"}}, Body: inboundPhoto})

	tg := r.channel(t, "TELEGRAM", nil)
	r.deliver(t, "TELEGRAM", tg, "inbound_text.json")
	chatID := r.lastChat(t, tg).ID
	r.accept(t, r.op, chatID)
	var before struct {
		Node struct{ Contact struct{ PhotoURL *string } }
	}
	r.s.Do(t, r.op.Token, `query($id: ID!) { node(id: $id) { ... on Chat { contact { photoUrl } } } }`,
		map[string]any{"id": apptest.ID(chatID)}).OK(t).Decode(t, &before)
	if before.Node.Contact.PhotoURL != nil {
		t.Fatalf("photoUrl before the profile was fetched = %q", *before.Node.Contact.PhotoURL)
	}
	r.run(t)

	if c := r.tg.Last(t, "getUserProfilePhotos"); c.Fields["user_id"] != tgChatID {
		t.Fatalf("getUserProfilePhotos fields %v", c.Fields)
	}
	if c := r.tg.Last(t, "getFile"); c.Fields["file_id"] != "AgACAgIAAxUAAWbNxPa1profile640AAJ7yjEbq0VwSAEAAwIAA2MAAzYE" {
		t.Fatalf("getFile of %q, want the largest size of the newest photo", c.Fields["file_id"])
	}
	if c := r.tg.Last(t, "file/photos/file_7.jpg"); c.Token != tgToken {
		t.Fatalf("file download with token %q", c.Token)
	}
	var after struct {
		Node struct {
			Contact struct {
				ID       string
				PhotoURL *string
			}
		}
	}
	r.s.Do(t, r.op.Token, `query($id: ID!) { node(id: $id) { ... on Chat { contact { id photoUrl } } } }`,
		map[string]any{"id": apptest.ID(chatID)}).OK(t).Decode(t, &after)
	url := str(after.Node.Contact.PhotoURL)
	if url != "/files/contacts/"+after.Node.Contact.ID+"/photo" {
		t.Fatalf("photoUrl = %q", url)
	}
	other := r.s.CreateOperator(t, enum.RoleOperator)
	for _, token := range []string{r.op.Token, other.Token} {
		status, h, body := r.s.GetFile(t, token, url)
		if status != http.StatusOK || !bytes.Equal(body, avatar) || !strings.HasPrefix(h.Get("Content-Type"), "image/") {
			t.Fatalf("GET %s = %d %q (%d bytes)", url, status, h.Get("Content-Type"), len(body))
		}
	}
	if status, _, body := r.s.GetFile(t, "", url); status != http.StatusUnauthorized || bytes.Contains(body, avatar[:8]) {
		t.Fatalf("GET %s without credentials = %d", url, status)
	}
	if status, _, _ := r.s.GetFile(t, r.op.Token, "/files/contacts/999999999/photo"); status != http.StatusNotFound {
		t.Fatalf("GET the photo of an unknown contact = %d", status)
	}
	// The token in the file host's URL never reaches a client.
	if strings.Contains(url, tgToken) {
		t.Fatal("photoUrl shows the bot token")
	}
	// Profiles are fetched once, for new contacts.
	r.advance(t, time.Hour)
	if n := r.tg.Count("getUserProfilePhotos"); n != 1 {
		t.Fatalf("%d profile fetches, want 1", n)
	}

	// An inbound photo is copied into storage and served to the owner.
	r.deliver(t, "TELEGRAM", tg, "inbound_photo.json")
	var msgs struct {
		Node struct {
			Messages struct {
				Edges []struct{ Node msgView }
			}
		}
	}
	query := `query($id: ID!) { node(id: $id) { ... on Chat { messages(first: 10) { edges { node { ` + msgFields + ` } } } } } }`
	r.s.Do(t, r.op.Token, query, map[string]any{"id": apptest.ID(chatID)}).OK(t).Decode(t, &msgs)
	last := msgs.Node.Messages.Edges[len(msgs.Node.Messages.Edges)-1].Node
	if last.Kind != "PHOTO" || len(last.Attachments) != 1 || last.Attachments[0].Status != "PENDING" || last.Attachments[0].URL != nil {
		t.Fatalf("inbound photo before its download = %+v", last)
	}
	r.run(t)
	r.s.Do(t, r.op.Token, query, map[string]any{"id": apptest.ID(chatID)}).OK(t).Decode(t, &msgs)
	last = msgs.Node.Messages.Edges[len(msgs.Node.Messages.Edges)-1].Node
	if len(last.Attachments) != 1 || last.Attachments[0].Status != "STORED" || last.Attachments[0].URL == nil {
		t.Fatalf("inbound photo after its download = %+v", last)
	}
	if status, _, body := r.s.GetFile(t, r.op.Token, *last.Attachments[0].URL); status != http.StatusOK || !bytes.Equal(body, inboundPhoto) {
		t.Fatalf("GET the inbound photo = %d (%d bytes)", status, len(body))
	}
	if status, _, _ := r.s.GetFile(t, other.Token, *last.Attachments[0].URL); status != http.StatusNotFound {
		t.Fatalf("GET the inbound photo by another operator = %d, want 404 (R24)", status)
	}
}

// TestR2_AFetchedProfileFillsOnlyWhatTheContactLacks: the FETCH_PROFILE job
// of a new Messenger contact fills the contact's empty fields from the
// profile, and keeps what was set meanwhile: a name an operator gave the
// contact before the job ran stays; the photo, which the contact lacked, is
// stored.
func TestR2_AFetchedProfileFillsOnlyWhatTheContactLacks(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	fb := r.channel(t, "MESSENGER", nil)
	r.deliver(t, "MESSENGER", fb, "inbound_text.json")
	contactID := r.lastChat(t, fb).ContactID
	r.s.Do(t, r.op.Token, `mutation($id: ID!) { updateContact(id: $id, input: {name: "Pete (VIP)"}) { id } }`,
		map[string]any{"id": apptest.ID(contactID)}).OK(t)
	r.run(t)
	c, err := r.s.Client().Contact.Get(bg, contactID)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "Pete (VIP)" || c.PhotoKey == "" {
		t.Fatalf("contact after the profile job: name %q, photo %q; want the operator's name kept and the photo stored", c.Name, c.PhotoKey)
	}
	if n, err := r.s.Client().Job.Query().Where(job.KindEQ("FETCH_PROFILE"), job.StatusEQ(enum.JobDone)).Count(bg); err != nil || n != 1 {
		t.Fatalf("FETCH_PROFILE jobs done: %d (%v), want 1", n, err)
	}
}
