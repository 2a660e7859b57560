package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels/messenger"
	"github.com/parleydesk/parley/channels/whatsapp"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	entevent "github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/job"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

// The outbox (R14) end to end: an operator's message goes through GraphQL,
// the outbox job calls a fake provider answering with the shared fixtures,
// and the delivery status, the provider's reason and the customer's
// reachability come back to the chat. The fixtures' ids are used as the
// channels' ids so that the webhook fixtures are accepted unchanged.
const (
	tgToken    = "6001234567:AAH-fake-bot-token-for-parley-tests01"
	tgSecret   = "tg_whsec_9f8e7d6c5b4a3210" // the secret of the Telegram fixtures
	tgChatID   = "7712345678"                // the customer of the Telegram fixtures
	waPhoneID  = "110293847561029"           // phone_number_id of the WhatsApp fixtures
	waToken    = "EAAG-fake-whatsapp-system-user-token"
	waBSUID    = "US.13491208655302741918"
	waPhone    = "16505551234"
	fbPageID   = "104857392018473" // the page of the Messenger fixtures
	fbToken    = "EAAG-fake-messenger-page-access-token"
	fbPSID     = "7391045528817342"
	metaSecret = "test_app_secret" // signs the Meta fixtures
)

var bg = context.Background()

// rig is a server wired to fake providers, with a queue whose member (op)
// is ACTIVE, so that every inbound chat is offered to op.
type rig struct {
	s     *apptest.Server
	tg    *apptest.FakeProvider
	graph *apptest.FakeProvider
	admin string
	op    apptest.Operator
	queue string
}

func newRig(t *testing.T, opts ...apptest.Option) *rig {
	t.Helper()
	tg := apptest.NewFakeTelegram(t)
	g := apptest.NewFakeGraph(t)
	// The Messenger profile of a new contact (FETCH_PROFILE), with a photo
	// URL on the fake instead of Meta's CDN.
	g.Script("GET /"+fbPSID, apptest.JSONReply(http.StatusOK, []byte(`{"first_name":"Peter","last_name":"Chang","profile_pic":"`+
		g.URL+`/cdn/profilepic.jpg","id":"`+fbPSID+`"}`)))
	g.Script("GET /cdn/profilepic.jpg", apptest.Reply{Header: http.Header{"Content-Type": {"image/jpeg"}}, Body: []byte("\xff\xd8\xff fb photo")})
	base := []apptest.Option{
		apptest.WithFakeProviders(t, tg, g),
		// Reply windows are a day long: sessions must outlive the clock moves.
		apptest.WithConfig(func(c *app.Config) { c.SessionTTL = 90 * 24 * time.Hour }),
	}
	s := apptest.New(t, append(base, opts...)...)
	r := &rig{s: s, tg: tg, graph: g, admin: s.AdminToken(t)}
	r.op = s.CreateOperator(t, enum.RoleOperator)
	var q struct{ CreateQueue struct{ ID string } }
	s.Do(t, r.admin, `mutation($m: [ID!]) { createQueue(input: {name: "Support", routingRule: TO_ALL, memberIDs: $m}) { id } }`,
		map[string]any{"m": []string{r.op.GID}}).OK(t).Decode(t, &q)
	r.queue = q.CreateQueue.ID
	s.Do(t, r.op.Token, `mutation { setMyStatus(status: ACTIVE) { id } }`, nil).OK(t)
	return r
}

// addOperator creates another ACTIVE member of the queue.
func (r *rig) addOperator(t *testing.T, role enum.Role) apptest.Operator {
	t.Helper()
	op := r.s.CreateOperator(t, role)
	r.s.Do(t, r.admin, `mutation($q: ID!, $m: [ID!]) { updateQueue(id: $q, input: {addMemberIDs: $m}) { id } }`,
		map[string]any{"q": r.queue, "m": []string{op.GID}}).OK(t)
	r.s.Do(t, op.Token, `mutation { setMyStatus(status: ACTIVE) { id } }`, nil).OK(t)
	return op
}

// channel connects a channel of provider (TELEGRAM, WHATSAPP, MESSENGER)
// with the fixtures' account ids and secrets; extra overrides input fields.
func (r *rig) channel(t *testing.T, provider string, extra map[string]any) int {
	t.Helper()
	in := map[string]any{"name": apptest.Unique(strings.ToLower(provider)), "provider": provider, "queueID": r.queue}
	switch provider {
	case "TELEGRAM":
		in["token"], in["webhookSecret"] = tgToken, tgSecret
	case "WHATSAPP":
		in["externalID"], in["token"], in["appSecret"], in["verifyToken"] = waPhoneID, waToken, metaSecret, "wa-verify"
	case "MESSENGER":
		in["externalID"], in["token"], in["appSecret"], in["verifyToken"] = fbPageID, fbToken, metaSecret, "fb-verify"
	}
	for k, v := range extra {
		if v == nil {
			delete(in, k)
		} else {
			in[k] = v
		}
	}
	var out struct{ CreateChannel struct{ ID string } }
	r.s.Do(t, r.admin, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id } }`,
		map[string]any{"in": in}).OK(t).Decode(t, &out)
	return apptest.ParseID(t, out.CreateChannel.ID)
}

// deliver posts a webhook fixture to the channel, authenticated as the
// provider does, and expects it accepted.
func (r *rig) deliver(t *testing.T, provider string, channelID int, fixture string) {
	t.Helper()
	dir := strings.ToLower(provider)
	body := apptest.Fixture(t, dir, fixture)
	h := http.Header{}
	if provider == "TELEGRAM" {
		h.Set("X-Telegram-Bot-Api-Secret-Token", tgSecret)
	} else {
		h.Set("X-Hub-Signature-256", apptest.MetaSignature(body, metaSecret))
	}
	if code := r.s.PostWebhook(t, dir, channelID, body, h); code != http.StatusOK {
		t.Fatalf("webhook %s/%s answered %d\n%s", dir, fixture, code, r.s.Logs())
	}
}

// lastChat is the newest chat of a channel.
func (r *rig) lastChat(t *testing.T, channelID int) *ent.Chat {
	t.Helper()
	c, err := r.s.Client().Chat.Query().Where(chat.ChannelID(channelID)).Order(ent.Desc(chat.FieldID)).First(bg)
	if err != nil {
		t.Fatalf("chat of channel %d: %v", channelID, err)
	}
	return c
}

func (r *rig) accept(t *testing.T, op apptest.Operator, chatID int) {
	t.Helper()
	r.s.Do(t, op.Token, `mutation($id: ID!) { acceptChat(id: $id) { id } }`, map[string]any{"id": apptest.ID(chatID)}).OK(t)
}

// openChat connects a channel of provider, has the customer of its
// inbound_text fixture write, and has op accept the chat.
func (r *rig) openChat(t *testing.T, provider string) (channelID, chatID int) {
	t.Helper()
	channelID = r.channel(t, provider, nil)
	r.deliver(t, provider, channelID, "inbound_text.json")
	chatID = r.lastChat(t, channelID).ID
	r.accept(t, r.op, chatID)
	return channelID, chatID
}

const sendMessageMutation = `mutation($chat: ID!, $text: String) {
  sendMessage(chatId: $chat, text: $text) { id direction deliveryStatus }
}`

// send has op send a text through GraphQL and returns the message id; the
// message starts PENDING.
func (r *rig) send(t *testing.T, token string, chatID int, text string) int {
	t.Helper()
	var out struct {
		SendMessage struct{ ID, Direction, DeliveryStatus string }
	}
	r.s.Do(t, token, sendMessageMutation, map[string]any{"chat": apptest.ID(chatID), "text": text}).OK(t).Decode(t, &out)
	if out.SendMessage.DeliveryStatus != "PENDING" || out.SendMessage.Direction != "OUTBOUND" {
		t.Fatalf("sendMessage = %+v, want an OUTBOUND message PENDING", out.SendMessage)
	}
	return apptest.ParseID(t, out.SendMessage.ID)
}

// run runs the jobs due on the server's clock.
func (r *rig) run(t *testing.T) {
	t.Helper()
	if _, err := r.s.Desk().RunDueJobs(bg); err != nil {
		t.Fatalf("RunDueJobs: %v", err)
	}
}

// advance moves the clock and runs what fell due.
func (r *rig) advance(t *testing.T, d time.Duration) {
	t.Helper()
	r.s.Clock.Advance(d)
	r.run(t)
}

// msgView is a message as its operator sees it through GraphQL.
type msgView struct {
	DeliveryStatus    string
	DeliveryErrorCode *string
	DeliveryError     *string
	ProviderMessageID *string
	SentAt            *time.Time
	Kind              string
	Text              string
	Attachments       []attView
}

type attView struct {
	ID, Kind, Status string
	FileName         *string
	MimeType         *string
	Size             *int
	URL              *string
}

const msgFields = `deliveryStatus deliveryErrorCode deliveryError providerMessageID sentAt kind text
  attachments { id kind status fileName mimeType size url }`

func (r *rig) message(t *testing.T, token string, id int) msgView {
	t.Helper()
	var out struct{ Node msgView }
	r.s.Do(t, token, `query($id: ID!) { node(id: $id) { ... on Message { `+msgFields+` } } }`,
		map[string]any{"id": apptest.ID(id)}).OK(t).Decode(t, &out)
	return out.Node
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// sendJob is the outbox job of a message.
func (r *rig) sendJob(t *testing.T, msgID int) *ent.Job {
	t.Helper()
	jobs, err := r.s.Client().Job.Query().Where(job.Kind("SEND")).All(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if ref, _ := j.Payload["ref"].(float64); int(ref) == msgID {
			return j
		}
	}
	t.Fatalf("no SEND job for message %d", msgID)
	return nil
}

// identities are the chat's contact's identities as GraphQL shows them.
type identityView struct {
	Provider          string
	ExternalID        string
	Unreachable       bool
	UnreachableReason *string
}

func (r *rig) identities(t *testing.T, token string, chatID int) []identityView {
	t.Helper()
	var out struct {
		Node struct {
			Contact struct{ Identities []identityView }
		}
	}
	r.s.Do(t, token, `query($id: ID!) { node(id: $id) { ... on Chat { contact { identities { provider externalID unreachable unreachableReason } } } } }`,
		map[string]any{"id": apptest.ID(chatID)}).OK(t).Decode(t, &out)
	return out.Node.Contact.Identities
}

// outboundCase is how one provider is sent to and how it fails.
type outboundCase struct {
	provider string // TELEGRAM, WHATSAPP, MESSENGER
	fake     func(r *rig) *apptest.FakeProvider
	// key is the fake's route of a text send.
	key string
	// success answers like the success fixture, with a message id of its
	// own from the second call on (ids are unique per channel); fixture is
	// the fixture as it is.
	success *successes
	fixture apptest.Reply
	// checkRequest checks that the provider was asked to send text to the
	// customer of the fixtures, with the channel's credentials.
	checkRequest func(t *testing.T, c apptest.ProviderCall, text string)
	providerID   string // the message id of the success fixture
	// rateLimited asks to come back after retryAfter.
	rateLimited apptest.Reply
	retryAfter  time.Duration
	rateCode    string
	// blocked: the customer blocked us (nil: the provider has no such answer).
	blocked                    *apptest.Reply
	blockedCode, blockedReason string
	// windowClosed: the provider's reply-window refusal (nil: no window).
	windowClosed *apptest.Reply
	windowCode   string
	badToken     apptest.Reply
	badTokenCode string
	transient    apptest.Reply
}

func outboundCases(t *testing.T) []outboundCase {
	blockedTG := apptest.TelegramError(t, "error_403_blocked.json")
	windowWA := apptest.GraphError(t, "whatsapp", "error_131047_response.json")
	blockedFB := apptest.GraphError(t, "messenger", "error_user_unavailable.json")
	windowFB := apptest.GraphError(t, "messenger", "error_outside_window.json")
	return []outboundCase{{
		provider: "TELEGRAM",
		fake:     func(r *rig) *apptest.FakeProvider { return r.tg },
		key:      "sendMessage",
		success: newSuccesses(apptest.Fixture(t, "telegram", "send_message_success.json"), func(m map[string]any, n int) string {
			res := m["result"].(map[string]any)
			res["message_id"] = 4126 + n
			return fmt.Sprintf("%s:%d", tgChatID, 4126+n)
		}),
		fixture: apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "telegram", "send_message_success.json")),
		checkRequest: func(t *testing.T, c apptest.ProviderCall, text string) {
			if c.Token != tgToken || c.Fields["chat_id"] != tgChatID || c.Fields["text"] != text {
				t.Errorf("sendMessage token %q fields %v, want chat_id %s and text %q", c.Token, c.Fields, tgChatID, text)
			}
		},
		providerID:  tgChatID + ":4127",
		rateLimited: apptest.TelegramError(t, "error_429_retry_after.json"),
		retryAfter:  17 * time.Second,
		rateCode:    "429",
		blocked:     &blockedTG, blockedCode: "403", blockedReason: "Forbidden: bot was blocked by the user",
		badToken:     apptest.TelegramError(t, "error_401_unauthorized.json"),
		badTokenCode: "401",
		transient:    apptest.JSONReply(http.StatusBadGateway, []byte(`{"ok":false,"error_code":502,"description":"Bad Gateway"}`)),
	}, {
		provider: "WHATSAPP",
		fake:     func(r *rig) *apptest.FakeProvider { return r.graph },
		key:      "POST /" + waPhoneID + "/messages",
		success: newSuccesses(apptest.Fixture(t, "whatsapp", "send_text_success.json"), func(m map[string]any, n int) string {
			msg := m["messages"].([]any)[0].(map[string]any)
			if n > 1 {
				msg["id"] = fmt.Sprintf("%s%d", msg["id"], n)
			}
			return msg["id"].(string)
		}),
		fixture: apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "whatsapp", "send_text_success.json")),
		checkRequest: func(t *testing.T, c apptest.ProviderCall, text string) {
			body, _ := c.JSON["text"].(map[string]any)
			if c.Token != waToken || c.JSON["messaging_product"] != "whatsapp" || c.JSON["recipient"] != waBSUID ||
				c.JSON["to"] != waPhone || c.JSON["type"] != "text" || body["body"] != text {
				t.Errorf("WhatsApp send with token %q: %s", c.Token, c.Body)
			}
		},
		providerID:   "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QjBFM0Q2QzQyMDlFNkE3RTkA",
		rateLimited:  apptest.GraphError(t, "whatsapp", "error_131056_pair_rate_limit.json"),
		retryAfter:   whatsapp.PairRateRetry,
		rateCode:     "131056",
		windowClosed: &windowWA, windowCode: "REPLY_WINDOW_EXPIRED:131047",
		badToken:     apptest.GraphError(t, "whatsapp", "error_190_token_expired.json"),
		badTokenCode: "190/463",
		transient:    apptest.Reply{Status: http.StatusServiceUnavailable, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("Service Unavailable")},
	}, {
		provider: "MESSENGER",
		fake:     func(r *rig) *apptest.FakeProvider { return r.graph },
		key:      "POST /" + fbPageID + "/messages",
		success: newSuccesses(apptest.Fixture(t, "messenger", "send_text_success.json"), func(m map[string]any, n int) string {
			if n > 1 {
				m["message_id"] = fmt.Sprintf("%s%d", m["message_id"], n)
			}
			return m["message_id"].(string)
		}),
		fixture: apptest.JSONReply(http.StatusOK, apptest.Fixture(t, "messenger", "send_text_success.json")),
		checkRequest: func(t *testing.T, c apptest.ProviderCall, text string) {
			to, _ := c.JSON["recipient"].(map[string]any)
			msg, _ := c.JSON["message"].(map[string]any)
			if c.Token != fbToken || to["id"] != fbPSID || c.JSON["messaging_type"] != "RESPONSE" || msg["text"] != text {
				t.Errorf("Messenger send with token %q: %s", c.Token, c.Body)
			}
		},
		providerID: "m_h6dP9Wk1rC5tW8sF4q7eZ2xG0yJ3lM6nP8qR1fD4iB7hT0sW3cK6xZ9eA2oU5vG8yJ1lM4nP7qR0",
		// A 429 with Retry-After beyond the rule's own delay for code 613.
		rateLimited: apptest.Reply{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}},
			Body: []byte(`{"error":{"message":"(#613) Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613,"fbtrace_id":"Fk1"}}`)},
		retryAfter: max(120*time.Second, messenger.RateRetry),
		rateCode:   "613",
		blocked:    &blockedFB, blockedCode: "551/1545041", blockedReason: "This person isn't available right now.",
		windowClosed: &windowFB, windowCode: "REPLY_WINDOW_EXPIRED:10/2018278",
		badToken:     apptest.GraphError(t, "messenger", "error_invalid_token.json"),
		badTokenCode: "190",
		transient: apptest.JSONReply(http.StatusInternalServerError,
			[]byte(`{"error":{"message":"An unexpected error has occurred. Please retry your request later.","type":"OAuthException","code":2,"is_transient":true,"fbtrace_id":"Fk2"}}`)),
	}}
}

// successes serves a send's success fixture: unchanged the first time,
// then with a message id of its own each time.
type successes struct {
	mu      sync.Mutex
	fixture []byte
	variant func(m map[string]any, n int) string
	n       int
	last    string
}

func newSuccesses(fixture []byte, variant func(m map[string]any, n int) string) *successes {
	return &successes{fixture: fixture, variant: variant}
}

func (s *successes) reply() apptest.Reply {
	return apptest.Reply{Handler: func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.n++
		var m map[string]any
		if err := json.Unmarshal(s.fixture, &m); err != nil {
			panic(err)
		}
		s.last = s.variant(m, s.n)
		body := s.fixture
		if s.n > 1 {
			body, _ = json.Marshal(m)
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}}
}

// lastID is the message id of the last success served.
func (s *successes) lastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// TestR14_Outbound sends operator messages on each provider and checks
// every outcome the outbox knows: sent (and, on WhatsApp, the delivery
// receipts), rate limited, refused by the provider's reply window, rejected
// credentials, a provider down beyond the retries, a process that died
// mid-call, an answer lost on the way back, and a customer who blocked us.
// One server and chat per provider; each step sends a message of its own.
func TestR14_Outbound(t *testing.T) {
	t.Parallel()
	for _, tc := range outboundCases(t) {
		t.Run(tc.provider, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			fake := tc.fake(r)
			channelID, chatID := r.openChat(t, tc.provider)
			r.run(t) // the jobs of the inbound message (profile, routing)
			// calls counts the sends since the step began.
			var base int
			begin := func(replies ...apptest.Reply) {
				fake.Script(tc.key, replies...)
				base = fake.Count(tc.key)
			}
			calls := func() int { return fake.Count(tc.key) - base }

			t.Run("sent", func(t *testing.T) {
				begin(tc.success.reply())
				const text = "Hi, your order A-1042 ships today."
				id := r.send(t, r.op.Token, chatID, text)
				if n := calls(); n != 0 {
					t.Fatalf("the provider was called %d times before the outbox ran", n)
				}
				r.run(t)
				if n := calls(); n != 1 {
					t.Fatalf("%d send calls, want 1", n)
				}
				tc.checkRequest(t, fake.Last(t, tc.key), text)
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "SENT" || str(m.ProviderMessageID) != tc.providerID || m.SentAt == nil || !m.SentAt.Equal(r.s.Clock.Now()) {
					t.Fatalf("message = %+v, want SENT as %s at %s", m, tc.providerID, r.s.Clock.Now())
				}
				if got := r.deliveryEvents(t, chatID, id); len(got) != 1 || got[0].Payload["status"] != "SENT" ||
					len(got[0].Audience) != 1 || got[0].Audience[0] != r.op.ID {
					t.Fatalf("DELIVERY_STATUS_CHANGED events = %+v, want one SENT for the owner", got)
				}
				// Sent once: the job is done, later runs call no one.
				if j := r.sendJob(t, id); j.Status != enum.JobDone {
					t.Fatalf("send job = %+v", j)
				}
				r.advance(t, time.Hour)
				if n := calls(); n != 1 {
					t.Fatalf("%d send calls after the job was done, want 1", n)
				}
				if tc.provider != "WHATSAPP" {
					return
				}
				// The receipts of the fixtures name this message: sent <
				// delivered < read, never back.
				for _, step := range []struct{ fixture, want string }{
					{"status_delivered.json", "DELIVERED"},
					{"status_read.json", "READ"},
					{"status_sent.json", "READ"},      // late: ignored
					{"status_delivered.json", "READ"}, // redelivered: ignored
				} {
					r.deliver(t, "WHATSAPP", channelID, step.fixture)
					if m := r.message(t, r.op.Token, id); m.DeliveryStatus != step.want {
						t.Fatalf("after %s: %s, want %s", step.fixture, m.DeliveryStatus, step.want)
					}
				}
				var got []any
				for _, e := range r.deliveryEvents(t, chatID, id) {
					got = append(got, e.Payload["status"])
				}
				if len(got) != 3 || got[0] != "SENT" || got[1] != "DELIVERED" || got[2] != "READ" {
					t.Fatalf("delivery events %v, want SENT DELIVERED READ", got)
				}
			})

			t.Run("rate limited", func(t *testing.T) {
				begin(tc.rateLimited, tc.success.reply())
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				if n, m := calls(), r.message(t, r.op.Token, id); n != 1 || m.DeliveryStatus != "PENDING" {
					t.Fatalf("after the rate limit: %d calls, message %+v; want 1 call, PENDING", n, m)
				}
				j := r.sendJob(t, id)
				if want := r.s.Clock.Now().Add(tc.retryAfter); j.LockedUntil == nil || !j.LockedUntil.Equal(want) {
					t.Fatalf("job locked until %v, want %v (the provider's delay)", j.LockedUntil, want)
				}
				if !strings.Contains(j.LastError, tc.rateCode) {
					t.Errorf("job last error %q does not name %s", j.LastError, tc.rateCode)
				}
				r.advance(t, tc.retryAfter-time.Second)
				if n := calls(); n != 1 {
					t.Fatalf("retried %s after, before the provider's %s", tc.retryAfter-time.Second, tc.retryAfter)
				}
				r.advance(t, 2*time.Second)
				if n := calls(); n != 2 {
					t.Fatalf("%d calls after the delay, want 2", n)
				}
				if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "SENT" || str(m.ProviderMessageID) != tc.success.lastID() {
					t.Fatalf("message after the retry = %+v", m)
				}
			})

			t.Run("reply window closed", func(t *testing.T) {
				if tc.windowClosed == nil {
					t.Skipf("%s has no reply window", tc.provider)
				}
				begin(*tc.windowClosed)
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != tc.windowCode || str(m.DeliveryError) == "" {
					t.Fatalf("message = %+v, want FAILED %s with the provider's reason", m, tc.windowCode)
				}
				if ids := r.identities(t, r.op.Token, chatID); len(ids) != 1 || ids[0].Unreachable {
					t.Fatalf("identities = %+v: a closed window does not make the customer unreachable", ids)
				}
				r.advance(t, time.Hour)
				if n := calls(); n != 1 {
					t.Fatalf("%d calls, want 1", n)
				}
			})

			t.Run("invalid token", func(t *testing.T) {
				begin(tc.badToken, tc.success.reply())
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != tc.badTokenCode || str(m.DeliveryError) == "" {
					t.Fatalf("message = %+v, want FAILED %s", m, tc.badTokenCode)
				}
				if containsAny(str(m.DeliveryError), tgToken, waToken, fbToken) {
					t.Fatalf("the delivery error shows the token: %q", str(m.DeliveryError))
				}
				if j := r.sendJob(t, id); j.Status != enum.JobDone {
					t.Fatalf("send job %+v, want done", j)
				}
				for range 3 {
					r.advance(t, time.Hour)
				}
				if n := calls(); n != 1 {
					t.Fatalf("%d calls, want 1: rejected credentials are not retried", n)
				}
				if ids := r.identities(t, r.op.Token, chatID); ids[0].Unreachable {
					t.Fatal("our bad token made the customer unreachable")
				}
			})

			t.Run("provider down", func(t *testing.T) {
				begin(tc.transient)
				id := r.send(t, r.op.Token, chatID, "hello")
				const attempts = 8 // the outbox's maxSendAttempts
				for n := 1; n < attempts; n++ {
					r.run(t)
					if c := calls(); c != n {
						t.Fatalf("attempt %d: %d calls", n, c)
					}
					if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "PENDING" {
						t.Fatalf("attempt %d: message %+v, want PENDING while retrying", n, m)
					}
					backoff := time.Duration(n*n) * time.Second
					if j := r.sendJob(t, id); j.LockedUntil == nil || !j.LockedUntil.Equal(r.s.Clock.Now().Add(backoff)) {
						t.Fatalf("attempt %d: job locked until %v, want now + %s", n, j.LockedUntil, backoff)
					}
					r.run(t) // not due yet
					if c := calls(); c != n {
						t.Fatalf("attempt %d retried before its backoff", n)
					}
					r.s.Clock.Advance(backoff + time.Second)
				}
				r.run(t)
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "RETRIES_EXHAUSTED" || str(m.DeliveryError) == "" {
					t.Fatalf("message = %+v, want FAILED RETRIES_EXHAUSTED", m)
				}
				if j := r.sendJob(t, id); j.Status != enum.JobFailed {
					t.Fatalf("send job = %+v, want FAILED", j)
				}
				r.advance(t, time.Hour)
				if c := calls(); c != attempts {
					t.Fatalf("%d calls, want %d", c, attempts)
				}
			})

			// At most once: a send whose outcome was never recorded (the
			// process died between the provider's acceptance and the
			// commit) is never made again; the next claim marks the message
			// FAILED UNCONFIRMED without calling the provider.
			t.Run("died after the provider accepted", func(t *testing.T) {
				ctx, die := context.WithCancel(bg)
				defer die()
				// The provider receives the message, then the process dies:
				// its context ends before any answer reaches it, so the
				// outcome transaction never runs.
				begin(apptest.Reply{Handler: func(w http.ResponseWriter, req *http.Request) {
					die()
					select {
					case <-req.Context().Done(): // the client hung up
					case <-time.After(10 * time.Second): // never: the safety net of a broken test
					}
				}}, tc.success.reply())
				id := r.send(t, r.op.Token, chatID, "hello")
				if _, err := r.s.Desk().RunDueJobs(ctx); err != nil && !errors.Is(err, context.Canceled) {
					t.Fatalf("RunDueJobs: %v", err)
				}
				if n := calls(); n != 1 {
					t.Fatalf("%d calls, want 1", n)
				}
				if j := r.sendJob(t, id); j.Status != enum.JobPending || j.CallStartedAt == nil {
					t.Fatalf("job after the crash = %+v, want PENDING with its call started", j)
				}
				// The lease of the dead process still holds.
				r.run(t)
				if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "PENDING" || calls() != 1 {
					t.Fatalf("message %+v after %d calls, while the lease holds", m, calls())
				}
				r.advance(t, 5*time.Minute+time.Second) // the lease expires; another claim
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "UNCONFIRMED" || str(m.DeliveryError) == "" {
					t.Fatalf("message = %+v, want FAILED UNCONFIRMED", m)
				}
				r.advance(t, time.Hour)
				if n := calls(); n != 1 {
					t.Fatalf("%d calls: the message was sent again", n)
				}
				// The operator can send it again themselves.
				id2 := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				if m := r.message(t, r.op.Token, id2); m.DeliveryStatus != "SENT" || calls() != 2 {
					t.Fatalf("resend = %+v after %d calls", m, calls())
				}
			})

			// The provider received the request but its answer was lost
			// (the connection dropped): the message may have been
			// delivered, so it is not sent a second time.
			t.Run("answer lost", func(t *testing.T) {
				begin(apptest.Reply{Handler: dropConnection}, tc.success.reply())
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				for range 3 {
					r.advance(t, time.Hour)
				}
				if n := calls(); n != 1 {
					t.Fatalf("%d calls: a send whose answer was lost was made again (at most once)", n)
				}
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "UNCONFIRMED" {
					t.Fatalf("message = %+v, want FAILED UNCONFIRMED", m)
				}
			})

			// The provider took the message but its outcome could not be
			// recorded (here the provider answers with the id of an earlier
			// message, which the unique index refuses; a database failure at
			// that moment does the same): not sent again.
			t.Run("outcome not recorded", func(t *testing.T) {
				begin(tc.fixture, tc.success.reply()) // the id of the message of "sent"
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				if n := calls(); n != 1 {
					t.Fatalf("%d calls, want 1", n)
				}
				if j := r.sendJob(t, id); j.Status != enum.JobPending || j.CallStartedAt == nil {
					t.Fatalf("job = %+v, want PENDING with its call still marked", j)
				}
				for range 3 {
					r.advance(t, time.Hour)
				}
				if n := calls(); n != 1 {
					t.Fatalf("%d calls: a send whose outcome was not recorded was made again", n)
				}
				if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "UNCONFIRMED" {
					t.Fatalf("message = %+v, want FAILED UNCONFIRMED", m)
				}
			})

			if tc.provider == "TELEGRAM" {
				t.Run("claimed by an instance that died", func(t *testing.T) {
					begin(tc.success.reply())
					id := r.send(t, r.op.Token, chatID, "hello")
					// What a claim and markCallStarted leave behind when the
					// process dies before the provider's answer is recorded.
					j := r.sendJob(t, id)
					now := r.s.Clock.Now()
					if err := r.s.Client().Job.UpdateOneID(j.ID).SetLockedUntil(now.Add(time.Minute)).AddAttempts(1).
						SetCallStartedAt(now).Exec(bg); err != nil {
						t.Fatal(err)
					}
					r.advance(t, 30*time.Second)
					if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "PENDING" {
						t.Fatalf("message %+v while the dead claim's lease holds", m)
					}
					r.advance(t, 31*time.Second)
					if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != "UNCONFIRMED" {
						t.Fatalf("message = %+v, want FAILED UNCONFIRMED", m)
					}
					if n := calls(); n != 0 {
						t.Fatalf("%d calls: an unconfirmed send was made again", n)
					}
				})
			}

			// Last: it leaves the customer unreachable.
			t.Run("blocked", func(t *testing.T) {
				if tc.blocked == nil {
					t.Skipf("%s has no blocked answer", tc.provider)
				}
				begin(*tc.blocked)
				id := r.send(t, r.op.Token, chatID, "hello")
				r.run(t)
				m := r.message(t, r.op.Token, id)
				if m.DeliveryStatus != "FAILED" || str(m.DeliveryErrorCode) != tc.blockedCode || str(m.DeliveryError) != tc.blockedReason {
					t.Fatalf("message = %+v, want FAILED %s %q", m, tc.blockedCode, tc.blockedReason)
				}
				ids := r.identities(t, r.op.Token, chatID)
				if len(ids) != 1 || !ids[0].Unreachable || str(ids[0].UnreachableReason) != tc.blockedReason {
					t.Fatalf("identities = %+v, want the customer unreachable", ids)
				}
				r.advance(t, time.Hour)
				if n := calls(); n != 1 {
					t.Fatalf("%d calls, want 1: a permanent failure is not retried", n)
				}
			})
		})
	}
}

// TestR14_ProviderUnreachable: a send that never reached the provider
// (connection refused) is retried, not given up as unconfirmed.
func TestR14_ProviderUnreachable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1.
	r := newRig(t, apptest.WithConfig(func(c *app.Config) {
		c.TelegramAPIURL, c.GraphAPIURL = "http://127.0.0.1:1", "http://127.0.0.1:1"
	}))
	for _, p := range []string{"TELEGRAM", "WHATSAPP"} {
		_, chatID := r.openChat(t, p)
		id := r.send(t, r.op.Token, chatID, "hello")
		for attempt := 1; attempt <= 3; attempt++ {
			r.run(t)
			j := r.sendJob(t, id)
			if m := r.message(t, r.op.Token, id); m.DeliveryStatus != "PENDING" || j.Attempts != attempt || j.CallStartedAt != nil ||
				!strings.Contains(j.LastError, "refused") {
				t.Fatalf("%s attempt %d: message %+v, job attempts %d last error %q; want PENDING and retried", p, attempt, m, j.Attempts, j.LastError)
			}
			r.s.Clock.Advance(time.Duration(attempt*attempt)*time.Second + time.Second)
		}
	}
}

// deliveryEvents are the DELIVERY_STATUS_CHANGED events of a message.
func (r *rig) deliveryEvents(t *testing.T, chatID, msgID int) []*ent.Event {
	t.Helper()
	events, err := r.s.Client().Event.Query().Where(entevent.Type("DELIVERY_STATUS_CHANGED"), entevent.ChatID(chatID)).
		Order(ent.Asc(entevent.FieldID)).All(bg)
	if err != nil {
		t.Fatal(err)
	}
	var out []*ent.Event
	for _, e := range events {
		if e.Payload["messageId"] == float64(msgID) {
			out = append(out, e)
		}
	}
	return out
}

// dropConnection closes the connection without answering.
func dropConnection(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, as a crashed proxy would
	}
	conn.Close()
}
