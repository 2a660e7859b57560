package telegram

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/parleydesk/parley/channels"
)

var olga = channels.Identity{ExternalID: "7712345678", Name: "Olga Petrova", Username: "olga_p"}

func at(sec int64) time.Time { return time.Unix(sec, 0).UTC() }

// TestParseFixtures parses every Update fixture and compares the whole
// normalised Delivery. Any new Update fixture must be added here.
func TestParseFixtures(t *testing.T) {
	want := map[string]channels.Delivery{
		"inbound_text.json": {Key: "804512301", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4121", Time: at(1784620800),
			MessageKind: channels.KindText, Text: "Hello! Where is my order #A-1042?",
		}}},
		"inbound_command_start.json": {Key: "804512300", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4120", Time: at(1784620790),
			MessageKind: channels.KindText, Text: "/start",
		}}},
		"inbound_photo.json": {Key: "804512302", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4122", Time: at(1784620860),
			MessageKind: channels.KindPhoto, Text: "The package arrived damaged",
			Attachments: []channels.Attachment{{
				Kind: channels.KindPhoto, Ref: "AgACAgIAAxkBAAIQGmbNw0Xk1aQfZ9r2s3_big1280AJ4yjEbq0VwSJ7n1pYAAQMAA3kAAzYE",
				MimeType: "image/jpeg", Size: 158204,
			}},
		}}},
		"inbound_document.json": {Key: "804512303", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4123", Time: at(1784620920),
			MessageKind: channels.KindDocument, Text: "Invoice attached",
			Attachments: []channels.Attachment{{
				Kind: channels.KindDocument, Ref: "BQACAgIAAxkBAAIQG2bNw1Rz9kPq0Jt8x2mVbL0cYt7sAAKnUAACq0VwSOQ1t0kFZ0bYNgQ",
				FileName: "invoice-A-1042.pdf", MimeType: "application/pdf", Size: 84213,
			}},
		}}},
		"inbound_voice.json": {Key: "804512304", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4124", Time: at(1784620980),
			MessageKind: channels.KindVoice,
			Attachments: []channels.Attachment{{
				Kind: channels.KindVoice, Ref: "AwACAgIAAxkBAAIQHGbNw2Hq3Lw7Ue9nRkQ0vX1pZc8jAAKoUAACq0VwSJ0aE0b8b1qTNgQ",
				MimeType: "audio/ogg", Size: 21440,
			}},
		}}},
		"inbound_sticker.json": {Key: "804512305", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4125", Time: at(1784621040),
			MessageKind: channels.KindSticker, Content: map[string]any{"emoji": "👍"},
			Attachments: []channels.Attachment{{
				Kind: channels.KindSticker, Ref: "CAACAgIAAxkBAAIQHWbNw3FryNLNUJvXGaWN8Vp-JKtpAAIBAQACVp29CiK-nw64wuY0NgQ",
				MimeType: "image/webp", Size: 35140,
			}},
		}}},
		"inbound_media_group_photo_1of2.json": {Key: "804512306", Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:4126", Time: at(1784621100),
			MessageKind: channels.KindPhoto, Text: "front and back",
			Content: map[string]any{"mediaGroupId": "13792468031245678"},
			Attachments: []channels.Attachment{{
				Kind: channels.KindPhoto, Ref: "AgACAgIAAxkBAAIQHmbNw4AlbumOneLargeAAJ5yjEbq0VwSAABAgADeQADNgQ",
				MimeType: "image/jpeg", Size: 90211,
			}},
		}}},
		"edited_message.json": {Key: "804512307", Updates: []channels.Update{{
			// Time is edit_date: when the customer changed it.
			Kind: channels.UpdateEdit, Sender: olga, MessageID: "7712345678:4121", Time: at(1784621160),
			MessageKind: channels.KindText, Text: "Hello! Where is my order #A-1043? (typo fixed)",
		}}},
		"my_chat_member_blocked.json": {Key: "804512308", Updates: []channels.Update{{
			Kind: channels.UpdateReachability, Sender: olga, Time: at(1784621220), Reachable: false,
		}}},
	}

	entries, err := os.ReadDir(fixturesDir(t))
	if err != nil {
		t.Fatal(err)
	}
	a := New(channels.Config{})
	seen := 0
	for _, e := range entries {
		body := fixture(t, e.Name())
		if !strings.Contains(string(body), `"update_id"`) {
			continue // a Bot API request or answer, not an Update
		}
		seen++
		t.Run(e.Name(), func(t *testing.T) {
			exp, ok := want[e.Name()]
			if !ok {
				t.Fatalf("no expectation for Update fixture %s", e.Name())
			}
			got, err := a.Parse(testChannel(), body)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(exp, got); diff != "" {
				t.Errorf("Parse(%s) mismatch (-want +got):\n%s", e.Name(), diff)
			}
		})
	}
	if seen != len(want) {
		t.Errorf("parsed %d Update fixtures, expected %d", seen, len(want))
	}
}

// privateMsg wraps message fields into an Update from Olga's private chat.
func privateMsg(fields string) string {
	return `{"update_id":900000001,"message":{"message_id":77,` +
		`"from":{"id":7712345678,"is_bot":false,"first_name":"Olga","last_name":"Petrova","username":"olga_p"},` +
		`"chat":{"id":7712345678,"type":"private","first_name":"Olga","last_name":"Petrova","username":"olga_p"},` +
		`"date":1784620800,` + fields + `}}`
}

// TestParseKinds covers the message kinds the fixtures lack.
func TestParseKinds(t *testing.T) {
	base := channels.Update{Kind: channels.UpdateMessage, Sender: olga, MessageID: "7712345678:77", Time: at(1784620800)}
	with := func(f func(u *channels.Update)) channels.Update {
		u := base
		f(&u)
		return u
	}
	tests := []struct {
		name string
		body string
		want channels.Update
	}{
		{"audio", privateMsg(`"audio":{"file_id":"AUD","file_unique_id":"u","duration":200,"file_name":"song.mp3","mime_type":"audio/mpeg","file_size":4000000},"caption":"listen"`),
			with(func(u *channels.Update) {
				u.MessageKind, u.Text = channels.KindAudio, "listen"
				u.Attachments = []channels.Attachment{{Kind: channels.KindAudio, Ref: "AUD", FileName: "song.mp3", MimeType: "audio/mpeg", Size: 4000000}}
			})},
		{"video", privateMsg(`"video":{"file_id":"VID","file_unique_id":"u","width":640,"height":480,"duration":3,"file_name":"clip.mp4","mime_type":"video/mp4","file_size":123456}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindVideo
				u.Attachments = []channels.Attachment{{Kind: channels.KindVideo, Ref: "VID", FileName: "clip.mp4", MimeType: "video/mp4", Size: 123456}}
			})},
		{"video_note", privateMsg(`"video_note":{"file_id":"VN","file_unique_id":"u","length":240,"duration":5,"file_size":54321}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindVideo
				u.Attachments = []channels.Attachment{{Kind: channels.KindVideo, Ref: "VN", MimeType: "video/mp4", Size: 54321}}
			})},
		{"animated sticker", privateMsg(`"sticker":{"file_id":"ST","file_unique_id":"u","type":"regular","width":512,"height":512,"is_animated":true,"is_video":false}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindSticker
				u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: "ST", MimeType: "application/x-tgsticker"}}
			})},
		{"location", privateMsg(`"location":{"latitude":52.520008,"longitude":13.404954}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindLocation
				u.Content = map[string]any{"latitude": 52.520008, "longitude": 13.404954}
			})},
		{"venue", privateMsg(`"location":{"latitude":52.5,"longitude":13.4},"venue":{"location":{"latitude":52.5,"longitude":13.4},"title":"Depot","address":"Main St 1"}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindLocation
				u.Content = map[string]any{"latitude": 52.5, "longitude": 13.4, "name": "Depot", "address": "Main St 1"}
			})},
		{"contact", privateMsg(`"contact":{"phone_number":"+491701234567","first_name":"Ivan","last_name":"Petrov","user_id":7799887766}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindContact
				u.Content = map[string]any{"phone": "+491701234567", "name": "Ivan Petrov", "userId": "7799887766"}
			})},
		{"poll is unsupported", privateMsg(`"poll":{"id":"1","question":"?","options":[],"total_voter_count":0,"is_closed":false,"is_anonymous":true,"type":"regular","allows_multiple_answers":false}`),
			with(func(u *channels.Update) {
				u.MessageKind = channels.KindUnsupported
				u.Content = map[string]any{"type": "poll"}
			})},
		{"future content is unsupported, not malformed", privateMsg(`"hologram":{"file_id":"H"},"caption":"look","forward_origin":{"type":"teleport","date":1}`),
			with(func(u *channels.Update) {
				u.MessageKind, u.Text = channels.KindUnsupported, "look"
				u.Content = map[string]any{"type": "hologram"}
			})},
		{"unknown union variants elsewhere do not break a text", privateMsg(`"text":"fwd","forward_origin":{"type":"teleport","date":1},"reply_to_message":{"message_id":1,"chat":{"id":1,"type":"private"},"date":1,"forward_origin":{"type":"x"}}`),
			with(func(u *channels.Update) { u.MessageKind, u.Text = channels.KindText, "fwd" })},
	}
	a := New(channels.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Parse(testChannel(), []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			want := channels.Delivery{Key: "900000001", Updates: []channels.Update{tt.want}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseGroupChat(t *testing.T) {
	body := `{"update_id":5,"message":{"message_id":9,` +
		`"from":{"id":7712345678,"is_bot":false,"first_name":"Olga","last_name":"Petrova","username":"olga_p"},` +
		`"chat":{"id":-1001234567890,"type":"supergroup","title":"Acme partners","username":"acme_partners"},` +
		`"date":1784620800,"text":"hi all"}}`
	got, err := New(channels.Config{}).Parse(testChannel(), []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	want := channels.Delivery{Key: "5", Updates: []channels.Update{{
		Kind:        channels.UpdateMessage,
		Sender:      channels.Identity{ExternalID: "-1001234567890", Name: "Acme partners", Username: "acme_partners"},
		MessageID:   "-1001234567890:9",
		Time:        at(1784620800),
		MessageKind: channels.KindText,
		Text:        "hi all",
		Content:     map[string]any{"from": map[string]any{"id": "7712345678", "name": "Olga Petrova", "username": "olga_p"}},
	}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestParseEvents(t *testing.T) {
	chat := `"chat":{"id":7712345678,"type":"private","first_name":"Olga","last_name":"Petrova","username":"olga_p"}`
	tests := []struct {
		name string
		body string
		want channels.Update
	}{
		{"unblocked", `{"update_id":2,"my_chat_member":{` + chat + `,"from":{"id":7712345678,"is_bot":false,"first_name":"Olga"},"date":1784621300,` +
			`"old_chat_member":{"user":{"id":6001234567,"is_bot":true,"first_name":"Acme"},"status":"kicked","until_date":0},` +
			`"new_chat_member":{"user":{"id":6001234567,"is_bot":true,"first_name":"Acme"},"status":"member"}}}`,
			channels.Update{Kind: channels.UpdateReachability, Sender: olga, Time: at(1784621300), Reachable: true}},
		{"edited caption", `{"update_id":2,"edited_message":{"message_id":4122,` + chat + `,"date":1784620860,"edit_date":1784620900,` +
			`"photo":[{"file_id":"P","file_unique_id":"u","width":1,"height":1,"file_size":10}],"caption":"new caption"}}`,
			channels.Update{Kind: channels.UpdateEdit, Sender: olga, MessageID: "7712345678:4122", Time: at(1784620900),
				MessageKind: channels.KindPhoto, Text: "new caption",
				Attachments: []channels.Attachment{{Kind: channels.KindPhoto, Ref: "P", MimeType: "image/jpeg", Size: 10}}}},
		{"callback query", `{"update_id":2,"callback_query":{"id":"1","from":{"id":7712345678,"is_bot":false,"first_name":"Olga"},"chat_instance":"x","data":"yes"}}`,
			channels.Update{Kind: channels.UpdateIgnored, Reason: "telegram callback_query update is not handled"}},
		{"channel post", `{"update_id":2,"channel_post":{"message_id":1,"chat":{"id":-100,"type":"channel","title":"News"},"date":1,"text":"x"}}`,
			channels.Update{Kind: channels.UpdateIgnored, Reason: "telegram channel_post update is not handled"}},
		{"no event", `{"update_id":2}`,
			channels.Update{Kind: channels.UpdateIgnored, Reason: "telegram update carries no event"}},
	}
	a := New(channels.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Parse(testChannel(), []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			want := channels.Delivery{Key: "2", Updates: []channels.Update{tt.want}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"empty":                "",
		"not json":             "<html>hello</html>",
		"array":                `[{"update_id":1}]`,
		"null":                 "null",
		"no update_id":         `{"message":{"message_id":1,"chat":{"id":1,"type":"private"},"date":1,"text":"x"}}`,
		"update_id not number": `{"update_id":"abc"}`,
		"message not object":   `{"update_id":1,"message":"hello"}`,
		"message without chat": `{"update_id":1,"message":{"message_id":1,"date":1,"text":"x"}}`,
		"chat id not number":   `{"update_id":1,"message":{"message_id":1,"chat":{"id":"x"},"date":1,"text":"x"}}`,
		"truncated":            `{"update_id":1,"message":{"message_id":1,`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(channels.Config{}).Parse(testChannel(), []byte(body))
			if !errors.Is(err, channels.ErrMalformed) {
				t.Fatalf("Parse(%q) error = %v, want ErrMalformed", body, err)
			}
		})
	}
}
