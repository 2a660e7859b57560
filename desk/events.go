package desk

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	entsql "entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	entcontact "github.com/parleydesk/parley/ent/contact"
	entevent "github.com/parleydesk/parley/ent/event"
	entmessage "github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/ent/setting"
)

// Event types: every state change of the lifecycle appends one, in the
// transaction of the change (DESIGN principle 4).
const (
	EventChatCreated      = "CHAT_CREATED"
	EventChatOffered      = "CHAT_OFFERED"
	EventOfferWithdrawn   = "OFFER_WITHDRAWN"
	EventOfferExpired     = "OFFER_EXPIRED"
	EventChatAccepted     = "CHAT_ACCEPTED"
	EventChatWaiting      = "CHAT_WAITING"
	EventMessageAdded     = "MESSAGE_ADDED"
	EventChatTransferred  = "CHAT_TRANSFERRED"
	EventChatCompleted    = "CHAT_COMPLETED"
	EventChatRead         = "CHAT_READ"
	EventOperatorStatus   = "OPERATOR_STATUS_CHANGED"
	EventRoutingDecision  = "ROUTING_DECISION"
	EventCompletionDueSet = "COMPLETION_DUE_CHANGED"
	EventSessionEnded     = "SESSION_ENDED"
	EventAPIKeyRevoked    = "API_KEY_REVOKED"
	EventDraftSaved       = "DRAFT_SAVED"
	EventMessageEdited    = "MESSAGE_EDITED"
	EventDeliveryStatus   = "DELIVERY_STATUS_CHANGED"
)

// event is one change to record.
type event struct {
	Type       string
	ChatID     int
	OperatorID int
	QueueID    int
	Payload    map[string]any
	// Audience lists the operators whose panel shows the event; nil means
	// the operator concerned (OperatorID) alone.
	Audience []int
	// Queues lists the queues whose view shows the event, besides QueueID.
	Queues []int
	// offersOfChat: the audience is the operators ChatID is offered to,
	// read by the statement that appends the events (withChatAudience).
	offersOfChat bool
}

// emit records an event of the use case's transaction; it is written at
// commit (flushEvents).
func (d *Desk) emit(_ context.Context, tx *ent.Tx, e event) error {
	st, ok := d.txs.Load(tx)
	if !ok {
		return fmt.Errorf("event %s outside a use case transaction", e.Type)
	}
	st.(*txState).events = append(st.(*txState).events, e)
	return nil
}

// The event log's order on PostgreSQL. A transaction that appends events
// draws their ids (a sequence) in its last statement, which commits it
// (flushEventsPG), holding eventAppendLock, a transaction-scoped advisory
// lock taken in SHARED mode: appends do not wait for one another, so their
// commits share WAL flushes, and ids may become visible out of order (a
// transaction that drew 10 may commit after one that drew 11). A read of
// the log takes the same lock in EXCLUSIVE mode, eventReadLock, for the
// read alone (ReadEvents, LastEventID; a resumption reads only up to an
// id such a read returned, EventsThrough): it waits for the
// appends in flight to commit or roll back, and new ones wait for it (they
// queue behind a waiting reader), so every id at or below the highest it
// reads is final: committed and read, or never to be. A reader that has
// read up to id N can therefore resume after N with no gap. Changes to
// the same row still append in commit order: the row's lock is held until
// the commit, and ids are drawn just before it. SQLite has one writer at a
// time, so its ids are in commit order anyway.
//
// Once an append holds the lock it waits for nothing (the events table has
// no foreign key, whose check would lock the row referred to), so a reader
// waiting for it cannot close a cycle of waits: keep it so. The lock is
// one per schema (advisory locks are shared by the whole
// database). Before, appends took it in EXCLUSIVE mode: each commit's WAL
// flush then waited for the previous one's, which bounded the ingest rate
// at concurrency 8 (README, Performance).
const (
	eventLockHash   = "hashtext('parley.events:' || current_schema())"
	eventLockKey    = eventLockHash + ", 0"
	eventAppendLock = "pg_advisory_xact_lock_shared(" + eventLockKey + ")"
	eventReadLock   = "SELECT pg_advisory_xact_lock(" + eventLockKey + ")"
)

// flushEvents appends a transaction's events just before it commits and
// returns them as a read of the log would (ids in order, payload numbers as
// float64). On PostgreSQL the ids are drawn under the append lock (see
// above), in the statement that commits; SQLite's are in commit order.
func (d *Desk) flushEvents(ctx context.Context, tx *ent.Tx, events []event) ([]*ent.Event, *CommitView, error) {
	if len(events) == 0 {
		return nil, nil, nil
	}
	now := d.Now()
	rows := make([]eventRow, len(events))
	for i, e := range events {
		r := eventRow{Ord: i, Type: e.Type, ChatID: nonZero(e.ChatID), OperatorID: nonZero(e.OperatorID),
			QueueID: nonZero(e.QueueID), Payload: e.Payload}
		r.Audience = e.Audience
		if e.offersOfChat {
			r.OffersOf = nonZero(e.ChatID)
		}
		if r.Audience == nil && e.OperatorID != 0 && !e.offersOfChat {
			r.Audience = []int{e.OperatorID}
		}
		r.QueueIDs = e.Queues
		if e.QueueID != 0 && !slices.Contains(r.QueueIDs, e.QueueID) {
			r.QueueIDs = append(slices.Clone(r.QueueIDs), e.QueueID)
		}
		if len(r.Audience) == 0 {
			r.Audience = nil
		}
		if len(r.QueueIDs) == 0 {
			r.QueueIDs = nil
		}
		rows[i] = r
	}
	var ids []int
	var view *CommitView
	var err error
	if d.pg {
		view = d.views.of(events)
		ids, err = d.flushEventsPG(ctx, tx, rows, now, view)
	} else {
		ids, err = flushEventsSQLite(ctx, tx, rows, now)
	}
	// (flushEventsPG sets the audiences it read: rows[i].Audience, and
	// the view, or drops it when it could not be read.)
	if err != nil {
		return nil, nil, fmt.Errorf("append events: %w", err)
	}
	if len(ids) != len(rows) {
		return nil, nil, fmt.Errorf("append events: %d ids for %d events", len(ids), len(rows))
	}
	if view != nil && view.Chat == nil {
		view = nil
	}
	out := make([]*ent.Event, len(rows))
	for i, r := range rows {
		out[i] = &ent.Event{ID: ids[i], Type: r.Type, ChatID: r.ChatID, OperatorID: r.OperatorID, QueueID: r.QueueID,
			Payload: asRead(r.Payload), CreatedAt: now, Audience: r.Audience, QueueIds: r.QueueIDs}
	}
	return out, view, nil
}

// asRead returns a payload as reading it back from the database gives it
// (JSON numbers as float64).
func asRead(p map[string]any) map[string]any {
	if p == nil {
		return nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return p
	}
	var out map[string]any
	if json.Unmarshal(b, &out) != nil {
		return p
	}
	return out
}

// flushEventsSQLite inserts the events, eventsPerInsertSQLite to a
// statement, which reads the audience of those whose audience is the
// operators a chat is offered to (OffersOf), as flushEventsPG's does. JSON
// values are written as ent writes them (bytes).
func flushEventsSQLite(ctx context.Context, tx *ent.Tx, rows []eventRow, now time.Time) ([]int, error) {
	var got []appended
	for chunk := range slices.Chunk(rows, eventsPerInsertSQLite) {
		var b strings.Builder
		b.WriteString(eventsInsertSQLite)
		args := make([]any, 0, len(chunk)*10)
		for i, r := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(eventValuesSQLite)
			payload, err := jsonArg(r.Payload)
			if err != nil {
				return nil, err
			}
			audience, err := jsonArg(r.Audience)
			if err != nil {
				return nil, err
			}
			queues, err := jsonArg(r.QueueIDs)
			if err != nil {
				return nil, err
			}
			args = append(args, r.Type, r.ChatID, r.OperatorID, r.QueueID, payload, r.OffersOf, audience, r.OffersOf, queues, now)
		}
		fmt.Fprintf(&b, " RETURNING %s, %s", entevent.FieldID, entevent.FieldAudience)
		res, err := tx.QueryContext(ctx, b.String(), args...)
		if err != nil {
			return nil, err
		}
		if got, err = scanAppended(res, got); err != nil {
			return nil, err
		}
	}
	return appendedIDs(got, rows)
}

// eventsPerInsertSQLite bounds the rows of one events insert on SQLite (ten
// parameters each: SQLite takes at most 32,766 in a statement; a release of
// many chats to many operators appends thousands of events).
const eventsPerInsertSQLite = 500

// eventsInsertSQLite and eventValuesSQLite (a row's values, repeated) make
// flushEventsSQLite's statement. A row's audience: with OffersOf (its sixth
// and eighth values) the operators the chat is offered to, in id order,
// NULL when none is; else its seventh value.
var (
	eventsInsertSQLite = fmt.Sprintf("INSERT INTO %s (%s, %s, %s, %s, %s, %s, %s, %s) VALUES ", entevent.Table,
		entevent.FieldType, entevent.FieldChatID, entevent.FieldOperatorID, entevent.FieldQueueID, entevent.FieldPayload,
		entevent.FieldAudience, entevent.FieldQueueIds, entevent.FieldCreatedAt)
	eventValuesSQLite = fmt.Sprintf(`(?, ?, ?, ?, ?, CASE WHEN ? IS NULL THEN ? ELSE (
  SELECT CAST(json_group_array(%[1]s ORDER BY %[1]s) AS BLOB) FROM %[2]s WHERE %[3]s = ? AND %[4]s = '%[5]s' HAVING count(*) > 0
) END, ?, ?)`, chatoffer.FieldOperatorID, chatoffer.Table, chatoffer.FieldChatID, chatoffer.FieldStatus, enum.OfferOpen)
)

// jsonArg is a JSON column's argument as ent writes it: its encoding, or
// NULL for a nil map or slice.
func jsonArg(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		if v == nil {
			return nil, nil
		}
	case []int:
		if v == nil {
			return nil, nil
		}
	}
	return json.Marshal(v)
}

// eventRow is an event as the insert reads it (JSON on PostgreSQL).
type eventRow struct {
	Ord        int            `json:"ord"`
	Type       string         `json:"type"`
	ChatID     *int           `json:"chat_id,omitempty"`
	OperatorID *int           `json:"operator_id,omitempty"`
	QueueID    *int           `json:"queue_id,omitempty"`
	Payload    map[string]any `json:"payload,omitempty"`
	Audience   []int          `json:"audience,omitempty"`
	QueueIDs   []int          `json:"queue_ids,omitempty"`
	// OffersOf: the audience is the operators this chat is offered to when
	// the events are appended.
	OffersOf *int `json:"offers_of,omitempty"`
}

func nonZero(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

// EventsChannel is the PostgreSQL notification channel of committed events:
// the transaction that appends events notifies it with the last id, the
// committing instance and its scope ("<id> <instance> <scope>", see
// Desk.Instance and EventsScope), which PostgreSQL delivers to every
// listener of the database at commit, installations in other schemas
// included: their listeners skip it by its scope. It is silent while no
// other instance listens (Desk.SetPeers).
const EventsChannel = "parley_events"

// EventsScope is the SQL expression of the scope an installation's
// notifications and listeners carry: a hash of its schema.
const EventsScope = "to_hex(hashtext('parley.listener:' || current_schema()))"

// eventsInsert appends the events of a transaction ($1, a JSON array of
// eventRow; $2 their time) and returns their ids; eventsInsertNotify also
// notifies EventsChannel of the last one ($3 the instance).
var eventsInsert, eventsInsertNotify = eventsStatement(false), eventsStatement(true)

func eventsStatement(notify bool) string {
	n := `, n AS (SELECT 1)`
	if notify {
		n = fmt.Sprintf(`, n AS (SELECT pg_notify('%s', (SELECT max(%s) FROM ins)::text || ' ' || $3 || ' ' || %s))`,
			EventsChannel, entevent.FieldID, EventsScope)
	}
	return fmt.Sprintf(`WITH ins AS (
  INSERT INTO %[1]s (%[2]s, %[3]s, %[4]s, %[5]s, %[6]s, %[7]s, %[8]s, %[9]s)
  SELECT e.type, e.chat_id, e.operator_id, e.queue_id, e.payload,
    CASE WHEN e.offers_of IS NULL THEN e.audience ELSE (
      SELECT jsonb_agg(o.%[13]s ORDER BY o.%[13]s) FROM %[14]s AS o WHERE o.%[15]s = e.offers_of AND o.%[16]s = '%[17]s'
    ) END,
    e.queue_ids, $2::timestamptz
  FROM (SELECT %[10]s) AS l,
    jsonb_to_recordset($1::jsonb) AS e(ord int, type text, chat_id bigint, operator_id bigint, queue_id bigint,
      payload jsonb, audience jsonb, queue_ids jsonb, offers_of bigint)
  ORDER BY e.ord
  RETURNING %[11]s, %[7]s
)%[12]s
SELECT ins.%[11]s, ins.%[7]s FROM ins, n`+store.InlineCommit, entevent.Table, entevent.FieldType, entevent.FieldChatID, entevent.FieldOperatorID,
		entevent.FieldQueueID, entevent.FieldPayload, entevent.FieldAudience, entevent.FieldQueueIds,
		entevent.FieldCreatedAt, eventAppendLock, entevent.FieldID, n,
		chatoffer.FieldOperatorID, chatoffer.Table, chatoffer.FieldChatID, chatoffer.FieldStatus, enum.OfferOpen)
}

// flushEventsPG takes the append lock, inserts the events, queues the
// notification (unless no other instance listens) and commits, in one round
// trip: the sort reads the lock's subquery before it emits the first row,
// so every id is drawn under the lock, in the events' order, and the lock
// is held until the commit is durable and visible. The statement ends the
// transaction (store.InlineCommit), so a reader waiting for the lock waits
// for the server's work only, never for a round trip to this process. It
// travels in the simple query protocol, as EXECUTE of a statement the
// connection prepared once (parsing and planning it for every commit was a
// fifth of PostgreSQL's CPU), with the writes held for the commit ahead of
// it. When the insert or the commit fails, the transaction is rolled back as
// any failed one. The audiences the statement read (OffersOf) are set on
// rows.
//
// With a view to read (CommitViews), the view's read goes in the same
// message, after the COMMIT (store.AfterCommit); it fills view, or leaves
// its Chat nil when it failed (logged: the commit stands).
func (d *Desk) flushEventsPG(ctx context.Context, tx *ent.Tx, rows []eventRow, now time.Time, view *CommitView) ([]int, error) {
	body, err := json.Marshal(rows)
	if err != nil {
		return nil, err
	}
	query, args := eventsInsertNotify, []any{string(body), now, d.instance}
	if d.quiet.Load() {
		query, args = eventsInsert, args[:2]
	}
	if view != nil {
		read, readArgs := eventViewStatement(view.ChatID, view.MessageID)
		query, args = query+store.AfterCommit+read, append(args, readArgs...)
	}
	res, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	got, err := readAppended(res, nil)
	var after *store.AfterCommitError
	if view != nil && (err == nil || errors.As(err, &after)) {
		// The events' rows were read to the end and the commit answered
		// (the view's rows come after its answer): a failed read of the
		// view costs its subscribers a read of their own, nothing more.
		if err := d.readCommitView(res, view, err); err != nil {
			d.viewNotRead(view.ChatID, err)
		}
		err = nil
	}
	if err != nil {
		return nil, err
	}
	return appendedIDs(got, rows)
}

// viewNotRead logs a commit's view that could not be read with it: the
// commit stands, and the view's subscribers read it themselves.
func (d *Desk) viewNotRead(chatID int, err error) {
	d.log.Warn("reading a commit's view failed; its subscribers will read it", "chat", chatID, "err", err)
}

// readCommitView reads the view of a commit (the result set after the
// events'), unless reading the events failed after the commit (err).
func (d *Desk) readCommitView(res *stdsql.Rows, view *CommitView, err error) error {
	if err != nil {
		return err
	}
	if !res.NextResultSet() {
		if err := res.Err(); err != nil {
			return err
		}
		return errors.New("no result set after the commit")
	}
	c, m, err := d.scanEventView(res, view.ChatID, view.MessageID)
	if err != nil {
		return err
	}
	if err := res.Close(); err != nil {
		return err
	}
	view.Chat, view.Message = c, m
	return nil
}

// appended is an event as its insert returned it.
type appended struct {
	id       int
	audience []byte
}

// scanAppended reads the ids and audiences an events insert returned
// (RETURNING id, audience) onto got, and closes res.
func scanAppended(res *stdsql.Rows, got []appended) ([]appended, error) {
	defer res.Close()
	return readAppended(res, got)
}

// readAppended is scanAppended without closing res (more may follow).
func readAppended(res *stdsql.Rows, got []appended) ([]appended, error) {
	for res.Next() {
		var a appended
		if err := res.Scan(&a.id, &a.audience); err != nil {
			return nil, err
		}
		got = append(got, a)
	}
	return got, res.Err()
}

// appendedIDs returns the ids of the appended events (in any order) in the
// rows' order, in which they were drawn; the audiences the inserts read
// (OffersOf) are set on rows.
func appendedIDs(got []appended, rows []eventRow) ([]int, error) {
	if len(got) != len(rows) {
		return nil, fmt.Errorf("%d ids for %d events", len(got), len(rows))
	}
	slices.SortFunc(got, func(a, b appended) int { return a.id - b.id })
	ids := make([]int, len(got))
	for i, a := range got {
		ids[i] = a.id
		if rows[i].OffersOf == nil {
			continue
		}
		rows[i].Audience = nil
		if a.audience != nil {
			if err := json.Unmarshal(a.audience, &rows[i].Audience); err != nil {
				return nil, fmt.Errorf("audience of event %d: %w", a.id, err)
			}
		}
	}
	return ids, nil
}

// Notifies reports whether an event calls for the panel's notification to
// the actor (R12: a chat offered to them; the SPA plays its sound).
func Notifies(e *ent.Event, a *Actor) bool {
	return e.Type == EventChatOffered && a != nil && e.OperatorID != nil && *e.OperatorID == a.OperatorID
}

// withChatAudience returns e with the audience of a change of chat c: who
// sees it on their panel, its owner, or the operators it is offered to while
// it waits. Those operators are read by the statement that appends the
// events, at commit (flushEventsPG, flushEventsSQLite), rather than by a
// statement of their own: no earlier than the read it replaces, and counting
// the offers the transaction made meanwhile.
func withChatAudience(c *ent.Chat, e event) event {
	switch {
	case c.OwnerID != nil && c.Status != enum.ChatWaiting:
		e.Audience = []int{*c.OwnerID}
	default:
		e.Audience, e.offersOfChat = nil, true
	}
	return e
}

// LastEventID is the id of the newest event: on PostgreSQL, once the
// appends in flight have ended (see eventAppendLock), so that every event
// below it is final. On a log that never had an event (a new installation)
// it is the id just below the first one the log will draw (ids start at
// the events type's offset, not at 1), so that the live hub, which starts
// there, delivers the first commit's events at once instead of holding
// them until a read of the log finds no gap before them; 0 when that is
// unknown.
func (d *Desk) LastEventID(ctx context.Context) (int, error) {
	var last int
	scan := func(rows *stdsql.Rows) error { return rows.Scan(&last) }
	if d.pg {
		// The sequence's start, while it has never been called (read under
		// the read lock: no append is drawing an id). pg_sequence_last_value
		// is called on this sequence alone: in a filter of pg_sequence's
		// rows, a scan of the catalog calls it on every sequence of the
		// database first (it is the cheaper condition), and another
		// schema's sequence being dropped makes it wait for the drop, then
		// fail.
		err := d.readLog(ctx, fmt.Sprintf(`SELECT COALESCE(max(%[1]s), (
  SELECT CASE WHEN pg_sequence_last_value(own.seq) IS NULL
    THEN (SELECT q.seqstart - 1 FROM pg_sequence AS q WHERE q.seqrelid = own.seq) END
  FROM (SELECT pg_get_serial_sequence('%[2]s', '%[1]s')::regclass AS seq) AS own
), 0) FROM %[2]s`, entevent.FieldID, entevent.Table), scan)
		return last, err
	}
	// The last id SQLite's AUTOINCREMENT drew (set to the type's offset by
	// the migration), read with the newest event in one snapshot.
	rows, err := d.client.QueryContext(ctx, fmt.Sprintf(
		"SELECT COALESCE((SELECT max(%[1]s) FROM %[2]s), (SELECT seq FROM sqlite_sequence WHERE name = '%[2]s'), 0)",
		entevent.FieldID, entevent.Table))
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	return last, scanRows(rows, scan)
}

// checkRetention fails with EVENTS_EXPIRED when events after the id were
// pruned.
func (d *Desk) checkRetention(ctx context.Context, after int) error {
	s, err := d.Settings(ctx)
	if err != nil {
		return err
	}
	if after < s.EventsPrunedThrough {
		return Fail(CodeEventsExpired, "events after %d are older than the retention window; refetch and subscribe again", after)
	}
	return nil
}

// EventsThrough returns up to limit events with an id above after and at
// most through, oldest first; it fails with EVENTS_EXPIRED when events
// after after were pruned (the client must refetch its state instead of
// resuming). It does not wait for the appends in flight: the caller vouches
// that every id up to through is final (a read of the log returned it, or
// a later one), as the live hub's cursor is.
func (d *Desk) EventsThrough(ctx context.Context, after, through, limit int) ([]*ent.Event, error) {
	if err := d.checkRetention(ctx, after); err != nil {
		return nil, err
	}
	return d.client.Event.Query().Where(entevent.IDGT(after), entevent.IDLTE(through)).
		Order(ent.Asc(entevent.FieldID)).Limit(limit).All(ctx)
}

// ReadEvents returns up to limit events with an id above after, oldest
// first, without the retention check (the live pump's read). On PostgreSQL
// it reads once the appends in flight have ended (see eventAppendLock): no
// event below the last it returns can appear later.
func (d *Desk) ReadEvents(ctx context.Context, after, limit int) ([]*ent.Event, error) {
	// The id is written into the statement (it is an int): a statement
	// without arguments is one round trip and, outside a transaction, one
	// implicit transaction through lib/pq instead of two.
	if d.pg {
		var events []*ent.Event
		query := fmt.Sprintf("SELECT %s FROM %s WHERE %s > %d ORDER BY %s LIMIT %d", strings.Join(entevent.Columns, ", "),
			entevent.Table, entevent.FieldID, after, entevent.FieldID, limit)
		err := d.readLog(ctx, query, func(rows *stdsql.Rows) error {
			e, err := d.client.Event.ScanRow(rows, nil)
			events = append(events, e)
			return err
		})
		return events, err
	}
	idAfter := predicate.Event(func(s *entsql.Selector) {
		s.Where(entsql.ExprP(s.C(entevent.FieldID) + " > " + strconv.Itoa(after)))
	})
	return d.client.Event.Query().Where(idAfter).Order(ent.Asc(entevent.FieldID)).Limit(limit).All(ctx)
}

// readLog runs query, a read of the event log without arguments, after
// eventReadLock in one message (PostgreSQL): the two statements form one
// implicit transaction, so the lock, once granted, is held through the
// read, which takes its snapshot after the appends it waited for. scan is
// called for each row.
func (d *Desk) readLog(ctx context.Context, query string, scan func(*stdsql.Rows) error) error {
	rows, err := d.client.QueryContext(ctx, eventReadLock+"; "+query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() { // the lock's row: lib/pq moves on once it is read
	}
	if !rows.NextResultSet() {
		if err := rows.Err(); err != nil {
			return err
		}
		return errors.New("read events: the read returned no result")
	}
	return scanRows(rows, scan)
}

// scanRows calls scan for each row of the current result set, then closes
// rows.
func scanRows(rows *stdsql.Rows, scan func(*stdsql.Rows) error) error {
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return rows.Close()
}

const (
	jobPruneEvents = "PRUNE_EVENTS"
	pruneEvery     = time.Hour
	pruneBatch     = 10000
	pruneDedupeKey = "prune-events"
)

// SchedulePruning makes sure the event log's pruning job exists (every
// instance calls it at start; the dedupe key keeps one).
func (d *Desk) SchedulePruning(ctx context.Context) error {
	return d.inTx(ctx, "schedule pruning", func(ctx context.Context, tx *ent.Tx) error {
		return d.enqueue(ctx, tx, jobSpec{kind: jobPruneEvents, dedupe: pruneDedupeKey, due: d.Now().Add(time.Minute)})
	})
}

// pruneEvents deletes events older than the retention window, records the
// newest id it deleted (resuming before it fails with EVENTS_EXPIRED) and
// schedules the next run.
func (d *Desk) pruneEvents(ctx context.Context, tx *ent.Tx) error {
	cutoff := d.Now().Add(-d.cfg.EventRetention)
	last, err := tx.Event.Query().Where(entevent.CreatedAtLT(cutoff)).Order(ent.Desc(entevent.FieldID)).
		Select(entevent.FieldID).First(ctx)
	switch {
	case ent.IsNotFound(err):
	case err != nil:
		return err
	default:
		if _, err := tx.Event.Delete().Where(entevent.IDLTE(last.ID)).Exec(ctx); err != nil {
			return err
		}
		if err := tx.Setting.Update().Where(setting.Scope(settingsScope), setting.EventsPrunedThroughLT(last.ID)).
			SetEventsPrunedThrough(last.ID).Exec(ctx); err != nil {
			return err
		}
	}
	return d.enqueue(ctx, tx, jobSpec{kind: jobPruneEvents, dedupe: pruneDedupeKey, due: d.Now().Add(pruneEvery)})
}

// CommitView is what the events of one commit name (see EventView): their
// chat with its contact and, when MessageID is set, that message of the
// chat (nil if there is none), read after the commit (WithCommitViews).
type CommitView struct {
	ChatID, MessageID int
	Chat              *ent.Chat
	Message           *ent.Message
}

// EventNames is what a live event names, its view's key (EventView): its
// chat (0: none) and the message of its payload's messageId (0: none).
func EventNames(e *ent.Event) (chatID, messageID int) {
	c := 0
	if e.ChatID != nil {
		c = *e.ChatID
	}
	return viewOf(c, e.Payload)
}

// viewOf is EventNames of an event's chat and payload.
func viewOf(chatID int, payload map[string]any) (int, int) {
	return chatID, PayloadInt(payload, "messageId")
}

// commitViews is the desk's WithCommitViews setting.
type commitViews struct {
	want func() bool
	fn   func(events []*ent.Event, v CommitView)
}

// of returns the view to read with a commit of events (its Chat to be
// read), or nil: none is wanted, or the events name no chat, more than one,
// or more than one message.
func (v commitViews) of(events []event) *CommitView {
	if v.fn == nil || !v.want() {
		return nil
	}
	var view CommitView
	for _, e := range events {
		chatID, messageID := viewOf(e.ChatID, e.Payload)
		if chatID == 0 {
			continue
		}
		if view.ChatID != 0 && view.ChatID != chatID {
			return nil
		}
		view.ChatID = chatID
		if messageID != 0 {
			if view.MessageID != 0 && view.MessageID != messageID {
				return nil
			}
			view.MessageID = messageID
		}
	}
	if view.ChatID == 0 {
		return nil
	}
	return &view
}

// The columns of eventViewStatements that carry rows as JSON.
const (
	contactRowColumn = "parley_contact"
	messageRowColumn = "parley_message"
)

// eventViewStatements read a chat, its contact and, in the second, a
// message in one statement (PostgreSQL): the contact's and the message's
// rows as JSON (to_jsonb), decoded by the entities' JSON names, which are
// their columns.
var eventViewStatements = func() [2]string {
	chatAndContact := fmt.Sprintf(`SELECT %s,
  (SELECT to_jsonb(k) FROM %s AS k WHERE k.%s = c.%s) AS %s`, strings.Join(qualified("c", chat.Columns), ", "),
		entcontact.Table, entcontact.FieldID, chat.FieldContactID, contactRowColumn)
	from := fmt.Sprintf(`
FROM %s AS c WHERE c.%s = $1`, chat.Table, chat.FieldID)
	withMessage := fmt.Sprintf(`,
  (SELECT to_jsonb(m) FROM %s AS m WHERE m.%s = $2 AND m.%s = c.%s) AS %s`,
		entmessage.Table, entmessage.FieldID, entmessage.FieldChatID, chat.FieldID, messageRowColumn)
	return [2]string{chatAndContact + from, chatAndContact + withMessage + from}
}()

// EventView is what a live event names, read once by the subscribers the
// event reaches: its chat with the chat's contact (what a panel shows of
// it) and, when messageID is not 0, that message of the chat (nil if there
// is none); an event of no chat (chatID 0) names its message alone. One
// round trip on PostgreSQL, where ent's loads take two or three. Entities
// decoded from JSON lack what only eager loading uses (a message's author
// key): their edges are queried by id.
func (d *Desk) EventView(ctx context.Context, chatID, messageID int) (*ent.Chat, *ent.Message, error) {
	if chatID == 0 {
		if messageID == 0 {
			return nil, nil, nil
		}
		m, err := d.client.Message.Get(ctx, messageID)
		if ent.IsNotFound(err) {
			return nil, nil, nil
		}
		return nil, m, err
	}
	if !d.pg {
		c, err := d.client.Chat.Query().Where(chat.ID(chatID)).WithContact().Only(ctx)
		if err != nil || messageID == 0 {
			return c, nil, notFound(err, "chat", chatID)
		}
		m, err := d.client.Message.Query().Where(entmessage.ID(messageID), entmessage.ChatID(chatID)).Only(ctx)
		if ent.IsNotFound(err) {
			return c, nil, nil
		}
		return c, m, err
	}
	query, args := eventViewStatement(chatID, messageID)
	rows, err := d.client.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	c, m, err := d.scanEventView(rows, chatID, messageID)
	if err != nil {
		return nil, nil, err
	}
	return c, m, rows.Close()
}

// eventViewStatement is the statement and arguments of EventView's read
// (PostgreSQL) of a chat and, unless messageID is 0, a message.
func eventViewStatement(chatID, messageID int) (string, []any) {
	if messageID != 0 {
		return eventViewStatements[1], []any{chatID, messageID}
	}
	return eventViewStatements[0], []any{chatID}
}

// scanEventView reads the row of an eventViewStatements read: the chat
// (with its contact) and the message, bound to the desk's client; a chat
// that is not there is NOT_FOUND.
func (d *Desk) scanEventView(rows *stdsql.Rows, chatID, messageID int) (*ent.Chat, *ent.Message, error) {
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
		return nil, nil, Fail(CodeNotFound, "chat %d not found", chatID)
	}
	var contactRow, messageRow []byte
	c, err := d.client.Chat.ScanRow(rows, map[string]any{contactRowColumn: &contactRow, messageRowColumn: &messageRow})
	if err != nil {
		return nil, nil, err
	}
	m, err := d.bindView(c, contactRow, messageRow)
	return c, m, err
}

// bindView decodes the contact's and the message's rows that a view's
// read returned as JSON (nil: none) onto the chat, and returns the
// message, bound to the desk's client.
func (d *Desk) bindView(c *ent.Chat, contactRow, messageRow []byte) (*ent.Message, error) {
	if contactRow != nil {
		ct := &ent.Contact{}
		if err := json.Unmarshal(contactRow, ct); err != nil {
			return nil, fmt.Errorf("contact of chat %d: %w", c.ID, err)
		}
		c.Edges.Contact = d.client.Contact.Bind(ct)
	}
	if messageRow == nil {
		return nil, nil
	}
	m := &ent.Message{}
	if err := json.Unmarshal(messageRow, m); err != nil {
		return nil, fmt.Errorf("message of chat %d: %w", c.ID, err)
	}
	return d.client.Message.Bind(m), nil
}
