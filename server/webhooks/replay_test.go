package webhooks_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Every webhook fixture of shared/fixtures is replayed against the real
// endpoints (R1–R3): each provider's fixtures form one customer's
// conversation, delivered in order to one server; after each delivery the
// rows it added and the state it left are checked, the jobs it enqueued run
// against the fake provider, and the same bytes are delivered again, which
// must change nothing. The conversation runs twice: with each fixture
// delivered once then replayed twice, and with each fixture's first
// delivery made 5 times at once.

// replayCase is what one webhook fixture must do.
type replayCase struct {
	name string
	// before arranges what the fixture refers to (an outbound message).
	before func(t *testing.T, e *env)
	// rows are the rows the first delivery adds, by table (the event log
	// aside); every other table must be left as it was.
	rows map[string]int
	// check asserts the state after the delivery.
	check func(t *testing.T, e *env)
	// afterJobs asserts the state once the jobs it enqueued have run.
	afterJobs func(t *testing.T, e *env)
}

// Rows added by a delivery.
var (
	// deliveryOnly: the delivery is stored and nothing else.
	deliveryOnly = map[string]int{"inbound_deliveries": 1}
	// firstMessage: a new contact writes (R1, R2): contact, identity,
	// chat, message, the chat's routing (one offer to the ACTIVE member)
	// and the profile job.
	firstMessage = map[string]int{"inbound_deliveries": 1, "contacts": 1, "contact_identities": 1, "chats": 1,
		"messages": 1, "chat_offers": 1, "routing_decisions": 1, "jobs": 1}
	// firstWhatsAppMessage: the same without the profile job (WhatsApp
	// has no profile API: the name comes with every delivery).
	firstWhatsAppMessage = map[string]int{"inbound_deliveries": 1, "contacts": 1, "contact_identities": 1, "chats": 1,
		"messages": 1, "chat_offers": 1, "routing_decisions": 1}
	// nextMessage: a message in the open chat.
	nextMessage = map[string]int{"inbound_deliveries": 1, "messages": 1}
	// nextWithFile: a message in the open chat with one file to download.
	nextWithFile = map[string]int{"inbound_deliveries": 1, "messages": 1, "attachments": 1, "jobs": 1}
)

func TestReplayFixtures(t *testing.T) {
	convs := map[string][]replayCase{
		"telegram":  telegramConversation(),
		"whatsapp":  whatsappConversation(),
		"messenger": messengerConversation(),
	}
	providers := []string{"telegram", "whatsapp", "messenger"}
	for _, prov := range providers {
		// Every webhook fixture has an expectation, and every expectation a
		// fixture.
		var names []string
		for _, c := range convs[prov] {
			names = append(names, c.name)
		}
		slices.Sort(names)
		if diff := cmp.Diff(webhookFixtures(t, prov), names); diff != "" {
			t.Errorf("%s: webhook fixtures (-in shared/fixtures +with an expectation):\n%s", prov, diff)
		}
	}
	// One server per mode; the providers' customers are independent, their
	// conversations run one after the other.
	for _, mode := range []string{"sequential", "concurrent"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			for _, prov := range providers {
				t.Run(prov, func(t *testing.T) { replayConversation(t, e, prov, convs[prov], mode == "concurrent") })
			}
		})
	}
}

func replayConversation(t *testing.T, e *env, prov string, cases []replayCase, concurrent bool) {
	ch := e.Channels[prov]
	for _, c := range cases {
		ok := t.Run(strings.TrimSuffix(c.name, ".json"), func(t *testing.T) {
			if c.before != nil {
				c.before(t, e)
			}
			before := e.counts(t)
			if concurrent {
				e.deliverConcurrently(t, prov, c.name, 5)
			} else {
				e.deliver(t, prov, c.name)
			}
			e.wantDelta(t, before, c.rows)
			// Stored durably before the 200, as it came (R3).
			body := fixture(t, prov, c.name)
			if d := e.delivery(t, ch, deliveryKey(t, prov, body)); string(d.Body) != string(body) {
				t.Errorf("stored delivery body differs from what was sent")
			}
			c.check(t, e)
			e.runJobs(t)
			for _, k := range e.pendingJobs(t) {
				if k == "DOWNLOAD" || k == "FETCH_PROFILE" || k == "SEND" {
					t.Errorf("a %s job is still pending after running the due jobs", k)
				}
			}
			if c.afterJobs != nil {
				c.afterJobs(t, e)
			}
			// Redeliveries (R3): nothing changes, not even a status.
			snap := e.dump(t)
			e.deliver(t, prov, c.name)
			if !concurrent {
				e.deliver(t, prov, c.name)
			}
			e.wantUnchanged(t, snap, "redelivering "+c.name)
			// The same events in another delivery (Meta batches as it
			// likes; a new update_id): stored as a delivery, deduplicated
			// by message id, statuses monotonic: nothing else changes.
			e.deliverVariant(t, prov, c.name)
			e.wantUnchangedBut(t, snap, "delivering "+c.name+" again in another body", "inbound_deliveries")
		})
		if !ok {
			return // later fixtures build on this one
		}
	}
	// Late redeliveries of the whole conversation, newest first (an old
	// text after its edit, a sent after a read) change nothing either.
	snap := e.dump(t)
	for i := len(cases) - 1; i >= 0; i-- {
		e.deliver(t, prov, cases[i].name)
	}
	e.wantUnchanged(t, snap, "redelivering every fixture")
}

// deliveryKey is the provider key a delivery is stored under: Telegram's
// update_id, the SHA-256 of a Meta body.
func deliveryKey(t testing.TB, prov string, body []byte) string {
	t.Helper()
	if prov != "telegram" {
		return bodyKey(body)
	}
	var u struct {
		UpdateID int64 `json:"update_id"`
	}
	if err := json.Unmarshal(body, &u); err != nil {
		t.Fatal(err)
	}
	return strconv.FormatInt(u.UpdateID, 10)
}

// --- assertions shared by the providers --------------------------------------

// wantContact checks a contact's name, username and phone.
func wantContact(t testing.TB, c *ent.Contact, name, username, phone string) {
	t.Helper()
	if c.Name != name || c.Username != username || c.Phone != phone {
		t.Errorf("contact {name %q, username %q, phone %q}, want {%q, %q, %q}", c.Name, c.Username, c.Phone, name, username, phone)
	}
}

// wantIdentity checks an identity's profile fields and reachability.
func wantIdentity(t testing.TB, id *ent.ContactIdentity, name, username, phone string, unreachable bool) {
	t.Helper()
	if id.DisplayName != name || id.Username != username || id.Phone != phone || id.Unreachable != unreachable {
		t.Errorf("identity {name %q, username %q, phone %q, unreachable %v}, want {%q, %q, %q, %v}",
			id.DisplayName, id.Username, id.Phone, id.Unreachable, name, username, phone, unreachable)
	}
}

// wantOnlyChat checks that the contact has exactly one chat on the channel,
// with the status, in the channel's queue, and (while WAITING) offered to
// the ACTIVE operator only; it returns the chat.
func wantOnlyChat(t testing.TB, e *env, ch *ent.Channel, contactID int, status enum.ChatStatus) *ent.Chat {
	t.Helper()
	chats := e.Client().Chat.Query().Where(chat.ContactID(contactID), chat.ChannelID(ch.ID)).AllX(bg)
	if len(chats) != 1 {
		t.Fatalf("contact %d has %d chats on the %s channel, want 1", contactID, len(chats), ch.Provider)
	}
	c := chats[0]
	if c.Status != status || c.QueueID != e.Queue.ID {
		t.Errorf("chat: status %s, queue %d; want %s, queue %d", c.Status, c.QueueID, status, e.Queue.ID)
	}
	offers := e.Client().ChatOffer.Query().Where(chatoffer.ChatID(c.ID)).AllX(bg)
	if len(offers) != 1 || offers[0].OperatorID != e.Operator.ID {
		t.Errorf("chat %d has %d offers (%v), want one to the ACTIVE operator %d", c.ID, len(offers), offers, e.Operator.ID)
	} else if want := map[enum.ChatStatus]enum.OfferStatus{enum.ChatWaiting: enum.OfferOpen, enum.ChatInProgress: enum.OfferAccepted}[status]; offers[0].Status != want {
		t.Errorf("offer status %s, want %s", offers[0].Status, want)
	}
	return c
}

// inbound is an expected customer message.
type inbound struct {
	kind    enum.MessageKind
	text    string
	content map[string]any
	files   []file
}

// file is an expected attachment.
type file struct {
	kind     enum.MessageKind
	ref      string
	name     string
	mime     string
	size     int
	fakeKind string // fakeFile(fakeKind, fakeID) is what the fake serves
	fakeID   string
	// storedMime and storedName are the values once stored (filled from
	// the download when the webhook had none).
	storedMime, storedName string
}

// wantInbound checks the one message with the provider id: a customer's
// message of the kind, text and content, in chatID, with its attachments
// PENDING.
func wantInbound(t testing.TB, e *env, ch *ent.Channel, providerID string, chatID int, want inbound) *ent.Message {
	t.Helper()
	m := e.message(t, ch, providerID)
	if m.Direction != enum.Inbound || m.AuthorKind != enum.AuthorCustomer || m.ChatID != chatID {
		t.Errorf("message %s: %s by %s in chat %d, want INBOUND by CUSTOMER in chat %d", providerID, m.Direction, m.AuthorKind, m.ChatID, chatID)
	}
	if m.Kind != want.kind || m.Text != want.text {
		t.Errorf("message %s: %s %q, want %s %q", providerID, m.Kind, m.Text, want.kind, want.text)
	}
	if diff := cmp.Diff(want.content, m.Content); diff != "" {
		t.Errorf("message %s content (-want +got):\n%s", providerID, diff)
	}
	if m.DeliveryStatus != nil {
		t.Errorf("message %s: delivery status %s on an inbound message", providerID, *m.DeliveryStatus)
	}
	if len(m.Edges.Attachments) != len(want.files) {
		t.Fatalf("message %s: %d attachments, want %d", providerID, len(m.Edges.Attachments), len(want.files))
	}
	for i, a := range m.Edges.Attachments {
		f := want.files[i]
		size := a.Size
		if a.Status != enum.AttachmentPending || a.Kind != f.kind || a.ProviderFileID != f.ref || a.FileName != f.name ||
			a.MimeType != f.mime || size != f.size || a.StorageKey != "" {
			t.Errorf("attachment %d: %s %s ref %q name %q mime %q size %d key %q; want PENDING %s ref %q name %q mime %q size %d",
				i, a.Status, a.Kind, a.ProviderFileID, a.FileName, a.MimeType, size, a.StorageKey, f.kind, f.ref, f.name, f.mime, f.size)
		}
	}
	return m
}

// wantStored checks that the message's attachments were copied into
// storage: STORED, with the fake's bytes.
func wantStored(t testing.TB, e *env, ch *ent.Channel, providerID string, want []file) {
	t.Helper()
	m := e.message(t, ch, providerID)
	if len(m.Edges.Attachments) != len(want) {
		t.Fatalf("message %s: %d attachments, want %d", providerID, len(m.Edges.Attachments), len(want))
	}
	for i, a := range m.Edges.Attachments {
		f := want[i]
		if a.Status != enum.AttachmentStored {
			t.Errorf("attachment %d of %s: %s, want STORED", i, providerID, a.Status)
			continue
		}
		data := fakeFile(f.fakeKind, f.fakeID)
		if got := e.stored(t, a.StorageKey); string(got) != string(data) {
			t.Errorf("attachment %d of %s: stored %q, want %q", i, providerID, got, data)
		}
		mime, name := f.storedMime, f.storedName
		if mime == "" {
			mime = f.mime
		}
		if name == "" {
			name = f.name
		}
		if a.Size != len(data) || a.MimeType != mime || a.FileName != name {
			t.Errorf("attachment %d of %s: size %v mime %q name %q, want %d %q %q", i, providerID, a.Size, a.MimeType, a.FileName, len(data), mime, name)
		}
	}
}

// wantPhoto checks that the contact's photo was copied into storage.
func wantPhoto(t testing.TB, e *env, contactID int, data []byte) {
	t.Helper()
	c := e.Client().Contact.GetX(bg, contactID)
	if c.PhotoKey == "" {
		t.Errorf("contact %d has no photo", contactID)
		return
	}
	if got := e.stored(t, c.PhotoKey); string(got) != string(data) {
		t.Errorf("contact photo: stored %q, want %q", got, data)
	}
}

// --- Telegram ----------------------------------------------------------------

const (
	olgaID      = "7712345678"
	olgaProfile = "AgACAgIAAxUAAWbNxPa1profile640AAJ7yjEbq0VwSAEAAwIAA2MAAzYE" // largest size of the newest photo
)

// telegramConversation: Olga's updates in update_id order.
func telegramConversation() []replayCase {
	tg := func(e *env) *ent.Channel { return e.Channels["telegram"] }
	olga := func(t testing.TB, e *env) *ent.ContactIdentity {
		return e.identity(t, enum.ProviderTelegram, olgaID)
	}
	// msg checks a message of Olga's one chat.
	msg := func(t testing.TB, e *env, id string, want inbound) {
		t.Helper()
		c := wantOnlyChat(t, e, tg(e), olga(t, e).Edges.Contact.ID, enum.ChatWaiting)
		wantInbound(t, e, tg(e), olgaID+":"+id, c.ID, want)
	}
	withFile := func(id string, want inbound) replayCase {
		return replayCase{rows: nextWithFile,
			check:     func(t *testing.T, e *env) { msg(t, e, id, want) },
			afterJobs: func(t *testing.T, e *env) { wantStored(t, e, tg(e), olgaID+":"+id, want.files) },
		}
	}
	tgFile := func(kind enum.MessageKind, ref, name, mime string, size int) file {
		// getFile keeps no name: a file without one is named after the
		// file_path the fake answers, files/<file_id>.
		f := file{kind: kind, ref: ref, name: name, mime: mime, size: size, fakeKind: "telegram", fakeID: ref}
		if name == "" {
			f.storedName = ref
		}
		return f
	}
	named := func(name string, c replayCase) replayCase { c.name = name; return c }
	return []replayCase{
		{name: "inbound_command_start.json", rows: firstMessage,
			check: func(t *testing.T, e *env) {
				id := olga(t, e)
				wantContact(t, id.Edges.Contact, "Olga Petrova", "olga_p", "")
				wantIdentity(t, id, "Olga Petrova", "olga_p", "", false)
				if c := wantOnlyChat(t, e, tg(e), id.Edges.Contact.ID, enum.ChatWaiting); c.ReplyWindowEndsAt != nil {
					t.Errorf("a Telegram chat has a reply window (ends %v)", c.ReplyWindowEndsAt)
				}
				msg(t, e, "4120", inbound{kind: enum.KindText, text: "/start"})
			},
			// R2: the photo comes from getUserProfilePhotos, copied.
			afterJobs: func(t *testing.T, e *env) {
				wantPhoto(t, e, olga(t, e).Edges.Contact.ID, fakeFile("telegram", olgaProfile))
			},
		},
		{name: "inbound_text.json", rows: nextMessage,
			check: func(t *testing.T, e *env) {
				msg(t, e, "4121", inbound{kind: enum.KindText, text: "Hello! Where is my order #A-1042?"})
			},
		},
		named("inbound_photo.json", withFile("4122", inbound{kind: enum.KindPhoto, text: "The package arrived damaged",
			files: []file{tgFile(enum.KindPhoto, "AgACAgIAAxkBAAIQGmbNw0Xk1aQfZ9r2s3_big1280AJ4yjEbq0VwSJ7n1pYAAQMAA3kAAzYE", "", "image/jpeg", 158204)}})),
		named("inbound_document.json", withFile("4123", inbound{kind: enum.KindDocument, text: "Invoice attached",
			files: []file{tgFile(enum.KindDocument, "BQACAgIAAxkBAAIQG2bNw1Rz9kPq0Jt8x2mVbL0cYt7sAAKnUAACq0VwSOQ1t0kFZ0bYNgQ", "invoice-A-1042.pdf", "application/pdf", 84213)}})),
		named("inbound_voice.json", withFile("4124", inbound{kind: enum.KindVoice,
			files: []file{tgFile(enum.KindVoice, "AwACAgIAAxkBAAIQHGbNw2Hq3Lw7Ue9nRkQ0vX1pZc8jAAKoUAACq0VwSJ0aE0b8b1qTNgQ", "", "audio/ogg", 21440)}})),
		named("inbound_sticker.json", withFile("4125", inbound{kind: enum.KindSticker, content: map[string]any{"emoji": "👍"},
			files: []file{tgFile(enum.KindSticker, "CAACAgIAAxkBAAIQHWbNw3FryNLNUJvXGaWN8Vp-JKtpAAIBAQACVp29CiK-nw64wuY0NgQ", "", "image/webp", 35140)}})),
		named("inbound_media_group_photo_1of2.json", withFile("4126", inbound{kind: enum.KindPhoto, text: "front and back",
			content: map[string]any{"mediaGroupId": "13792468031245678"},
			files:   []file{tgFile(enum.KindPhoto, "AgACAgIAAxkBAAIQHmbNw4AlbumOneLargeAAJ5yjEbq0VwSAABAgADeQADNgQ", "", "image/jpeg", 90211)}})),
		{name: "edited_message.json", rows: deliveryOnly,
			check: func(t *testing.T, e *env) {
				m := e.message(t, tg(e), olgaID+":4121")
				if m.Text != "Hello! Where is my order #A-1043? (typo fixed)" || m.EditedAt == nil ||
					!slices.Equal(m.PreviousTexts, []string{"Hello! Where is my order #A-1042?"}) {
					t.Errorf("edited message: text %q, edited at %v, previous %q", m.Text, m.EditedAt, m.PreviousTexts)
				}
			},
		},
		{name: "my_chat_member_blocked.json", rows: deliveryOnly,
			check: func(t *testing.T, e *env) {
				id := olga(t, e)
				wantIdentity(t, id, "Olga Petrova", "olga_p", "", true)
				if id.UnreachableReason == "" {
					t.Error("unreachable without a reason")
				}
				wantOnlyChat(t, e, tg(e), id.Edges.Contact.ID, enum.ChatWaiting)
			},
		},
	}
}

// --- WhatsApp ----------------------------------------------------------------

const (
	sheenaBSUID  = "US.13491208655302741918"
	sheenaPhone  = "16505551234"
	wamidReplied = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QjBFM0Q2QzQyMDlFNkE3RTkA" // send_text_success, the statuses, the reaction
	wamidExpired = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBIxQzJCNDY2NUQ3RjhFOUEwQjEA" // status_failed_131047
)

// whatsappConversation: Sheena's messages in timestamp order, then the
// statuses of our reply.
func whatsappConversation() []replayCase {
	wa := func(e *env) *ent.Channel { return e.Channels["whatsapp"] }
	sheena := func(t testing.TB, e *env) *ent.ContactIdentity {
		return e.identity(t, enum.ProviderWhatsApp, sheenaBSUID)
	}
	msg := func(t testing.TB, e *env, wamid string, status enum.ChatStatus, want inbound) {
		t.Helper()
		c := wantOnlyChat(t, e, wa(e), sheena(t, e).Edges.Contact.ID, status)
		wantInbound(t, e, wa(e), wamid, c.ID, want)
		// Every customer message reopens the 24-hour window (R21).
		if want := e.Desk().Now().Add(24 * time.Hour); c.ReplyWindowEndsAt == nil || !c.ReplyWindowEndsAt.Equal(want) {
			t.Errorf("reply window ends %v, want %v", c.ReplyWindowEndsAt, want)
		}
	}
	text := func(name, wamid string, want inbound) replayCase {
		return replayCase{name: name, rows: nextMessage,
			check: func(t *testing.T, e *env) { msg(t, e, wamid, enum.ChatWaiting, want) }}
	}
	media := func(name, wamid string, want inbound) replayCase {
		return replayCase{name: name, rows: nextWithFile,
			check:     func(t *testing.T, e *env) { msg(t, e, wamid, enum.ChatWaiting, want) },
			afterJobs: func(t *testing.T, e *env) { wantStored(t, e, wa(e), wamid, want.files) },
		}
	}
	waFile := func(kind enum.MessageKind, ref, name, mime string) file {
		return file{kind: kind, ref: ref, name: name, mime: mime, fakeKind: "whatsapp", fakeID: ref}
	}
	// outbound checks our message's delivery status and its times.
	outbound := func(t testing.TB, e *env, wamid string, status enum.DeliveryStatus, delivered, read bool) *ent.Message {
		t.Helper()
		m := e.message(t, wa(e), wamid)
		if m.DeliveryStatus == nil || *m.DeliveryStatus != status || m.SentAt == nil ||
			(m.DeliveredAt != nil) != delivered || (m.ReadAt != nil) != read {
			t.Errorf("outbound %s: status %v sent %v delivered %v read %v; want %s, delivered %v, read %v",
				wamid, deref(m.DeliveryStatus), m.SentAt, m.DeliveredAt, m.ReadAt, status, delivered, read)
		}
		return m
	}
	return []replayCase{
		{name: "inbound_text.json", rows: firstWhatsAppMessage,
			check: func(t *testing.T, e *env) {
				id := sheena(t, e)
				// The BSUID is the key; the phone and the name are kept (R2).
				wantContact(t, id.Edges.Contact, "Sheena Nelson", "", sheenaPhone)
				wantIdentity(t, id, "Sheena Nelson", "", sheenaPhone, false)
				msg(t, e, "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUY0RTk2QkQ5QTlGQzc0MUI2NgA=", enum.ChatWaiting,
					inbound{kind: enum.KindText, text: "Hi, is my order A-1042 shipped?"})
			},
			afterJobs: func(t *testing.T, e *env) {
				// WhatsApp has no profile API: the job ends without a photo.
				if c := sheena(t, e).Edges.Contact; c.PhotoKey != "" || c.Name != "Sheena Nelson" {
					t.Errorf("contact after the profile job: %+v", c)
				}
			},
		},
		{name: "inbound_text_username_no_phone.json", rows: nextMessage,
			check: func(t *testing.T, e *env) {
				// The same BSUID without a phone: the same customer, who now
				// has a username.
				id := sheena(t, e)
				wantIdentity(t, id, "Sheena", "@sheena.n", sheenaPhone, false)
				msg(t, e, "wamid.HBgRVVMuMTM0OTEyMDg2NTUzMDI3NDE5MTgVAgASGBQzQTk5QzA3QjM1MzhFQjlBRDgxQQA=", enum.ChatWaiting,
					inbound{kind: enum.KindText, text: "Sent from a username-only account"})
			},
		},
		media("inbound_image.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTJFNjBDN0Y4QjE5RjRDMDk3MgA=",
			inbound{kind: enum.KindPhoto, text: "The box arrived damaged",
				files: []file{waFile(enum.KindPhoto, "1013859600285441", "", "image/jpeg")}}),
		media("inbound_document.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQThDNTU0N0M3MjE1QjM0MjBCRQA=",
			inbound{kind: enum.KindDocument, text: "Invoice",
				files: []file{waFile(enum.KindDocument, "2093847561203948", "invoice-A-1042.pdf", "application/pdf")}}),
		media("inbound_audio_voice.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTc3QkQ2RjZFMUQ4MkQzQjE5OAA=",
			inbound{kind: enum.KindVoice,
				files: []file{waFile(enum.KindVoice, "1002764438271669", "", "audio/ogg; codecs=opus")}}),
		text("inbound_location.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTFGNDlCNUU0M0Q4RjA2NkVFNQA=",
			inbound{kind: enum.KindLocation, content: map[string]any{"latitude": 37.4847483, "longitude": -122.1473105,
				"name": "Acme Pickup Point", "address": "1 Hacker Way, Menlo Park, CA 94025"}}),
		text("inbound_interactive_button_reply.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUJFNTQ2QTYwRDE1QjQ0OUVDNQA=",
			inbound{kind: enum.KindInteractive, text: "Talk to an agent",
				content: map[string]any{"type": "button_reply", "id": "talk_to_agent", "title": "Talk to an agent"}}),
		text("inbound_reaction.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTQ0QjlGQjA5RTM1Qzk5MjBFMQA=",
			inbound{kind: enum.KindReaction, content: map[string]any{"messageId": wamidReplied, "emoji": "👍"}}),
		text("inbound_unsupported.json", "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUQ0RkE1QkIwNzY0MzJBQjgzRQA=",
			inbound{kind: enum.KindUnsupported, content: map[string]any{"type": "edit", "code": "131051", "title": "Message type unknown"}}),
		{name: "status_sent.json", rows: deliveryOnly,
			// The operator accepts the chat and replies; the outbox sends
			// the reply to the fake, which answers send_text_success.json.
			// The message that expired is an older one.
			before: func(t *testing.T, e *env) {
				c := wantOnlyChat(t, e, wa(e), sheena(t, e).Edges.Contact.ID, enum.ChatWaiting)
				if _, err := e.Desk().AcceptChat(e.asOperator(), c.ID); err != nil {
					t.Fatalf("accept: %v", err)
				}
				if _, err := e.Desk().SendMessage(e.asOperator(), c.ID, "Hi Sheena, order A-1042 shipped today.", nil); err != nil {
					t.Fatalf("send: %v", err)
				}
				e.runJobs(t)
				outbound(t, e, wamidReplied, enum.DeliverySent, false, false)
				now := e.Desk().Now()
				e.Client().Message.Create().SetChatID(c.ID).SetChannelID(wa(e).ID).SetDirection(enum.Outbound).
					SetAuthorKind(enum.AuthorOperator).SetKind(enum.KindText).SetText("Are you still interested?").
					SetProviderMessageID(wamidExpired).SetDeliveryStatus(enum.DeliverySent).
					SetSentAt(now.Add(-25 * time.Hour)).SetCreatedAt(now.Add(-25 * time.Hour)).ExecX(bg)
			},
			check: func(t *testing.T, e *env) {
				// Already SENT when the send was answered: nothing moves.
				outbound(t, e, wamidReplied, enum.DeliverySent, false, false)
				wantOnlyChat(t, e, wa(e), sheena(t, e).Edges.Contact.ID, enum.ChatInProgress)
			},
		},
		{name: "status_delivered.json", rows: deliveryOnly,
			check: func(t *testing.T, e *env) { outbound(t, e, wamidReplied, enum.DeliveryDelivered, true, false) }},
		{name: "status_read.json", rows: deliveryOnly,
			check: func(t *testing.T, e *env) { outbound(t, e, wamidReplied, enum.DeliveryRead, true, true) }},
		{name: "status_failed_131047.json", rows: deliveryOnly,
			check: func(t *testing.T, e *env) {
				m := outbound(t, e, wamidExpired, enum.DeliveryFailed, false, false)
				if m.DeliveryErrorCode != "131047" || !strings.HasPrefix(m.DeliveryError, "Re-engagement message") {
					t.Errorf("failed message: code %q, error %q; want 131047, Re-engagement message…", m.DeliveryErrorCode, m.DeliveryError)
				}
				outbound(t, e, wamidReplied, enum.DeliveryRead, true, true)
			},
		},
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// --- Messenger ---------------------------------------------------------------

const (
	peterPSID  = "7391045528817342"
	profilePic = "platform-lookaside.fbsbx.com/platform/profilepic/" // user_profile_success.json's profile_pic, as the fake CDN sees it
)

// messengerConversation: Peter's messages, then the bot handover events,
// our own echo and a standby message, in timestamp order.
func messengerConversation() []replayCase {
	fb := func(e *env) *ent.Channel { return e.Channels["messenger"] }
	peter := func(t testing.TB, e *env) *ent.ContactIdentity {
		return e.identity(t, enum.ProviderMessenger, peterPSID)
	}
	msg := func(t testing.TB, e *env, mid string, want inbound) {
		t.Helper()
		c := wantOnlyChat(t, e, fb(e), peter(t, e).Edges.Contact.ID, enum.ChatWaiting)
		wantInbound(t, e, fb(e), mid, c.ID, want)
		if want := e.Desk().Now().Add(24 * time.Hour); c.ReplyWindowEndsAt == nil || !c.ReplyWindowEndsAt.Equal(want) {
			t.Errorf("reply window ends %v, want %v", c.ReplyWindowEndsAt, want)
		}
	}
	media := func(name, mid string, want inbound) replayCase {
		return replayCase{name: name, rows: nextWithFile,
			check:     func(t *testing.T, e *env) { msg(t, e, mid, want) },
			afterJobs: func(t *testing.T, e *env) { wantStored(t, e, fb(e), mid, want.files) },
		}
	}
	// cdn is a CDN attachment: the ref is the URL, fetched without a token.
	cdn := func(kind enum.MessageKind, rawURL, name, storedMime, storedName string) file {
		hostPath, _, _ := strings.Cut(strings.TrimPrefix(rawURL, "https://"), "?")
		return file{kind: kind, ref: rawURL, name: name, fakeKind: "cdn", fakeID: hostPath,
			storedMime: storedMime, storedName: storedName}
	}
	// ignored: 200, the delivery is kept, nothing else happens (bots and
	// standby are a later issue; our own echo is never shown twice).
	ignored := func(name string) replayCase {
		return replayCase{name: name, rows: deliveryOnly, check: func(t *testing.T, e *env) {
			wantOnlyChat(t, e, fb(e), peter(t, e).Edges.Contact.ID, enum.ChatWaiting)
		}}
	}
	return []replayCase{
		{name: "inbound_text.json", rows: firstMessage,
			check: func(t *testing.T, e *env) {
				id := peter(t, e)
				// The delivery has no name: the profile job fills it.
				wantContact(t, id.Edges.Contact, "", "", "")
				wantIdentity(t, id, "", "", "", false)
				msg(t, e, "m_b0xJ3Qe5lW9nQ2mZ8k1yT6rA4sD7fG0hJ2kL5zX8cV1bN4mQ7wE0rT3yU6iO9pA2sD5fG8hJ1kL4",
					inbound{kind: enum.KindText, text: "Hi! Is order A-1042 on its way?"})
			},
			afterJobs: func(t *testing.T, e *env) {
				c := peter(t, e).Edges.Contact
				wantContact(t, c, "Peter Chang", "", "")
				wantPhoto(t, e, c.ID, fakeFile("cdn", profilePic))
			},
		},
		media("inbound_image.json", "m_c1yK4Rf6mX0oR3nA9l2zU7sB5tE8gH1iK3lM6aY9dW2cO5nR8xF1sU4zV7jP0qB3tE6gH9iK2lM5",
			inbound{kind: enum.KindPhoto, files: []file{cdn(enum.KindPhoto,
				"https://scontent.xx.fbcdn.net/v/t1.15752-9/451234567_1234567890123456_7890123456789012345_n.jpg?_nc_cat=101&ccb=1-7&_nc_sid=fc17b8&oh=03_Q7cD1QHabc&oe=66F0A1B2",
				"", "image/jpeg", "451234567_1234567890123456_7890123456789012345_n.jpg")}}),
		media("inbound_file.json", "m_d2zL5Sg7nY1pS4oB0m3aV8tC6uF9hI2jL4mN7bZ0eX3dP6oS9yG2tV5aW8kQ1rC4uF7hI0jL3mN6",
			inbound{kind: enum.KindDocument, files: []file{cdn(enum.KindDocument,
				"https://cdn.fbsbx.com/v/t59.2708-21/451234999_invoice-A-1042.pdf/invoice-A-1042.pdf?_nc_cat=104&ccb=1-7&_nc_sid=2b0e22&oh=03_Q7cD1QHdef&oe=66F0B3C4",
				"invoice-A-1042.pdf", "application/pdf", "")}}),
		// The transition shape (an image and a sticker attachment of the
		// same sticker) is one sticker.
		media("inbound_sticker.json", "m_e3aM6Th8oZ2qT5pC1n4bW9uD7vG0iJ3kM5nO8cA1fY4eQ7pT0zH3uW6bX9lR2sD5vG8iJ1kM4nO7",
			inbound{kind: enum.KindSticker, content: map[string]any{"stickerId": "369239263222822"}, files: []file{cdn(enum.KindSticker,
				"https://scontent.xx.fbcdn.net/v/t39.1997-6/39178562_1505197616293642_5411344281094848512_n.png?_nc_cat=1&ccb=1-7&_nc_sid=ac3552&oh=03_Q7cD1QHghi&oe=66F0C5D6",
				"", "image/png", "39178562_1505197616293642_5411344281094848512_n.png")}}),
		ignored("handover_pass_thread_control.json"),
		// app_id 882731940561234 is ours (PARLEY_META_APP_ID): our own echo.
		ignored("message_echo.json"),
		ignored("handover_take_thread_control.json"),
		ignored("standby_message.json"),
		ignored("handover_request_thread_control.json"),
		ignored("handover_app_roles.json"),
	}
}

// The fake CDN must see no Authorization header (it answers 400 to one):
// that the downloads above succeeded proves none was sent. This test
// checks the fake itself refuses one, so the proof holds.
func TestFakeCDNRefusesTokens(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, provider.srv.URL+"/cdn/scontent.xx.fbcdn.net/x.jpg", nil)
	req.Header.Set("Authorization", "Bearer x")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("fake CDN answered %d to a request with a token", res.StatusCode)
	}
}
