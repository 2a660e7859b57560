package desk_test

import (
	"context"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// R14: a Messenger read watermark (a READ status without a message id)
// marks every message sent to that customer on the channel up to its time
// as read, and nothing else: not the messages to other customers, not
// those sent after it, not those of a customer whose identity is on
// another provider or who has no chat on the channel.
func TestR14_AReadWatermarkReadsTheCustomersMessagesUpToItsTime(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	q := w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active, 5)})
	fb, other := w.Channel(q, enum.ProviderMessenger), w.Channel(q, enum.ProviderMessenger)
	ann := w.Inbound(fb, "psid-ann", "hello").Chat
	bob := w.Inbound(fb, "psid-bob", "hi").Chat
	carl := w.Inbound(other, "psid-carl", "hey").Chat // a chat on the other channel only
	t0 := w.Desk.Now()
	sent := func(c *ent.Chat, ch *ent.Channel, mid string, at time.Time) *ent.Message {
		t.Helper()
		m, err := w.Client().Message.Create().SetChatID(c.ID).SetChannelID(ch.ID).SetDirection(enum.Outbound).
			SetAuthorKind(enum.AuthorOperator).SetKind(enum.KindText).SetText("reply " + mid).SetCreatedAt(at).
			SetProviderMessageID(mid).SetDeliveryStatus(enum.DeliverySent).SetSentAt(at).Save(ctx)
		w.Must(err)
		return m
	}
	annOld := sent(ann, fb, "m-ann-1", t0.Add(-time.Minute))
	annNew := sent(ann, fb, "m-ann-2", t0.Add(time.Minute)) // after the watermark
	bobOld := sent(bob, fb, "m-bob-1", t0.Add(-time.Minute))
	carlOld := sent(carl, other, "m-carl-1", t0.Add(-time.Minute))

	ch, err := w.Desk.WebhookChannel(ctx, fb.ID, enum.ProviderMessenger)
	w.Must(err)
	watermark := func(psid string) *channels.Update {
		return &channels.Update{Kind: channels.UpdateStatus, Status: string(enum.DeliveryRead),
			Sender: channels.Identity{ExternalID: psid}, Time: t0}
	}
	del := channels.Delivery{Key: "read-1", Updates: []channels.Update{*watermark("psid-ann"), *watermark("psid-carl"),
		*watermark("psid-nobody")}}
	res, err := w.Desk.ApplyDelivery(ctx, ch, del, []byte(`{}`))
	w.Must(err)
	if res.Applied != 1 || res.Ignored != 2 {
		t.Errorf("applied %d, ignored %d; want 1 (Ann) and 2 (Carl has no chat on the channel, nobody is unknown)", res.Applied, res.Ignored)
	}
	for _, c := range []struct {
		m    *ent.Message
		want enum.DeliveryStatus
	}{{annOld, enum.DeliveryRead}, {annNew, enum.DeliverySent}, {bobOld, enum.DeliverySent}, {carlOld, enum.DeliverySent}} {
		got, err := w.Client().Message.Get(ctx, c.m.ID)
		w.Must(err)
		if got.DeliveryStatus == nil || *got.DeliveryStatus != c.want {
			t.Errorf("%s: status %v, want %s", c.m.Text, got.DeliveryStatus, c.want)
		}
	}
}
