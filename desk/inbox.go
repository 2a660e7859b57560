package desk

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/inbounddelivery"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Provider deliveries (R1–R3). A webhook handler verifies the delivery with
// the channel's secret, has the adapter parse it, then calls ApplyDelivery:
// one transaction stores the raw body under its provider key and applies
// every update, so a redelivery (same key, or same message ids) changes
// nothing and a crash before commit leaves the provider to retry. Slow work
// (profile photos, media) is enqueued as jobs in the same transaction.

// WebhookChannel returns the channel a webhook URL names, with its secrets,
// if it exists for that provider and is active.
func (d *Desk) WebhookChannel(ctx context.Context, id int, provider enum.Provider) (channels.Channel, error) {
	ch, err := d.channel(ctx, nil, id)
	if ent.IsNotFound(err) || (err == nil && ch.Provider != provider) {
		return channels.Channel{}, Fail(CodeNotFound, "no %s channel %d", provider, id)
	}
	if err != nil {
		return channels.Channel{}, err
	}
	if !ch.Active {
		return channels.Channel{}, Fail(CodeChannelInactive, "channel %d is inactive", id)
	}
	return d.adapterChannel(ch), nil
}

// adapterChannel is what an adapter needs of a channel, secrets included.
func (d *Desk) adapterChannel(ch *ent.Channel) channels.Channel {
	return channels.Channel{ID: ch.ID, Provider: string(ch.Provider), ExternalID: ch.ExternalID, Token: ch.Token,
		AppSecret: ch.AppSecret, VerifyToken: ch.VerifyToken, WebhookSecret: ch.WebhookSecret, AppID: d.cfg.MetaAppID}
}

// Adapter returns the provider's adapter, if Parley has one.
func (d *Desk) Adapter(p enum.Provider) channels.Adapter { return d.adapters[p] }

// DeliveryResult says what a delivery did.
type DeliveryResult struct {
	// Duplicate: the delivery had been received before; nothing changed.
	Duplicate bool
	Applied   int
	Ignored   int
}

// ApplyDelivery stores a verified delivery and applies its updates, exactly
// once (R3). On PostgreSQL, one message from a known customer to their open
// chat takes one statement (openChatMessage) instead of the transaction.
func (d *Desk) ApplyDelivery(ctx context.Context, ch channels.Channel, del channels.Delivery, body []byte) (*DeliveryResult, error) {
	if res, done, err := d.openChatMessage(ctx, ch, del, body); done || err != nil {
		return res, err
	}
	var res *DeliveryResult
	err := d.inTxRacing(ctx, "apply delivery", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		res, err = d.applyDelivery(ctx, tx, ch, del, body)
		return err
	})
	return res, err
}

func (d *Desk) applyDelivery(ctx context.Context, tx *ent.Tx, ch channels.Channel, del channels.Delivery, body []byte) (*DeliveryResult, error) {
	res := &DeliveryResult{}
	switch {
	case del.Key == "":
	case !d.retried(tx):
		// A redelivery (R3) is refused by the unique index on (channel,
		// key), which fails the transaction at its commit, where the row is
		// written; the use case then runs again and looks first.
		// Redeliveries are rare: a first look on every delivery would cost
		// each a round trip.
		now := d.Now()
		if err := d.atCommit(ctx, tx, d.sql().Insert(inbounddelivery.Table).
			Columns(inbounddelivery.FieldChannelID, inbounddelivery.FieldProviderKey, inbounddelivery.FieldBody,
				inbounddelivery.FieldReceivedAt, inbounddelivery.FieldProcessedAt).
			Values(ch.ID, del.Key, body, now, now)); err != nil {
			return nil, err
		}
	default:
		_, err := tx.InboundDelivery.Create().SetChannelID(ch.ID).SetProviderKey(del.Key).SetBody(body).
			SetReceivedAt(d.Now()).SetProcessedAt(d.Now()).
			OnConflictColumns(inbounddelivery.FieldChannelID, inbounddelivery.FieldProviderKey).DoNothing().ID(ctx)
		if isNoRows(err) {
			res.Duplicate = true
			return res, nil
		}
		if err != nil {
			return nil, err
		}
	}
	for i, u := range del.Updates {
		if forAnotherAccount(ch, u) {
			d.log.Warn("delivery for another account ignored", "channel_id", ch.ID, "account", u.AccountRef)
			res.Ignored++
			continue
		}
		u = withoutNUL(u)
		// An event that cannot be stored is skipped, never failed: the
		// provider would redeliver the whole batch for days (R3).
		if why := unusable(u); why != "" {
			d.log.Warn("update ignored", "channel_id", ch.ID, "kind", u.Kind, "message_id", clip(u.MessageID, 100), "reason", why)
			res.Ignored++
			continue
		}
		// The last update's writes may be held for the commit: no later
		// update of the transaction reads them back.
		applied, err := d.applyUpdate(ctx, tx, ch, u, i == len(del.Updates)-1)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", u.Kind, u.MessageID, err)
		}
		if applied {
			res.Applied++
		} else {
			res.Ignored++
		}
	}
	return res, nil
}

// forAnotherAccount reports whether an update names an account (a page, a
// phone number) other than the channel's.
func forAnotherAccount(ch channels.Channel, u channels.Update) bool {
	return u.AccountRef != "" && ch.ExternalID != "" && u.AccountRef != ch.ExternalID
}

// unusable says why an update cannot be stored, or "": a message or echo
// needs its customer's id (contacts are keyed on it) and ids the database
// takes (external ids up to 200 bytes, message ids up to 300); an echo
// needs its message id (it deduplicates echoes).
func unusable(u channels.Update) string {
	if u.Kind != channels.UpdateMessage && u.Kind != channels.UpdateEcho {
		return ""
	}
	switch id := strings.TrimSpace(u.Sender.ExternalID); {
	case id == "":
		return "no customer id"
	case len(id) > 200:
		return "customer id longer than 200 bytes"
	case len(u.MessageID) > 300:
		return "message id longer than 300 bytes"
	case u.Kind == channels.UpdateEcho && u.MessageID == "":
		return "echo without a message id"
	}
	return ""
}

// withoutNUL removes U+0000 from the strings of an update: PostgreSQL
// refuses it in text and jsonb columns (SQLite keeps it), and it means
// nothing in a chat.
func withoutNUL(u channels.Update) channels.Update {
	s := func(v string) string { return strings.ReplaceAll(v, "\x00", "") }
	u.Sender.ExternalID, u.Sender.Name, u.Sender.Username = s(u.Sender.ExternalID), s(u.Sender.Name), s(u.Sender.Username)
	u.Sender.Phone, u.Sender.PhotoRef = s(u.Sender.Phone), s(u.Sender.PhotoRef)
	u.MessageID, u.MessageKind, u.Text = s(u.MessageID), s(u.MessageKind), s(u.Text)
	u.Status, u.ErrorCode, u.ErrorTitle = s(u.Status), s(u.ErrorCode), s(u.ErrorTitle)
	if u.Content != nil {
		u.Content = withoutNULValue(u.Content).(map[string]any)
	}
	if u.Attachments != nil {
		atts := make([]channels.Attachment, len(u.Attachments))
		for i, a := range u.Attachments {
			a.Kind, a.Ref, a.FileName, a.MimeType = s(a.Kind), s(a.Ref), s(a.FileName), s(a.MimeType)
			atts[i] = a
		}
		u.Attachments = atts
	}
	return u
}

func withoutNULValue(v any) any {
	switch v := v.(type) {
	case string:
		return strings.ReplaceAll(v, "\x00", "")
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[strings.ReplaceAll(k, "\x00", "")] = withoutNULValue(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = withoutNULValue(x)
		}
		return out
	}
	return v
}

func (d *Desk) applyUpdate(ctx context.Context, tx *ent.Tx, ch channels.Channel, u channels.Update, final bool) (bool, error) {
	if (u.Kind == channels.UpdateMessage || u.Kind == channels.UpdateEcho || u.Kind == channels.UpdateReachability) &&
		u.Sender.ExternalID == "" {
		// Nobody to attach it to: refusing the whole delivery would only
		// make the provider redeliver it forever.
		d.log.Warn("update without a sender ignored", "channel_id", ch.ID, "kind", u.Kind, "message_id", u.MessageID)
		return false, nil
	}
	switch u.Kind {
	case channels.UpdateMessage:
		return true, d.applyMessage(ctx, tx, ch, u, final)
	case channels.UpdateEdit:
		return d.applyEdit(ctx, tx, ch, u)
	case channels.UpdateStatus:
		return d.applyStatus(ctx, tx, ch.ID, u, true)
	case channels.UpdateReachability:
		return d.applyReachability(ctx, tx, ch, u)
	case channels.UpdateEcho:
		return d.applyEcho(ctx, tx, ch, u)
	}
	d.log.Debug("update ignored", "channel_id", ch.ID, "kind", u.Kind, "reason", u.Reason)
	return false, nil
}

// inboundOf is the inbound message of a provider's message update (final:
// the delivery's last update).
func inboundOf(ch channels.Channel, u channels.Update, final bool) Inbound {
	in := Inbound{ChannelID: ch.ID, ProviderMessageID: u.MessageID, Kind: enum.MessageKind(u.MessageKind),
		Text: u.Text, Content: u.Content,
		Identity: InboundIdentity{ExternalID: u.Sender.ExternalID, Name: u.Sender.Name, Username: u.Sender.Username, Phone: u.Sender.Phone},
		lean:     true, final: final}
	if message.KindValidator(in.Kind) != nil {
		in.Content = map[string]any{"providerKind": u.MessageKind}
		in.Kind = enum.KindUnsupported
	}
	for _, a := range u.Attachments {
		in.Attachments = append(in.Attachments, InboundAttachment{Kind: enum.MessageKind(a.Kind), Ref: a.Ref,
			FileName: a.FileName, MimeType: a.MimeType, Size: a.Size})
	}
	return in
}

func (d *Desk) applyMessage(ctx context.Context, tx *ent.Tx, ch channels.Channel, u channels.Update, final bool) error {
	in := inboundOf(ch, u, final)
	res, err := d.ingest(ctx, tx, in)
	if err != nil || res.Duplicate {
		return err
	}
	for _, a := range res.Attachments {
		if err := d.enqueue(ctx, tx, jobSpec{kind: jobDownload, chatID: res.Chat.ID, ref: a.ID, due: d.Now()}); err != nil {
			return err
		}
	}
	if a := d.adapters[enum.Provider(ch.Provider)]; res.NewContact && a != nil && channels.HasProfiles(a) {
		return d.enqueue(ctx, tx, jobSpec{kind: jobFetchProfile, ref: res.IdentityID, due: d.Now(),
			payload: map[string]any{"channel": ch.ID, "provider": ch.Provider, "externalId": in.Identity.ExternalID}})
	}
	return nil
}

// applyEdit records a customer's edit of a message (Telegram): the text
// changes, the previous one is kept.
func (d *Desk) applyEdit(ctx context.Context, tx *ent.Tx, ch channels.Channel, u channels.Update) (bool, error) {
	m, err := tx.Message.Query().Where(message.ChannelID(ch.ID), message.ProviderMessageID(u.MessageID)).Only(ctx)
	if ent.IsNotFound(err) {
		return false, nil // an edit of a message we never got
	}
	if err != nil || m.Text == u.Text {
		return false, err
	}
	m, err = tx.Message.UpdateOneID(m.ID).SetText(u.Text).SetEditedAt(d.Now()).
		SetPreviousTexts(append(m.PreviousTexts, m.Text)).Save(ctx)
	if err != nil {
		return false, err
	}
	c, err := tx.Chat.Get(ctx, m.ChatID)
	if err != nil {
		return false, err
	}
	edited := withChatAudience(c, event{Type: EventMessageEdited, ChatID: c.ID, QueueID: c.QueueID,
		Payload: map[string]any{"messageId": m.ID}})
	return true, d.emit(ctx, tx, edited)
}

// applyStatus moves an outbound message's delivery status forward, never
// back: sent < delivered < read, failed is terminal, whatever the arrival
// order (R14). A status for a message whose send has not been recorded yet
// is retried by a job. An empty message id with a READ status is a
// Messenger read watermark: every outbound message to that customer up to
// the time is read.
func (d *Desk) applyStatus(ctx context.Context, tx *ent.Tx, channelID int, u channels.Update, retry bool) (bool, error) {
	status := enum.DeliveryStatus(u.Status)
	if message.DeliveryStatusValidator(status) != nil {
		return false, nil
	}
	if u.MessageID == "" {
		return d.applyReadWatermark(ctx, tx, channelID, u)
	}
	m, err := tx.Message.Query().Where(message.ChannelID(channelID), message.ProviderMessageID(u.MessageID)).Only(ctx)
	if ent.IsNotFound(err) {
		if !retry {
			return false, nil
		}
		// The status may have overtaken the send's answer: try again soon.
		return false, d.enqueue(ctx, tx, jobSpec{kind: jobLateStatus, ref: channelID, due: d.Now().Add(5 * time.Second),
			payload: map[string]any{"messageId": u.MessageID, "status": u.Status, "code": u.ErrorCode, "title": u.ErrorTitle}})
	}
	if err != nil {
		return false, err
	}
	return d.setDeliveryStatus(ctx, tx, m, status, u.ErrorCode, u.ErrorTitle)
}

// setDeliveryStatus applies a status if it moves the message forward.
func (d *Desk) setDeliveryStatus(ctx context.Context, tx *ent.Tx, m *ent.Message, status enum.DeliveryStatus, code, reason string) (bool, error) {
	if m.DeliveryStatus != nil && status.Rank() <= m.DeliveryStatus.Rank() {
		return false, nil
	}
	now := d.Now()
	upd := tx.Message.UpdateOneID(m.ID).SetDeliveryStatus(status)
	switch status {
	case enum.DeliverySent:
		upd.SetSentAt(now)
	case enum.DeliveryDelivered:
		upd.SetDeliveredAt(now)
	case enum.DeliveryRead:
		upd.SetReadAt(now)
	case enum.DeliveryFailed:
		upd.SetDeliveryErrorCode(clip(code, 100)).SetDeliveryError(clip(reason, 1000))
	}
	if err := upd.Exec(ctx); err != nil {
		return false, err
	}
	c, err := tx.Chat.Get(ctx, m.ChatID)
	if err != nil {
		return false, err
	}
	audience := []int{}
	if c.OwnerID != nil {
		audience = []int{*c.OwnerID}
	}
	return true, d.emit(ctx, tx, event{Type: EventDeliveryStatus, ChatID: c.ID, QueueID: c.QueueID, Audience: audience,
		Payload: map[string]any{"messageId": m.ID, "status": string(status)}})
}

func (d *Desk) applyReadWatermark(ctx context.Context, tx *ent.Tx, channelID int, u channels.Update) (bool, error) {
	// The customer, by the channel provider's identity (unique index), who
	// must have a chat on the channel.
	ch, err := d.channel(ctx, tx, channelID)
	if err != nil {
		return false, err
	}
	ident, err := tx.ContactIdentity.Query().Where(contactidentity.ProviderEQ(ch.Provider),
		contactidentity.ExternalID(u.Sender.ExternalID)).Only(ctx)
	if ent.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	contactID := ident.ContactID
	if has, err := tx.Chat.Query().Where(chat.ContactID(contactID), chat.ChannelID(channelID)).Exist(ctx); err != nil || !has {
		return false, err
	}
	upTo := u.Time
	if upTo.IsZero() {
		upTo = d.Now()
	}
	msgs, err := tx.Message.Query().Where(message.ChannelID(channelID), message.DirectionEQ(enum.Outbound),
		message.DeliveryStatusIn(enum.DeliverySent, enum.DeliveryDelivered), message.SentAtLTE(upTo),
		message.HasChatWith(chat.ContactID(contactID))).All(ctx)
	if err != nil {
		return false, err
	}
	changed := false
	for _, m := range msgs {
		ok, err := d.setDeliveryStatus(ctx, tx, m, enum.DeliveryRead, "", "")
		if err != nil {
			return false, err
		}
		changed = changed || ok
	}
	return changed, nil
}

// applyReachability marks a customer's identity unreachable when they
// blocked us, and reachable again when they unblocked us.
func (d *Desk) applyReachability(ctx context.Context, tx *ent.Tx, ch channels.Channel, u channels.Update) (bool, error) {
	reason := ""
	if !u.Reachable {
		reason = "blocked by the user"
	}
	// Only a change is written: a redelivery changes nothing.
	n, err := tx.ContactIdentity.Update().Where(contactidentity.ProviderEQ(enum.Provider(ch.Provider)),
		contactidentity.ExternalID(u.Sender.ExternalID), contactidentity.UnreachableNEQ(!u.Reachable)).
		SetUnreachable(!u.Reachable).SetUnreachableReason(reason).Save(ctx)
	return n > 0, err
}

// applyEcho records a message that another app or the Page Inbox sent to
// the customer (Messenger echo), in the customer's open chat on the channel.
func (d *Desk) applyEcho(ctx context.Context, tx *ent.Tx, ch channels.Channel, u channels.Update) (bool, error) {
	c, err := tx.Chat.Query().Where(chat.ChannelID(ch.ID), chatOpen(),
		chatOfIdentity(contactidentity.ProviderEQ(enum.Provider(ch.Provider)),
			contactidentity.ExternalID(u.Sender.ExternalID))).Only(ctx)
	if ent.IsNotFound(err) {
		return false, nil // no conversation in Parley to show it in
	}
	if err != nil {
		return false, err
	}
	if exists, err := tx.Message.Query().Where(message.ChannelID(ch.ID), message.ProviderMessageID(u.MessageID)).Exist(ctx); err != nil || exists {
		return false, err
	}
	kind := enum.MessageKind(u.MessageKind)
	if message.KindValidator(kind) != nil {
		kind = enum.KindText
	}
	m, err := tx.Message.Create().SetChatID(c.ID).SetChannelID(ch.ID).SetDirection(enum.Outbound).
		SetAuthorKind(enum.AuthorExternal).SetKind(kind).SetText(u.Text).SetProviderMessageID(u.MessageID).
		SetDeliveryStatus(enum.DeliverySent).SetSentAt(d.Now()).SetCreatedAt(d.Now()).Save(ctx)
	if err != nil {
		return false, err
	}
	added := withChatAudience(c, event{Type: EventMessageAdded, ChatID: c.ID, QueueID: c.QueueID,
		Payload: map[string]any{"messageId": m.ID}})
	return true, d.emit(ctx, tx, added)
}

// retryLateStatus applies a status that arrived before its message's send
// was recorded.
func (d *Desk) retryLateStatus(ctx context.Context, tx *ent.Tx, j *ent.Job) error {
	str := func(k string) string { s, _ := j.Payload[k].(string); return s }
	if ok, err := tx.Message.Query().Where(message.ChannelID(jobRef(j)), message.ProviderMessageID(str("messageId"))).Exist(ctx); err != nil {
		return err
	} else if !ok {
		return errNotYet // retried with backoff, then given up
	}
	_, err := d.applyStatus(ctx, tx, jobRef(j), channels.Update{MessageID: str("messageId"), Status: str("status"),
		ErrorCode: str("code"), ErrorTitle: str("title")}, false)
	return err
}

var errNotYet = fmt.Errorf("the message of the status is not recorded yet")
