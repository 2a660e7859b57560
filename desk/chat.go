package desk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/parleydesk/parley/desk/files"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/draft"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// AcceptChat makes the calling operator the owner of a chat offered to them
// (R13). Exactly one operator wins, however many try at once: the chat row is
// locked (PostgreSQL) or the write is serialised (SQLite), and the status is
// re-read under the lock.
func (d *Desk) AcceptChat(ctx context.Context, chatID int) (*ent.Chat, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	var c *ent.Chat
	err = d.inTx(ctx, "accept chat", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		c, err = d.accept(ctx, tx, chatID, a.OperatorID)
		return err
	})
	return detach(c, err)
}

func (d *Desk) accept(ctx context.Context, tx *ent.Tx, chatID, me int) (*ent.Chat, error) {
	now := d.Now()
	c, err := d.lockChat(ctx, tx, chatID)
	if err != nil {
		return nil, err
	}
	switch c.Status {
	case enum.ChatCompleted:
		return nil, Fail(CodeChatCompleted, "chat %d is completed", c.ID)
	case enum.ChatInProgress:
		if c.OwnerID != nil && *c.OwnerID == me {
			return nil, Fail(CodeChatAlreadyTaken, "you already work chat %d", c.ID)
		}
		return nil, Fail(CodeChatAlreadyTaken, "chat %d was taken by another operator", c.ID)
	}
	offer, err := tx.ChatOffer.Query().Where(chatoffer.ChatID(c.ID), chatoffer.OperatorID(me),
		chatoffer.StatusEQ(enum.OfferOpen)).Only(ctx)
	if ent.IsNotFound(err) {
		return nil, Fail(CodeChatNotOffered, "chat %d is not offered to you", c.ID)
	}
	if err != nil {
		return nil, err
	}
	ops, err := d.lockOperators(ctx, tx, operator.ID(me))
	if err != nil || len(ops) == 0 {
		return nil, fmt.Errorf("lock operator %d: %w", me, err)
	}
	op := ops[0]
	q, err := tx.Queue.Get(ctx, c.QueueID)
	if err != nil {
		return nil, err
	}
	s, err := d.settingsTx(ctx, tx)
	if err != nil {
		return nil, err
	}
	loads, err := d.loads(ctx, tx, []int{me})
	if err != nil {
		return nil, err
	}
	// The offer itself is part of the load; accepting turns it into a chat
	// in work. Refuse only when the limit was lowered since the offer.
	if limit := chatLimit(op, q, s); loads[me] > limit {
		return nil, Fail(CodeLimitExhausted, "your chat limit (%d) is exhausted", limit)
	}
	if c, err = tx.Chat.UpdateOneID(c.ID).SetStatus(enum.ChatInProgress).SetOwnerID(me).
		SetAcceptedAt(now).Save(ctx); err != nil {
		return nil, err
	}
	// Conditional: an offer withdrawn meanwhile (the operator was set
	// INACTIVE by a supervisor) cannot be accepted.
	if n, err := tx.ChatOffer.Update().Where(chatoffer.ID(offer.ID), chatoffer.StatusEQ(enum.OfferOpen)).
		SetStatus(enum.OfferAccepted).SetClosedAt(now).Save(ctx); err != nil {
		return nil, err
	} else if n != 1 {
		return nil, Fail(CodeChatNotOffered, "the offer of chat %d was withdrawn", c.ID)
	}
	if err := tx.Operator.UpdateOneID(me).SetLastAcceptedAt(now).Exec(ctx); err != nil {
		return nil, err
	}
	if err := d.withdrawOffers(ctx, tx, chatoffer.ChatID(c.ID)); err != nil {
		return nil, err
	}
	return c, d.emit(ctx, tx, event{Type: EventChatAccepted, ChatID: c.ID, OperatorID: me, QueueID: c.QueueID})
}

// withdrawOffers closes the open offers matching the predicate (the others of
// an accepted chat, those of an operator turning INACTIVE) and releases the
// queues of the operators who got capacity back.
func (d *Desk) withdrawOffers(ctx context.Context, tx *ent.Tx, where ...predicateOffer) error {
	offers, err := tx.ChatOffer.Query().Where(append(where, chatoffer.StatusEQ(enum.OfferOpen))...).All(ctx)
	if err != nil || len(offers) == 0 {
		return err
	}
	ops := make([]int, 0, len(offers))
	for _, o := range offers {
		// One by one and only if still open: an offer accepted or expired
		// meanwhile by another transaction is left as it is.
		n, err := tx.ChatOffer.Update().Where(chatoffer.ID(o.ID), chatoffer.StatusEQ(enum.OfferOpen)).
			SetStatus(enum.OfferWithdrawn).SetClosedAt(d.Now()).Save(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		ops = append(ops, o.OperatorID)
		if err := d.emit(ctx, tx, event{Type: EventOfferWithdrawn, ChatID: o.ChatID, OperatorID: o.OperatorID}); err != nil {
			return err
		}
	}
	if len(ops) == 0 {
		return nil
	}
	qids, err := tx.Queue.Query().Where(queue.HasMembersWith(operator.IDIn(ops...))).IDs(ctx)
	if err != nil {
		return err
	}
	for _, q := range qids {
		if err := d.releaseQueueLater(ctx, tx, q); err != nil {
			return err
		}
	}
	return nil
}

// ownChat locks a chat the caller works: it must exist, be IN_PROGRESS and
// be theirs.
func (d *Desk) ownChat(ctx context.Context, tx *ent.Tx, chatID, me int) (*ent.Chat, error) {
	c, err := d.lockChat(ctx, tx, chatID)
	if err != nil {
		return nil, err
	}
	if err := checkOwnChat(c, me); err != nil {
		return nil, err
	}
	return c, nil
}

// checkOwnChat refuses a chat that is not IN_PROGRESS with me as owner.
func checkOwnChat(c *ent.Chat, me int) error {
	switch {
	case c.Status == enum.ChatCompleted:
		return Fail(CodeChatCompleted, "chat %d is completed", c.ID)
	case c.OwnerID == nil || *c.OwnerID != me:
		return Fail(CodeNotChatOwner, "chat %d is not yours", c.ID)
	case c.Status != enum.ChatInProgress:
		return Fail(CodeChatNotInProgress, "chat %d is not in progress", c.ID)
	}
	return nil
}

// checkReplyWindow refuses a WhatsApp or Messenger chat whose 24-hour
// reply window has closed (R21).
func (d *Desk) checkReplyWindow(ch *ent.Channel, c *ent.Chat) error {
	if windowed(ch.Provider) && c.ReplyWindowEndsAt != nil && d.Now().After(*c.ReplyWindowEndsAt) {
		return Fail(CodeReplyWindowExpired, "the customer's 24-hour reply window closed at %s", c.ReplyWindowEndsAt.Format(time.RFC3339))
	}
	return nil
}

// precheckSend refuses, before an upload is stored, a message that the
// transaction would refuse: file storage has no delete, so a refused
// upload would stay there for good. The transaction checks again.
func (d *Desk) precheckSend(ctx context.Context, chatID, me int) error {
	c, err := d.client.Chat.Get(ctx, chatID)
	if err != nil {
		return notFound(err, "chat", chatID)
	}
	if err := checkOwnChat(c, me); err != nil {
		return err
	}
	ch, err := d.client.Channel.Get(ctx, c.ChannelID)
	if err != nil {
		return err
	}
	return d.checkReplyWindow(ch, c)
}

// CompleteChat ends a chat of the calling operator (R17).
func (d *Desk) CompleteChat(ctx context.Context, chatID int) (*ent.Chat, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	var c *ent.Chat
	err = d.inTx(ctx, "complete chat", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		if c, err = d.ownChat(ctx, tx, chatID, a.OperatorID); err != nil {
			return err
		}
		c, err = d.complete(ctx, tx, c, enum.CompletedByOperator)
		return err
	})
	return detach(c, err)
}

// complete moves a chat to COMPLETED, recording its first response time and
// duration (R17, R31), and releases its owner's capacity.
func (d *Desk) complete(ctx context.Context, tx *ent.Tx, c *ent.Chat, reason enum.CompletionReason) (*ent.Chat, error) {
	now := d.Now()
	upd := tx.Chat.UpdateOneID(c.ID).SetStatus(enum.ChatCompleted).SetCompletedAt(now).
		SetCompletionReason(reason).ClearCompletionDueAt().
		SetDurationSeconds(int(now.Sub(c.CreatedAt).Seconds()))
	if c.FirstResponseAt != nil {
		upd.SetFirstResponseSeconds(int(c.FirstResponseAt.Sub(c.CreatedAt).Seconds()))
	}
	c, err := upd.Save(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.withdrawOffers(ctx, tx, chatoffer.ChatID(c.ID)); err != nil {
		return nil, err
	}
	ownerID := 0
	if c.OwnerID != nil {
		ownerID = *c.OwnerID
		if err := d.releaseCapacity(ctx, tx, ownerID); err != nil {
			return nil, err
		}
	}
	return c, d.emit(ctx, tx, event{Type: EventChatCompleted, ChatID: c.ID, OperatorID: ownerID, QueueID: c.QueueID,
		Payload: map[string]any{"reason": string(reason)}})
}

// completeIfDue completes a chat whose customer stayed silent until its
// completion due time (R18), with a system message saying so.
func (d *Desk) completeIfDue(ctx context.Context, tx *ent.Tx, chatID int) error {
	c, err := d.lockChat(ctx, tx, chatID)
	if isCode(err, CodeNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	now := d.Now()
	if c.Status != enum.ChatInProgress || c.CompletionDueAt == nil || c.CompletionDueAt.After(now) {
		return nil // the customer answered, the chat ended, or the time moved
	}
	m, err := tx.Message.Create().SetChatID(c.ID).SetChannelID(c.ChannelID).SetDirection(enum.Outbound).
		SetAuthorKind(enum.AuthorSystem).SetText("The chat was completed automatically: the customer did not reply in time.").
		SetCreatedAt(now).Save(ctx)
	if err != nil {
		return err
	}
	if err := d.emit(ctx, tx, event{Type: EventMessageAdded, ChatID: c.ID, QueueID: c.QueueID, Audience: []int{*c.OwnerID},
		Payload: map[string]any{"messageId": m.ID}}); err != nil {
		return err
	}
	_, err = d.complete(ctx, tx, c, enum.CompletedByTimeout)
	return err
}

// maxMessageText bounds an operator message (providers split longer ones).
const maxMessageText = 10000

// FileUpload is a file an operator sends with a message.
type FileUpload struct {
	Name     string
	MimeType string
	Body     io.Reader
}

// SendMessage stores an operator's message in their chat (R14) and puts it
// in the outbox of the chat's channel (delivery PENDING until the provider
// accepts it). It refuses a WhatsApp or Messenger chat whose 24-hour reply
// window has closed, before calling anyone (R21). It sets the first
// response time, arms the completion timeout of the queue (R18) and clears
// the draft (R16).
func (d *Desk) SendMessage(ctx context.Context, chatID int, text string, file *FileUpload) (*ent.Message, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(text) == "" && file == nil {
		return nil, invalid("text", "the message is empty")
	}
	if len(text) > maxMessageText {
		return nil, invalid("text", "the message is longer than %d bytes", maxMessageText)
	}
	var stored *storedFile
	if file != nil {
		if err := d.precheckSend(ctx, chatID, a.OperatorID); err != nil {
			return nil, err
		}
		if stored, err = d.keepUpload(ctx, file); err != nil {
			return nil, err
		}
	}
	var m *ent.Message
	err = d.inTx(ctx, "send message", func(ctx context.Context, tx *ent.Tx) error {
		c, err := d.ownChat(ctx, tx, chatID, a.OperatorID)
		if err != nil {
			return err
		}
		m, err = d.postOperatorMessage(ctx, tx, c, a.OperatorID, text, stored)
		return err
	})
	return detach(m, err)
}

// storedFile is an upload kept in storage, ready to attach.
type storedFile struct {
	key, name, mime string
	size            int64
	kind            enum.MessageKind
}

func (d *Desk) keepUpload(ctx context.Context, f *FileUpload) (*storedFile, error) {
	key, size, err := d.storeUpload(ctx, f.Body)
	if err != nil {
		if errors.Is(err, files.ErrTooLarge) {
			return nil, invalid("file", "the file is larger than %d bytes", d.cfg.MaxFileBytes)
		}
		return nil, err
	}
	kind := enum.KindDocument
	if strings.HasPrefix(f.MimeType, "image/") {
		kind = enum.KindPhoto
	}
	return &storedFile{key: key, name: clip(f.Name, 500), mime: clip(f.MimeType, 200), size: size, kind: kind}, nil
}

// postOperatorMessage adds an operator's message to a chat they work and
// puts it in the outbox.
func (d *Desk) postOperatorMessage(ctx context.Context, tx *ent.Tx, c *ent.Chat, opID int, text string, file *storedFile) (*ent.Message, error) {
	now := d.Now()
	ch, err := tx.Channel.Get(ctx, c.ChannelID)
	if err != nil {
		return nil, err
	}
	if err := d.checkReplyWindow(ch, c); err != nil {
		return nil, err
	}
	kind := enum.KindText
	if file != nil {
		kind = file.kind
	}
	m, err := tx.Message.Create().SetChatID(c.ID).SetChannelID(c.ChannelID).SetDirection(enum.Outbound).
		SetAuthorKind(enum.AuthorOperator).SetAuthorID(opID).SetText(text).SetKind(kind).
		SetDeliveryStatus(enum.DeliveryPending).SetCreatedAt(now).Save(ctx)
	if err != nil {
		return nil, err
	}
	if file != nil {
		if err := tx.Attachment.Create().SetMessageID(m.ID).SetKind(file.kind).SetStatus(enum.AttachmentStored).
			SetStorageKey(file.key).SetFileName(file.name).SetMimeType(file.mime).SetSize(int(file.size)).
			SetCreatedAt(now).Exec(ctx); err != nil {
			return nil, err
		}
	}
	if d.adapters[ch.Provider] != nil {
		if err := d.enqueue(ctx, tx, jobSpec{kind: jobSend, chatID: c.ID, ref: m.ID, due: now}); err != nil {
			return nil, err
		}
	}
	upd := tx.Chat.UpdateOneID(c.ID).SetLastMessageAt(now).SetOwnerReadAt(now)
	if c.FirstResponseAt == nil {
		upd.SetFirstResponseAt(now)
	}
	q, err := tx.Queue.Get(ctx, c.QueueID)
	if err != nil {
		return nil, err
	}
	if q.CompletionTimeoutMinutes != nil {
		due := now.Add(minutes(*q.CompletionTimeoutMinutes))
		upd.SetCompletionDueAt(due)
		if err := d.enqueue(ctx, tx, jobSpec{kind: jobCompletionDue, dedupe: "complete:" + strconv.Itoa(c.ID),
			chatID: c.ID, due: due}); err != nil {
			return nil, err
		}
	}
	if err := upd.Exec(ctx); err != nil {
		return nil, err
	}
	if _, err := tx.Draft.Delete().Where(draft.HasOperatorWith(operator.ID(opID)), draft.HasChatWith(chatIs(c.ID))).Exec(ctx); err != nil {
		return nil, err
	}
	return m, d.emit(ctx, tx, event{Type: EventMessageAdded, ChatID: c.ID, OperatorID: opID, QueueID: c.QueueID,
		Payload: map[string]any{"messageId": m.ID}})
}

// MarkChatRead records that the owner has read every message of their chat
// (the panel's unread count).
func (d *Desk) MarkChatRead(ctx context.Context, chatID int) (*ent.Chat, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	var c *ent.Chat
	err = d.inTx(ctx, "mark chat read", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := d.ownChat(ctx, tx, chatID, a.OperatorID); err != nil {
			return err
		}
		var err error
		if c, err = tx.Chat.UpdateOneID(chatID).SetOwnerReadAt(d.Now()).Save(ctx); err != nil {
			return err
		}
		return d.emit(ctx, tx, event{Type: EventChatRead, ChatID: c.ID, OperatorID: a.OperatorID})
	})
	return detach(c, err)
}

// expireOffer handles an accept timeout (R8 TO_AVAILABLE, ROUND_ROBIN): the
// offer expires, the operator is set INACTIVE or only charged a missed offer
// (per queue), and the chat is offered to the next member.
func (d *Desk) expireOffer(ctx context.Context, tx *ent.Tx, offerID int) error {
	o, err := tx.ChatOffer.Get(ctx, offerID)
	if ent.IsNotFound(err) {
		return nil
	}
	if err != nil || o.Status != enum.OfferOpen {
		return err
	}
	c, err := d.lockChat(ctx, tx, o.ChatID)
	if err != nil {
		return err
	}
	if o, err = tx.ChatOffer.Get(ctx, offerID); err != nil || o.Status != enum.OfferOpen || c.Status != enum.ChatWaiting {
		return err // accepted or withdrawn while we waited for the lock
	}
	r, err := d.newRouter(ctx, tx, c.QueueID)
	if err != nil {
		return err
	}
	now := d.Now()
	if n, err := tx.ChatOffer.Update().Where(chatoffer.ID(o.ID), chatoffer.StatusEQ(enum.OfferOpen)).
		SetStatus(enum.OfferExpired).SetClosedAt(now).Save(ctx); err != nil || n == 0 {
		return err // withdrawn meanwhile: nothing expires
	}
	op, err := tx.Operator.UpdateOneID(o.OperatorID).AddMissedOffers(1).Save(ctx)
	if err != nil {
		return err
	}
	if err := d.emit(ctx, tx, event{Type: EventOfferExpired, ChatID: c.ID, OperatorID: op.ID, QueueID: c.QueueID}); err != nil {
		return err
	}
	for _, m := range r.members {
		if m.op.ID == op.ID {
			m.load--
			if r.q.AcceptTimeoutAction == enum.TimeoutSetInactive {
				m.op.Status = enum.StatusInactive
			}
		}
	}
	if r.q.AcceptTimeoutAction == enum.TimeoutSetInactive {
		if err := d.changeStatus(ctx, tx, op, enum.StatusInactive, enum.ReasonAcceptTimeout); err != nil {
			return err
		}
	}
	_, err = r.route(ctx, c, TriggerTimeout)
	return err
}
