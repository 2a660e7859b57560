package messenger

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
)

// Webhook shapes (reference/channels.md §3.2-3.3). Only what Parley reads.

type entry struct {
	ID string `json:"id"`
	// Messaging holds the events of threads this app owns, Standby those
	// of threads another app (a bot, the Page Inbox) owns.
	Messaging []json.RawMessage `json:"messaging"`
	Standby   []json.RawMessage `json:"standby"`
}

type party struct {
	ID metagraph.FlexString `json:"id"`
}

type handover struct {
	PreviousOwnerAppID metagraph.FlexString `json:"previous_owner_app_id"`
	NewOwnerAppID      metagraph.FlexString `json:"new_owner_app_id"`
	RequestedOwnerApp  metagraph.FlexString `json:"requested_owner_app_id"`
	Metadata           string               `json:"metadata"`
}

type event struct {
	Sender    party                `json:"sender"`
	Recipient party                `json:"recipient"`
	Timestamp metagraph.FlexString `json:"timestamp"`

	Message  *fbMessage `json:"message"`
	Postback *struct {
		Mid     string `json:"mid"`
		Title   string `json:"title"`
		Payload string `json:"payload"`
	} `json:"postback"`
	Delivery *struct {
		Mids      []string             `json:"mids"`
		Watermark metagraph.FlexString `json:"watermark"`
	} `json:"delivery"`
	Read *struct {
		Watermark metagraph.FlexString `json:"watermark"`
	} `json:"read"`
	MessageEdit *struct {
		Mid  string `json:"mid"`
		Text string `json:"text"`
	} `json:"message_edit"`
	Reaction *struct {
		Mid      string `json:"mid"`
		Action   string `json:"action"`
		Emoji    string `json:"emoji"`
		Reaction string `json:"reaction"`
	} `json:"reaction"`

	PassThreadControl    *handover           `json:"pass_thread_control"`
	TakeThreadControl    *handover           `json:"take_thread_control"`
	RequestThreadControl *handover           `json:"request_thread_control"`
	AppRoles             map[string][]string `json:"app_roles"`
}

type fbMessage struct {
	Mid        string               `json:"mid"`
	Text       string               `json:"text"`
	IsEcho     bool                 `json:"is_echo"`
	AppID      metagraph.FlexString `json:"app_id"`
	Metadata   string               `json:"metadata"`
	StickerID  metagraph.FlexString `json:"sticker_id"`
	QuickReply *struct {
		Payload string `json:"payload"`
	} `json:"quick_reply"`
	Attachments []attachment `json:"attachments"`
}

type attachment struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Payload *struct {
		URL         string               `json:"url"`
		Title       string               `json:"title"`
		StickerID   metagraph.FlexString `json:"sticker_id"`
		Coordinates *struct {
			Lat  float64 `json:"lat"`
			Long float64 `json:"long"`
		} `json:"coordinates"`
	} `json:"payload"`
}

func (a attachment) url() string {
	if a.Payload == nil {
		return ""
	}
	return a.Payload.URL
}

// Parse implements channels.Adapter. It walks every entry, and in each its
// messaging[] then its standby[] events, in order.
//
// Standby events (a thread another app owns) and handover events are
// IGNORED for now (bots are a later issue), but keep everything parsed: a
// standby event is the update it would have been, with Kind IGNORED and
// Content["standby"] = true, Content["standbyKind"] = the original kind;
// a handover event has Content {"handover": "pass_thread_control", …}.
//
// A delivery gives one DELIVERED status per mid. A read gives one READ
// status with an empty MessageID and Time = the watermark: it applies to
// every outbound message to that customer (Sender) sent up to then.
func (a *Adapter) Parse(ch channels.Channel, body []byte) (channels.Delivery, error) {
	env, err := metagraph.DecodeEnvelope(body, "page")
	if err != nil {
		return channels.Delivery{}, err
	}
	d := channels.Delivery{Key: metagraph.BodyKey(body)}
	for i, raw := range env.Entry {
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return channels.Delivery{}, fmt.Errorf("%w: entry %d: %v", channels.ErrMalformed, i, err)
		}
		for _, ev := range e.Messaging {
			d.Updates = append(d.Updates, parseEvent(ch, e.ID, ev)...)
		}
		for _, ev := range e.Standby {
			for _, u := range parseEvent(ch, e.ID, ev) {
				d.Updates = append(d.Updates, standby(u))
			}
		}
	}
	return d, nil
}

func standby(u channels.Update) channels.Update {
	orig := u.Kind
	if orig == channels.UpdateIgnored {
		u.Reason = "standby: " + u.Reason
	} else {
		u.Kind = channels.UpdateIgnored
		u.Reason = "messenger standby " + strings.ToLower(string(orig)) + " (another app owns the thread)"
	}
	content := make(map[string]any, len(u.Content)+2)
	for k, v := range u.Content {
		content[k] = v
	}
	content["standby"] = true
	content["standbyKind"] = string(orig)
	u.Content = content
	return u
}

func parseEvent(ch channels.Channel, pageID string, raw json.RawMessage) []channels.Update {
	var ev event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return []channels.Update{{Kind: channels.UpdateIgnored, AccountRef: pageID, Reason: "undecodable messenger event: " + err.Error()}}
	}
	// For customer events the page is the recipient; for echoes, the sender.
	account := ev.Recipient.ID.String()
	if account == "" {
		account = pageID
	}
	base := channels.Update{
		AccountRef: account,
		Sender:     channels.Identity{ExternalID: ev.Sender.ID.String()},
		Time:       metagraph.UnixMillis(ev.Timestamp),
	}
	// A message names its customer: the sender, or an echo's recipient.
	customer := ev.Sender.ID.String()
	if ev.Message != nil && ev.Message.IsEcho {
		customer = ev.Recipient.ID.String()
	}
	if customer == "" && (ev.Message != nil || ev.Postback != nil || ev.MessageEdit != nil || ev.Reaction != nil) {
		u := base
		u.Kind, u.Reason = channels.UpdateIgnored, "messenger event without a customer id"
		return []channels.Update{u}
	}
	switch {
	case ev.Message != nil && ev.Message.IsEcho:
		return []channels.Update{echo(ch, pageID, ev)}
	case ev.Message != nil:
		u := base
		u.Kind, u.MessageID = channels.UpdateMessage, ev.Message.Mid
		content(&u, ev.Message)
		return []channels.Update{u}
	case ev.Postback != nil:
		// A button of ours was tapped: the title is what the customer saw.
		p := ev.Postback
		u := base
		u.Kind, u.MessageID = channels.UpdateMessage, p.Mid
		if u.MessageID == "" {
			// Older postbacks have no mid; one is made up for dedup.
			u.MessageID = "postback:" + u.Sender.ExternalID + ":" + ev.Timestamp.String()
		}
		u.MessageKind, u.Text = channels.KindInteractive, p.Title
		u.Content = map[string]any{"type": "postback", "id": p.Payload, "title": p.Title, "payload": p.Payload}
		return []channels.Update{u}
	case ev.Delivery != nil:
		// Every mid listed is delivered. A delivery without mids (only a
		// watermark) is ignored: a STATUS without MessageID means a read
		// watermark to the desk, and delivered matters less than read.
		t := metagraph.UnixMillis(ev.Delivery.Watermark)
		if len(ev.Delivery.Mids) == 0 {
			u := base
			u.Kind, u.Time = channels.UpdateIgnored, t
			u.Reason = "messenger delivery watermark without mids"
			return []channels.Update{u}
		}
		out := make([]channels.Update, 0, len(ev.Delivery.Mids))
		for _, mid := range ev.Delivery.Mids {
			u := base
			u.Kind, u.Status, u.MessageID, u.Time = channels.UpdateStatus, channels.StatusDelivered, mid, t
			out = append(out, u)
		}
		return out
	case ev.Read != nil:
		// A read names no message: every outbound message to this customer
		// sent up to Time (the watermark) is read.
		u := base
		u.Kind, u.Status, u.Time = channels.UpdateStatus, channels.StatusRead, metagraph.UnixMillis(ev.Read.Watermark)
		return []channels.Update{u}
	case ev.MessageEdit != nil:
		u := base
		u.Kind, u.MessageID = channels.UpdateEdit, ev.MessageEdit.Mid
		u.MessageKind, u.Text = channels.KindText, ev.MessageEdit.Text
		return []channels.Update{u}
	case ev.Reaction != nil:
		r := ev.Reaction
		u := base
		u.Kind, u.MessageKind = channels.UpdateMessage, channels.KindReaction
		// The event has no id of its own; one is made up for dedup.
		u.MessageID = "reaction:" + r.Mid + ":" + u.Sender.ExternalID + ":" + ev.Timestamp.String()
		emoji := r.Emoji
		if r.Action == "unreact" {
			emoji = ""
		}
		u.Content = map[string]any{"messageId": r.Mid, "emoji": emoji}
		return []channels.Update{u}
	case ev.PassThreadControl != nil:
		return []channels.Update{handoverUpdate(base, "pass_thread_control", map[string]any{
			"previousOwnerAppId": ev.PassThreadControl.PreviousOwnerAppID.String(),
			"newOwnerAppId":      ev.PassThreadControl.NewOwnerAppID.String(),
			"metadata":           ev.PassThreadControl.Metadata,
		})}
	case ev.TakeThreadControl != nil:
		return []channels.Update{handoverUpdate(base, "take_thread_control", map[string]any{
			"previousOwnerAppId": ev.TakeThreadControl.PreviousOwnerAppID.String(),
			"newOwnerAppId":      ev.TakeThreadControl.NewOwnerAppID.String(),
			"metadata":           ev.TakeThreadControl.Metadata,
		})}
	case ev.RequestThreadControl != nil:
		return []channels.Update{handoverUpdate(base, "request_thread_control", map[string]any{
			"requestedOwnerAppId": ev.RequestThreadControl.RequestedOwnerApp.String(),
			"metadata":            ev.RequestThreadControl.Metadata,
		})}
	case ev.AppRoles != nil:
		return []channels.Update{handoverUpdate(base, "app_roles", map[string]any{"appRoles": ev.AppRoles})}
	default:
		u := base
		u.Kind, u.Reason = channels.UpdateIgnored, "messenger event "+eventKeys(raw)
		return []channels.Update{u}
	}
}

func handoverUpdate(u channels.Update, name string, content map[string]any) channels.Update {
	u.Kind = channels.UpdateIgnored
	u.Reason = "messenger handover " + name + " (bots are not handled yet)"
	content["handover"] = name
	u.Content = content
	return u
}

// eventKeys names an event Parley does not read by its keys.
func eventKeys(raw json.RawMessage) string {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	var keys []string
	for k := range m {
		switch k {
		case "sender", "recipient", "timestamp":
		default:
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return "(empty)"
	}
	return strings.Join(keys, ",")
}

// echo is a message the page sent: ours (IGNORED) or another app's or the
// Page Inbox's (ECHO, to be mirrored). The customer is the recipient.
func echo(ch channels.Channel, pageID string, ev event) channels.Update {
	m := ev.Message
	u := channels.Update{
		Kind:       channels.UpdateEcho,
		AccountRef: ev.Sender.ID.String(),
		Sender:     channels.Identity{ExternalID: ev.Recipient.ID.String()},
		MessageID:  m.Mid,
		Time:       metagraph.UnixMillis(ev.Timestamp),
	}
	if u.AccountRef == "" {
		u.AccountRef = pageID
	}
	content(&u, m)
	if u.Content == nil {
		u.Content = map[string]any{}
	}
	u.Content["appId"] = m.AppID.String()
	if m.Metadata != "" {
		u.Content["metadata"] = m.Metadata
	}
	if isOwnEcho(ch, m) {
		u.Kind, u.Reason = channels.UpdateIgnored, "own echo"
	}
	return u
}

// isOwnEcho: the echo's app_id is ours; without a configured app id, the
// metadata Send puts on every message says so.
func isOwnEcho(ch channels.Channel, m *fbMessage) bool {
	if ch.AppID != "" {
		return m.AppID.String() == ch.AppID
	}
	return m.Metadata == EchoMetadata
}

var attachmentKinds = map[string]string{
	"image": channels.KindPhoto,
	"file":  channels.KindDocument,
	"audio": channels.KindAudio,
	"video": channels.KindVideo,
}

// content fills the kind, text, attachments and content of a message.
func content(u *channels.Update, m *fbMessage) {
	u.Text = m.Text
	if sticker(u, m) {
		return
	}
	var fallbacks []any
	for _, at := range m.Attachments {
		kind, ok := attachmentKinds[at.Type]
		switch {
		case ok && at.url() != "":
			a := channels.Attachment{Kind: kind, Ref: at.url()}
			if kind == channels.KindDocument {
				a.FileName = fileName(a.Ref)
			}
			u.Attachments = append(u.Attachments, a)
			if u.MessageKind == "" {
				u.MessageKind = kind
			}
		case at.Type == "location" && at.Payload != nil && at.Payload.Coordinates != nil:
			c := at.Payload.Coordinates
			u.MessageKind = channels.KindLocation
			u.Content = map[string]any{"latitude": c.Lat, "longitude": c.Long, "name": at.Title, "address": ""}
		default:
			// fallback (shared links), reel, post, template, …
			f := map[string]any{"type": at.Type, "url": at.url(), "title": at.Title}
			if f["title"] == "" && at.Payload != nil {
				f["title"] = at.Payload.Title
			}
			fallbacks = append(fallbacks, f)
		}
	}
	switch {
	case u.MessageKind != "":
	case m.QuickReply != nil:
		u.MessageKind = channels.KindInteractive
		u.Content = map[string]any{"type": "quick_reply", "id": m.QuickReply.Payload, "title": m.Text}
		return
	case len(fallbacks) > 0 && m.Text != "":
		// A text with a shared link: the text is the message.
		u.MessageKind = channels.KindText
	case len(fallbacks) > 0:
		u.MessageKind = channels.KindUnsupported
		u.Content = fallbacks[0].(map[string]any)
		if len(fallbacks) > 1 {
			u.Content["attachments"] = fallbacks
		}
		return
	case m.Text != "":
		u.MessageKind = channels.KindText
	default:
		u.MessageKind = channels.KindUnsupported
		u.Content = map[string]any{"type": "empty"}
		return
	}
	if len(fallbacks) > 0 {
		if u.Content == nil {
			u.Content = map[string]any{}
		}
		u.Content["attachments"] = fallbacks
	}
}

// sticker makes one STICKER message of a sticker, whatever its shape: the
// 2026 sticker attachment, the transition shape (an image and a sticker
// attachment of the same sticker) or the old image with sticker_id.
func sticker(u *channels.Update, m *fbMessage) bool {
	var pick *attachment
	for i := range m.Attachments {
		at := &m.Attachments[i]
		if at.Type == "sticker" {
			pick = at
			break
		}
		if pick == nil && at.Type == "image" && (m.StickerID != "" || (at.Payload != nil && at.Payload.StickerID != "")) {
			pick = at
		}
	}
	if pick == nil {
		return false
	}
	id := m.StickerID.String()
	if pick.Payload != nil && pick.Payload.StickerID != "" {
		id = pick.Payload.StickerID.String()
	}
	u.MessageKind = channels.KindSticker
	u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: pick.url()}}
	u.Content = map[string]any{"stickerId": id}
	return true
}

// fileName is the last path segment of a CDN URL ("invoice-A-1042.pdf").
func fileName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	base := path.Base(u.Path)
	if base == "." || base == "/" || !strings.Contains(base, ".") {
		return ""
	}
	return base
}
