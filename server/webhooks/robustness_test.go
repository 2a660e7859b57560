package webhooks_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// R3: a delivery is acknowledged once stored, or refused; an event in it
// that cannot be stored (no sender, ids longer than the database takes, a
// NUL character PostgreSQL refuses) is skipped, never answered 5xx: the
// provider would redeliver the whole batch for days (Meta: 7) and the good
// events in it would never be stored.
// Its customers are others than the fixtures' (see TestEdgeCases).
func testUnusableEvents(t *testing.T, e *env) {
	const (
		bsuid = "US.10000000000000000001"
		phone = "15550001111"
		psid  = "1000000000000001"
	)
	waBody := func(messages ...map[string]any) []byte {
		b, _ := json.Marshal(map[string]any{"object": "whatsapp_business_account", "entry": []any{map[string]any{
			"id": "102938475610293", "changes": []any{map[string]any{"field": "messages", "value": map[string]any{
				"messaging_product": "whatsapp",
				"metadata":          map[string]any{"display_phone_number": "15550783881", "phone_number_id": waPhoneNumberID},
				"contacts":          []any{map[string]any{"profile": map[string]any{"name": "Sheena Nelson"}, "wa_id": phone, "user_id": bsuid}},
				"messages":          messages,
			}}}}}})
		return b
	}
	waText := func(id, from, fromUserID, text string) map[string]any {
		m := map[string]any{"id": id, "timestamp": "1784620800", "type": "text", "text": map[string]any{"body": text}}
		if from != "" {
			m["from"] = from
		}
		if fromUserID != "" {
			m["from_user_id"] = fromUserID
		}
		return m
	}
	fbBody := func(events ...map[string]any) []byte {
		b, _ := json.Marshal(map[string]any{"object": "page", "entry": []any{map[string]any{
			"id": fbPageID, "time": 1784620800123, "messaging": events}}})
		return b
	}
	post := func(t *testing.T, prov string, body []byte) {
		t.Helper()
		r := e.request(t, http.MethodPost, e.Paths[prov], body, "X-Hub-Signature-256", sign(body, metaAppSecret))
		if r.Status != http.StatusOK {
			t.Fatalf("status %d %q, want 200", r.Status, r.Body)
		}
	}
	wantTexts := func(t *testing.T, prov string, ids ...string) {
		t.Helper()
		for _, id := range ids {
			e.message(t, e.Channels[prov], id)
		}
	}
	noMessage := func(t *testing.T, prov, id string) {
		t.Helper()
		if n := e.Client().Message.Query().Where(message.ChannelID(e.Channels[prov].ID), message.ProviderMessageID(id)).CountX(bg); n != 0 {
			t.Errorf("message %q stored %d times, want never", id, n)
		}
	}

	t.Run("whatsapp message without a sender", func(t *testing.T) {
		post(t, "whatsapp", waBody(
			waText("wamid.good-1", phone, bsuid, "first"),
			waText("wamid.nobody", "", "", "from nobody"),
			waText("wamid.good-2", phone, bsuid, "second")))
		wantTexts(t, "whatsapp", "wamid.good-1", "wamid.good-2")
		noMessage(t, "whatsapp", "wamid.nobody")
	})
	t.Run("whatsapp ids longer than the database takes", func(t *testing.T) {
		long := "wamid." + strings.Repeat("A", 400)
		post(t, "whatsapp", waBody(
			waText(long, phone, bsuid, "a long id"),
			waText("wamid.long-sender", "", "US."+strings.Repeat("9", 300), "a long BSUID"),
			waText("wamid.good-3", phone, bsuid, "third")))
		wantTexts(t, "whatsapp", "wamid.good-3")
		noMessage(t, "whatsapp", long)
		noMessage(t, "whatsapp", "wamid.long-sender")
	})
	t.Run("messenger message without a sender, echo without a mid", func(t *testing.T) {
		page := map[string]any{"id": fbPageID}
		post(t, "messenger", fbBody(
			map[string]any{"recipient": page, "timestamp": 1784620800001, "message": map[string]any{"mid": "m_nobody", "text": "from nobody"}},
			map[string]any{"sender": map[string]any{"id": psid}, "recipient": page, "timestamp": 1784620800002,
				"message": map[string]any{"mid": "m_good", "text": "hello"}},
			map[string]any{"sender": page, "recipient": map[string]any{"id": psid}, "timestamp": 1784620800003,
				"message": map[string]any{"is_echo": true, "app_id": 1, "text": "echo without mid"}},
			map[string]any{"sender": page, "recipient": map[string]any{"id": psid}, "timestamp": 1784620800004,
				"message": map[string]any{"is_echo": true, "app_id": 1, "text": "another echo without mid"}}))
		wantTexts(t, "messenger", "m_good")
		noMessage(t, "messenger", "m_nobody")
		if n := e.Client().Message.Query().Where(message.ChannelID(e.Channels["messenger"].ID), message.TextContains("echo without mid")).CountX(bg); n != 0 {
			t.Errorf("%d echoes without a mid stored, want none", n)
		}
	})
}

// A NUL character (JSON \u0000) is stored on SQLite but refused by
// PostgreSQL in text and jsonb columns: the desk drops it, so a delivery
// behaves the same on both databases.
func testNULCharacters(t *testing.T, e *env) {
	tg := func(t *testing.T, body string) {
		t.Helper()
		r := e.request(t, http.MethodPost, e.Paths["telegram"], []byte(body), "X-Telegram-Bot-Api-Secret-Token", tgWebhookSecret)
		if r.Status != http.StatusOK {
			t.Fatalf("status %d %q, want 200", r.Status, r.Body)
		}
	}
	tg(t, `{"update_id":1,"message":{"message_id":1,"chat":{"id":42,"type":"private","first_name":"Ol\u0000ga","username":"o\u0000"},"date":1,"text":"a\u0000b"}}`)
	m := e.message(t, e.Channels["telegram"], "42:1")
	id := e.identity(t, enum.ProviderTelegram, "42")
	if m.Text != "ab" || id.DisplayName != "Olga" || id.Edges.Contact.Name != "Olga" || id.Username != "o" {
		t.Errorf("text %q, identity %q %q, contact %q; want ab, Olga o, Olga", m.Text, id.DisplayName, id.Username, id.Edges.Contact.Name)
	}
	tg(t, `{"update_id":2,"message":{"message_id":2,"chat":{"id":42,"type":"private","first_name":"Olga"},"date":1,"sticker":{"file_id":"F\u0000","file_unique_id":"u","width":1,"height":1,"emoji":"\u0000👍"}}}`)
	m = e.message(t, e.Channels["telegram"], "42:2")
	if m.Content["emoji"] != "👍" || len(m.Edges.Attachments) != 1 || m.Edges.Attachments[0].ProviderFileID != "F" {
		t.Errorf("sticker: content %v, attachments %v", m.Content, m.Edges.Attachments)
	}
	tg(t, `{"update_id":3,"edited_message":{"message_id":1,"chat":{"id":42,"type":"private","first_name":"Olga"},"date":1,"edit_date":2,"text":"a\u0000bc"}}`)
	if m = e.message(t, e.Channels["telegram"], "42:1"); m.Text != "abc" {
		t.Errorf("edited text %q, want abc", m.Text)
	}
}
