package desk_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/contactidentity"
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

// R7, R8: the offers of a provider's new chat, which PostgreSQL sends with
// the commit under ids drawn as the members are locked when the message is
// the last of its delivery, are stored and evented with those ids, count
// toward the members' loads, and reach the audience of later messages. A
// delivery of several messages (a WhatsApp batch) routes its earlier ones
// with offers inserted at once: the later ones of the same transaction see
// them (operator A's limit of 1 is taken by the first chat, so the second
// is offered to B only; the first contact's second message reaches both).
func TestR8_ANewChatsOffersAreStoredAndEventedWithTheirIDs(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	a, b := w.Operator(active, 1), w.Operator(active, 5)
	// (An INACTIVE member draws no offer id.)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a, b, w.Operator(inactive)})
	wa := w.Channel(q, enum.ProviderWhatsApp)
	ch, err := w.Desk.WebhookChannel(ctx, wa.ID, enum.ProviderWhatsApp)
	w.Must(err)
	msg := func(from, id string) channels.Update {
		return channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: from},
			MessageID: id, MessageKind: string(enum.KindText), Text: id}
	}
	chatOf := func(id string) int {
		m, err := w.Client().Message.Query().Where(message.ProviderMessageID(id)).Only(ctx)
		w.Must(err)
		return m.ChatID
	}
	// offered checks the open offers of the chat of message id and that
	// each CHAT_OFFERED event among events names one of them.
	offered := func(events []*ent.Event, id string, want ...int) {
		t.Helper()
		c := chatOf(id)
		offers, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(c), chatoffer.StatusEQ(enum.OfferOpen)).All(ctx)
		w.Must(err)
		byID := map[int]int{}
		for _, o := range offers {
			byID[o.ID] = o.OperatorID
		}
		var evented []int
		for _, e := range events {
			if e.Type != desk.EventChatOffered || e.ChatID == nil || *e.ChatID != c {
				continue
			}
			oid := desk.PayloadInt(e.Payload, "offerId")
			if e.OperatorID == nil || byID[oid] != *e.OperatorID {
				t.Fatalf("CHAT_OFFERED of chat %d names offer %d for operator %v; stored offers %v", c, oid, e.OperatorID, byID)
			}
			evented = append(evented, *e.OperatorID)
		}
		if len(offers) != len(want) || len(evented) != len(want) {
			t.Fatalf("chat of %s: offers %v, CHAT_OFFERED to %v, want operators %v", id, byID, evented, want)
		}
		for _, op := range want {
			if !slices.Contains(evented, op) {
				t.Fatalf("chat of %s: CHAT_OFFERED to %v, want operators %v", id, evented, want)
			}
		}
	}
	// deliver applies one delivery and returns the events it appended.
	deliver := func(ch channels.Channel, key string, updates ...channels.Update) []*ent.Event {
		t.Helper()
		start, err := w.Desk.LastEventID(ctx)
		w.Must(err)
		_, err = w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: key, Updates: updates}, []byte(`{}`))
		w.Must(err)
		events, err := w.Desk.EventsAfter(ctx, start, 100)
		w.Must(err)
		return events
	}
	events := deliver(ch, "batch", msg("15550001", "wamid.a1"), msg("15550002", "wamid.b1"), msg("15550001", "wamid.a2"))
	offered(events, "wamid.a1", a.ID, b.ID)
	offered(events, "wamid.b1", b.ID)
	a2, err := w.Client().Message.Query().Where(message.ProviderMessageID("wamid.a2")).OnlyID(ctx)
	w.Must(err)
	var second *ent.Event
	for _, e := range events {
		if e.Type == desk.EventMessageAdded && desk.PayloadInt(e.Payload, "messageId") == a2 {
			second = e
		}
	}
	if second == nil || !slices.Contains(second.Audience, a.ID) || !slices.Contains(second.Audience, b.ID) {
		t.Fatalf("the first contact's second message: event %+v, want its audience to hold both operators", second)
	}

	// A delivery of one message: its offers are held for the commit.
	events = deliver(ch, "single", msg("15550003", "wamid.c1"))
	offered(events, "wamid.c1", b.ID)
	loads, err := w.Desk.OperatorAvailabilities(w.As(b), []int{a.ID, b.ID})
	w.Must(err)
	if loads[a.ID].Load != 1 || loads[b.ID].Load != 3 {
		t.Fatalf("loads a=%d b=%d, want 1 and 3", loads[a.ID].Load, loads[b.ID].Load)
	}

	// One operator at a time: no ids are drawn (one member of many gets the
	// offer); the offer expires by its timeout job.
	c := w.Operator(active)
	q2 := w.Queue(enum.RuleToAvailable, []*ent.Operator{c}, func(qc *ent.QueueCreate) { qc.SetAcceptTimeoutSeconds(60) })
	wa2 := w.Channel(q2, enum.ProviderWhatsApp)
	ch2, err := w.Desk.WebhookChannel(ctx, wa2.ID, enum.ProviderWhatsApp)
	w.Must(err)
	events = deliver(ch2, "one", msg("15550004", "wamid.d1"))
	offered(events, "wamid.d1", c.ID)
	o, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(chatOf("wamid.d1"))).Only(ctx)
	w.Must(err)
	if o.ExpiresAt == nil || !o.ExpiresAt.Equal(o.CreatedAt.Add(time.Minute)) {
		t.Fatalf("offer created %v expires %v, want a minute later", o.CreatedAt, o.ExpiresAt)
	}
	w.Clock.Advance(61 * time.Second)
	w.RunJobs()
	if o, err = w.Client().ChatOffer.Get(ctx, o.ID); err != nil || o.Status != enum.OfferExpired {
		t.Fatalf("after the accept timeout the offer is %+v (%v), want EXPIRED", o, err)
	}
}

// R1, R2, R21: a customer's first message through a webhook opens a WAITING
// chat in the channel's queue with every column an opened chat has (on
// PostgreSQL the statement that creates the contact inserts it); once that
// chat is completed, the customer's next message opens another one for the
// same contact (on PostgreSQL the statement that looks for the open chat
// finds the contact), stored alike.
func TestR1_AWebhooksMessageOpensAWholeChat(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	wa := w.Channel(q, enum.ProviderWhatsApp)
	ch, err := w.Desk.WebhookChannel(ctx, wa.ID, enum.ProviderWhatsApp)
	w.Must(err)
	open := func(id string) *ent.Chat {
		t.Helper()
		_, err := w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: "body-" + id, Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: "15550009", Name: "Ann", Phone: "+15550009"},
			MessageID: id, MessageKind: string(enum.KindText), Text: "hello"}}}, []byte(`{}`))
		w.Must(err)
		m, err := w.Client().Message.Query().Where(message.ProviderMessageID(id)).WithChat().Only(ctx)
		w.Must(err)
		c, at := m.Edges.Chat, m.CreatedAt
		switch {
		case c.Status != enum.ChatWaiting || c.ChannelID != wa.ID || c.QueueID != q.ID:
			t.Fatalf("%s opened chat %+v, want WAITING on channel %d in queue %d", id, c, wa.ID, q.ID)
		case c.RoutePending || c.DuplicatesFound != 0 || c.OwnerID != nil || c.ParentID != nil || c.TransferNote != "" ||
			c.CompletedAt != nil || c.CompletionDueAt != nil || c.AcceptedAt != nil:
			t.Fatalf("%s opened chat %+v with columns a new chat does not have", id, c)
		case !c.CreatedAt.Equal(at) || !c.LastMessageAt.Equal(at) || c.LastInboundAt == nil || !c.LastInboundAt.Equal(at):
			t.Fatalf("%s opened chat %+v, want created, last message and last inbound at %v", id, c, at)
		case c.ReplyWindowEndsAt == nil || !c.ReplyWindowEndsAt.Equal(at.Add(24*time.Hour)):
			t.Fatalf("%s opened chat %+v, want its WhatsApp reply window to end 24 h after %v", id, c, at)
		case c.OfferedAt == nil || !c.OfferedAt.Equal(at):
			t.Fatalf("%s opened chat %+v, want it offered at %v", id, c, at)
		}
		contact, err := c.QueryContact().Only(ctx)
		w.Must(err)
		if contact.Name != "Ann" || contact.Phone != "+15550009" {
			t.Fatalf("%s opened a chat for contact %+v, want Ann +15550009", id, contact)
		}
		ident, err := contact.QueryIdentities().Only(ctx)
		w.Must(err)
		if ident.ExternalID != "15550009" || ident.DisplayName != "Ann" || ident.Phone != "+15550009" {
			t.Fatalf("%s: the contact's identity %+v, want 15550009 Ann +15550009", id, ident)
		}
		return c
	}
	first := open("wamid.first")
	_, err = w.Desk.AcceptChat(w.As(op), first.ID)
	w.Must(err)
	_, err = w.Desk.CompleteChat(w.As(op), first.ID)
	w.Must(err)
	next := open("wamid.next")
	if next.ID == first.ID || next.ContactID != first.ContactID {
		t.Fatalf("the message after completion went to chat %d of contact %d, want a new chat of contact %d (the first: %d)",
			next.ID, next.ContactID, first.ContactID, first.ID)
	}
}

// R2: a known customer's message refreshes their identity: a customer who
// had blocked the channel and writes again is reachable again (their name
// unchanged), and a new name replaces the old one. (The transaction
// compares what the look-up of the open chat read, and writes only a
// change.)
func TestR2_ACustomersMessageRefreshesTheirIdentity(t *testing.T) {
	// The identity UPDATEs the desk sends: only when the message changes
	// the profile the look-up read.
	var updates atomic.Int64
	identityUpdate := regexp.MustCompile("UPDATE [`\"]contact_identities")
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if identityUpdate.MatchString(statement) {
			updates.Add(1)
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx := context.Background()
	_, ch := w.WebhookChannel(w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active)}), enum.ProviderTelegram)
	n := 0
	deliver := func(u channels.Update) {
		t.Helper()
		n++
		u.Sender.ExternalID = "4242"
		if u.Kind == channels.UpdateMessage {
			u.MessageID, u.MessageKind, u.Text = fmt.Sprintf("4242:%d", n), string(enum.KindText), "hello"
		}
		_, err := w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: fmt.Sprintf("update-%d", n), Updates: []channels.Update{u}}, []byte(`{}`))
		w.Must(err)
	}
	want := func(name, username string, unreachable bool, updated int64) {
		t.Helper()
		if got := updates.Swap(0); got != updated {
			t.Fatalf("%d identity updates sent, want %d", got, updated)
		}
		id, err := w.Client().ContactIdentity.Query().Where(contactidentity.ExternalID("4242")).Only(ctx)
		w.Must(err)
		if id.DisplayName != name || id.Username != username || id.Unreachable != unreachable {
			t.Fatalf("identity %q @%s unreachable %v, want %q @%s unreachable %v", id.DisplayName, id.Username, id.Unreachable,
				name, username, unreachable)
		}
	}
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{Name: "Ann", Username: "ann"}})
	want("Ann", "ann", false, 0) // created with the profile
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{Name: "Ann", Username: "ann"}})
	want("Ann", "ann", false, 0) // unchanged: nothing to write
	deliver(channels.Update{Kind: channels.UpdateReachability, Sender: channels.Identity{}, Reachable: false})
	want("Ann", "ann", true, 1)
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{Name: "Ann", Username: "ann"}})
	want("Ann", "ann", false, 1)
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{Name: "Ann Lee", Username: "ann"}})
	want("Ann Lee", "ann", false, 1)
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{Name: "Ann Lee", Username: "annlee"}})
	want("Ann Lee", "annlee", false, 1)
	// A message without a name or username keeps them.
	deliver(channels.Update{Kind: channels.UpdateMessage, Sender: channels.Identity{}})
	want("Ann Lee", "annlee", false, 0)
}

// R2 (PostgreSQL): a sender this process has seen is looked up without the
// inserts that create a new one (a second statement shape, PostgreSQL
// running a statement's inserting CTEs even when they insert nothing), over
// the webhook's path (the message's id drawn) and the API's; a sender it
// remembers who is no longer there (their identity removed behind its
// back) is looked up again in full and created afresh.
func TestR2_AKnownSenderIsLookedUpWithoutTheInsertsOfANewOne(t *testing.T) {
	var mu sync.Mutex
	var lookups []string
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if strings.Contains(statement, "WITH f AS") {
			mu.Lock()
			lookups = append(lookups, statement)
			mu.Unlock()
		}
	})
	if !db.Postgres() {
		t.Skip("PostgreSQL only: SQLite's look-up inserts nothing")
	}
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx := context.Background()
	tgc, ch := w.WebhookChannel(w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active)}), enum.ProviderTelegram)
	n := 0
	deliver := func(who string) {
		t.Helper()
		n++
		_, err := w.Desk.ApplyDelivery(ctx, ch, channels.Delivery{Key: fmt.Sprintf("known-%d", n), Updates: []channels.Update{{
			Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: who, Name: "Kim"},
			MessageID: fmt.Sprintf("%s:%d", who, n), MessageKind: string(enum.KindText), Text: "hello"}}}, []byte(`{}`))
		w.Must(err)
	}
	// shapes says, for each look-up sent since the last call, whether it
	// could insert a new sender ("full") or not ("known").
	shapes := func() string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, s := range lookups {
			if strings.Contains(s, "INSERT INTO contacts") {
				out = append(out, "full")
			} else {
				out = append(out, "known")
			}
		}
		lookups = nil
		return strings.Join(out, ",")
	}
	messages := func(who string) int {
		t.Helper()
		n, err := w.Client().Message.Query().Where(message.HasChatWith(chat.HasContactWith(contact.HasIdentitiesWith(
			contactidentity.ExternalID(who))))).Count(ctx)
		w.Must(err)
		return n
	}
	deliver("k1")
	if got := shapes(); got != "full" {
		t.Fatalf("a first message's look-ups: %s, want full", got)
	}
	deliver("k1")
	w.Inbound(tgc, "k1", "and through the API")
	if got := shapes(); got != "known,known" {
		t.Fatalf("the next messages' look-ups: %s, want known,known", got)
	}
	if got := messages("k1"); got != 3 {
		t.Fatalf("the sender has %d messages, want 3", got)
	}
	first, err := w.Client().ContactIdentity.Query().Where(contactidentity.ExternalID("k1")).Only(ctx)
	w.Must(err)

	// The identity goes: the look-up finds nobody and looks again in full.
	_, err = w.Client().ContactIdentity.Delete().Where(contactidentity.ExternalID("k1")).Exec(ctx)
	w.Must(err)
	deliver("k1")
	if got := shapes(); got != "known,full" {
		t.Fatalf("a removed sender's look-ups: %s, want known,full", got)
	}
	again, err := w.Client().ContactIdentity.Query().Where(contactidentity.ExternalID("k1")).Only(ctx)
	w.Must(err)
	if again.ContactID == first.ContactID || messages("k1") != 1 {
		t.Fatalf("the removed sender's message went to contact %d (the old one: %d) with %d messages; want a new contact with 1",
			again.ContactID, first.ContactID, messages("k1"))
	}
	deliver("k1")
	if got := shapes(); got != "known" {
		t.Fatalf("the re-created sender's next look-up: %s, want known", got)
	}
}
