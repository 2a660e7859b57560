package desk

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	entsql "entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	entcontact "github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Inbound is a customer's message, normalised by a channel adapter (or the
// API channel): the single entry point of every provider into the desk.
type Inbound struct {
	ChannelID int
	// Identity is who wrote: the provider's user id and what the provider
	// tells about them.
	Identity InboundIdentity
	// ProviderMessageID deduplicates redeliveries (unique per channel, R3);
	// empty when the source has no id.
	ProviderMessageID string
	Kind              enum.MessageKind
	Text              string
	Content           map[string]any
	// Attachments are files to copy into storage (jobs, off the
	// acknowledgement path).
	Attachments []InboundAttachment
	// lean: the caller needs the message's id, not its entity
	// (IngestResult.Message is then nil when its insert was held for the
	// commit, and IngestResult.Chat of a new contact's chat is built in
	// memory, not an entity of the transaction: see ingest).
	lean bool
	// final: nothing later in the transaction reads what this ingest
	// writes (the message, a new chat's offers), so those writes may be
	// held for the commit, where they are not visible before.
	final bool
}

// InboundAttachment is a file of an inbound message, by provider reference.
type InboundAttachment struct {
	Kind     enum.MessageKind
	Ref      string
	FileName string
	MimeType string
	Size     int64
}

// InboundIdentity is the sender of an inbound message.
type InboundIdentity struct {
	ExternalID string
	Name       string
	Username   string
	Phone      string
}

// IngestResult says what an inbound message did.
type IngestResult struct {
	Chat    *ent.Chat
	Message *ent.Message
	// MessageID is the message's id.
	MessageID int
	// NewChat is set when the message opened a chat (R1).
	NewChat bool
	// Duplicate is set when the message had been received before (R3):
	// nothing was changed.
	Duplicate bool
	// NewContact is set when the sender's identity was new (R2);
	// IdentityID is the identity.
	NewContact bool
	IdentityID int
	// Attachments are the stored (PENDING) attachments.
	Attachments []*ent.Attachment
}

// replyWindow is how long WhatsApp and Messenger let a business answer after
// the customer's last message (R21).
const replyWindow = 24 * time.Hour

// Ingest stores an inbound message (R1–R3): the contact is found by identity
// or created, the message is appended to the contact's open chat on the
// channel or opens a new chat, which is routed in the same transaction.
func (d *Desk) Ingest(ctx context.Context, in Inbound) (*IngestResult, error) {
	in.Identity.ExternalID = strings.TrimSpace(in.Identity.ExternalID)
	switch {
	case in.Identity.ExternalID == "":
		return nil, invalid("externalId", "the sender's external id is required")
	case len(in.Identity.ExternalID) > 200:
		return nil, invalid("externalId", "the sender's external id is longer than 200 characters")
	case len(in.ProviderMessageID) > 300:
		return nil, invalid("providerMessageId", "the message id is longer than 300 characters")
	case len(in.Text) > maxTextLen:
		return nil, invalid("text", "the text is longer than %d bytes", maxTextLen)
	}
	// PostgreSQL stores no U+0000 in text; refused on SQLite alike. (Provider
	// webhooks strip it instead: withoutNUL.)
	for _, f := range []struct{ field, value string }{{"externalId", in.Identity.ExternalID}, {"name", in.Identity.Name},
		{"username", in.Identity.Username}, {"phone", in.Identity.Phone}, {"providerMessageId", in.ProviderMessageID},
		{"text", in.Text}} {
		if strings.ContainsRune(f.value, 0) {
			return nil, invalid(f.field, "the %s contains a NUL character (U+0000)", f.field)
		}
	}
	if in.Kind == "" {
		in.Kind = enum.KindText
	}
	if in.Kind == enum.KindText && strings.TrimSpace(in.Text) == "" && len(in.Attachments) == 0 {
		return nil, invalid("text", "a text message needs a text")
	}
	var res *IngestResult
	err := d.inTxRacing(ctx, "ingest", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		res, err = d.ingest(ctx, tx, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	res.Chat, res.Message = res.Chat.Unwrap(), res.Message.Unwrap()
	return res, nil
}

// nextMessageID draws a message id (PostgreSQL), selected as
// nextMessageColumn.
var nextMessageID = fmt.Sprintf("nextval(pg_get_serial_sequence('%s', '%s'))", message.Table, message.FieldID)

const nextMessageColumn = "parley_next_message_id"

// insertMessageAtCommit writes an inbound message whose id was drawn
// (nextMessageID) with the commit: the columns ent's create sets on the
// other path (its defaults and checks hold: kind and text are always given,
// the lengths were checked by Ingest).
func (d *Desk) insertMessageAtCommit(ctx context.Context, tx *ent.Tx, id, chatID, channelID int, in Inbound, now time.Time) error {
	cols := []string{message.FieldID, message.FieldDirection, message.FieldAuthorKind, message.FieldKind, message.FieldText,
		message.FieldChannelID, message.FieldCreatedAt, message.FieldChatID}
	vals := []any{id, string(enum.Inbound), string(enum.AuthorCustomer), string(in.Kind), in.Text, channelID, now, chatID}
	if in.ProviderMessageID != "" {
		cols, vals = append(cols, message.FieldProviderMessageID), append(vals, in.ProviderMessageID)
	}
	if in.Content != nil {
		content, err := json.Marshal(in.Content)
		if err != nil {
			return err
		}
		cols, vals = append(cols, message.FieldContent), append(vals, string(content))
	}
	return d.atCommit(ctx, tx, d.sql().Insert(message.Table).Columns(cols...).Values(vals...))
}

func (d *Desk) ingest(ctx context.Context, tx *ent.Tx, in Inbound) (*IngestResult, error) {
	now := d.Now()
	ch, err := d.channel(ctx, tx, in.ChannelID)
	if err != nil {
		return nil, notFound(err, "channel", in.ChannelID)
	}
	if !ch.Active {
		return nil, Fail(CodeChannelInactive, "channel %d is inactive", ch.ID)
	}
	// A redelivered message (R3) is refused by the unique index on
	// (channel, provider message id) when it is inserted below, which
	// aborts the transaction; the use case then runs again and looks first.
	// Redeliveries are rare: a first look on every message would cost each
	// a round trip.
	if in.ProviderMessageID != "" && d.retried(tx) {
		m, err := tx.Message.Query().Where(message.ChannelID(ch.ID), message.ProviderMessageID(in.ProviderMessageID)).
			WithChat().Only(ctx)
		if err == nil {
			return &IngestResult{Chat: m.Edges.Chat, Message: m, Duplicate: true}, nil
		}
		if !ent.IsNotFound(err) {
			return nil, err
		}
	}
	// draw: the message's insert can be held for the commit (no attachment
	// refers to it, the caller needs its id only); its id is drawn by the
	// statement that finds the chat or the contact.
	draw := d.pg && in.lean && in.final && len(in.Attachments) == 0
	res := &IngestResult{}
	var open *ent.Chat
	var c contactOf
	if d.pg {
		open, c, err = d.senderPG(ctx, tx, ch, in, draw, now)
	} else {
		open, c, err = d.senderSQLite(ctx, tx, ch, in.Identity)
	}
	if err != nil {
		return nil, err
	}
	res.IdentityID, res.NewContact, res.MessageID = c.identityID, c.created, c.messageID
	// A known customer's profile data is refreshed by a write sent with
	// the commit (a new one's was just written).
	if !c.created {
		if err := d.refreshIdentity(ctx, tx, ch.Provider, in.Identity, c.profile); err != nil {
			return nil, err
		}
	}
	switch {
	case open == nil && c.chat != nil:
		res.Chat, res.NewChat = c.chat, true // inserted with its contact
	case open == nil:
		n := newChat(ch, c.contactID, now, c.busy)
		if res.Chat, err = tx.Chat.Create().SetStatus(n.Status).SetChannelID(n.ChannelID).SetContactID(n.ContactID).
			SetQueueID(n.QueueID).SetCreatedAt(n.CreatedAt).SetLastMessageAt(n.LastMessageAt).
			SetNillableLastInboundAt(n.LastInboundAt).SetNillableReplyWindowEndsAt(n.ReplyWindowEndsAt).
			SetRoutePending(n.RoutePending).Save(ctx); err != nil {
			return nil, err
		}
		res.NewChat = true
	default:
		// A customer message clears the completion timer (R18). The row is
		// locked (PostgreSQL) by the query above, so the timer read is the
		// one to clear: an unset one is not written (SQLite rewrites an
		// indexed column's entry even to the same value).
		upd := d.sql().Update(chat.Table).Set(chat.FieldLastMessageAt, now).Set(chat.FieldLastInboundAt, now)
		if open.CompletionDueAt != nil {
			upd.SetNull(chat.FieldCompletionDueAt)
		}
		open.LastMessageAt, open.LastInboundAt, open.CompletionDueAt = now, &now, nil
		if windowed(ch.Provider) {
			ends := now.Add(replyWindow)
			upd.Set(chat.FieldReplyWindowEndsAt, ends)
			open.ReplyWindowEndsAt = &ends
		}
		if err := d.atCommit(ctx, tx, upd.Where(entsql.EQ(chat.FieldID, open.ID))); err != nil {
			return nil, err
		}
		res.Chat = open
	}
	if res.MessageID != 0 {
		// Nothing in the transaction reads the message back (attachments
		// would refer to it): its insert travels with the commit.
		if err := d.insertMessageAtCommit(ctx, tx, res.MessageID, res.Chat.ID, ch.ID, in, now); err != nil {
			return nil, err
		}
	} else {
		create := tx.Message.Create().SetChatID(res.Chat.ID).SetChannelID(ch.ID).
			SetDirection(enum.Inbound).SetAuthorKind(enum.AuthorCustomer).SetKind(in.Kind).
			SetText(in.Text).SetCreatedAt(now)
		if in.ProviderMessageID != "" {
			create.SetProviderMessageID(in.ProviderMessageID)
		}
		if in.Content != nil {
			create.SetContent(in.Content)
		}
		if res.Message, err = create.Save(ctx); err != nil {
			return nil, err
		}
		res.MessageID = res.Message.ID
	}
	for _, a := range in.Attachments {
		ac := tx.Attachment.Create().SetMessageID(res.MessageID).SetKind(a.Kind).SetStatus(enum.AttachmentPending).
			SetProviderFileID(a.Ref).SetFileName(clip(a.FileName, 500)).SetMimeType(clip(a.MimeType, 200)).SetCreatedAt(now)
		if a.Size > 0 {
			ac.SetSize(int(a.Size))
		}
		att, err := ac.Save(ctx)
		if err != nil {
			return nil, err
		}
		res.Attachments = append(res.Attachments, att)
	}
	if res.NewChat {
		if err := d.emit(ctx, tx, event{Type: EventChatCreated, ChatID: res.Chat.ID, QueueID: res.Chat.QueueID}); err != nil {
			return nil, err
		}
	}
	// A new chat reaches panels through its offers; a message in an open
	// chat reaches its owner or the operators it is offered to.
	added := event{Type: EventMessageAdded, ChatID: res.Chat.ID, QueueID: res.Chat.QueueID, Audience: []int{},
		Payload: map[string]any{"messageId": res.MessageID}}
	if !res.NewChat {
		added = withChatAudience(res.Chat, added)
	}
	if err := d.emit(ctx, tx, added); err != nil {
		return nil, err
	}
	switch {
	case res.Chat.RoutePending:
		// Another transaction is routing a new chat of this queue: rather
		// than wait for its member locks, this one is routed right after
		// commit by a release of the queue, together with any others that
		// arrived meanwhile (releasePending). A message to a chat still
		// pending asks again: a release running now skips the chat while
		// this transaction holds its row.
		if err := d.routeAfterCommit(tx, res.Chat.QueueID); err != nil {
			return nil, err
		}
	case res.NewChat:
		if err := d.routeNew(ctx, tx, res.Chat, res.Chat.QueueID, TriggerNewChat, in.final); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// windowed reports whether a provider limits replies to 24 hours after the
// customer's last message (R21).
func windowed(p enum.Provider) bool {
	return p == enum.ProviderWhatsApp || p == enum.ProviderMessenger
}

// refreshIdentity updates a known identity's profile data from its
// message, when it changed (R2), at commit. known is the identity as the
// sender's look-up read it (nil: not read): when it shows nothing to
// change, nothing is written.
func (d *Desk) refreshIdentity(ctx context.Context, tx *ent.Tx, p enum.Provider, id InboundIdentity, known *identityProfile) error {
	fields := profileFields(id)
	if known != nil && !known.stale(fields) {
		return nil
	}
	// A customer who writes can be written to again.
	upd := d.sql().Update(contactidentity.Table).Set(contactidentity.FieldUpdatedAt, d.Now()).
		Set(contactidentity.FieldUnreachable, false).Set(contactidentity.FieldUnreachableReason, "")
	changed := []*entsql.Predicate{entsql.EQ(contactidentity.FieldUnreachable, true)}
	for _, f := range fields {
		upd.Set(f.column, f.value)
		changed = append(changed, entsql.Or(entsql.NEQ(f.column, f.value), entsql.IsNull(f.column)))
	}
	return d.atCommit(ctx, tx, upd.Where(entsql.And(entsql.EQ(contactidentity.FieldProvider, string(p)),
		entsql.EQ(contactidentity.FieldExternalID, id.ExternalID), entsql.Or(changed...))))
}

// profileField is a column of an identity's profile and the value a
// message gives it.
type profileField struct{ column, value string }

// profileFields are the profile values a message gives (those it has).
func profileFields(id InboundIdentity) []profileField {
	var out []profileField
	for _, f := range []struct {
		column, value string
		max           int
	}{{contactidentity.FieldDisplayName, id.Name, maxNameLen}, {contactidentity.FieldUsername, id.Username, maxUsernameLen}} {
		if v := clip(f.value, f.max); v != "" {
			out = append(out, profileField{f.column, v})
		}
	}
	return out
}

// identityProfile is an identity's profile as read (columns by name; a
// NULL column is missing).
type identityProfile struct {
	values      map[string]string
	unreachable bool
}

// stale reports whether refreshIdentity's update would change the identity
// (its WHERE clause, evaluated on what was read).
func (p *identityProfile) stale(fields []profileField) bool {
	if p.unreachable {
		return true
	}
	for _, f := range fields {
		if v, ok := p.values[f.column]; !ok || v != f.value {
			return true
		}
	}
	return false
}

// contactOf is the sender of an inbound message, as found or created.
type contactOf struct {
	contactID, identityID int
	created               bool
	// busy: the queue of the chat about to be opened is busy routing
	// another new chat (the routing mark, PostgreSQL).
	busy bool
	// messageID is the id drawn for the message (PostgreSQL, when asked).
	messageID int
	// chat is the new chat inserted with a new contact (PostgreSQL, lean
	// ingests), not an entity of the transaction.
	chat *ent.Chat
	// profile is the known identity's profile as the look-up read it (nil
	// for an identity just created).
	profile *identityProfile
}

// newChat is the chat a customer's first message opens (R1), before it is
// stored: WAITING in the channel's queue.
func newChat(ch *ent.Channel, contactID int, now time.Time, routePending bool) *ent.Chat {
	c := &ent.Chat{Status: enum.ChatWaiting, ChannelID: ch.ID, ContactID: contactID, QueueID: ch.QueueID,
		CreatedAt: now, LastMessageAt: now, LastInboundAt: &now, RoutePending: routePending}
	if windowed(ch.Provider) {
		ends := now.Add(replyWindow)
		c.ReplyWindowEndsAt = &ends
	}
	return c
}

// senderSQLite finds the sender's identity and their contact's open chat on
// the channel in one statement (senderSQLiteStatement), or creates their
// contact and identity on their first message (R2).
func (d *Desk) senderSQLite(ctx context.Context, tx *ent.Tx, ch *ent.Channel, id InboundIdentity) (*ent.Chat, contactOf, error) {
	rows, err := tx.QueryContext(ctx, senderSQLiteStatement, ch.ID, string(ch.Provider), id.ExternalID)
	if err != nil {
		return nil, contactOf{}, err
	}
	defer rows.Close()
	if rows.Next() {
		var sr senderRow
		row, err := sr.scan(tx, rows, ch, id.ExternalID, nil)
		if err != nil {
			return nil, contactOf{}, err
		}
		out := contactOf{identityID: int(sr.identity.Int64), contactID: int(sr.contact.Int64), profile: sr.profile()}
		if row.ID != 0 {
			return row, out, nil
		}
		return nil, out, nil
	}
	if err := rows.Err(); err != nil {
		return nil, contactOf{}, err
	}
	if err := rows.Close(); err != nil {
		return nil, contactOf{}, err
	}
	now := d.Now()
	create := tx.Contact.Create().SetName(clip(id.Name, maxNameLen)).SetCreatedAt(now).SetUpdatedAt(now)
	if id.Phone != "" {
		create.SetPhone(clip(id.Phone, maxPhoneLen))
	}
	if id.Username != "" {
		create.SetUsername(clip(id.Username, maxUsernameLen))
	}
	c, err := create.Save(ctx)
	if err != nil {
		return nil, contactOf{}, err
	}
	ident, err := tx.ContactIdentity.Create().SetContactID(c.ID).SetProvider(ch.Provider).SetExternalID(id.ExternalID).
		SetDisplayName(clip(id.Name, maxNameLen)).SetUsername(clip(id.Username, maxUsernameLen)).SetPhone(clip(id.Phone, maxPhoneLen)).Save(ctx)
	if err != nil {
		return nil, contactOf{}, err
	}
	return nil, contactOf{contactID: c.ID, identityID: ident.ID, created: true}, nil
}

// senderSQLiteStatement is senderSQLite's look-up ($1 the channel, $2 its
// provider, $3 the sender's external id): the identity, its profile, and its
// contact's open chat on the channel (NULL columns when there is none), the
// columns named as senderPG's. A fixed string, as senderPG's: no locks, no
// routing mark and no inserts, SQLite having one writer at a time.
var senderSQLiteStatement = fmt.Sprintf(`SELECT %s, i.%s AS %s, i.%s AS %s, i.%s AS %s, i.%s AS %s, i.%s AS %s
FROM %s AS i LEFT JOIN %s AS o ON o.%s = i.%s AND o.%s = ? AND %s
WHERE i.%s = ? AND i.%s = ?`,
	strings.Join(qualified("o", chat.Columns), ", "), contactidentity.FieldID, identityColumn,
	contactidentity.FieldContactID, identityContactColumn, contactidentity.FieldDisplayName, identityNameColumn,
	contactidentity.FieldUsername, identityUsernameColumn, contactidentity.FieldUnreachable, identityBlockedColumn,
	contactidentity.Table, chat.Table, chat.FieldContactID, contactidentity.FieldContactID, chat.FieldChannelID,
	openChatCondition("o."+chat.FieldStatus), contactidentity.FieldProvider, contactidentity.FieldExternalID)

// senderRow is what a sender look-up (senderPG's, senderSQLite's) reads
// of the identity beside the open chat.
type senderRow struct {
	identity, contact stdsql.NullInt64
	name, username    stdsql.NullString
	unreachable       stdsql.NullBool
}

// scan reads the look-up's row (rows after Next): the open chat (ID 0
// without one), the identity's columns into r, others into extra; a second
// row is an error. It closes rows.
func (r *senderRow) scan(tx *ent.Tx, rows *stdsql.Rows, ch *ent.Channel, externalID string, extra map[string]any) (*ent.Chat, error) {
	if extra == nil {
		extra = map[string]any{}
	}
	extra[identityColumn], extra[identityContactColumn], extra[identityNameColumn] = &r.identity, &r.contact, &r.name
	extra[identityUsernameColumn], extra[identityBlockedColumn] = &r.username, &r.unreachable
	row, err := tx.Chat.ScanRow(rows, extra)
	if err != nil {
		return nil, err
	}
	if rows.Next() {
		return nil, fmt.Errorf("ingest: identity %s/%s has more than one open chat on channel %d", ch.Provider, externalID, ch.ID)
	}
	return row, rows.Close()
}

// profile is the known identity's profile as the look-up read it.
func (r *senderRow) profile() *identityProfile {
	p := &identityProfile{values: map[string]string{}, unreachable: r.unreachable.Valid && r.unreachable.Bool}
	if r.name.Valid {
		p.values[contactidentity.FieldDisplayName] = r.name.String
	}
	if r.username.Valid {
		p.values[contactidentity.FieldUsername] = r.username.String
	}
	return p
}

// Columns senderPG (and senderSQLite, the first five) selects beside the
// chat's: the identity's id, contact and profile (the columns
// refreshIdentity compares), the queue's routing mark (see below) and the
// drawn message id (nextMessageID).
const (
	identityColumn         = "parley_identity_id"
	identityContactColumn  = "parley_identity_contact"
	identityNameColumn     = "parley_identity_display_name"
	identityUsernameColumn = "parley_identity_username"
	identityBlockedColumn  = "parley_identity_unreachable"
	routingMarkColumn      = "parley_routing_mark"
)

// The routing mark tells whether another transaction is routing a new chat
// of the queue at this instant, without waiting (false: busy); when none
// is, this transaction takes the mark until it ends. A busy queue's new
// chats are routed by a release of the queue right after commit
// (release.go) rather than queueing on the members' row locks, where each
// would wait for the previous one to commit: under a burst one release
// routes them together, under one lock. It is queueLock's try-lock,
// evaluated by the statement that finds or creates the new chat's contact
// (senderPG; PostgreSQL: SQLite has one writer at a time, never busy).

// Columns senderPG selects when the sender was never seen before: whether
// the statement created them, and the new chat it inserted (lean ingests).
const (
	createdColumn = "parley_created"
	newChatColumn = "parley_new_chat"
)

// senderStatements are senderPG's statement, by whether it draws the
// message's id (draw) and whether it inserts a new contact's chat (lean).
// Its arguments: $1 the channel, $2 its provider, $3 the sender's external
// id, $4 the routing lock's class, $5 the queue, $6 the time, $7–$9 the new
// contact's name, phone and username, $10–$12 the new identity's; with
// lean, $13–$16 the new chat's status, queue, reply window end and
// duplicates found. It is a fixed string, built once: building the look-up
// with ent's query builder for every message, and reading the extra
// columns' types from the driver, cost about a tenth of the server's CPU
// under load.
var senderStatements = statementsByFlags(senderStatement)

func senderStatement(draw, lean bool) string {
	cols := qualified("f", chat.Columns)
	drawn := ""
	if draw {
		drawn = fmt.Sprintf(`, CASE WHEN f.%s IS NOT NULL THEN f.%s ELSE %s END AS %s`,
			identityColumn, nextMessageColumn, nextMessageID, nextMessageColumn)
	}
	lock := queueLock("pg_try_advisory_xact_lock", "$4", "$5")
	contact := fmt.Sprintf(`c AS (
  INSERT INTO %s (%s, %s, %s, %s, %s) SELECT $7, $8, $9, $6, $6 WHERE NOT EXISTS (SELECT FROM f) RETURNING %s
), ni AS (
  INSERT INTO %s (%s, %s, %s, %s, %s, %s, %s, %s, %s) SELECT c.%s, $2, $3, $10, $11, $12, false, $6, $6 FROM c RETURNING %s, %s
)`, entcontact.Table, entcontact.FieldName, entcontact.FieldPhone, entcontact.FieldUsername, entcontact.FieldCreatedAt,
		entcontact.FieldUpdatedAt, entcontact.FieldID,
		contactidentity.Table, contactidentity.FieldContactID, contactidentity.FieldProvider, contactidentity.FieldExternalID,
		contactidentity.FieldDisplayName, contactidentity.FieldUsername, contactidentity.FieldPhone,
		contactidentity.FieldUnreachable, contactidentity.FieldCreatedAt, contactidentity.FieldUpdatedAt,
		entcontact.FieldID, contactidentity.FieldContactID, contactidentity.FieldID)
	// The new contact's mark: taken by the chat's insert (lean), else here.
	mark, newChat, joinChat := lock, "NULL::bigint", ""
	if lean {
		contact += fmt.Sprintf(`, h AS (
  INSERT INTO %s (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) SELECT $13, $1, c.%s, $14, $6, $6, $6, $15, $16, NOT %s FROM c
  RETURNING %s, %s
)`, chat.Table, chat.FieldStatus, chat.FieldChannelID, chat.FieldContactID, chat.FieldQueueID, chat.FieldCreatedAt,
			chat.FieldLastMessageAt, chat.FieldLastInboundAt, chat.FieldReplyWindowEndsAt, chat.FieldDuplicatesFound,
			chat.FieldRoutePending, entcontact.FieldID, lock, chat.FieldID, chat.FieldRoutePending)
		mark, newChat, joinChat = "NOT h."+chat.FieldRoutePending, "h."+chat.FieldID, " LEFT JOIN h ON true"
	}
	return fmt.Sprintf(`WITH %s, %s
SELECT %s, COALESCE(f.%s, ni.%s) AS %s, COALESCE(f.%s, ni.%s) AS %s, f.%s, f.%s, f.%s,
  CASE WHEN f.%s IS NOT NULL THEN f.%s ELSE %s END AS %s%s, f.%s IS NULL AS %s, %s AS %s
FROM (SELECT 1) AS one LEFT JOIN f ON true LEFT JOIN ni ON true%s`,
		// f: the identity and its open chat, locked.
		senderLookup(draw),
		// c, ni (, h): the contact, identity (and chat) created when f
		// found nobody.
		contact,
		// One row: what f found, or what was created.
		strings.Join(cols, ", "), identityColumn, contactidentity.FieldID, identityColumn,
		identityContactColumn, contactidentity.FieldContactID, identityContactColumn,
		identityNameColumn, identityUsernameColumn, identityBlockedColumn,
		identityColumn, routingMarkColumn, mark, routingMarkColumn, drawn, identityColumn, createdColumn, newChat, newChatColumn,
		joinChat)
}

// senderLookup is the sender statements' CTE f: the identity ($2 the
// provider, $3 the external id) with its profile and its contact's open
// chat on the channel ($1), locked FOR NO KEY UPDATE; without an open chat,
// the queue's routing mark tried ($4 the lock's class, $5 the queue); with
// draw, the message's id drawn once the chat's lock is held.
func senderLookup(draw bool) string {
	found := ""
	if draw {
		found = fmt.Sprintf(`, %s AS %s`, nextMessageID, nextMessageColumn)
	}
	return fmt.Sprintf(`f AS (
  SELECT %s, i.%s AS %s, i.%s AS %s, i.%s AS %s, i.%s AS %s, i.%s AS %s,
    CASE WHEN o.%s IS NULL THEN %s END AS %s%s
  FROM %s AS i LEFT JOIN LATERAL (
    SELECT * FROM %s WHERE %s = i.%s AND %s = $1 AND %s FOR NO KEY UPDATE
  ) AS o ON true
  WHERE i.%s = $2 AND i.%s = $3
)`, strings.Join(qualified("o", chat.Columns), ", "), contactidentity.FieldID, identityColumn,
		contactidentity.FieldContactID, identityContactColumn, contactidentity.FieldDisplayName, identityNameColumn,
		contactidentity.FieldUsername, identityUsernameColumn, contactidentity.FieldUnreachable, identityBlockedColumn,
		chat.FieldID, queueLock("pg_try_advisory_xact_lock", "$4", "$5"), routingMarkColumn, found,
		contactidentity.Table, chat.Table, chat.FieldContactID, contactidentity.FieldContactID, chat.FieldChannelID,
		openChatCondition(chat.FieldStatus), contactidentity.FieldProvider, contactidentity.FieldExternalID)
}

// knownSenderStatements are the sender's look-up alone, by whether it
// draws the message's id: senderStatements without the inserts of a new
// sender, for senders this process has seen (knownSenders). It returns the
// same columns (never created, no new chat), and no row when the identity
// is not there; its arguments are senderStatements' first five.
// PostgreSQL runs a statement's data-modifying CTEs even when they insert
// nothing, opening their tables and indexes: leaving them out took about
// 12% off PostgreSQL's CPU in BenchmarkIngest/open-chat.
var knownSenderStatements = [2]string{knownSenderStatement(false), knownSenderStatement(true)}

func knownSenderStatement(draw bool) string {
	drawn := ""
	if draw {
		drawn = ", f." + nextMessageColumn
	}
	return fmt.Sprintf(`WITH %s
SELECT %s, f.%s, f.%s, f.%s, f.%s, f.%s, f.%s%s, false AS %s, NULL::bigint AS %s FROM f`,
		senderLookup(draw), strings.Join(qualified("f", chat.Columns), ", "), identityColumn, identityContactColumn,
		identityNameColumn, identityUsernameColumn, identityBlockedColumn, routingMarkColumn, drawn, createdColumn, newChatColumn)
}

// knownSenders remembers senders this process looked up or created
// (provider and external id), so that their next messages take the
// look-up without inserts (knownSenderStatements). A hint only: a sender
// it names who is not in the database (an identity removed, a transaction
// that created one rolled back) costs the look-up a second statement.
type knownSenders struct {
	mu sync.Mutex
	m  map[string]struct{}
}

// knownSendersMax bounds knownSenders: past it, the hint starts afresh.
const knownSendersMax = 100_000

func senderKey(p enum.Provider, externalID string) string { return string(p) + "\x00" + externalID }

func (k *knownSenders) has(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.m[key]
	return ok
}

func (k *knownSenders) set(key string, known bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case !known:
		delete(k.m, key)
	case k.m == nil || len(k.m) >= knownSendersMax:
		k.m = map[string]struct{}{key: {}}
	default:
		k.m[key] = struct{}{}
	}
}

// senderPG finds the sender's identity and their contact's open chat on the
// channel, locked FOR NO KEY UPDATE, or creates a sender never seen before
// (a contact and its identity, and for a lean ingest the new chat, pending
// routing when the mark is busy), in one statement. Without an open chat it
// takes the queue's routing mark (described above). With draw, it
// draws the message's id once the chat's lock is held (the select list that
// draws is evaluated on the rows the locking subquery returns), so that the
// messages of a chat keep the order of their transactions, as ids drawn by
// their inserts would. A concurrent first message of the same identity
// fails the statement on the identity's unique index; the use case then
// runs again and finds the identity.
func (d *Desk) senderPG(ctx context.Context, tx *ent.Tx, ch *ent.Channel, in Inbound, draw bool, now time.Time) (*ent.Chat, contactOf, error) {
	id := in.Identity
	optional := func(s string, n int) any {
		if s = clip(s, n); s != "" {
			return s
		}
		return nil
	}
	args := []any{ch.ID, string(ch.Provider), id.ExternalID, routingLockClass, int32(uint32(ch.QueueID)), now,
		clip(id.Name, maxNameLen), optional(id.Phone, maxPhoneLen), optional(id.Username, maxUsernameLen),
		clip(id.Name, maxNameLen), clip(id.Username, maxUsernameLen), clip(id.Phone, maxPhoneLen)}
	var n *ent.Chat
	if in.lean {
		n = newChat(ch, 0, now, false)
		args = append(args, string(n.Status), n.QueueID, n.ReplyWindowEndsAt, n.DuplicatesFound)
	}
	key := senderKey(ch.Provider, id.ExternalID)
	query := senderStatements[b2i(draw)][b2i(in.lean)]
	rows, err := d.senderRows(ctx, tx, key, knownSenderStatements[b2i(draw)], args[:5])
	if err == nil && rows == nil {
		if rows, err = tx.QueryContext(ctx, query, args...); err == nil && !rows.Next() {
			if err = rows.Err(); err == nil {
				err = errors.New("ingest: the sender's look-up returned no row")
			}
			rows.Close()
		}
		if err == nil {
			d.senders.set(key, true) // found or created (a hint: the transaction may yet fail)
		}
	}
	if err != nil {
		return nil, contactOf{}, err
	}
	defer rows.Close()
	var sr senderRow
	var message, chatID stdsql.NullInt64
	var mark, created stdsql.NullBool
	extra := map[string]any{routingMarkColumn: &mark, createdColumn: &created, newChatColumn: &chatID}
	if draw {
		extra[nextMessageColumn] = &message
	}
	row, err := sr.scan(tx, rows, ch, id.ExternalID, extra)
	if err != nil {
		return nil, contactOf{}, err
	}
	if !sr.identity.Valid || !sr.contact.Valid || (draw && !message.Valid) {
		return nil, contactOf{}, errors.New("ingest: the sender's look-up returned no identity, contact or message id")
	}
	out := contactOf{identityID: int(sr.identity.Int64), contactID: int(sr.contact.Int64), messageID: int(message.Int64),
		created: created.Bool}
	if !out.created {
		out.profile = sr.profile()
	}
	if row.ID != 0 {
		return row, out, nil // the open chat (the mark was not taken)
	}
	// No open chat: the row's chat columns are NULL, the mark was tried.
	if !mark.Valid {
		return nil, contactOf{}, fmt.Errorf("ingest: the routing mark of queue %d was not tried", ch.QueueID)
	}
	out.busy = !mark.Bool
	if out.created && n != nil {
		if !chatID.Valid {
			return nil, contactOf{}, errors.New("ingest: the new contact's chat was not inserted")
		}
		n.ID, n.ContactID, n.RoutePending = int(chatID.Int64), out.contactID, out.busy
		out.chat = n
	}
	return nil, out, nil
}

// senderRows runs the look-up of a sender this process knows (key,
// knownSenders) and returns its rows, positioned on its row; nil rows when
// the sender is not known, or not found (then no longer known).
func (d *Desk) senderRows(ctx context.Context, tx *ent.Tx, key, query string, args []any) (*stdsql.Rows, error) {
	if !d.senders.has(key) {
		return nil, nil
	}
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	if rows.Next() {
		return rows, nil
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return nil, err
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	d.senders.set(key, false)
	return nil, nil
}

// statementsByFlags builds the variants of a statement that two flags
// shape, indexed [b2i(a)][b2i(b)].
func statementsByFlags(build func(a, b bool) string) [2][2]string {
	return [2][2]string{{build(false, false), build(false, true)}, {build(true, false), build(true, true)}}
}

// qualified names columns of a table by its alias in a statement: a."c".
func qualified(alias string, columns []string) []string {
	out := make([]string, len(columns))
	for i, c := range columns {
		out[i] = alias + `."` + c + `"`
	}
	return out
}

// maxTextLen is the longest text a customer's message may have (Ingest).
const maxTextLen = 65536

// The longest name, username and phone a contact or an identity keeps (the
// schema's MaxLen of those fields): longer values from providers are clipped.
const (
	maxNameLen     = 300
	maxUsernameLen = 100
	maxPhoneLen    = 50
)

// b2i is 1 for true.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// clip shortens s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// IngestAPI is the API channel: an integrator delivers a customer message
// as a provider would, on a channel whose provider is API.
func (d *Desk) IngestAPI(ctx context.Context, in Inbound) (*IngestResult, error) {
	if _, err := Require(ctx, AccessIntegration); err != nil {
		return nil, err
	}
	ch, err := d.channel(ctx, nil, in.ChannelID)
	if err != nil {
		return nil, notFound(err, "channel", in.ChannelID)
	}
	if ch.Provider != enum.ProviderAPI {
		return nil, invalid("channelId", "only channels with provider API accept messages through the API")
	}
	return d.Ingest(ctx, in)
}
