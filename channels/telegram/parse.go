package telegram

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-telegram/bot/models"

	"github.com/parleydesk/parley/channels"
)

// message holds the Message fields Parley reads. Leaf types come from the
// library's models; fields whose models types are unions that fail on
// unknown variants (forward_origin, reply_to_message, …) are left out, so
// json skips them whatever they hold.
type message struct {
	MessageID    int                `json:"message_id"`
	From         *models.User       `json:"from"`
	Chat         models.Chat        `json:"chat"`
	Date         int64              `json:"date"`
	EditDate     int64              `json:"edit_date"`
	MediaGroupID string             `json:"media_group_id"`
	Text         string             `json:"text"`
	Caption      string             `json:"caption"`
	Photo        []models.PhotoSize `json:"photo"`
	Document     *models.Document   `json:"document"`
	Voice        *models.Voice      `json:"voice"`
	Audio        *models.Audio      `json:"audio"`
	Video        *models.Video      `json:"video"`
	VideoNote    *models.VideoNote  `json:"video_note"`
	Sticker      *models.Sticker    `json:"sticker"`
	Location     *models.Location   `json:"location"`
	Venue        *models.Venue      `json:"venue"`
	Contact      *models.Contact    `json:"contact"`
}

// chatMemberUpdated is my_chat_member, reduced to what reachability needs
// (models.ChatMember refuses statuses it does not know).
type chatMemberUpdated struct {
	Chat          models.Chat `json:"chat"`
	Date          int64       `json:"date"`
	NewChatMember struct {
		Status string `json:"status"`
	} `json:"new_chat_member"`
}

// messageMeta are Message fields that describe the message rather than
// being its content; unsupportedType skips them when naming what an
// unsupported message carries.
var messageMeta = map[string]bool{
	"message_id": true, "message_thread_id": true, "direct_messages_topic": true,
	"from": true, "sender_chat": true, "sender_boost_count": true, "sender_business_bot": true,
	"date": true, "business_connection_id": true, "chat": true, "forward_origin": true,
	"is_topic_message": true, "is_automatic_forward": true, "reply_to_message": true,
	"external_reply": true, "quote": true, "reply_to_story": true, "reply_to_checklist_task_id": true,
	"via_bot": true, "edit_date": true, "has_protected_content": true, "is_from_offline": true,
	"is_paid_post": true, "media_group_id": true, "author_signature": true, "paid_star_count": true,
	"text": true, "entities": true, "link_preview_options": true, "suggested_post_info": true,
	"effect_id": true, "caption": true, "caption_entities": true, "show_caption_above_media": true,
	"has_media_spoiler": true, "reply_markup": true,
}

// Parse turns one webhook body (an Update) into a Delivery keyed by
// update_id. Each Update carries at most one event, so a Delivery holds
// exactly one channels.Update: a message, an edit, a reachability change,
// or an ignored event whose Reason names the update type.
func (a *Adapter) Parse(ch channels.Channel, body []byte) (channels.Delivery, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return channels.Delivery{}, fmt.Errorf("%w: telegram update: %v", channels.ErrMalformed, err)
	}
	var updateID int64
	if raw, ok := fields["update_id"]; !ok {
		return channels.Delivery{}, fmt.Errorf("%w: telegram update has no update_id", channels.ErrMalformed)
	} else if err := json.Unmarshal(raw, &updateID); err != nil {
		return channels.Delivery{}, fmt.Errorf("%w: telegram update_id: %v", channels.ErrMalformed, err)
	}

	u, err := parseUpdate(fields)
	if err != nil {
		return channels.Delivery{}, fmt.Errorf("%w: telegram update %d: %v", channels.ErrMalformed, updateID, err)
	}
	return channels.Delivery{Key: strconv.FormatInt(updateID, 10), Updates: []channels.Update{u}}, nil
}

func parseUpdate(fields map[string]json.RawMessage) (channels.Update, error) {
	if raw, ok := fields["message"]; ok {
		m, msgFields, err := decodeMessage(raw)
		if err != nil {
			return channels.Update{}, fmt.Errorf("message: %w", err)
		}
		return normalise(channels.UpdateMessage, m, msgFields), nil
	}
	if raw, ok := fields["edited_message"]; ok {
		m, msgFields, err := decodeMessage(raw)
		if err != nil {
			return channels.Update{}, fmt.Errorf("edited_message: %w", err)
		}
		// Telegram also sends edited_message for changes Parley does not
		// model (live-location moves, fields it "does not actively use");
		// the full normalised content goes out and desk decides, by
		// comparing with what it stored, whether the text really changed.
		u := normalise(channels.UpdateEdit, m, msgFields)
		if m.EditDate != 0 {
			u.Time = unixTime(m.EditDate)
		}
		return u, nil
	}
	if raw, ok := fields["my_chat_member"]; ok {
		var cm chatMemberUpdated
		if err := json.Unmarshal(raw, &cm); err != nil {
			return channels.Update{}, fmt.Errorf("my_chat_member: %w", err)
		}
		return reachability(cm), nil
	}
	// callback_query (Parley sends no inline keyboards), channel posts,
	// business messages, polls, reactions, …: acknowledged, not acted on.
	kinds := make([]string, 0, len(fields))
	for k := range fields {
		if k != "update_id" {
			kinds = append(kinds, k)
		}
	}
	slices.Sort(kinds)
	if len(kinds) == 0 {
		return channels.Update{Kind: channels.UpdateIgnored, Reason: "telegram update carries no event"}, nil
	}
	return channels.Update{Kind: channels.UpdateIgnored, Reason: "telegram " + strings.Join(kinds, ",") + " update is not handled"}, nil
}

func decodeMessage(raw json.RawMessage) (message, map[string]json.RawMessage, error) {
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return m, nil, err
	}
	if _, ok := fields["chat"]; !ok {
		return m, nil, fmt.Errorf("no chat")
	}
	return m, fields, nil
}

// normalise maps a Message (new or edited) to an Update of the given kind.
func normalise(kind channels.UpdateKind, m message, fields map[string]json.RawMessage) channels.Update {
	u := channels.Update{
		Kind:      kind,
		Sender:    identity(m.Chat, m.From),
		MessageID: messageID(m.Chat.ID, m.MessageID),
		Time:      unixTime(m.Date),
	}
	content := map[string]any{}

	switch {
	case m.Text != "":
		u.MessageKind = channels.KindText
	case len(m.Photo) > 0:
		p := largest(m.Photo)
		u.MessageKind = channels.KindPhoto
		// Telegram re-encodes every photo it stores as JPEG.
		u.Attachments = []channels.Attachment{{Kind: channels.KindPhoto, Ref: p.FileID, MimeType: "image/jpeg", Size: int64(p.FileSize)}}
	case m.Document != nil:
		// Animations (GIFs) arrive with a document too and land here.
		d := m.Document
		u.MessageKind = channels.KindDocument
		u.Attachments = []channels.Attachment{{Kind: channels.KindDocument, Ref: d.FileID, FileName: d.FileName, MimeType: d.MimeType, Size: d.FileSize}}
	case m.Voice != nil:
		v := m.Voice
		u.MessageKind = channels.KindVoice
		u.Attachments = []channels.Attachment{{Kind: channels.KindVoice, Ref: v.FileID, MimeType: orDefault(v.MimeType, "audio/ogg"), Size: v.FileSize}}
	case m.Audio != nil:
		au := m.Audio
		u.MessageKind = channels.KindAudio
		u.Attachments = []channels.Attachment{{Kind: channels.KindAudio, Ref: au.FileID, FileName: au.FileName, MimeType: au.MimeType, Size: au.FileSize}}
	case m.Video != nil:
		v := m.Video
		u.MessageKind = channels.KindVideo
		u.Attachments = []channels.Attachment{{Kind: channels.KindVideo, Ref: v.FileID, FileName: v.FileName, MimeType: v.MimeType, Size: v.FileSize}}
	case m.VideoNote != nil:
		// Round video messages are always MPEG-4.
		v := m.VideoNote
		u.MessageKind = channels.KindVideo
		u.Attachments = []channels.Attachment{{Kind: channels.KindVideo, Ref: v.FileID, MimeType: "video/mp4", Size: int64(v.FileSize)}}
	case m.Sticker != nil:
		s := m.Sticker
		u.MessageKind = channels.KindSticker
		u.Attachments = []channels.Attachment{{Kind: channels.KindSticker, Ref: s.FileID, MimeType: stickerMime(s), Size: int64(s.FileSize)}}
		if s.Emoji != "" {
			content["emoji"] = s.Emoji
		}
	case m.Venue != nil:
		// A venue also carries location; its title and address are the
		// location's name and address.
		u.MessageKind = channels.KindLocation
		content["latitude"] = m.Venue.Location.Latitude
		content["longitude"] = m.Venue.Location.Longitude
		content["name"] = m.Venue.Title
		content["address"] = m.Venue.Address
	case m.Location != nil:
		u.MessageKind = channels.KindLocation
		content["latitude"] = m.Location.Latitude
		content["longitude"] = m.Location.Longitude
	case m.Contact != nil:
		c := m.Contact
		u.MessageKind = channels.KindContact
		content["phone"] = c.PhoneNumber
		content["name"] = joinName(c.FirstName, c.LastName)
		if c.UserID != 0 {
			content["userId"] = strconv.FormatInt(c.UserID, 10)
		}
	default:
		// Polls, dice, games, stories, service messages, and whatever later
		// Bot API versions add: kept, so that the operator sees something
		// arrived, never dropped.
		u.MessageKind = channels.KindUnsupported
		content["type"] = unsupportedType(fields)
	}

	u.Text = m.Text
	if u.Text == "" {
		u.Text = m.Caption
	}
	if m.MediaGroupID != "" {
		// Albums arrive as one update per item sharing this id.
		content["mediaGroupId"] = m.MediaGroupID
	}
	if m.Chat.Type != models.ChatTypePrivate && m.From != nil {
		// The customer is the group; keep which member spoke.
		content["from"] = map[string]any{
			"id":       strconv.FormatInt(m.From.ID, 10),
			"name":     joinName(m.From.FirstName, m.From.LastName),
			"username": m.From.Username,
		}
	}
	if len(content) > 0 {
		u.Content = content
	}
	return u
}

// reachability maps my_chat_member: in a private chat Telegram sends it
// only when the user blocks ("kicked") or unblocks ("member") the bot. In a
// group the same statuses mean the bot was removed or added.
func reachability(cm chatMemberUpdated) channels.Update {
	u := channels.Update{
		Kind:   channels.UpdateReachability,
		Sender: identity(cm.Chat, nil),
		Time:   unixTime(cm.Date),
	}
	switch status := cm.NewChatMember.Status; status {
	case "kicked", "left":
		u.Reachable = false
	case "member", "administrator", "creator":
		u.Reachable = true
	default:
		return channels.Update{Kind: channels.UpdateIgnored, Sender: u.Sender, Time: u.Time,
			Reason: "telegram my_chat_member status " + strconv.Quote(status) + " does not change reachability"}
	}
	return u
}

// identity describes the customer: the chat. In a private chat it is the
// user (chat.id = user id); a group is one customer named by its title.
func identity(chat models.Chat, from *models.User) channels.Identity {
	id := channels.Identity{ExternalID: strconv.FormatInt(chat.ID, 10), Username: chat.Username}
	if chat.Type == models.ChatTypePrivate || chat.Type == "" {
		id.Name = joinName(chat.FirstName, chat.LastName)
		if id.Name == "" && from != nil {
			id.Name = joinName(from.FirstName, from.LastName)
		}
		if id.Username == "" && from != nil {
			id.Username = from.Username
		}
		return id
	}
	id.Name = chat.Title
	return id
}

// messageID scopes Telegram's message_id, unique only inside a chat.
func messageID(chatID int64, msgID int) string {
	return strconv.FormatInt(chatID, 10) + ":" + strconv.Itoa(msgID)
}

// largest picks the biggest size: Telegram lists them smallest first, but
// the order is not promised, so compare areas (later wins ties).
func largest(sizes []models.PhotoSize) models.PhotoSize {
	best := sizes[0]
	for _, s := range sizes[1:] {
		if s.Width*s.Height >= best.Width*best.Height {
			best = s
		}
	}
	return best
}

func stickerMime(s *models.Sticker) string {
	switch {
	case s.IsAnimated:
		return "application/x-tgsticker"
	case s.IsVideo:
		return "video/webm"
	default:
		return "image/webp"
	}
}

// unsupportedType names the content field of a message Parley does not
// model: the first (sorted, for stable output) field that is not metadata.
func unsupportedType(fields map[string]json.RawMessage) string {
	var names []string
	for k := range fields {
		if !messageMeta[k] {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		return "unknown"
	}
	slices.Sort(names)
	return names[0]
}

func joinName(first, last string) string {
	return strings.TrimSpace(first + " " + last)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func unixTime(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}
