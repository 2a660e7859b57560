package webhooks_test

import (
	"encoding/json"
	"testing"

	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// Shapes the conversations of TestReplayFixtures do not reach: a WhatsApp
// customer known only by username (BSUID, no phone) from the first message
// on, statuses arriving out of order, a Messenger echo of another app, and
// events that cannot be stored. One server, PARLEY_META_APP_ID unset.
func TestEdgeCases(t *testing.T) {
	e := newEnv(t, withMetaAppID(""))
	wa, fb := e.Channels["whatsapp"], e.Channels["messenger"]

	// R2: a username-only customer is a contact keyed by the BSUID, with
	// the name and username of the delivery and no phone; they can be
	// answered (the reply goes to the BSUID) and their statuses apply.
	t.Run("whatsapp username-only customer", func(t *testing.T) {
		before := e.counts(t)
		e.deliverConcurrently(t, "whatsapp", "inbound_text_username_no_phone.json", 5)
		e.wantDelta(t, before, firstWhatsAppMessage)
		id := e.identity(t, enum.ProviderWhatsApp, sheenaBSUID)
		wantContact(t, id.Edges.Contact, "Sheena", "@sheena.n", "")
		wantIdentity(t, id, "Sheena", "@sheena.n", "", false)
		c := wantOnlyChat(t, e, wa, id.Edges.Contact.ID, enum.ChatWaiting)
		wantInbound(t, e, wa, "wamid.HBgRVVMuMTM0OTEyMDg2NTUzMDI3NDE5MTgVAgASGBQzQTk5QzA3QjM1MzhFQjlBRDgxQQA=", c.ID,
			inbound{kind: enum.KindText, text: "Sent from a username-only account"})
		e.runJobs(t)

		if _, err := e.Desk().AcceptChat(e.asOperator(), c.ID); err != nil {
			t.Fatal(err)
		}
		// Unique: the fake is shared by the tests of the binary (-count).
		reply := "Hello Sheena, a reply to a username-only account " + apptest.Unique("#")
		if _, err := e.Desk().SendMessage(e.asOperator(), c.ID, reply, nil); err != nil {
			t.Fatal(err)
		}
		e.runJobs(t)
		sends := provider.Sends(reply)
		if len(sends) != 1 {
			t.Fatalf("%d sends of the reply reached the provider, want 1", len(sends))
		}
		var sent map[string]any
		if err := json.Unmarshal(sends[0], &sent); err != nil {
			t.Fatal(err)
		}
		if sent["recipient"] != sheenaBSUID || sent["to"] != nil {
			t.Errorf("reply sent to recipient %v, to %v; want the BSUID and no phone", sent["recipient"], sent["to"])
		}
		if m := e.message(t, wa, wamidReplied); m.DeliveryStatus == nil || *m.DeliveryStatus != enum.DeliverySent {
			t.Fatalf("reply: %v, want SENT", deref(m.DeliveryStatus))
		}
	})

	// R14: statuses apply monotonically whatever their order: a read
	// first, then the late delivered and sent change nothing.
	t.Run("whatsapp statuses out of order", func(t *testing.T) {
		e.deliverConcurrently(t, "whatsapp", "status_read.json", 5)
		m := e.message(t, wa, wamidReplied)
		if m.DeliveryStatus == nil || *m.DeliveryStatus != enum.DeliveryRead || m.ReadAt == nil || m.DeliveredAt != nil {
			t.Fatalf("after read: %v read %v delivered %v", deref(m.DeliveryStatus), m.ReadAt, m.DeliveredAt)
		}
		for _, late := range []string{"status_delivered.json", "status_sent.json"} {
			snap := e.dump(t)
			e.deliver(t, "whatsapp", late)
			e.wantUnchangedBut(t, snap, "a late "+late, "inbound_deliveries")
		}
	})

	// A status of a message Parley has not recorded (yet): the send's
	// answer may still be on its way; nothing else changes.
	t.Run("whatsapp status of an unknown message", func(t *testing.T) {
		before := e.counts(t)
		e.deliver(t, "whatsapp", "status_failed_131047.json")
		e.wantDelta(t, before, map[string]int{"inbound_deliveries": 1, "jobs": 1}) // LATE_STATUS
		if n := e.Client().Message.Query().Where(message.ProviderMessageID(wamidExpired)).CountX(bg); n != 0 {
			t.Errorf("a status created %d messages", n)
		}
	})

	// An echo is recorded in the customer's open chat as an outbound
	// message by someone outside Parley (another app, the Page Inbox),
	// once, whatever the redeliveries; with no open chat it is dropped.
	t.Run("messenger echo of another app", func(t *testing.T) {
		snap := e.dump(t)
		e.deliverVariant(t, "messenger", "message_echo.json") // no conversation yet
		e.wantUnchangedBut(t, snap, "an echo without a chat", "inbound_deliveries")

		e.deliver(t, "messenger", "inbound_text.json")
		before := e.counts(t)
		e.deliverConcurrently(t, "messenger", "message_echo.json", 5)
		e.wantDelta(t, before, map[string]int{"inbound_deliveries": 1, "messages": 1})
		m := e.message(t, fb, "m_g5cO8Vj0qB4sV7rE3p6dY1wF9xI2kL5mO7pQ0eC3hA6gS9rV2bJ5wY8dZ1nT4uF7xI0kL3mO6pQ9")
		c := wantOnlyChat(t, e, fb, e.identity(t, enum.ProviderMessenger, peterPSID).Edges.Contact.ID, enum.ChatWaiting)
		if m.ChatID != c.ID || m.Direction != enum.Outbound || m.AuthorKind != enum.AuthorExternal || m.Kind != enum.KindText ||
			m.Text != "Hi, your order ships today." || m.DeliveryStatus == nil || *m.DeliveryStatus != enum.DeliverySent {
			t.Errorf("echo stored as %s %s %s %q (%v) in chat %d, want OUTBOUND EXTERNAL TEXT, SENT, in chat %d",
				m.Direction, m.AuthorKind, m.Kind, m.Text, deref(m.DeliveryStatus), m.ChatID, c.ID)
		}
		snap = e.dump(t)
		e.deliver(t, "messenger", "message_echo.json")
		e.wantUnchanged(t, snap, "redelivering the echo")
	})

	t.Run("unusable events", func(t *testing.T) { testUnusableEvents(t, e) })
	t.Run("NUL characters", func(t *testing.T) { testNULCharacters(t, e) })

	// Nothing is left failing: every provider call of the test succeeded.
	e.runJobs(t)
	for _, k := range e.pendingJobs(t) {
		if k == "DOWNLOAD" || k == "FETCH_PROFILE" || k == "SEND" {
			t.Errorf("a %s job is pending", k)
		}
	}
}
