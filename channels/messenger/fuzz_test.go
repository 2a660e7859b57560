package messenger

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
// Messenger fixture and a few edge cases: it must never panic, must refuse
// what it cannot read with an error wrapping channels.ErrMalformed (the
// webhook answers 400), and what it accepts must be a well-formed Delivery
// (see checkDelivery), for a channel that knows our app id and for one that
// does not (echoes are then told apart by their metadata).
//
//	go test -run='^$' -fuzz=FuzzParse -fuzztime=30s ./channels/messenger/
func FuzzParse(f *testing.F) {
	dir := metagraphtest.FixtureDir(f, "messenger")
	entries, err := os.ReadDir(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(metagraphtest.Fixture(f, "messenger", e.Name()))
	}
	const env = `{"object":"page","entry":[{"id":"104857392018473","time":1,"messaging":[`
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `{"object":"whatsapp_business_account","entry":[]}`, `{"object":"page"}`,
		`{"object":"page","entry":[null,1,"x",{}]}`, `{"object":"page","entry":[{"messaging":[null,1],"standby":[{}]}]}`,
		env + `{"message":{"mid":"m1","text":"no sender"}}]}]}`,
		env + `{"sender":{"id":1},"recipient":{"id":2},"timestamp":"x","message":{"mid":"m2","attachments":[{"type":"image"},{"type":"sticker","payload":null}]}}]}]}`,
		env + `{"sender":{"id":"1"},"message":{"mid":"m3","attachments":[{"type":"location","payload":{"coordinates":{"lat":1,"long":2}}},{"type":"fallback","title":"t"}]}}]}]}`,
		env + `{"sender":{"id":"1"},"message":{"mid":"m4","quick_reply":{"payload":"P"},"text":"yes"}}]}]}`,
		env + `{"sender":{"id":"104857392018473"},"recipient":{"id":"1"},"message":{"is_echo":true,"app_id":"882731940561234","mid":"m5"}}]}]}`,
		env + `{"sender":{"id":"1"},"delivery":{"mids":[],"watermark":1}},{"sender":{"id":"1"},"read":{"watermark":null}}]}]}`,
		env + `{"sender":{"id":"1"},"postback":{"title":"Start","payload":"GET_STARTED"}},{"sender":{"id":"1"},"reaction":{"mid":"m","action":"unreact"}}]}]}`,
		env + `{"sender":{"id":"1"},"message_edit":{"mid":"m6","text":"edited"}},{"sender":{"id":"1"},"app_roles":{}}]}]}`,
		env + `{"sender":{"id":"1"},"pass_thread_control":{"new_owner_app_id":1e3}}]}]}`,
	} {
		f.Add([]byte(s))
	}
	a := New(channels.Config{})
	chans := []channels.Channel{ourChannel, {Provider: channels.Messenger, ExternalID: pageID}}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, ch := range chans {
			d, err := a.Parse(ch, body)
			checkDelivery(t, body, d, err)
			// Deterministic: a redelivery parses the same.
			d2, err2 := a.Parse(ch, body)
			if (err == nil) != (err2 == nil) || !reflect.DeepEqual(d, d2) {
				t.Fatalf("two parses of the same body differ: %+v (%v) then %+v (%v)", d, err, d2, err2)
			}
		}
	})
}

// checkDelivery is what the desk relies on from a Messenger Delivery: the
// key is the body's hash; every update has a known kind; messages, edits
// and echoes name the customer (the desk keys the contact on it) and have a
// kind; statuses have a known status, and only a read may lack a message id
// (a read watermark).
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
		case channels.UpdateMessage, channels.UpdateEdit, channels.UpdateEcho:
			if u.Sender.ExternalID == "" {
				t.Fatalf("update %d: %s without a sender ExternalID: %+v", i, u.Kind, u)
			}
			if u.MessageKind == "" {
				t.Fatalf("update %d: %s without a kind: %+v", i, u.Kind, u)
			}
		case channels.UpdateStatus:
			if u.Status != channels.StatusDelivered && u.Status != channels.StatusRead {
				t.Fatalf("update %d: status %q: %+v", i, u.Status, u)
			}
			if u.MessageID == "" && u.Status != channels.StatusRead {
				t.Fatalf("update %d: %s status without a message id: %+v", i, u.Status, u)
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
