package telegram

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strconv"
	"testing"

	"github.com/parleydesk/parley/channels"
)

// FuzzParse feeds Parse arbitrary webhook bodies, seeded with every
// Telegram fixture and a few edge cases: it must never panic, must refuse
// what it cannot read with an error wrapping channels.ErrMalformed (the
// webhook answers 400), and what it accepts must be a well-formed Delivery
// (see checkDelivery).
//
//	go test -run='^$' -fuzz=FuzzParse -fuzztime=30s ./channels/telegram/
func FuzzParse(f *testing.F) {
	entries, err := os.ReadDir(fixturesDir(f))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(fixture(f, e.Name()))
	}
	for _, s := range []string{
		``, `null`, `[]`, `"x"`, `{}`, `{"update_id":1}`, `{"update_id":"1"}`, `{"update_id":1e40}`,
		`{"update_id":-9223372036854775808,"message":{"chat":{"id":-9223372036854775808}}}`,
		`{"update_id":1,"message":null}`, `{"update_id":1,"message":{}}`, `{"update_id":1,"message":{"chat":{}}}`,
		`{"update_id":1,"message":{"chat":{"id":1},"photo":[]}}`,
		`{"update_id":1,"message":{"chat":{"id":1},"photo":[{},{"width":-1,"height":2}]}}`,
		`{"update_id":1,"message":{"chat":{"id":1,"type":"group","title":"G"},"from":{"id":2},"text":"hi"}}`,
		`{"update_id":1,"message":{"chat":{"id":1},"venue":{}}}`, `{"update_id":1,"message":{"chat":{"id":1},"dice":{"emoji":"🎲"}}}`,
		`{"update_id":1,"edited_message":{"chat":{"id":1},"message_id":2,"text":"\u0000"}}`,
		`{"update_id":1,"my_chat_member":{"chat":{"id":1},"new_chat_member":{"status":"restricted"}}}`,
		`{"update_id":1,"my_chat_member":null}`, `{"update_id":1,"callback_query":{"id":"1"}}`,
	} {
		f.Add([]byte(s))
	}
	a := New(channels.Config{})
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := a.Parse(testChannel(), body)
		checkDelivery(t, body, d, err)
		// Deterministic: a redelivery parses the same.
		d2, err2 := a.Parse(testChannel(), body)
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(d, d2) {
			t.Fatalf("two parses of the same body differ: %+v (%v) then %+v (%v)", d, err, d2, err2)
		}
	})
}

// checkDelivery is what the desk relies on from a Telegram Delivery.
func checkDelivery(t *testing.T, body []byte, d channels.Delivery, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, channels.ErrMalformed) {
			t.Fatalf("Parse error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	// The key is the update_id: the body has one.
	var u struct {
		UpdateID int64 `json:"update_id"`
	}
	if jerr := json.Unmarshal(body, &u); jerr != nil || d.Key != strconv.FormatInt(u.UpdateID, 10) {
		t.Fatalf("key %q for a body whose update_id reads %d (%v)", d.Key, u.UpdateID, jerr)
	}
	if len(d.Updates) != 1 {
		t.Fatalf("%d updates, want exactly one per Telegram Update", len(d.Updates))
	}
	checkUpdate(t, d.Updates[0])
}

// checkUpdate: every update has a known kind; messages, edits and
// reachability changes name the customer; messages have a kind.
func checkUpdate(t *testing.T, u channels.Update) {
	t.Helper()
	switch u.Kind {
	case channels.UpdateMessage, channels.UpdateEdit:
		if u.Sender.ExternalID == "" {
			t.Fatalf("%s without a sender ExternalID: %+v", u.Kind, u)
		}
		if u.MessageID == "" || u.MessageKind == "" {
			t.Fatalf("%s without a message id or kind: %+v", u.Kind, u)
		}
	case channels.UpdateReachability:
		if u.Sender.ExternalID == "" {
			t.Fatalf("reachability without a sender ExternalID: %+v", u)
		}
	case channels.UpdateIgnored:
		if u.Reason == "" {
			t.Fatalf("ignored update without a reason: %+v", u)
		}
	default:
		t.Fatalf("update of kind %q (Telegram has no statuses or echoes): %+v", u.Kind, u)
	}
	for _, a := range u.Attachments {
		if a.Kind == "" {
			t.Fatalf("attachment without a kind: %+v", u)
		}
	}
}
