package whatsapp

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
)

// Webhook shapes (reference/channels.md §2.3-2.4). Only what Parley reads.

type entry struct {
	ID      string   `json:"id"`
	Changes []change `json:"changes"`
}

type change struct {
	Field string          `json:"field"`
	Value json.RawMessage `json:"value"`
}

type value struct {
	Metadata struct {
		DisplayPhoneNumber string `json:"display_phone_number"`
		PhoneNumberID      string `json:"phone_number_id"`
	} `json:"metadata"`
	Contacts []contact `json:"contacts"`
	// Messages and statuses are decoded one by one: one odd item does not
	// lose the others.
	Messages []json.RawMessage `json:"messages"`
	Statuses []json.RawMessage `json:"statuses"`
	Errors   []apiErr          `json:"errors"`
}

type contact struct {
	Profile struct {
		Name     string `json:"name"`
		Username string `json:"username"`
	} `json:"profile"`
	WaID   string `json:"wa_id"`
	UserID string `json:"user_id"`
}

type apiErr struct {
	Code      metagraph.FlexString `json:"code"`
	Title     string               `json:"title"`
	Message   string               `json:"message"`
	ErrorData struct {
		Details string `json:"details"`
	} `json:"error_data"`
}

type media struct {
	ID       string `json:"id"`
	MimeType string `json:"mime_type"`
	Caption  string `json:"caption"`
	Filename string `json:"filename"`
	Voice    bool   `json:"voice"`
	Animated bool   `json:"animated"`
}

type message struct {
	From       string               `json:"from"`
	FromUserID string               `json:"from_user_id"`
	ID         string               `json:"id"`
	Timestamp  metagraph.FlexString `json:"timestamp"`
	Type       string               `json:"type"`
	Text       *struct {
		Body string `json:"body"`
	} `json:"text"`
	Image    *media `json:"image"`
	Document *media `json:"document"`
	Audio    *media `json:"audio"`
	Video    *media `json:"video"`
	Sticker  *media `json:"sticker"`
	Location *struct {
		Latitude  float64 `json:"latitude"`
		Longitude float64 `json:"longitude"`
		Name      string  `json:"name"`
		Address   string  `json:"address"`
	} `json:"location"`
	Interactive *struct {
		Type        string `json:"type"`
		ButtonReply *struct {
			ID    string `json:"id"`
			Title string `json:"title"`
		} `json:"button_reply"`
		ListReply *struct {
			ID          string `json:"id"`
			Title       string `json:"title"`
			Description string `json:"description"`
		} `json:"list_reply"`
		NfmReply *struct {
			Name         string `json:"name"`
			Body         string `json:"body"`
			ResponseJSON string `json:"response_json"`
		} `json:"nfm_reply"`
	} `json:"interactive"`
	Button *struct {
		Payload string `json:"payload"`
		Text    string `json:"text"`
	} `json:"button"`
	Reaction *struct {
		MessageID string `json:"message_id"`
		Emoji     string `json:"emoji"`
	} `json:"reaction"`
	// Contacts are vCard-like cards, kept as they came.
	Contacts json.RawMessage `json:"contacts"`
	System   *struct {
		Type      string `json:"type"`
		Body      string `json:"body"`
		WaID      string `json:"wa_id"`
		NewWaID   string `json:"new_wa_id"`
		UserID    string `json:"user_id"`
		NewUserID string `json:"new_user_id"`
	} `json:"system"`
	Unsupported *struct {
		Type string `json:"type"`
	} `json:"unsupported"`
	Errors []apiErr `json:"errors"`
}

type status struct {
	ID              string               `json:"id"`
	Status          string               `json:"status"`
	Timestamp       metagraph.FlexString `json:"timestamp"`
	RecipientID     string               `json:"recipient_id"`
	RecipientUserID string               `json:"recipient_user_id"`
	Errors          []apiErr             `json:"errors"`
}

// Parse implements channels.Adapter. It walks every entry, change, message
// and status in order; inside one change value, messages come first, then
// statuses, then value-level errors (Meta sends one kind per value).
func (a *Adapter) Parse(ch channels.Channel, body []byte) (channels.Delivery, error) {
	env, err := metagraph.DecodeEnvelope(body, "whatsapp_business_account")
	if err != nil {
		return channels.Delivery{}, err
	}
	d := channels.Delivery{Key: metagraph.BodyKey(body)}
	for i, raw := range env.Entry {
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return channels.Delivery{}, fmt.Errorf("%w: entry %d: %v", channels.ErrMalformed, i, err)
		}
		for _, c := range e.Changes {
			d.Updates = append(d.Updates, parseChange(c)...)
		}
	}
	return d, nil
}

func parseChange(c change) []channels.Update {
	if c.Field != "" && c.Field != "messages" {
		return []channels.Update{{Kind: channels.UpdateIgnored, Reason: "whatsapp field " + c.Field}}
	}
	var v value
	if err := json.Unmarshal(c.Value, &v); err != nil {
		// One undecodable change must not make Meta redeliver the whole
		// batch for a week: it is logged and skipped.
		return []channels.Update{{Kind: channels.UpdateIgnored, Reason: "undecodable whatsapp change: " + err.Error()}}
	}
	account := v.Metadata.PhoneNumberID
	var out []channels.Update
	for _, raw := range v.Messages {
		var m message
		u := channels.Update{Kind: channels.UpdateIgnored}
		if err := json.Unmarshal(raw, &m); err != nil {
			u.Reason = "undecodable whatsapp message: " + err.Error()
		} else {
			u = parseMessage(m, v.Contacts)
		}
		u.AccountRef = account
		out = append(out, u)
	}
	for _, raw := range v.Statuses {
		var s status
		u := channels.Update{Kind: channels.UpdateIgnored}
		if err := json.Unmarshal(raw, &s); err != nil {
			u.Reason = "undecodable whatsapp status: " + err.Error()
		} else {
			u = parseStatus(s)
		}
		u.AccountRef = account
		out = append(out, u)
	}
	for _, e := range v.Errors {
		out = append(out, channels.Update{
			Kind:       channels.UpdateIgnored,
			AccountRef: account,
			Reason:     "whatsapp webhook error " + errorText(e),
			Content:    map[string]any{"code": e.Code.String(), "title": e.Title, "details": e.ErrorData.Details},
		})
	}
	return out
}

// sender builds the customer's identity: the BSUID (from_user_id, or the
// matching contact's user_id) is the key; wa_id/from only when no BSUID
// came (older payloads). The profile comes from the contact with the same
// user_id or wa_id.
func sender(m message, contacts []contact) channels.Identity {
	var c *contact
	for i := range contacts {
		k := &contacts[i]
		if (m.FromUserID != "" && k.UserID == m.FromUserID) || (m.From != "" && k.WaID == m.From) {
			c = k
			break
		}
	}
	id := channels.Identity{ExternalID: m.FromUserID, Phone: m.From}
	if c != nil {
		if id.ExternalID == "" {
			id.ExternalID = c.UserID
		}
		if id.Phone == "" {
			id.Phone = c.WaID
		}
		id.Name, id.Username = c.Profile.Name, c.Profile.Username
	}
	if id.ExternalID == "" {
		id.ExternalID = id.Phone
	}
	return id
}

func attachment(kind string, md *media) []channels.Attachment {
	return []channels.Attachment{{Kind: kind, Ref: md.ID, FileName: md.Filename, MimeType: md.MimeType}}
}

func parseMessage(m message, contacts []contact) channels.Update {
	u := channels.Update{
		Kind:      channels.UpdateMessage,
		Sender:    sender(m, contacts),
		MessageID: m.ID,
		Time:      metagraph.UnixSeconds(m.Timestamp),
	}
	setMedia := func(kind string, md *media) {
		u.MessageKind, u.Text, u.Attachments = kind, md.Caption, attachment(kind, md)
	}
	switch {
	case m.Type == "text" && m.Text != nil:
		u.MessageKind, u.Text = channels.KindText, m.Text.Body
	case m.Type == "image" && m.Image != nil:
		setMedia(channels.KindPhoto, m.Image)
	case m.Type == "document" && m.Document != nil:
		setMedia(channels.KindDocument, m.Document)
	case m.Type == "audio" && m.Audio != nil:
		kind := channels.KindAudio
		if m.Audio.Voice {
			kind = channels.KindVoice
		}
		setMedia(kind, m.Audio)
	case m.Type == "video" && m.Video != nil:
		setMedia(channels.KindVideo, m.Video)
	case m.Type == "sticker" && m.Sticker != nil:
		setMedia(channels.KindSticker, m.Sticker)
		u.Content = map[string]any{"animated": m.Sticker.Animated}
	case m.Type == "location" && m.Location != nil:
		l := m.Location
		u.MessageKind = channels.KindLocation
		u.Content = map[string]any{"latitude": l.Latitude, "longitude": l.Longitude, "name": l.Name, "address": l.Address}
	case m.Type == "interactive" && m.Interactive != nil:
		in := m.Interactive
		switch {
		case in.ButtonReply != nil:
			u.MessageKind, u.Text = channels.KindInteractive, in.ButtonReply.Title
			u.Content = map[string]any{"type": in.Type, "id": in.ButtonReply.ID, "title": in.ButtonReply.Title}
		case in.ListReply != nil:
			u.MessageKind, u.Text = channels.KindInteractive, in.ListReply.Title
			u.Content = map[string]any{"type": in.Type, "id": in.ListReply.ID, "title": in.ListReply.Title, "description": in.ListReply.Description}
		case in.NfmReply != nil:
			u.MessageKind, u.Text = channels.KindInteractive, in.NfmReply.Body
			u.Content = map[string]any{"type": in.Type, "id": in.NfmReply.Name, "title": in.NfmReply.Body, "response": in.NfmReply.ResponseJSON}
		default:
			unsupported(&u, m)
		}
	case m.Type == "button" && m.Button != nil:
		// A template's quick-reply button.
		u.MessageKind, u.Text = channels.KindInteractive, m.Button.Text
		u.Content = map[string]any{"type": "button", "id": m.Button.Payload, "title": m.Button.Text}
	case m.Type == "reaction" && m.Reaction != nil:
		// An empty emoji means the reaction was removed.
		u.MessageKind = channels.KindReaction
		u.Content = map[string]any{"messageId": m.Reaction.MessageID, "emoji": m.Reaction.Emoji}
	case m.Type == "contacts" && len(m.Contacts) > 0:
		u.MessageKind = channels.KindContact
		var cards []any
		_ = json.Unmarshal(m.Contacts, &cards)
		u.Content = map[string]any{"contacts": cards}
		var named []struct {
			Name struct {
				FormattedName string `json:"formatted_name"`
			} `json:"name"`
		}
		_ = json.Unmarshal(m.Contacts, &named)
		var names []string
		for _, c := range named {
			if c.Name.FormattedName != "" {
				names = append(names, c.Name.FormattedName)
			}
		}
		u.Text = strings.Join(names, ", ")
	case m.Type == "system":
		u.Kind = channels.UpdateIgnored
		u.Reason = "whatsapp system message"
		if s := m.System; s != nil {
			u.Reason += " " + s.Type
			if s.Body != "" {
				u.Reason += ": " + s.Body
			}
			// Kept for a later use: a number change brings a new BSUID.
			u.Content = map[string]any{"type": s.Type, "body": s.Body, "waId": s.WaID, "newWaId": s.NewWaID, "userId": s.UserID, "newUserId": s.NewUserID}
		}
	case m.Type == "request_welcome":
		// The customer opened the chat for the first time; nothing to show.
		u.Kind, u.Reason = channels.UpdateIgnored, "whatsapp request_welcome"
	default:
		unsupported(&u, m)
	}
	if u.Kind == channels.UpdateMessage && u.Sender.ExternalID == "" {
		// Neither from_user_id, from nor a contact: no customer to file it under.
		return channels.Update{Kind: channels.UpdateIgnored, MessageID: m.ID, Time: u.Time,
			Reason: "whatsapp message without a sender"}
	}
	return u
}

// unsupported marks a message Parley cannot show: Content has the type and
// the first error's code and title (131051 "Message type unknown").
func unsupported(u *channels.Update, m message) {
	u.MessageKind, u.Text = channels.KindUnsupported, ""
	u.Content = map[string]any{"type": m.Type}
	if m.Unsupported != nil && m.Unsupported.Type != "" {
		u.Content["type"] = m.Unsupported.Type
	}
	if len(m.Errors) > 0 {
		u.Content["code"] = m.Errors[0].Code.String()
		u.Content["title"] = m.Errors[0].Title
	}
}

var statuses = map[string]string{
	"sent":      channels.StatusSent,
	"delivered": channels.StatusDelivered,
	"read":      channels.StatusRead,
	"played":    channels.StatusRead, // a voice note was played
	"failed":    channels.StatusFailed,
}

// parseStatus reads a receipt of one of our messages, matched by MessageID.
// Sender is informative: ExternalID only when the status names the BSUID
// (recipient_user_id), the phone (recipient_id) always as Phone, so that a
// phone is never taken for the customer's key.
func parseStatus(s status) channels.Update {
	u := channels.Update{
		Kind:      channels.UpdateStatus,
		Sender:    channels.Identity{ExternalID: s.RecipientUserID, Phone: s.RecipientID},
		MessageID: s.ID,
		Time:      metagraph.UnixSeconds(s.Timestamp),
	}
	st, ok := statuses[s.Status]
	if s.ID == "" {
		// A STATUS without MessageID would read as a watermark.
		u.Kind, u.Reason = channels.UpdateIgnored, "whatsapp status without id"
		return u
	}
	if !ok {
		u.Kind, u.Reason = channels.UpdateIgnored, "whatsapp status "+strconv.Quote(s.Status)
		return u
	}
	u.Status = st
	if len(s.Errors) > 0 {
		e := s.Errors[0]
		u.ErrorCode = e.Code.String()
		u.ErrorTitle = e.Title
		if u.ErrorTitle == "" {
			u.ErrorTitle = e.Message
		}
		if d := e.ErrorData.Details; d != "" && d != u.ErrorTitle {
			u.ErrorTitle += ": " + d
		}
	}
	return u
}

func errorText(e apiErr) string {
	s := e.Code.String()
	title := e.Title
	if title == "" {
		title = e.Message
	}
	if title != "" {
		s += ": " + title
	}
	if e.ErrorData.Details != "" && e.ErrorData.Details != title {
		s += ": " + e.ErrorData.Details
	}
	return s
}
