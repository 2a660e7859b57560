package desk

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/channel"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Starting a chat from a contact (R21).

// StartChatInput names the contact, where to write (a channel, or a
// provider whose active channel is used) and the first message.
type StartChatInput struct {
	ContactID int
	ChannelID *int
	Provider  *enum.Provider
	Text      string
}

// ContactChannel says whether a contact can be written to on a channel,
// and if not, why (R21).
type ContactChannel struct {
	Channel  *ent.Channel
	CanWrite bool
	// Reason is the code of the condition that fails: NO_IDENTITY,
	// NO_CONVERSATION, CHANNEL_INACTIVE, ACTIVE_CHAT_EXISTS,
	// REPLY_WINDOW_EXPIRED; empty when CanWrite.
	Reason Code
	// ReplyWindowEndsAt is when the 24-hour window closes (WhatsApp,
	// Messenger) after the contact's last message on the channel.
	ReplyWindowEndsAt *time.Time
}

// ContactChannels tells, for every channel, whether the contact can be
// written to there (R21).
func (d *Desk) ContactChannels(ctx context.Context, contactID int) ([]*ContactChannel, error) {
	if _, err := Require(ctx, AccessOperator); err != nil {
		return nil, err
	}
	if _, err := d.client.Contact.Get(ctx, contactID); err != nil {
		return nil, notFound(err, "contact", contactID)
	}
	chs, err := d.client.Channel.Query().Where(channel.ProviderNEQ(enum.ProviderAPI)).Order(ent.Asc(channel.FieldID)).All(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*ContactChannel, 0, len(chs))
	for _, ch := range chs {
		cc, err := d.canStart(ctx, d.client, contactID, ch)
		if err != nil {
			return nil, err
		}
		out = append(out, cc)
	}
	return out, nil
}

// canStart checks the conditions of R21 for one channel.
func (d *Desk) canStart(ctx context.Context, c *ent.Client, contactID int, ch *ent.Channel) (*ContactChannel, error) {
	cc := &ContactChannel{Channel: ch}
	if !ch.Active {
		cc.Reason = CodeChannelInactive
		return cc, nil
	}
	hasIdentity, err := c.ContactIdentity.Query().Where(contactidentity.ProviderEQ(ch.Provider),
		contactidentity.HasContactWith(contactIs(contactID))).Exist(ctx)
	if err != nil {
		return nil, err
	}
	if !hasIdentity {
		cc.Reason = CodeNoIdentity
		return cc, nil
	}
	chats, err := c.Chat.Query().Where(chat.ContactID(contactID), chat.ChannelID(ch.ID)).All(ctx)
	if err != nil {
		return nil, err
	}
	if len(chats) == 0 {
		cc.Reason = CodeNoConversation
		return cc, nil
	}
	var lastInbound *time.Time
	for _, x := range chats {
		if x.Status != enum.ChatCompleted {
			cc.Reason = CodeActiveChatExists
		}
		if x.LastInboundAt != nil && (lastInbound == nil || x.LastInboundAt.After(*lastInbound)) {
			lastInbound = x.LastInboundAt
		}
	}
	if windowed(ch.Provider) {
		if lastInbound == nil {
			cc.Reason = firstCode(cc.Reason, CodeReplyWindowExpired)
		} else {
			ends := lastInbound.Add(replyWindow)
			cc.ReplyWindowEndsAt = &ends
			if !d.Now().Before(ends) {
				cc.Reason = firstCode(cc.Reason, CodeReplyWindowExpired)
			}
		}
	}
	cc.CanWrite = cc.Reason == ""
	return cc, nil
}

func firstCode(a, b Code) Code {
	if a != "" {
		return a
	}
	return b
}

// StartChat opens a chat with a contact on a channel and sends the first
// message (R21): allowed only when an active channel of the provider
// exists, the contact has an identity and a prior conversation on it, no
// chat with them is open there, and, for WhatsApp and Messenger, their last
// message is less than 24 hours old. The chat is IN_PROGRESS with the
// caller as owner. Refusals name the condition that failed.
func (d *Desk) StartChat(ctx context.Context, in StartChatInput) (*ent.Chat, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(in.Text) == "" {
		return nil, invalid("text", "the first message is empty")
	}
	if len(in.Text) > maxMessageText {
		return nil, invalid("text", "the message is longer than %d bytes", maxMessageText)
	}
	if (in.ChannelID == nil) == (in.Provider == nil) {
		return nil, invalid("channelId", "give either a channel or a provider")
	}
	c, err := d.startChat(ctx, a, in)
	return detach(c, err)
}

func (d *Desk) startChat(ctx context.Context, a *Actor, in StartChatInput) (*ent.Chat, error) {
	var c *ent.Chat
	// A chat opened with the contact on the channel by a concurrent start
	// (or first message) makes the unique index of open chats refuse this
	// one: the racing transaction runs again and answers ACTIVE_CHAT_EXISTS
	// as canStart says it.
	err := d.inTxRacing(ctx, "start chat", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := tx.Contact.Get(ctx, in.ContactID); err != nil {
			return notFound(err, "contact", in.ContactID)
		}
		ch, err := d.startChannel(ctx, tx, in)
		if err != nil {
			return err
		}
		cc, err := d.canStart(ctx, tx.Client(), in.ContactID, ch)
		if err != nil {
			return err
		}
		if !cc.CanWrite {
			return Fail(cc.Reason, "%s", startRefusal(cc.Reason))
		}
		queueID := ch.QueueID
		now := d.Now()
		create := tx.Chat.Create().SetStatus(enum.ChatInProgress).SetChannelID(ch.ID).SetContactID(in.ContactID).
			SetQueueID(queueID).SetOwnerID(a.OperatorID).SetCreatedAt(now).SetAcceptedAt(now).SetLastMessageAt(now)
		if cc.ReplyWindowEndsAt != nil {
			create.SetReplyWindowEndsAt(*cc.ReplyWindowEndsAt)
		}
		if c, err = create.Save(ctx); err != nil {
			return err
		}
		if err := d.emit(ctx, tx, event{Type: EventChatCreated, ChatID: c.ID, QueueID: queueID, OperatorID: a.OperatorID,
			Payload: map[string]any{"startedBy": a.OperatorID}}); err != nil {
			return err
		}
		if _, err := d.postOperatorMessage(ctx, tx, c, a.OperatorID, in.Text, nil); err != nil {
			return err
		}
		c, err = tx.Chat.Get(ctx, c.ID)
		return err
	})
	return c, err
}

// startChannel resolves the channel of a StartChat: the one named, or the
// active channel of the provider.
func (d *Desk) startChannel(ctx context.Context, tx *ent.Tx, in StartChatInput) (*ent.Channel, error) {
	if in.ChannelID != nil {
		ch, err := tx.Channel.Get(ctx, *in.ChannelID)
		if ent.IsNotFound(err) {
			return nil, Fail(CodeNoChannel, "channel %d does not exist", *in.ChannelID)
		}
		return ch, err
	}
	chs, err := tx.Channel.Query().Where(channel.ProviderEQ(*in.Provider)).Order(ent.Desc(channel.FieldActive), ent.Asc(channel.FieldID)).All(ctx)
	if err != nil {
		return nil, err
	}
	if len(chs) == 0 {
		return nil, Fail(CodeNoChannel, "no %s channel is connected", *in.Provider)
	}
	// Prefer an active channel where the contact has talked before.
	for _, ch := range chs {
		if !ch.Active {
			break
		}
		if ok, err := tx.Chat.Query().Where(chat.ContactID(in.ContactID), chat.ChannelID(ch.ID)).Exist(ctx); err != nil {
			return nil, err
		} else if ok {
			return ch, nil
		}
	}
	return chs[0], nil
}

func startRefusal(c Code) string {
	switch c {
	case CodeChannelInactive:
		return "the channel is inactive"
	case CodeNoIdentity:
		return "the contact has no identity on this channel's provider"
	case CodeNoConversation:
		return "the contact has never written on this channel"
	case CodeActiveChatExists:
		return "a chat with this contact is open on this channel"
	case CodeReplyWindowExpired:
		return "more than 24 hours have passed since the contact's last message on this channel"
	}
	return string(c)
}

// RegisterTelegramWebhook tells Telegram to deliver a channel's updates to
// publicURL + its webhook path, with the channel's secret (setWebhook).
func (d *Desk) RegisterTelegramWebhook(ctx context.Context, channelID int, publicURL string) (*ent.Channel, error) {
	if _, err := Require(ctx, AccessAdmin); err != nil {
		return nil, err
	}
	ch, err := d.client.Channel.Get(ctx, channelID)
	if err != nil {
		return nil, notFound(err, "channel", channelID)
	}
	if ch.Provider != enum.ProviderTelegram {
		return nil, invalid("channelId", "only Telegram webhooks are registered through the API; Meta's are set in the App Dashboard")
	}
	if publicURL == "" {
		return nil, Fail(CodeValidation, "set PARLEY_PUBLIC_URL to the address Telegram can reach")
	}
	adapter := d.adapters[ch.Provider]
	if adapter == nil {
		return nil, Fail(CodeValidation, "no Telegram adapter is configured")
	}
	url := strings.TrimRight(publicURL, "/") + "/webhooks/telegram/" + strconv.Itoa(ch.ID)
	if err := adapter.RegisterWebhook(ctx, d.adapterChannel(ch), url); err != nil {
		d.log.Warn("telegram setWebhook failed", "channel_id", ch.ID, "err", err)
		return nil, Fail(CodeConflict, "Telegram refused the webhook: %s", err.Error())
	}
	d.log.Info("telegram webhook registered", "channel_id", ch.ID, "url", url)
	return ch, nil
}
