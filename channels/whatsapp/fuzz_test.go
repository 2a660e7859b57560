package whatsapp

import (
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
)

// FuzzParse feeds Parse arbitrary webhook bodies, seeded with every
// WhatsApp fixture and a few edge cases: it must never panic, must refuse
// what it cannot read with an error wrapping channels.ErrMalformed (the
// webhook answers 400), and what it accepts must be a well-formed Delivery
// (see checkDelivery).
//
//	go test -run='^$' -fuzz=FuzzParse -fuzztime=30s ./channels/whatsapp/
func FuzzParse(f *testing.F) {
	dir := metagraphtest.FixtureDir(f, "whatsapp")
	entries, err := os.ReadDir(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(metagraphtest.Fixture(f, "whatsapp", e.Name()))
	}
	const env = `{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":`
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `{"object":"page","entry":[]}`, `{"object":"whatsapp_business_account"}`,
		`{"object":"whatsapp_business_account","entry":null}`, `{"object":"whatsapp_business_account","entry":[null,1,"x",{}]}`,
		`{"object":"whatsapp_business_account","entry":[{"changes":[null,{"value":null},{"field":"account_update"}]}]}`,
		env + `{"messages":[{"type":"text","text":{"body":"no sender"}}]}}]}]}`,
		env + `{"contacts":[{"user_id":"US.1"}],"messages":[{"from_user_id":"US.1","id":"w1","type":"image","image":null}]}}]}]}`,
		env + `{"messages":[{"from":"1","id":"w2","type":"interactive","interactive":{"type":"list_reply"}}]}}]}]}`,
		env + `{"messages":[{"from":"1","id":"w3","type":"contacts","contacts":[{"name":{"formatted_name":"A"}},7]}]}}]}]}`,
		env + `{"messages":[{"from":"1","id":"w4","type":"system","system":{"type":"user_changed_number"}}]}}]}]}`,
		env + `{"statuses":[{"id":"","status":"read"},{"id":"w","status":"deleted"},{"id":"w","status":"failed","errors":[{"code":"x"}]}]}}]}]}`,
		env + `{"errors":[{"code":131000,"title":"Something went wrong"}],"messages":[1,"x",null]}}]}]}`,
		env + `{"messages":[{"from":"1","id":"w5","timestamp":99999999999999999999,"type":"location","location":{"latitude":1e308}}]}}]}]}`,
	} {
		f.Add([]byte(s))
	}
	a := New(channels.Config{})
	ch := channels.Channel{Provider: channels.WhatsApp, ExternalID: phoneNumberID}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := a.Parse(ch, body)
		checkDelivery(t, body, d, err)
		// Deterministic: a redelivery parses the same.
		d2, err2 := a.Parse(ch, body)
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(d, d2) {
			t.Fatalf("two parses of the same body differ: %+v (%v) then %+v (%v)", d, err, d2, err2)
		}
	})
}

// checkDelivery is what the desk relies on from a WhatsApp Delivery: the
// key is the body's hash; every update has a known kind; messages name
// their sender (the desk keys the contact on it) and have a kind and an id;
// statuses name the message and a known status.
func checkDelivery(t *testing.T, body []byte, d channels.Delivery, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, channels.ErrMalformed) {
			t.Fatalf("Parse error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	if d.Key != metagraph.BodyKey(body) {
		t.Fatalf("key %q is not the body's hash", d.Key)
	}
	for i, u := range d.Updates {
		switch u.Kind {
		case channels.UpdateMessage:
			if u.Sender.ExternalID == "" {
				t.Fatalf("update %d: message without a sender ExternalID: %+v", i, u)
			}
			if u.MessageKind == "" {
				t.Fatalf("update %d: message without a kind: %+v", i, u)
			}
		case channels.UpdateStatus:
			switch u.Status {
			case channels.StatusSent, channels.StatusDelivered, channels.StatusRead, channels.StatusFailed:
			default:
				t.Fatalf("update %d: status %q: %+v", i, u.Status, u)
			}
			if u.MessageID == "" {
				// The desk reads a status without a message id as a read
				// watermark (Messenger's).
				t.Fatalf("update %d: WhatsApp status without a message id: %+v", i, u)
			}
		case channels.UpdateIgnored:
			if u.Reason == "" {
				t.Fatalf("update %d: ignored without a reason: %+v", i, u)
			}
		default:
			t.Fatalf("update %d of kind %q: %+v", i, u.Kind, u)
		}
		for _, a := range u.Attachments {
			if a.Kind == "" {
				t.Fatalf("update %d: attachment without a kind: %+v", i, u)
			}
		}
	}
}
