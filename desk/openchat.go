package desk

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	entcontact "github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/contactidentity"
	entevent "github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/inbounddelivery"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// A customer's message to their open chat is most of what providers
// deliver. On PostgreSQL, when the delivery holds that message alone, its
// sender is known to this process (knownSenders) and nothing but the
// message itself is to be written (the chat is routed, the profile is
// current, no file is attached), the whole use case is one statement in
// its own transaction (openChatStatements): one round trip, where the
// transaction of ApplyDelivery takes two (the look-up, then the writes
// with the commit). It writes what that transaction writes, in the same
// order of locks: the chat's row first, the events' append lock last, once
// every row is inserted. When the statement finds that the delivery is not
// such a message (another sender, a closed or pending chat, a profile to
// refresh, a chat changed while it waited for its lock: see
// openChatStatements), it has changed nothing, and ApplyDelivery's
// transaction applies the delivery.

// openChatMessage applies a delivery that is one customer message to the
// sender's open chat in one statement; done is false when it did not
// (nothing was changed: the delivery is for ApplyDelivery's transaction).
func (d *Desk) openChatMessage(ctx context.Context, ch channels.Channel, del channels.Delivery, body []byte) (res *DeliveryResult, done bool, err error) {
	if !d.pg || len(del.Updates) != 1 {
		return nil, false, nil
	}
	u := del.Updates[0]
	if u.Kind != channels.UpdateMessage || len(u.Attachments) > 0 || forAnotherAccount(ch, u) {
		return nil, false, nil
	}
	if u = withoutNUL(u); unusable(u) != "" {
		return nil, false, nil
	}
	in := inboundOf(ch, u, true)
	c, err := d.channel(ctx, nil, ch.ID)
	if err != nil || !c.Active || !d.senders.has(senderKey(c.Provider, in.Identity.ExternalID)) || len(in.Text) > maxTextLen {
		return nil, false, nil // ApplyDelivery's transaction reports what is wrong
	}
	now := d.Now()
	args := []any{c.ID, string(c.Provider), in.Identity.ExternalID, clip(in.Identity.Name, maxNameLen),
		clip(in.Identity.Username, maxUsernameLen), now, nil, nil, body, in.Text, string(in.Kind), nil, nil}
	if windowed(c.Provider) {
		args[6] = now.Add(replyWindow)
	}
	if del.Key != "" {
		args[7] = del.Key
	}
	if in.ProviderMessageID != "" {
		args[11] = in.ProviderMessageID
	}
	if in.Content != nil {
		content, err := json.Marshal(in.Content)
		if err != nil {
			return nil, false, err
		}
		args[12] = string(content)
	}
	notify, view := !d.quiet.Load(), d.views.fn != nil && d.views.want()
	if notify {
		args = append(args, d.instance)
	}
	const name = "apply delivery"
	free, err := d.slots.hold(ctx, name)
	if err != nil {
		return nil, false, err
	}
	defer free()
	key := senderKey(c.Provider, in.Identity.ExternalID)
	known, events, v, err := d.runOpenChatMessage(context.WithoutCancel(ctx), openChatStatements[b2i(notify)][b2i(view)], args, view, now)
	var pqErr *pq.Error
	switch {
	case errors.As(err, &pqErr) && (pqErr.Code == "23505" || retryable(err)):
		// A redelivery (the delivery's key or the message's id is taken),
		// or a deadlock's victim: the transaction tells which, and looks.
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("%s: %w", name, err)
	case !known:
		d.senders.set(key, false) // the transaction looks them up in full
		return nil, false, nil
	case events == nil:
		return nil, false, nil // not a message to an open chat
	}
	free()
	d.published(events, v)
	return &DeliveryResult{Applied: 1}, true, nil
}

// runOpenChatMessage runs an openChatStatements statement and reads its
// row (scanOpenChatMessage).
func (d *Desk) runOpenChatMessage(ctx context.Context, query string, args []any, view bool, now time.Time) (bool, []*ent.Event, *CommitView, error) {
	rows, err := d.client.QueryContext(ctx, query, args...)
	if err != nil {
		return false, nil, nil, err
	}
	defer rows.Close()
	return d.scanOpenChatMessage(rows, view, now)
}

// Columns openChatStatements return beside the chat's.
const (
	openChatAppliedColumn  = "parley_applied"
	openChatEventColumn    = "parley_event_id"
	openChatAudienceColumn = "parley_event_audience"
	openChatMessageColumn  = "parley_message_id"
)

// scanOpenChatMessage reads an openChatStatements row: the event appended
// and the commit's view (with view); no events when the statement did not
// apply the message (it changed nothing), and known false when it found
// no such sender.
func (d *Desk) scanOpenChatMessage(rows *stdsql.Rows, view bool, now time.Time) (known bool, _ []*ent.Event, _ *CommitView, _ error) {
	if !rows.Next() {
		return false, nil, nil, rows.Err()
	}
	var applied stdsql.NullBool
	var eventID, messageID stdsql.NullInt64
	var audience, contactRow, messageRow []byte
	extra := map[string]any{openChatAppliedColumn: &applied, openChatEventColumn: &eventID,
		openChatAudienceColumn: &audience, openChatMessageColumn: &messageID}
	if view {
		extra[contactRowColumn], extra[messageRowColumn] = &contactRow, &messageRow
	}
	c, err := d.client.Chat.ScanRow(rows, extra)
	if err != nil {
		return true, nil, nil, err
	}
	if err := rows.Close(); err != nil || !applied.Bool {
		return true, nil, nil, err
	}
	if !eventID.Valid || !messageID.Valid || c.ID == 0 {
		return true, nil, nil, errors.New("the message was applied without its chat, message id or event")
	}
	e := &ent.Event{ID: int(eventID.Int64), Type: EventMessageAdded, ChatID: nonZero(c.ID), QueueID: nonZero(c.QueueID),
		Payload: map[string]any{"messageId": float64(messageID.Int64)}, CreatedAt: now, QueueIds: []int{c.QueueID}}
	if audience != nil {
		if err := json.Unmarshal(audience, &e.Audience); err != nil {
			return true, nil, nil, fmt.Errorf("audience of event %d: %w", e.ID, err)
		}
	}
	var v *CommitView
	if view {
		m, err := d.bindView(c, contactRow, messageRow)
		if err != nil {
			d.viewNotRead(c.ID, err)
		} else {
			v = &CommitView{ChatID: c.ID, MessageID: int(messageID.Int64), Chat: c, Message: m}
		}
	}
	return true, []*ent.Event{e}, v, nil
}

// openChatStatements are openChatMessage's statement, by whether it
// notifies other instances (EventsChannel) and whether it returns the
// commit's view (the chat's contact and the message, as EventView reads
// them). Its arguments: $1 the channel, $2 its provider, $3 the sender's
// external id, $4 and $5 the name and username the message gives ("":
// none), $6 the time, $7 the reply window's new end (NULL: the provider
// has none), $8 the delivery's key (NULL: none) and $9 its body, $10–$13
// the message's text, kind, provider id and content; with notify, $14 the
// instance. It returns a row when it applied the message: the chat as
// updated, the event's id and audience and the message's id (and the
// view's columns).
//
// f finds the identity and its open chat, locked FOR NO KEY UPDATE, and
// keeps it only when the message changes nothing but the chat's times
// (not pending routing, a current profile: see ingest) and the chat's row
// is the version the statement's snapshot sees, then draws the message's
// id under the chat's lock. The snapshot is taken when the statement
// starts: when the lock waited for a transaction that changed the chat
// (a routing that offered it, an accept), the locked row is that
// transaction's but the snapshot misses what else it wrote (the offers
// the event's audience is read from), so the statement leaves such a
// message to the transaction, whose events statement has a snapshot of
// its own, taken once the lock is held. Every routing that offers a chat
// updates its row (offered_at), so no operator just offered the chat
// misses the message. An offer closed by a transaction that leaves the
// chat's row as it was (an expiry that finds nobody to offer it to next)
// may still count its operator in, when it commits while the statement
// runs: as with an operator's offers withdrawn when they go INACTIVE,
// which never lock the chat, that operator gets the one message as they
// would have a moment before. With view, f locks the contact FOR SHARE,
// so that the view read is what the commit leaves. The deliveries'
// and messages' inserts run before the append lock is taken (l reads
// their rows), so a refused duplicate fails the statement before it holds
// the lock, and once it holds it the statement waits for nothing (see
// eventAppendLock): the foreign keys checked at the statement's end refer
// to the chat it locked and to a channel that, having chats, cannot be
// deleted.
var openChatStatements = statementsByFlags(openChatStatement)

func openChatStatement(notify, view bool) string {
	contactLock, contactColumn, messageColumn, viewColumns := "", "", "", ""
	if view {
		contactLock = fmt.Sprintf(`
  JOIN LATERAL (SELECT * FROM %s WHERE %s = i.%s FOR SHARE) AS k ON true`,
			entcontact.Table, entcontact.FieldID, contactidentity.FieldContactID)
		contactColumn = ", to_jsonb(k) AS " + contactRowColumn
		messageColumn = ", to_jsonb(mm) AS " + messageRowColumn
		viewColumns = fmt.Sprintf(", f.%s, m.%s", contactRowColumn, messageRowColumn)
	}
	n, nFrom := "", ""
	if notify {
		n = fmt.Sprintf(`,
n AS (SELECT pg_notify('%s', e.%s::text || ' ' || $14::text || ' ' || %s) FROM e)`,
			EventsChannel, entevent.FieldID, EventsScope)
		nFrom = " LEFT JOIN n ON true"
	}
	r := strings.NewReplacer(
		"{chats}", chat.Table, "{identities}", contactidentity.Table, "{deliveries}", inbounddelivery.Table,
		"{messages}", message.Table, "{events}", entevent.Table, "{offers}", chatoffer.Table,
		"{chatColumns}", strings.Join(qualified("c", chat.Columns), ", "),
		"{updated}", strings.Join(qualified("u", chat.Columns), ", "),
		"{open}", openChatCondition("o."+chat.FieldStatus),
		"{nextMessage}", nextMessageID, "{appendLock}", eventAppendLock,
		"{waiting}", string(enum.ChatWaiting), "{offerOpen}", string(enum.OfferOpen),
		"{inbound}", string(enum.Inbound), "{customer}", string(enum.AuthorCustomer),
		"{messageAdded}", EventMessageAdded,
		"{contactLock}", contactLock, "{contactColumn}", contactColumn,
		"{messageColumn}", messageColumn, "{n}", n, "{nFrom}", nFrom,
		"{eventColumn}", openChatEventColumn, "{audienceColumn}", openChatAudienceColumn,
		"{messageIDColumn}", openChatMessageColumn, "{appliedColumn}", openChatAppliedColumn, "{viewColumns}", viewColumns,
	)
	// Column names are the schema's (checked by the tests that run it).
	return r.Replace(`WITH f AS (
  SELECT s.*, CASE WHEN s.applies THEN {nextMessage} END AS message_id FROM (
    SELECT o.id AS chat_id, o.queue_id, o.owner_id, o.status, o.id IS NOT NULL AND NOT o.route_pending
      AND o.locked = (SELECT v.xmin FROM {chats} AS v WHERE v.id = o.id)
      AND i.unreachable IS NOT TRUE AND ($4::text = '' OR i.display_name = $4::text)
      AND ($5::text = '' OR i.username = $5::text) AS applies{contactColumn}
    FROM {identities} AS i
    LEFT JOIN LATERAL (SELECT o.*, o.xmin AS locked FROM {chats} AS o WHERE o.contact_id = i.contact_id
      AND o.channel_id = $1::bigint AND {open} FOR NO KEY UPDATE) AS o ON true{contactLock}
    WHERE i.provider = $2::text AND i.external_id = $3::text
  ) AS s
), u AS (
  UPDATE {chats} AS c SET last_message_at = $6::timestamptz, last_inbound_at = $6::timestamptz,
    completion_due_at = NULL, reply_window_ends_at = COALESCE($7::timestamptz, c.reply_window_ends_at)
  FROM f WHERE c.id = f.chat_id AND f.applies
  RETURNING {chatColumns}
), dl AS (
  INSERT INTO {deliveries} (channel_id, provider_key, body, received_at, processed_at)
  SELECT $1::bigint, $8::text, $9::bytea, $6::timestamptz, $6::timestamptz FROM f WHERE f.applies AND $8::text IS NOT NULL
  RETURNING 1
), m AS (
  INSERT INTO {messages} AS mm (id, direction, author_kind, kind, text, channel_id, created_at, chat_id,
    provider_message_id, content)
  SELECT f.message_id, '{inbound}', '{customer}', $11::text, $10::text, $1::bigint, $6::timestamptz, f.chat_id,
    $12::text, $13::jsonb FROM f WHERE f.applies
  RETURNING mm.id{messageColumn}
), l AS (
  SELECT {appendLock} FROM m, (SELECT count(*) FROM dl) AS written
), e AS (
  INSERT INTO {events} (type, chat_id, operator_id, queue_id, payload, audience, queue_ids, created_at)
  SELECT '{messageAdded}', f.chat_id, NULL, f.queue_id, jsonb_build_object('messageId', f.message_id),
    CASE WHEN f.owner_id IS NOT NULL AND f.status <> '{waiting}' THEN jsonb_build_array(f.owner_id) ELSE (
      SELECT jsonb_agg(o.operator_id ORDER BY o.operator_id) FROM {offers} AS o
      WHERE o.chat_id = f.chat_id AND o.status = '{offerOpen}'
    ) END,
    jsonb_build_array(f.queue_id), $6::timestamptz
  FROM l, f
  RETURNING id, audience
){n}
SELECT f.applies AS {appliedColumn}, {updated}, e.id AS {eventColumn}, e.audience AS {audienceColumn},
  f.message_id AS {messageIDColumn}{viewColumns}
FROM f LEFT JOIN u ON true LEFT JOIN e ON true LEFT JOIN m ON true{nFrom}`)
}
