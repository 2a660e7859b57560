package whatsapp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

const (
	phoneNumberID = "110293847561029"
	bsuid         = "US.13491208655302741918"
	waID          = "16505551234"
	outboundWamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QjBFM0Q2QzQyMDlFNkE3RTkA"
)

var sheena = channels.Identity{ExternalID: bsuid, Name: "Sheena Nelson", Phone: waID}

func at(sec int64) time.Time { return time.Unix(sec, 0).UTC() }

// expected holds the normalised updates of every webhook fixture.
var expected = map[string][]channels.Update{
	"inbound_text.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUY0RTk2QkQ5QTlGQzc0MUI2NgA=",
		Time:        at(1784620800),
		MessageKind: channels.KindText, Text: "Hi, is my order A-1042 shipped?",
	}},
	"inbound_text_username_no_phone.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID,
		Sender:      channels.Identity{ExternalID: bsuid, Name: "Sheena", Username: "@sheena.n"},
		MessageID:   "wamid.HBgRVVMuMTM0OTEyMDg2NTUzMDI3NDE5MTgVAgASGBQzQTk5QzA3QjM1MzhFQjlBRDgxQQA=",
		Time:        at(1784620830),
		MessageKind: channels.KindText, Text: "Sent from a username-only account",
	}},
	"inbound_image.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTJFNjBDN0Y4QjE5RjRDMDk3MgA=",
		Time:        at(1784620860),
		MessageKind: channels.KindPhoto, Text: "The box arrived damaged",
		Attachments: []channels.Attachment{{Kind: channels.KindPhoto, Ref: "1013859600285441", MimeType: "image/jpeg"}},
	}},
	"inbound_document.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQThDNTU0N0M3MjE1QjM0MjBCRQA=",
		Time:        at(1784620920),
		MessageKind: channels.KindDocument, Text: "Invoice",
		Attachments: []channels.Attachment{{Kind: channels.KindDocument, Ref: "2093847561203948", FileName: "invoice-A-1042.pdf", MimeType: "application/pdf"}},
	}},
	"inbound_audio_voice.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTc3QkQ2RjZFMUQ4MkQzQjE5OAA=",
		Time:        at(1784620980),
		MessageKind: channels.KindVoice,
		Attachments: []channels.Attachment{{Kind: channels.KindVoice, Ref: "1002764438271669", MimeType: "audio/ogg; codecs=opus"}},
	}},
	"inbound_location.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTFGNDlCNUU0M0Q4RjA2NkVFNQA=",
		Time:        at(1784621040),
		MessageKind: channels.KindLocation,
		Content: map[string]any{"latitude": 37.4847483, "longitude": -122.1473105,
			"name": "Acme Pickup Point", "address": "1 Hacker Way, Menlo Park, CA 94025"},
	}},
	"inbound_interactive_button_reply.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUJFNTQ2QTYwRDE1QjQ0OUVDNQA=",
		Time:        at(1784621100),
		MessageKind: channels.KindInteractive, Text: "Talk to an agent",
		Content: map[string]any{"type": "button_reply", "id": "talk_to_agent", "title": "Talk to an agent"},
	}},
	"inbound_reaction.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTQ0QjlGQjA5RTM1Qzk5MjBFMQA=",
		Time:        at(1784621130),
		MessageKind: channels.KindReaction,
		Content:     map[string]any{"messageId": outboundWamid, "emoji": "\U0001F44D"},
	}},
	"inbound_unsupported.json": {{
		Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena,
		MessageID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUQ0RkE1QkIwNzY0MzJBQjgzRQA=",
		Time:        at(1784621160),
		MessageKind: channels.KindUnsupported,
		Content:     map[string]any{"type": "edit", "code": "131051", "title": "Message type unknown"},
	}},
	"status_sent.json": {{
		Kind: channels.UpdateStatus, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: waID},
		MessageID: outboundWamid, Time: at(1784621201), Status: channels.StatusSent,
	}},
	"status_delivered.json": {{
		Kind: channels.UpdateStatus, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: waID},
		MessageID: outboundWamid, Time: at(1784621203), Status: channels.StatusDelivered,
	}},
	"status_read.json": {{
		Kind: channels.UpdateStatus, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: waID},
		MessageID: outboundWamid, Time: at(1784621260), Status: channels.StatusRead,
	}},
	"status_failed_131047.json": {{
		Kind: channels.UpdateStatus, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: waID},
		MessageID: "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBIxQzJCNDY2NUQ3RjhFOUEwQjEA", Time: at(1784707700),
		Status: channels.StatusFailed, ErrorCode: "131047",
		ErrorTitle: "Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
	}},
}

func sameUpdates(t *testing.T, name string, got, want []channels.Update) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d updates, want %d:\n got %+v", name, len(got), len(want), got)
		return
	}
	for i := range want {
		// A wanted Reason ending in "*" matches any decoder message.
		if prefix, ok := strings.CutSuffix(want[i].Reason, "*"); ok && strings.HasPrefix(got[i].Reason, prefix) {
			got[i].Reason = want[i].Reason
		}
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("%s: update %d\n got %+v\nwant %+v", name, i, got[i], want[i])
		}
	}
}

func TestParseEveryWebhookFixture(t *testing.T) {
	a := New(channels.Config{})
	names := metagraphtest.WebhookFixtures(t, "whatsapp")
	if len(names) == 0 {
		t.Fatal("no webhook fixture found")
	}
	for _, name := range names {
		want, ok := expected[name]
		if !ok {
			t.Errorf("webhook fixture %s has no expected updates: add them", name)
			continue
		}
		body := metagraphtest.Fixture(t, "whatsapp", name)
		d, err := a.Parse(channels.Channel{Provider: channels.WhatsApp, ExternalID: phoneNumberID}, body)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if d.Key != metagraph.BodyKey(body) || len(d.Key) != 64 {
			t.Errorf("%s: key %q, want the hex sha256 of the body", name, d.Key)
		}
		sameUpdates(t, name, d.Updates, want)
	}
	for name := range expected {
		if !slices.Contains(names, name) {
			t.Errorf("expected updates for %s, which is not a webhook fixture", name)
		}
	}
}

func TestSignaturesOfEveryWebhookFixture(t *testing.T) {
	sigs, secret := metagraphtest.Signatures(t, "whatsapp")
	if secret != "test_app_secret" {
		t.Fatalf("app secret %q", secret)
	}
	var signed []string
	for name, sig := range sigs {
		signed = append(signed, name)
		body := metagraphtest.Fixture(t, "whatsapp", name)
		if !channels.VerifyMetaSignature(sig, body, secret) {
			t.Errorf("%s: the signature is refused", name)
		}
		changed := slices.Clone(body)
		changed[len(changed)/2] ^= 1
		if channels.VerifyMetaSignature(sig, changed, secret) {
			t.Errorf("%s: a changed byte is accepted", name)
		}
		if channels.VerifyMetaSignature(sig, body, "other_secret") {
			t.Errorf("%s: another secret is accepted", name)
		}
	}
	sort.Strings(signed)
	if want := metagraphtest.WebhookFixtures(t, "whatsapp"); !slices.Equal(signed, want) {
		t.Errorf("signed fixtures %v, webhook fixtures %v", signed, want)
	}
}

func TestMetaChallenge(t *testing.T) {
	var req struct {
		Query    map[string]string `json:"query"`
		Expected struct {
			Status int    `json:"status"`
			Body   string `json:"body"`
		} `json:"expected_response"`
	}
	if err := json.Unmarshal(metagraphtest.Fixture(t, "whatsapp", "verify_request.json"), &req); err != nil {
		t.Fatal(err)
	}
	q := url.Values{}
	for k, v := range req.Query {
		q.Set(k, v)
	}
	token := req.Query["hub.verify_token"]
	if got, ok := channels.MetaChallenge(q, token); !ok || got != req.Expected.Body {
		t.Errorf("challenge = %q, %v; want %q", got, ok, req.Expected.Body)
	}
	if _, ok := channels.MetaChallenge(q, token+"x"); ok {
		t.Error("a wrong verify token is accepted")
	}
	q.Set("hub.mode", "unsubscribe")
	if _, ok := channels.MetaChallenge(q, token); ok {
		t.Error("a mode other than subscribe is accepted")
	}
}

// batch builds a webhook body from entries of changes of values.
func batch(t *testing.T, entries ...[]map[string]any) []byte {
	t.Helper()
	var es []any
	for i, changes := range entries {
		var cs []any
		for _, v := range changes {
			cs = append(cs, map[string]any{"field": "messages", "value": v})
		}
		es = append(es, map[string]any{"id": fmt.Sprint("waba", i), "changes": cs})
	}
	b, err := json.Marshal(map[string]any{"object": "whatsapp_business_account", "entry": es})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func changeValue(phoneID string, contacts []any, messages []any, statuses []any) map[string]any {
	v := map[string]any{
		"messaging_product": "whatsapp",
		"metadata":          map[string]any{"display_phone_number": "15550000000", "phone_number_id": phoneID},
	}
	if contacts != nil {
		v["contacts"] = contacts
	}
	if messages != nil {
		v["messages"] = messages
	}
	if statuses != nil {
		v["statuses"] = statuses
	}
	return v
}

func waContact(name, wa, user string) map[string]any {
	return map[string]any{"profile": map[string]any{"name": name}, "wa_id": wa, "user_id": user}
}

func textMsg(id, wa, user, text string) map[string]any {
	return map[string]any{"from": wa, "from_user_id": user, "id": id, "timestamp": "1784620800", "type": "text", "text": map[string]any{"body": text}}
}

func statusOf(id, st string) map[string]any {
	return map[string]any{"id": id, "status": st, "timestamp": "1784620900", "recipient_id": "111"}
}

func TestParseBatchKeepsEveryUpdateInOrder(t *testing.T) {
	body := batch(t,
		[]map[string]any{
			changeValue("P1",
				[]any{waContact("Ann", "111", "US.1"), waContact("Bob", "222", "US.2")},
				[]any{textMsg("m1", "111", "US.1", "one"), textMsg("m2", "222", "US.2", "two"), textMsg("m3", "111", "US.1", "three")},
				nil),
			changeValue("P1", nil, nil, []any{statusOf("s1", "sent"), statusOf("s2", "delivered"), statusOf("s3", "read")}),
		},
		[]map[string]any{
			changeValue("P2", nil, nil, []any{statusOf("s4", "failed"), statusOf("s5", "played")}),
			changeValue("P2",
				[]any{waContact("Cid", "333", "US.3")},
				[]any{textMsg("m4", "333", "US.3", "four"), textMsg("m5", "333", "US.3", "five")},
				[]any{statusOf("s6", "delivered")}),
		},
	)
	d, err := New(channels.Config{}).Parse(channels.Channel{}, body)
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ kind, id, account, who, what string }
	var got []row
	for _, u := range d.Updates {
		got = append(got, row{string(u.Kind), u.MessageID, u.AccountRef, u.Sender.Name, u.Text + u.Status})
	}
	want := []row{
		{"MESSAGE", "m1", "P1", "Ann", "one"},
		{"MESSAGE", "m2", "P1", "Bob", "two"},
		{"MESSAGE", "m3", "P1", "Ann", "three"},
		{"STATUS", "s1", "P1", "", "SENT"},
		{"STATUS", "s2", "P1", "", "DELIVERED"},
		{"STATUS", "s3", "P1", "", "READ"},
		{"STATUS", "s4", "P2", "", "FAILED"},
		{"STATUS", "s5", "P2", "", "READ"},
		{"MESSAGE", "m4", "P2", "Cid", "four"},
		{"MESSAGE", "m5", "P2", "Cid", "five"},
		{"STATUS", "s6", "P2", "", "DELIVERED"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("updates\n got %v\nwant %v", got, want)
	}
}

// TestParseOtherShapes covers the kinds the fixtures lack.
func TestParseOtherShapes(t *testing.T) {
	contacts := []any{waContact("Sheena Nelson", waID, bsuid)}
	msg := func(typ string, part any) map[string]any {
		m := map[string]any{"from": waID, "from_user_id": bsuid, "id": "wamid.X", "timestamp": "1784620800", "type": typ}
		if part != nil {
			m[typ] = part
		}
		return m
	}
	base := channels.Update{Kind: channels.UpdateMessage, AccountRef: phoneNumberID, Sender: sheena, MessageID: "wamid.X", Time: at(1784620800)}
	with := func(f func(u *channels.Update)) channels.Update {
		u := base
		f(&u)
		return u
	}
	cases := []struct {
		name string
		msg  map[string]any
		want channels.Update
	}{
		{"audio", msg("audio", map[string]any{"id": "A1", "mime_type": "audio/mpeg"}), with(func(u *channels.Update) {
			u.MessageKind = channels.KindAudio
			u.Attachments = []channels.Attachment{{Kind: channels.KindAudio, Ref: "A1", MimeType: "audio/mpeg"}}
		})},
		{"video", msg("video", map[string]any{"id": "V1", "mime_type": "video/mp4", "caption": "look"}), with(func(u *channels.Update) {
			u.MessageKind, u.Text = channels.KindVideo, "look"
			u.Attachments = []channels.Attachment{{Kind: channels.KindVideo, Ref: "V1", MimeType: "video/mp4"}}
		})},
		{"sticker", msg("sticker", map[string]any{"id": "S1", "mime_type": "image/webp", "animated": true}), with(func(u *channels.Update) {
			u.MessageKind = channels.KindSticker
			u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: "S1", MimeType: "image/webp"}}
			u.Content = map[string]any{"animated": true}
		})},
		{"list reply", msg("interactive", map[string]any{"type": "list_reply", "list_reply": map[string]any{"id": "r1", "title": "Returns", "description": "Send it back"}}), with(func(u *channels.Update) {
			u.MessageKind, u.Text = channels.KindInteractive, "Returns"
			u.Content = map[string]any{"type": "list_reply", "id": "r1", "title": "Returns", "description": "Send it back"}
		})},
		{"template button", msg("button", map[string]any{"payload": "STOP", "text": "Stop promotions"}), with(func(u *channels.Update) {
			u.MessageKind, u.Text = channels.KindInteractive, "Stop promotions"
			u.Content = map[string]any{"type": "button", "id": "STOP", "title": "Stop promotions"}
		})},
		{"contacts", msg("contacts", []any{map[string]any{"name": map[string]any{"formatted_name": "Ann Lee"}, "phones": []any{map[string]any{"phone": "+1 555"}}}}), with(func(u *channels.Update) {
			u.MessageKind, u.Text = channels.KindContact, "Ann Lee"
			u.Content = map[string]any{"contacts": []any{map[string]any{"name": map[string]any{"formatted_name": "Ann Lee"}, "phones": []any{map[string]any{"phone": "+1 555"}}}}}
		})},
		{"unknown type", msg("order", map[string]any{"catalog_id": "c"}), with(func(u *channels.Update) {
			u.MessageKind = channels.KindUnsupported
			u.Content = map[string]any{"type": "order"}
		})},
		{"system", msg("system", map[string]any{"type": "user_changed_number", "body": "User A changed from 1 to 2", "wa_id": "2"}), with(func(u *channels.Update) {
			u.Kind = channels.UpdateIgnored
			u.Reason = "whatsapp system message user_changed_number: User A changed from 1 to 2"
			u.Content = map[string]any{"type": "user_changed_number", "body": "User A changed from 1 to 2", "waId": "2", "newWaId": "", "userId": "", "newUserId": ""}
		})},
		{"no BSUID (older payload)", map[string]any{"from": "999", "id": "wamid.X", "timestamp": "1784620800", "type": "text", "text": map[string]any{"body": "hi"}}, with(func(u *channels.Update) {
			u.Sender = channels.Identity{ExternalID: "999", Phone: "999"}
			u.MessageKind, u.Text = channels.KindText, "hi"
		})},
		{"undecodable message", map[string]any{"id": 5}, channels.Update{Kind: channels.UpdateIgnored, AccountRef: phoneNumberID,
			Reason: "undecodable whatsapp message: *"}},
	}
	for _, c := range cases {
		body := batch(t, []map[string]any{changeValue(phoneNumberID, contacts, []any{c.msg}, nil)})
		d, err := New(channels.Config{}).Parse(channels.Channel{}, body)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		sameUpdates(t, c.name, d.Updates, []channels.Update{c.want})
	}
}

func TestParseIgnoredShapes(t *testing.T) {
	errValue := changeValue(phoneNumberID, nil, nil, nil)
	errValue["errors"] = []any{map[string]any{"code": 131000, "title": "Something went wrong", "error_data": map[string]any{"details": "try later"}}}
	status := changeValue(phoneNumberID, nil, nil, []any{statusOf("s1", "deleted"), statusOf("", "read")})
	body, _ := json.Marshal(map[string]any{"object": "whatsapp_business_account", "entry": []any{map[string]any{"id": "w", "changes": []any{
		map[string]any{"field": "messages", "value": errValue},
		map[string]any{"field": "account_update", "value": map[string]any{"event": "VERIFIED_ACCOUNT"}},
		map[string]any{"field": "messages", "value": status},
		map[string]any{"field": "messages", "value": "not an object"},
	}}}})
	d, err := New(channels.Config{}).Parse(channels.Channel{}, body)
	if err != nil {
		t.Fatal(err)
	}
	want := []channels.Update{
		{Kind: channels.UpdateIgnored, AccountRef: phoneNumberID, Reason: "whatsapp webhook error 131000: Something went wrong: try later",
			Content: map[string]any{"code": "131000", "title": "Something went wrong", "details": "try later"}},
		{Kind: channels.UpdateIgnored, Reason: "whatsapp field account_update"},
		{Kind: channels.UpdateIgnored, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: "111"}, MessageID: "s1", Time: at(1784620900), Reason: `whatsapp status "deleted"`},
		{Kind: channels.UpdateIgnored, AccountRef: phoneNumberID, Sender: channels.Identity{Phone: "111"}, Time: at(1784620900), Reason: "whatsapp status without id"},
		{Kind: channels.UpdateIgnored, Reason: "undecodable whatsapp change: *"},
	}
	sameUpdates(t, "ignored", d.Updates, want)
}

func TestParseMalformed(t *testing.T) {
	for _, body := range []string{
		``, `not json`, `[]`, `{"object":"page","entry":[]}`, `{"entry":[]}`,
		`{"object":"whatsapp_business_account","entry":[1]}`,
	} {
		_, err := New(channels.Config{}).Parse(channels.Channel{}, []byte(body))
		if !errors.Is(err, channels.ErrMalformed) {
			t.Errorf("%q: error %v, want ErrMalformed", body, err)
		}
	}
	d, err := New(channels.Config{}).Parse(channels.Channel{}, []byte(`{"object":"whatsapp_business_account","entry":[]}`))
	if err != nil || len(d.Updates) != 0 || d.Key == "" {
		t.Errorf("empty batch: %+v, %v", d, err)
	}
}
