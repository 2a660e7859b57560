package desk_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// R1, R3: a provider's first message (a new chat) and its next one (to the
// open chat), whose inserts PostgreSQL sends with the commit under ids
// drawn by the statement that finds the contact or locks the chat, are
// stored whole, in order, and their MESSAGE_ADDED events name them; the
// same message id arriving in eight concurrent deliveries with different
// keys is stored once: the deliveries that lose fail at commit, run again,
// and find it.
func TestR3_AMessageToAnOpenChatIsStoredOnceAndEventedWithItsID(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	q := w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active)})
	wa := w.Channel(q, enum.ProviderWhatsApp)
	ch, err := w.Desk.WebhookChannel(ctx, wa.ID, enum.ProviderWhatsApp)
	w.Must(err)
	start, err := w.Desk.LastEventID(ctx)
	w.Must(err)
	_, err = w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: "body-first", Updates: []channels.Update{{
		Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: "15550001", Name: "Ann", Phone: "+15550001"},
		MessageID: "wamid.1", MessageKind: string(enum.KindText), Text: "hello"}}}, []byte(`{}`))
	w.Must(err)
	first, err := w.Client().Message.Query().Where(message.ProviderMessageID("wamid.1")).WithChat().Only(ctx)
	w.Must(err)
	if first.Text != "hello" || first.Direction != enum.Inbound || first.Edges.Chat.Status != enum.ChatWaiting {
		t.Fatalf("first message %+v in chat %+v", first, first.Edges.Chat)
	}
	firstEvents, err := w.Desk.EventsAfter(ctx, start, 100)
	w.Must(err)
	if got := addedMessages(firstEvents); len(got) != 1 || got[0] != first.ID {
		t.Fatalf("the first delivery's MESSAGE_ADDED events name messages %v, want [%d]", got, first.ID)
	}
	before, err := w.Desk.LastEventID(ctx)
	w.Must(err)

	update := channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: "15550001", Name: "Ann"},
		MessageID: "wamid.2", MessageKind: string(enum.KindLocation), Text: "here",
		Content: map[string]any{"latitude": 52.5, "longitude": 13.4, "name": "Büro"}}
	var wg sync.WaitGroup
	results := make([]*desk.DeliveryResult, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: fmt.Sprintf("body-%d", i),
				Updates: []channels.Update{update}}, []byte(`{}`))
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	ms, err := w.Client().Message.Query().Where(message.ProviderMessageID("wamid.2")).All(ctx)
	w.Must(err)
	if len(ms) != 1 {
		t.Fatalf("%d messages stored for one provider message id, want 1", len(ms))
	}
	m := ms[0]
	if m.ChatID != first.ChatID || m.ChannelID != wa.ID || m.Direction != enum.Inbound || m.AuthorKind != enum.AuthorCustomer ||
		m.Kind != enum.KindLocation || m.Text != "here" || m.Content["name"] != "Büro" || m.Content["latitude"] != 52.5 ||
		m.CreatedAt.Before(first.CreatedAt) || m.DeliveryStatus != nil {
		t.Fatalf("stored message %+v", m)
	}
	if m.ID <= first.ID {
		t.Fatalf("message id %d is not after the chat's first message %d", m.ID, first.ID)
	}
	events, err := w.Desk.EventsAfter(ctx, before, 100)
	w.Must(err)
	if added := addedMessages(events); len(added) != 1 || added[0] != m.ID {
		t.Fatalf("MESSAGE_ADDED events name messages %v, want [%d]", added, m.ID)
	}
}

// addedMessages lists the message ids of the MESSAGE_ADDED events.
func addedMessages(events []*ent.Event) []int {
	var ids []int
	for _, e := range events {
		if e.Type == desk.EventMessageAdded {
			id, _ := e.Payload["messageId"].(float64)
			ids = append(ids, int(id))
		}
	}
	return ids
}
