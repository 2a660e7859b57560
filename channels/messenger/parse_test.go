package messenger

import (
	"encoding/json"
	"errors"
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
	pageID    = "104857392018473"
	psid      = "7391045528817342"
	ourAppID  = "882731940561234"
	botAppID  = "514283901274563"
	inboxApp  = "263902037430900"
	echoMid   = "m_g5cO8Vj0qB4sV7rE3p6dY1wF9xI2kL5mO7pQ0eC3hA6gS9rV2bJ5wY8dZ1nT4uF7xI0kL3mO6pQ9"
	stickerID = "369239263222822"
)

// ourChannel is the channel of the fixtures: our app is 882731940561234
// (it receives pass_thread_control from the bot 514283901274563).
var ourChannel = channels.Channel{Provider: channels.Messenger, ExternalID: pageID, AppID: ourAppID}

var customer = channels.Identity{ExternalID: psid}

func ms(n int64) time.Time { return time.UnixMilli(n).UTC() }

const stickerURL = "https://scontent.xx.fbcdn.net/v/t39.1997-6/39178562_1505197616293642_5411344281094848512_n.png?_nc_cat=1&ccb=1-7&_nc_sid=ac3552&oh=03_Q7cD1QHghi&oe=66F0C5D6"

// expected holds the normalised updates of every webhook fixture.
var expected = map[string][]channels.Update{
	"inbound_text.json": {{
		Kind: channels.UpdateMessage, AccountRef: pageID, Sender: customer,
		MessageID:   "m_b0xJ3Qe5lW9nQ2mZ8k1yT6rA4sD7fG0hJ2kL5zX8cV1bN4mQ7wE0rT3yU6iO9pA2sD5fG8hJ1kL4",
		Time:        ms(1784620799871),
		MessageKind: channels.KindText, Text: "Hi! Is order A-1042 on its way?",
	}},
	"inbound_image.json": {{
		Kind: channels.UpdateMessage, AccountRef: pageID, Sender: customer,
		MessageID:   "m_c1yK4Rf6mX0oR3nA9l2zU7sB5tE8gH1iK3lM6aY9dW2cO5nR8xF1sU4zV7jP0qB3tE6gH9iK2lM5",
		Time:        ms(1784620859410),
		MessageKind: channels.KindPhoto,
		Attachments: []channels.Attachment{{Kind: channels.KindPhoto,
			Ref: "https://scontent.xx.fbcdn.net/v/t1.15752-9/451234567_1234567890123456_7890123456789012345_n.jpg?_nc_cat=101&ccb=1-7&_nc_sid=fc17b8&oh=03_Q7cD1QHabc&oe=66F0A1B2"}},
	}},
	"inbound_file.json": {{
		Kind: channels.UpdateMessage, AccountRef: pageID, Sender: customer,
		MessageID:   "m_d2zL5Sg7nY1pS4oB0m3aV8tC6uF9hI2jL4mN7bZ0eX3dP6oS9yG2tV5aW8kQ1rC4uF7hI0jL3mN6",
		Time:        ms(1784620919002),
		MessageKind: channels.KindDocument,
		Attachments: []channels.Attachment{{Kind: channels.KindDocument, FileName: "invoice-A-1042.pdf",
			Ref: "https://cdn.fbsbx.com/v/t59.2708-21/451234999_invoice-A-1042.pdf/invoice-A-1042.pdf?_nc_cat=104&ccb=1-7&_nc_sid=2b0e22&oh=03_Q7cD1QHdef&oe=66F0B3C4"}},
	}},
	// The transition shape (image + sticker attachments) is ONE sticker.
	"inbound_sticker.json": {{
		Kind: channels.UpdateMessage, AccountRef: pageID, Sender: customer,
		MessageID:   "m_e3aM6Th8oZ2qT5pC1n4bW9uD7vG0iJ3kM5nO8cA1fY4eQ7pT0zH3uW6bX9lR2sD5vG8iJ1kM4nO7",
		Time:        ms(1784620979112),
		MessageKind: channels.KindSticker,
		Attachments: []channels.Attachment{{Kind: channels.KindSticker, Ref: stickerURL}},
		Content:     map[string]any{"stickerId": stickerID},
	}},
	// Our own echo (app_id = ourChannel.AppID).
	"message_echo.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, MessageID: echoMid,
		Time: ms(1784621300211), MessageKind: channels.KindText, Text: "Hi, your order ships today.",
		Content: map[string]any{"appId": ourAppID, "metadata": "op:42"}, Reason: "own echo",
	}},
	"standby_message.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer,
		MessageID:   "m_f4bN7Ui9pA3rU6qD2o5cX0vE8wH1jK4lN6oP9dB2gZ5fR8qU1aI4vX7cY0mS3tE6wH9jK2lN5oP8",
		Time:        ms(1784621450333),
		MessageKind: channels.KindText, Text: "Are you still there?",
		Content: map[string]any{"standby": true, "standbyKind": "MESSAGE"},
		Reason:  "messenger standby message (another app owns the thread)",
	}},
	"handover_pass_thread_control.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, Time: ms(1784621100455),
		Content: map[string]any{"handover": "pass_thread_control", "previousOwnerAppId": botAppID, "newOwnerAppId": ourAppID,
			"metadata": `{"reason":"bot_escalation","order":"A-1042"}`},
		Reason: "messenger handover pass_thread_control (bots are not handled yet)",
	}},
	"handover_take_thread_control.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, Time: ms(1784621400876),
		Content: map[string]any{"handover": "take_thread_control", "previousOwnerAppId": ourAppID, "newOwnerAppId": inboxApp,
			"metadata": "taken by page inbox"},
		Reason: "messenger handover take_thread_control (bots are not handled yet)",
	}},
	"handover_request_thread_control.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, Time: ms(1784621500123),
		Content: map[string]any{"handover": "request_thread_control", "requestedOwnerAppId": botAppID, "metadata": "bot wants the thread back"},
		Reason:  "messenger handover request_thread_control (bots are not handled yet)",
	}},
	"handover_app_roles.json": {{
		Kind: channels.UpdateIgnored, AccountRef: pageID, Time: ms(1784621600000),
		Content: map[string]any{"handover": "app_roles", "appRoles": map[string][]string{ourAppID: {"primary_receiver"}}},
		Reason:  "messenger handover app_roles (bots are not handled yet)",
	}},
}

func sameUpdates(t *testing.T, name string, got, want []channels.Update) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d updates, want %d:\n got %+v", name, len(got), len(want), got)
		return
	}
	for i := range want {
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
	names := metagraphtest.WebhookFixtures(t, "messenger")
	if len(names) == 0 {
		t.Fatal("no webhook fixture found")
	}
	for _, name := range names {
		want, ok := expected[name]
		if !ok {
			t.Errorf("webhook fixture %s has no expected updates: add them", name)
			continue
		}
		body := metagraphtest.Fixture(t, "messenger", name)
		d, err := a.Parse(ourChannel, body)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if d.Key != metagraph.BodyKey(body) || len(d.Key) != 64 {
			t.Errorf("%s: key %q", name, d.Key)
		}
		sameUpdates(t, name, d.Updates, want)
	}
	for name := range expected {
		if !slices.Contains(names, name) {
			t.Errorf("expected updates for %s, which is not a webhook fixture", name)
		}
	}
}

func TestEchoOfAnotherApp(t *testing.T) {
	body := metagraphtest.Fixture(t, "messenger", "message_echo.json")
	want := expected["message_echo.json"][0]
	want.Kind, want.Reason = channels.UpdateEcho, ""
	for name, ch := range map[string]channels.Channel{
		"another app id":    {ExternalID: pageID, AppID: inboxApp},
		"no app id, no tag": {ExternalID: pageID},
	} {
		d, err := New(channels.Config{}).Parse(ch, body)
		if err != nil {
			t.Fatal(err)
		}
		sameUpdates(t, name, d.Updates, []channels.Update{want})
	}
	// Without an app id, our metadata tells our own echoes.
	tagged := strings.Replace(string(body), `"op:42"`, `"`+EchoMetadata+`"`, 1)
	d, err := New(channels.Config{}).Parse(channels.Channel{ExternalID: pageID}, []byte(tagged))
	if err != nil || len(d.Updates) != 1 || d.Updates[0].Kind != channels.UpdateIgnored || d.Updates[0].Reason != "own echo" {
		t.Errorf("tagged echo without app id: %+v, %v", d.Updates, err)
	}
}

func TestSignaturesOfEveryWebhookFixture(t *testing.T) {
	sigs, secret := metagraphtest.Signatures(t, "messenger")
	if secret != "test_app_secret" {
		t.Fatalf("app secret %q", secret)
	}
	var signed []string
	for name, sig := range sigs {
		signed = append(signed, name)
		body := metagraphtest.Fixture(t, "messenger", name)
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
	if want := metagraphtest.WebhookFixtures(t, "messenger"); !slices.Equal(signed, want) {
		t.Errorf("signed fixtures %v, webhook fixtures %v", signed, want)
	}
}

func TestMetaChallenge(t *testing.T) {
	var req struct {
		Query    map[string]string `json:"query"`
		Expected struct {
			Body string `json:"body"`
		} `json:"expected_response"`
	}
	if err := json.Unmarshal(metagraphtest.Fixture(t, "messenger", "verify_request.json"), &req); err != nil {
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
	if _, ok := channels.MetaChallenge(q, "wa_verify_7c1d2e"); ok {
		t.Error("a wrong verify token is accepted")
	}
	if _, ok := channels.MetaChallenge(q, ""); ok {
		t.Error("an empty verify token is accepted")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ev(ts int64, kind string, body any) map[string]any {
	return map[string]any{"sender": map[string]any{"id": psid}, "recipient": map[string]any{"id": pageID}, "timestamp": ts, kind: body}
}

func TestParseBatchKeepsEveryUpdateInOrder(t *testing.T) {
	body := mustJSON(t, map[string]any{"object": "page", "entry": []any{
		map[string]any{"id": pageID, "time": 1, "messaging": []any{
			ev(1000, "message", map[string]any{"mid": "m1", "text": "one"}),
			ev(2000, "delivery", map[string]any{"mids": []string{"o1", "o2"}, "watermark": 1500}),
			ev(3000, "message", map[string]any{"mid": "m2", "text": "two"}),
			ev(4000, "read", map[string]any{"watermark": 3500}),
		}},
		map[string]any{"id": pageID, "time": 2, "messaging": []any{
			ev(5000, "postback", map[string]any{"mid": "p1", "title": "Track order", "payload": "TRACK"}),
		}, "standby": []any{
			ev(6000, "message", map[string]any{"mid": "m3", "text": "three"}),
		}},
	}})
	d, err := New(channels.Config{}).Parse(ourChannel, body)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		kind, id, what string
		at             int64
	}
	var got []row
	for _, u := range d.Updates {
		got = append(got, row{string(u.Kind), u.MessageID, u.Text + u.Status, u.Time.UnixMilli()})
		if u.Sender.ExternalID != psid || u.AccountRef != pageID {
			t.Errorf("%s: sender %q account %q", u.MessageID, u.Sender.ExternalID, u.AccountRef)
		}
	}
	want := []row{
		{"MESSAGE", "m1", "one", 1000},
		{"STATUS", "o1", "DELIVERED", 1500},
		{"STATUS", "o2", "DELIVERED", 1500},
		{"MESSAGE", "m2", "two", 3000},
		{"STATUS", "", "READ", 3500}, // the watermark: all sent up to then is read
		{"MESSAGE", "p1", "Track order", 5000},
		{"IGNORED", "m3", "three", 6000},
	}
	if !slices.Equal(got, want) {
		t.Errorf("updates\n got %v\nwant %v", got, want)
	}
	if c := d.Updates[5].Content; !reflect.DeepEqual(c, map[string]any{"type": "postback", "id": "TRACK", "title": "Track order", "payload": "TRACK"}) {
		t.Errorf("postback content %v", c)
	}
}

// TestParseOtherShapes covers the shapes the fixtures lack.
func TestParseOtherShapes(t *testing.T) {
	base := channels.Update{Kind: channels.UpdateMessage, AccountRef: pageID, Sender: customer, MessageID: "m", Time: ms(1000)}
	with := func(f func(u *channels.Update)) channels.Update {
		u := base
		f(&u)
		return u
	}
	att := func(typ string, payload any) map[string]any {
		a := map[string]any{"type": typ}
		if payload != nil {
			a["payload"] = payload
		}
		return a
	}
	message := func(m map[string]any) map[string]any {
		m["mid"] = "m"
		return ev(1000, "message", m)
	}
	cases := []struct {
		name  string
		event map[string]any
		want  []channels.Update
	}{
		{"audio and video", message(map[string]any{"attachments": []any{
			att("audio", map[string]any{"url": "https://cdn/a.mp4"}), att("video", map[string]any{"url": "https://cdn/v.mp4"})}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindAudio
				u.Attachments = []channels.Attachment{{Kind: channels.KindAudio, Ref: "https://cdn/a.mp4"}, {Kind: channels.KindVideo, Ref: "https://cdn/v.mp4"}}
			})}},
		{"sticker only (after the transition)", message(map[string]any{"attachments": []any{att("sticker", map[string]any{"url": "https://cdn/s.png", "sticker_id": 42})}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindSticker
				u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: "https://cdn/s.png"}}
				u.Content = map[string]any{"stickerId": "42"}
			})}},
		{"old sticker (image + sticker_id)", message(map[string]any{"sticker_id": 43, "attachments": []any{att("image", map[string]any{"url": "https://cdn/s.png"})}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindSticker
				u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: "https://cdn/s.png"}}
				u.Content = map[string]any{"stickerId": "43"}
			})}},
		{"fallback alone", message(map[string]any{"attachments": []any{map[string]any{"type": "fallback", "title": "A link", "payload": map[string]any{"url": "https://x.example"}}}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindUnsupported
				u.Content = map[string]any{"type": "fallback", "url": "https://x.example", "title": "A link"}
			})}},
		{"reel without payload", message(map[string]any{"attachments": []any{att("ig_reel", nil)}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindUnsupported
				u.Content = map[string]any{"type": "ig_reel", "url": "", "title": ""}
			})}},
		{"text with a shared link", message(map[string]any{"text": "see https://x.example", "attachments": []any{map[string]any{"type": "fallback", "payload": map[string]any{"url": "https://x.example"}}}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind, u.Text = channels.KindText, "see https://x.example"
				u.Content = map[string]any{"attachments": []any{map[string]any{"type": "fallback", "url": "https://x.example", "title": ""}}}
			})}},
		{"quick reply", message(map[string]any{"text": "Yes", "quick_reply": map[string]any{"payload": "CONFIRM"}}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind, u.Text = channels.KindInteractive, "Yes"
				u.Content = map[string]any{"type": "quick_reply", "id": "CONFIRM", "title": "Yes"}
			})}},
		{"empty message", message(map[string]any{}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageKind = channels.KindUnsupported
				u.Content = map[string]any{"type": "empty"}
			})}},
		{"delivery without mids", ev(1000, "delivery", map[string]any{"watermark": 900}),
			[]channels.Update{{Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, Time: ms(900), Reason: "messenger delivery watermark without mids"}}},
		{"edit", ev(1000, "message_edit", map[string]any{"mid": "m", "text": "fixed", "num_edit": 1}),
			[]channels.Update{with(func(u *channels.Update) {
				u.Kind, u.MessageKind, u.Text = channels.UpdateEdit, channels.KindText, "fixed"
			})}},
		{"reaction", ev(1000, "reaction", map[string]any{"mid": "o1", "action": "react", "emoji": "\u2764", "reaction": "love"}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageID, u.MessageKind = "reaction:o1:"+psid+":1000", channels.KindReaction
				u.Content = map[string]any{"messageId": "o1", "emoji": "\u2764"}
			})}},
		{"postback without mid", ev(1000, "postback", map[string]any{"title": "Start", "payload": "GET_STARTED"}),
			[]channels.Update{with(func(u *channels.Update) {
				u.MessageID, u.MessageKind, u.Text = "postback:"+psid+":1000", channels.KindInteractive, "Start"
				u.Content = map[string]any{"type": "postback", "id": "GET_STARTED", "title": "Start", "payload": "GET_STARTED"}
			})}},
		{"unknown event", ev(1000, "optin", map[string]any{"ref": "x"}),
			[]channels.Update{{Kind: channels.UpdateIgnored, AccountRef: pageID, Sender: customer, Time: ms(1000), Reason: "messenger event optin"}}},
		{"undecodable event", map[string]any{"sender": "nope"},
			[]channels.Update{{Kind: channels.UpdateIgnored, AccountRef: pageID, Reason: "undecodable messenger event: *"}}},
	}
	for _, c := range cases {
		body := mustJSON(t, map[string]any{"object": "page", "entry": []any{map[string]any{"id": pageID, "messaging": []any{c.event}}}})
		d, err := New(channels.Config{}).Parse(ourChannel, body)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		sameUpdates(t, c.name, d.Updates, c.want)
	}
}

func TestParseMalformed(t *testing.T) {
	for _, body := range []string{
		``, `not json`, `[]`, `{"object":"whatsapp_business_account","entry":[]}`, `{"object":"instagram","entry":[]}`,
		`{"object":"page","entry":["x"]}`,
	} {
		_, err := New(channels.Config{}).Parse(ourChannel, []byte(body))
		if !errors.Is(err, channels.ErrMalformed) {
			t.Errorf("%q: error %v, want ErrMalformed", body, err)
		}
	}
}
