package app_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

// R21: the 24-hour reply window of WhatsApp and Messenger, and starting a
// chat from a contact.

type chatView struct {
	ID                string
	Status            string
	ReplyWindowEndsAt *time.Time
	LastInboundAt     *time.Time
	Owner             *struct{ ID string }
	Channel           struct{ ID string }
	Contact           struct{ ID string }
	Messages          struct {
		Edges []struct {
			Node struct {
				ID             string
				Text           string
				Direction      string
				DeliveryStatus *string
			}
		}
	}
}

const chatFields = `id status replyWindowEndsAt lastInboundAt owner { id } channel { id } contact { id }
  messages(first: 50) { edges { node { id text direction deliveryStatus } } }`

func (r *rig) chat(t *testing.T, token string, id int) chatView {
	t.Helper()
	var out struct{ Node chatView }
	r.s.Do(t, token, `query($id: ID!) { node(id: $id) { ... on Chat { `+chatFields+` } } }`,
		map[string]any{"id": apptest.ID(id)}).OK(t).Decode(t, &out)
	return out.Node
}

func (r *rig) outboundCount(t *testing.T, token string, chatID int) int {
	t.Helper()
	n := 0
	for _, e := range r.chat(t, token, chatID).Messages.Edges {
		if e.Node.Direction == "OUTBOUND" {
			n++
		}
	}
	return n
}

// TestR21_ReplyWindow: a WhatsApp or Messenger chat can be answered for 24
// hours after the customer's last message; the API says when the window
// closes; past it sendMessage is refused before any provider is called, and
// a message queued in time but not yet sent is not sent either. Telegram has
// no window.
func TestR21_ReplyWindow(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	type windowed struct {
		provider, key, externalID string
		channelID, chatID         int
	}
	cases := []*windowed{
		{provider: "WHATSAPP", key: "POST /" + waPhoneID + "/messages", externalID: waBSUID},
		{provider: "MESSENGER", key: "POST /" + fbPageID + "/messages", externalID: fbPSID},
	}
	for _, c := range cases {
		c.channelID, c.chatID = r.openChat(t, c.provider)
	}
	_, tgChat := r.openChat(t, "TELEGRAM")
	r.run(t)
	start := r.s.Clock.Now()
	for _, c := range cases {
		v := r.chat(t, r.op.Token, c.chatID)
		if v.ReplyWindowEndsAt == nil || !v.ReplyWindowEndsAt.Equal(start.Add(24*time.Hour)) {
			t.Fatalf("%s replyWindowEndsAt = %v, want %v (24 h after the customer's message)", c.provider, v.ReplyWindowEndsAt, start.Add(24*time.Hour))
		}
	}
	if v := r.chat(t, r.op.Token, tgChat); v.ReplyWindowEndsAt != nil {
		t.Fatalf("a Telegram chat has a reply window: %v", v.ReplyWindowEndsAt)
	}

	// The customers write again 23 hours later: the windows move.
	r.s.Clock.Advance(23 * time.Hour)
	second := r.s.Clock.Now()
	for _, c := range cases {
		if _, err := r.s.Desk().Ingest(bg, desk.Inbound{ChannelID: c.channelID, ProviderMessageID: "second-" + c.provider,
			Identity: desk.InboundIdentity{ExternalID: c.externalID}, Text: "Any news?"}); err != nil {
			t.Fatal(err)
		}
		if v := r.chat(t, r.op.Token, c.chatID); v.ReplyWindowEndsAt == nil || !v.ReplyWindowEndsAt.Equal(second.Add(24*time.Hour)) {
			t.Fatalf("%s replyWindowEndsAt after the second message = %v, want %v", c.provider, v.ReplyWindowEndsAt, second.Add(24*time.Hour))
		}
	}

	// Queued a second before the window closes, picked up after: the
	// outbox does not call the provider.
	r.s.Clock.Advance(24*time.Hour - time.Second)
	queued := map[string]int{}
	for _, c := range cases {
		queued[c.provider] = r.send(t, r.op.Token, c.chatID, "Just in time?")
	}
	r.s.Clock.Advance(2 * time.Second)
	r.run(t)
	for _, c := range cases {
		m := r.message(t, r.op.Token, queued[c.provider])
		if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "REPLY_WINDOW_EXPIRED" {
			t.Fatalf("%s message queued before the window closed = %+v, want FAILED REPLY_WINDOW_EXPIRED", c.provider, m)
		}
	}

	// Past the window, sendMessage is refused and nothing is stored.
	for _, c := range cases {
		before := r.outboundCount(t, r.op.Token, c.chatID)
		r.s.Do(t, r.op.Token, sendMessageMutation, map[string]any{"chat": apptest.ID(c.chatID), "text": "Hello?"}).
			Expect(t, "REPLY_WINDOW_EXPIRED")
		if n := r.outboundCount(t, r.op.Token, c.chatID); n != before {
			t.Fatalf("%s: %d outbound messages after the refusal, want %d", c.provider, n, before)
		}
	}
	r.advance(t, time.Hour)
	for _, c := range cases {
		if n := r.graph.Count(c.key); n != 0 {
			t.Fatalf("%s was called %d times outside the window", c.provider, n)
		}
	}

	// Telegram, two days after the customer's message.
	id := r.send(t, r.op.Token, tgChat, "Two days later")
	r.run(t)
	if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "SENT" || r.tg.Count("sendMessage") != 1 {
		t.Fatalf("Telegram message = %+v after %d calls", m, r.tg.Count("sendMessage"))
	}
}

type contactChannelView struct {
	Channel           struct{ ID string }
	CanWrite          bool
	Reason            *string
	ReplyWindowEndsAt *time.Time
}

// contactChannels returns the answer per channel id.
func (r *rig) contactChannels(t *testing.T, token string, contactID int) map[int]contactChannelView {
	t.Helper()
	var out struct{ ContactChannels []contactChannelView }
	r.s.Do(t, token, `query($c: ID!) { contactChannels(contactId: $c) { channel { id } canWrite reason replyWindowEndsAt } }`,
		map[string]any{"c": apptest.ID(contactID)}).OK(t).Decode(t, &out)
	m := map[int]contactChannelView{}
	for _, cc := range out.ContactChannels {
		m[apptest.ParseID(t, cc.Channel.ID)] = cc
	}
	return m
}

func wantCanWrite(t *testing.T, got map[int]contactChannelView, channelID int, reason string) {
	t.Helper()
	cc, ok := got[channelID]
	if !ok {
		t.Fatalf("contactChannels has no channel %d: %+v", channelID, got)
	}
	if reason == "" {
		if !cc.CanWrite || cc.Reason != nil {
			t.Fatalf("channel %d: canWrite %v reason %v, want writable", channelID, cc.CanWrite, str(cc.Reason))
		}
		return
	}
	if cc.CanWrite || str(cc.Reason) != reason {
		t.Fatalf("channel %d: canWrite %v reason %q, want %s", channelID, cc.CanWrite, str(cc.Reason), reason)
	}
}

const startChatMutation = `mutation($in: StartChatInput!) { startChat(input: $in) { ` + chatFields + ` } }`

func (r *rig) startChat(t *testing.T, token string, in map[string]any) apptest.Response {
	t.Helper()
	if _, ok := in["text"]; !ok {
		in["text"] = "Hello again, this is Acme support."
	}
	return r.s.Do(t, token, startChatMutation, map[string]any{"in": in})
}

func (r *rig) complete(t *testing.T, op apptest.Operator, chatID int) {
	t.Helper()
	r.s.Do(t, op.Token, `mutation($id: ID!) { completeChat(id: $id) { id } }`, map[string]any{"id": apptest.ID(chatID)}).OK(t)
}

// TestR21_StartChat goes through every refusal of startChat, each named by
// its code, and through successes, which open an IN_PROGRESS chat owned by
// the caller whose first message the outbox sends; contactChannels answers
// the same conditions per channel.
func TestR21_StartChat(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.graph.Script("POST /"+waPhoneID+"/messages", apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "whatsapp", "send_text_success.json")))
	bob := r.addOperator(t, enum.RoleOperator)
	tgA := r.channel(t, "TELEGRAM", nil)
	tgB := r.channel(t, "TELEGRAM", map[string]any{"token": "6001234999:AAH-second-fake-bot-token-for-tests01"})
	wa := r.channel(t, "WHATSAPP", nil)

	// Olga writes to bot A; Bob takes her chat.
	r.deliver(t, "TELEGRAM", tgA, "inbound_text.json")
	olgaChat := r.lastChat(t, tgA)
	olga := olgaChat.ContactID
	r.accept(t, bob, olgaChat.ID)
	// Sheena writes on WhatsApp; Bob takes and ends her chat.
	r.deliver(t, "WHATSAPP", wa, "inbound_text.json")
	sheenaChat := r.lastChat(t, wa)
	sheena := sheenaChat.ContactID
	sheenaWrote := r.s.Clock.Now()
	r.accept(t, bob, sheenaChat.ID)
	r.complete(t, bob, sheenaChat.ID)
	// A contact entered by hand has no identity anywhere.
	var bare struct{ CreateContact struct{ ID string } }
	r.s.Do(t, r.op.Token, `mutation { createContact(input: {name: "Walk-in Customer", phone: "+15550001111"}) { id } }`, nil).
		OK(t).Decode(t, &bare)
	r.run(t)

	cc := r.contactChannels(t, r.op.Token, olga)
	wantCanWrite(t, cc, tgA, "ACTIVE_CHAT_EXISTS")
	wantCanWrite(t, cc, tgB, "NO_CONVERSATION")
	wantCanWrite(t, cc, wa, "NO_IDENTITY")
	if len(cc) != 3 {
		t.Fatalf("contactChannels lists %d channels, want the 3 provider channels", len(cc))
	}

	refusals := []struct {
		name string
		in   map[string]any
		code string
	}{
		{"no channel of the provider", map[string]any{"contactId": apptest.ID(olga), "provider": "MESSENGER"}, "NO_CHANNEL"},
		{"unknown channel", map[string]any{"contactId": apptest.ID(olga), "channelId": apptest.ID(wa + 1000000)}, "NO_CHANNEL"},
		{"another operator's chat is open", map[string]any{"contactId": apptest.ID(olga), "channelId": apptest.ID(tgA)}, "ACTIVE_CHAT_EXISTS"},
		{"never wrote on the channel", map[string]any{"contactId": apptest.ID(olga), "channelId": apptest.ID(tgB)}, "NO_CONVERSATION"},
		{"no identity on the provider", map[string]any{"contactId": apptest.ID(olga), "provider": "WHATSAPP"}, "NO_IDENTITY"},
		{"contact without identities", map[string]any{"contactId": bare.CreateContact.ID, "provider": "TELEGRAM"}, "NO_IDENTITY"},
	}
	for _, ref := range refusals {
		before := r.s.RowCounts(t)
		r.startChat(t, r.op.Token, ref.in).Expect(t, ref.code)
		r.s.AssertNoWrites(t, before)
	}
	r.s.Do(t, r.op.Token, startChatMutation, map[string]any{"in": map[string]any{"contactId": apptest.ID(olga), "text": "Hi"}}).
		Expect(t, "VALIDATION") // neither a channel nor a provider
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(olga), "provider": "TELEGRAM", "text": "  "}).Expect(t, "VALIDATION")
	key := r.s.CreateAPIKey(t, enum.ApiKeyIntegration)
	r.startChat(t, key.Key, map[string]any{"contactId": apptest.ID(olga), "provider": "TELEGRAM"}).Expect(t, "FORBIDDEN")
	if n := r.tg.Count("sendMessage") + r.graph.Count(""); n != 0 {
		t.Fatalf("refusals called the providers %d times", n)
	}

	// Once Bob ends Olga's chat, she can be written to on bot A, the
	// channel she used, even by provider.
	r.complete(t, bob, olgaChat.ID)
	wantCanWrite(t, r.contactChannels(t, r.op.Token, olga), tgA, "")
	const text = "Hi Olga, your replacement ships tomorrow."
	var started struct{ StartChat chatView }
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(olga), "provider": "TELEGRAM", "text": text}).OK(t).Decode(t, &started)
	sc := started.StartChat
	if sc.Status != "IN_PROGRESS" || sc.Owner == nil || sc.Owner.ID != r.op.GID || sc.Channel.ID != apptest.ID(tgA) ||
		sc.Contact.ID != apptest.ID(olga) || sc.ReplyWindowEndsAt != nil {
		t.Fatalf("started chat = %+v, want IN_PROGRESS on channel %d owned by %s", sc, tgA, r.op.GID)
	}
	if len(sc.Messages.Edges) != 1 || sc.Messages.Edges[0].Node.Text != text || str(sc.Messages.Edges[0].Node.DeliveryStatus) != "PENDING" {
		t.Fatalf("started chat messages = %+v, want the first message PENDING", sc.Messages)
	}
	startedID := apptest.ParseID(t, sc.ID)
	var panel struct {
		Panel struct {
			ActiveChats []struct{ Chat struct{ ID string } }
		}
	}
	r.s.Do(t, r.op.Token, `{ panel { activeChats { chat { id } } } }`, nil).OK(t).Decode(t, &panel)
	if len(panel.Panel.ActiveChats) != 1 || panel.Panel.ActiveChats[0].Chat.ID != sc.ID {
		t.Fatalf("the caller's active chats = %+v, want the started chat", panel.Panel.ActiveChats)
	}
	r.run(t)
	call := r.tg.Last(t, "sendMessage")
	if call.Token != tgToken || call.Fields["chat_id"] != tgChatID || call.Fields["text"] != text {
		t.Fatalf("sendMessage = token %q %v", call.Token, call.Fields)
	}
	firstID := apptest.ParseID(t, sc.Messages.Edges[0].Node.ID)
	if m := r.message(t, r.op.Token, firstID); m.DeliveryStatus != "SENT" || str(m.ProviderMessageID) != tgChatID+":4127" {
		t.Fatalf("first message = %+v", m)
	}
	// The chat is open now: a second start is refused.
	wantCanWrite(t, r.contactChannels(t, bob.Token, olga), tgA, "ACTIVE_CHAT_EXISTS")
	r.startChat(t, bob.Token, map[string]any{"contactId": apptest.ID(olga), "channelId": apptest.ID(tgA)}).Expect(t, "ACTIVE_CHAT_EXISTS")
	r.complete(t, r.op, startedID)

	// An inactive channel.
	r.s.Do(t, r.admin, `mutation($id: ID!) { setChannelActive(id: $id, active: false) { id } }`, map[string]any{"id": apptest.ID(tgA)}).OK(t)
	wantCanWrite(t, r.contactChannels(t, r.op.Token, olga), tgA, "CHANNEL_INACTIVE")
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(olga), "channelId": apptest.ID(tgA)}).Expect(t, "CHANNEL_INACTIVE")
	r.s.Do(t, r.admin, `mutation($id: ID!) { setChannelActive(id: $id, active: false) { id } }`, map[string]any{"id": apptest.ID(tgB)}).OK(t)
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(olga), "provider": "TELEGRAM"}).Expect(t, "CHANNEL_INACTIVE")

	// WhatsApp within 24 hours of Sheena's last message: allowed, and the
	// new chat closes its window when hers does.
	r.s.Clock.Advance(20 * time.Hour)
	windowEnds := sheenaWrote.Add(24 * time.Hour)
	cc = r.contactChannels(t, r.op.Token, sheena)
	wantCanWrite(t, cc, wa, "")
	if got := cc[wa].ReplyWindowEndsAt; got == nil || !got.Equal(windowEnds) {
		t.Fatalf("contactChannels replyWindowEndsAt = %v, want %v", got, windowEnds)
	}
	wantCanWrite(t, cc, tgA, "CHANNEL_INACTIVE")
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(sheena), "provider": "WHATSAPP", "text": "Hi Sheena!"}).OK(t).Decode(t, &started)
	if sc := started.StartChat; sc.Status != "IN_PROGRESS" || sc.ReplyWindowEndsAt == nil || !sc.ReplyWindowEndsAt.Equal(windowEnds) {
		t.Fatalf("started WhatsApp chat = %+v, want its window to end at %v", sc, windowEnds)
	}
	r.run(t)
	if call := r.graph.Last(t, "POST /"+waPhoneID+"/messages"); call.JSON["recipient"] != waBSUID {
		t.Fatalf("WhatsApp send = %s", call.Body)
	}
	r.complete(t, r.op, apptest.ParseID(t, started.StartChat.ID))

	// More than 24 hours after her last message: refused.
	r.s.Clock.Advance(5 * time.Hour)
	cc = r.contactChannels(t, r.op.Token, sheena)
	wantCanWrite(t, cc, wa, "REPLY_WINDOW_EXPIRED")
	if got := cc[wa].ReplyWindowEndsAt; got == nil || !got.Equal(windowEnds) {
		t.Fatalf("contactChannels replyWindowEndsAt = %v, want %v", got, windowEnds)
	}
	calls := r.graph.Count("")
	r.startChat(t, r.op.Token, map[string]any{"contactId": apptest.ID(sheena), "channelId": apptest.ID(wa)}).Expect(t, "REPLY_WINDOW_EXPIRED")
	r.run(t)
	if n := r.graph.Count(""); n != calls {
		t.Fatalf("the Graph API was called after a refused start")
	}
}

// TestR21_RegisterTelegramWebhook: setWebhook is called with the public URL
// of the channel's webhook endpoint and its secret; Telegram's refusal, a
// Meta channel and a server without a public URL are refused.
func TestR21_RegisterTelegramWebhook(t *testing.T) {
	t.Parallel()
	const mutation = `mutation($id: ID!) { registerTelegramWebhook(channelId: $id) { id webhookPath } }`
	r := newRig(t, apptest.WithConfig(func(c *app.Config) { c.PublicURL = "https://desk.example.com/" }))
	// A channel created without a secret gets one generated.
	tg := r.channel(t, "TELEGRAM", map[string]any{"webhookSecret": nil})
	wa := r.channel(t, "WHATSAPP", nil)

	var out struct {
		RegisterTelegramWebhook struct{ ID, WebhookPath string }
	}
	r.s.Do(t, r.admin, mutation, map[string]any{"id": apptest.ID(tg)}).OK(t).Decode(t, &out)
	path := out.RegisterTelegramWebhook.WebhookPath
	if path != "/webhooks/telegram/"+apptest.ID(tg) {
		t.Fatalf("webhookPath = %q", path)
	}
	call := r.tg.Last(t, "setWebhook")
	ch, err := r.s.Client().Channel.Get(bg, tg)
	if err != nil {
		t.Fatal(err)
	}
	if ch.WebhookSecret == "" {
		t.Fatal("the channel has no generated webhook secret")
	}
	if call.Token != tgToken || call.Fields["url"] != "https://desk.example.com"+path || call.Fields["secret_token"] != ch.WebhookSecret {
		t.Fatalf("setWebhook token %q fields %v, want url https://desk.example.com%s and the channel's secret", call.Token, call.Fields, path)
	}
	if au := call.Fields["allowed_updates"]; au == "" || !jsonHas(au, "message") || !jsonHas(au, "my_chat_member") {
		t.Fatalf("setWebhook allowed_updates = %q", au)
	}
	// Telegram will call the path with that secret: it is accepted.
	body := apptest.Fixture(t, "telegram", "inbound_text.json")
	if code := r.s.PostWebhook(t, "telegram", tg, body, http.Header{"X-Telegram-Bot-Api-Secret-Token": {ch.WebhookSecret}}); code != http.StatusOK {
		t.Fatalf("a delivery with the registered secret answered %d", code)
	}

	r.s.Do(t, r.op.Token, mutation, map[string]any{"id": apptest.ID(tg)}).Expect(t, "FORBIDDEN")
	r.s.Do(t, r.admin, mutation, map[string]any{"id": apptest.ID(wa)}).Expect(t, "VALIDATION")
	r.s.Do(t, r.admin, mutation, map[string]any{"id": apptest.ID(wa + 1000000)}).Expect(t, "NOT_FOUND")
	r.tg.Script("setWebhook", apptest.TelegramError(t, "error_401_unauthorized.json"))
	e := r.s.Do(t, r.admin, mutation, map[string]any{"id": apptest.ID(tg)}).Expect(t, "CONFLICT")
	if containsAny(e.Message, tgToken, ch.WebhookSecret) {
		t.Fatalf("the refusal shows a secret: %q", e.Message)
	}
	if n := r.tg.Count("setWebhook"); n != 2 {
		t.Fatalf("%d setWebhook calls, want 2 (refusals before calling Telegram make none)", n)
	}

	t.Run("without PARLEY_PUBLIC_URL", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		tg := r.channel(t, "TELEGRAM", nil)
		r.s.Do(t, r.admin, mutation, map[string]any{"id": apptest.ID(tg)}).Expect(t, "VALIDATION")
		if n := r.tg.Count("setWebhook"); n != 0 {
			t.Fatalf("setWebhook called %d times without a public URL", n)
		}
	})
}

// jsonHas reports whether a JSON array of strings holds item.
func jsonHas(list, item string) bool {
	var xs []string
	if json.Unmarshal([]byte(list), &xs) != nil {
		return false
	}
	return slices.Contains(xs, item)
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if sub != "" && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestR21_StartChatConcurrently: operators starting a chat with the same
// contact at once open exactly one chat; the others are told another chat
// is open.
func TestR21_StartChatConcurrently(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ops := []apptest.Operator{r.op, r.addOperator(t, enum.RoleOperator), r.addOperator(t, enum.RoleOperator), r.addOperator(t, enum.RoleOperator)}
	tg := r.channel(t, "TELEGRAM", nil)
	r.deliver(t, "TELEGRAM", tg, "inbound_text.json")
	first := r.lastChat(t, tg)
	r.accept(t, r.op, first.ID)
	r.complete(t, r.op, first.ID)

	codes := make([]string, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Go(func() {
			res := r.startChat(t, op.Token, map[string]any{"contactId": apptest.ID(first.ContactID), "channelId": apptest.ID(tg)})
			codes[i] = res.Code()
		})
	}
	wg.Wait()
	ok := 0
	for i, c := range codes {
		switch c {
		case "":
			ok++
		case "ACTIVE_CHAT_EXISTS":
		default:
			t.Errorf("operator %d: %s, want success or ACTIVE_CHAT_EXISTS", i, c)
		}
	}
	if ok != 1 {
		t.Fatalf("%d chats started, want exactly 1 (codes %v)", ok, codes)
	}
	open, err := r.s.Client().Chat.Query().Where(chat.ChannelID(tg), chat.StatusEQ(enum.ChatInProgress)).Count(bg)
	if err != nil || open != 1 {
		t.Fatalf("%d open chats (%v), want 1", open, err)
	}
	r.run(t)
	if n := r.tg.Count("sendMessage"); n != 1 {
		t.Fatalf("%d first messages sent, want 1", n)
	}
}
