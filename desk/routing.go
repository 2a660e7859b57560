package desk

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	stdsql "database/sql"

	"entgo.io/ent/dialect/sql"
	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/routingdecision"
	"github.com/parleydesk/parley/ent/schema"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/ent/setting"
)

// Routing (R7–R11). Races resolve in the database (R10): a routing
// transaction locks the rows of every member of the queue (in id order) before
// it reads their status and load, so it serialises with any other transaction
// that can raise a member's load (another routing, an accept, a transfer to
// them). Transactions that only lower a load (complete, withdraw, expire,
// status ACTIVE) enqueue a release job instead, which takes the same locks
// before it looks at waiting chats, so no capacity is ever missed. Lock order
// everywhere: chat rows, then operator rows by ascending id.

// Routing triggers recorded in decisions.
const (
	TriggerNewChat  = "NEW_CHAT"
	TriggerCapacity = "CAPACITY"
	TriggerTimeout  = "OFFER_TIMEOUT"
	TriggerTransfer = "TRANSFER"
)

// Routing outcomes recorded in decisions.
const (
	OutcomeOffered = "OFFERED"
	OutcomeWaiting = "WAITING"
)

// Why a member was not chosen (Candidate.Excluded).
const (
	ExcludedInactive       = "INACTIVE"
	ExcludedLimitExhausted = "LIMIT_EXHAUSTED"
	ExcludedAlreadyOffered = "ALREADY_OFFERED"
	ExcludedMissed         = "MISSED_THIS_CHAT"
	ExcludedMoreLoaded     = "MORE_LOADED"
	ExcludedIdleLess       = "IDLE_LESS_LONG"
	ExcludedNotTheirTurn   = "NOT_THEIR_TURN"
)

// Availability is an operator's derived availability (R7, R19).
type Availability string

const (
	AvailabilityActive         Availability = "ACTIVE"
	AvailabilityInactive       Availability = "INACTIVE"
	AvailabilityLimitExhausted Availability = "LIMIT_EXHAUSTED"
)

// availabilityOf derives availability from status, load and limit.
func availabilityOf(status enum.OperatorStatus, load, limit int) Availability {
	switch {
	case status != enum.StatusActive:
		return AvailabilityInactive
	case load >= limit:
		return AvailabilityLimitExhausted
	}
	return AvailabilityActive
}

// chatLimit is the concurrent-chats limit of an operator in a queue (R7):
// the operator's override, else the queue's, else the system setting.
func chatLimit(op *ent.Operator, q *ent.Queue, s *ent.Setting) int {
	return limitOf(op.ChatLimit, q, s)
}

// limitOf is chatLimit for an operator's own limit (nil: none).
func limitOf(own *int, q *ent.Queue, s *ent.Setting) int {
	switch {
	case own != nil:
		return *own
	case q != nil && q.ChatLimit != nil:
		return *q.ChatLimit
	}
	return s.ConcurrentChats
}

// settingsTx reads the settings row in tx (the defaults when it is missing).
func (d *Desk) settingsTx(ctx context.Context, tx *ent.Tx) (*ent.Setting, error) {
	s, err := tx.Setting.Query().Where(setting.Scope(settingsScope)).Only(ctx)
	if ent.IsNotFound(err) {
		return defaultSettings(), nil
	}
	return s, err
}

// defaultSettings are the settings that apply while the row is missing
// (the schema's defaults).
func defaultSettings() *ent.Setting {
	return &ent.Setting{ConcurrentChats: setting.DefaultConcurrentChats, AcceptTimeoutSeconds: setting.DefaultAcceptTimeoutSeconds,
		WaitingOrder: setting.DefaultWaitingOrder, BotCompletionMinutes: setting.DefaultBotCompletionMinutes}
}

// routingSettings are the system settings routing reads, selected beside
// a queue's columns by queueForRouting.
var routingSettings = []string{setting.FieldConcurrentChats, setting.FieldAcceptTimeoutSeconds, setting.FieldWaitingOrder}

// queueForRouting reads a queue and, in the same statement, the system
// settings routing falls back to (the defaults when the row is missing):
// one round trip where a queue and the settings row took two. The setting
// returned holds those fields only.
func queueForRouting(ctx context.Context, tx *ent.Tx, queueID int) (*ent.Queue, *ent.Setting, error) {
	q, err := tx.Queue.Query().Where(queue.ID(queueID)).Modify(func(s *sql.Selector) {
		for _, f := range routingSettings {
			s.AppendSelectExprAs(sql.ExprFunc(func(b *sql.Builder) {
				b.WriteString("(SELECT ").Ident(f).WriteString(" FROM ").Ident(setting.Table).
					WriteString(" WHERE ").Ident(setting.FieldScope).WriteString(" = ").Arg(settingsScope).WriteString(")")
			}), "parley_setting_"+f)
		}
	}).Only(ctx)
	if err != nil {
		return nil, nil, notFound(err, "queue", queueID)
	}
	s := defaultSettings()
	for _, f := range routingSettings {
		v, set, err := selectedOrNull[any](q.Value, "parley_setting_"+f)
		if err != nil {
			return nil, nil, err
		}
		if !set {
			continue // no settings row: the default
		}
		switch v := v.(type) {
		case int64:
			if f == setting.FieldConcurrentChats {
				s.ConcurrentChats = int(v)
			} else {
				s.AcceptTimeoutSeconds = int(v)
			}
		case string:
			s.WaitingOrder = enum.WaitingOrder(v)
		case []byte:
			s.WaitingOrder = enum.WaitingOrder(v)
		default:
			return nil, nil, fmt.Errorf("routing: setting %s is %v (%T)", f, v, v)
		}
	}
	return q, s, nil
}

// querier runs raw SQL: a transaction or the client.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*stdsql.Rows, error)
}

// loads counts, for each operator, the chats in work plus the open offers
// (R7), in one statement.
func (d *Desk) loads(ctx context.Context, tx querier, ids []int) (map[int]int, error) {
	out := make(map[int]int, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	query := loadsSQL(d.placeholder(1), "IN ("+d.placeholders(len(ids), 2)+")",
		d.placeholder(len(ids)+2), "IN ("+d.placeholders(len(ids), len(ids)+3)+")")
	args := make([]any, 0, 2*len(ids)+2)
	args = append(args, string(enum.ChatInProgress))
	for _, id := range ids {
		args = append(args, id)
	}
	args = append(args, string(enum.OfferOpen))
	for _, id := range ids {
		args = append(args, id)
	}
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("loads: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var op, n int
		if err := rows.Scan(&op, &n); err != nil {
			return nil, err
		}
		out[op] = n
	}
	return out, rows.Err()
}

// loadsSQL counts operators' loads (R7), a row (operator, load) for each
// with some: the chats they own in progress (their status given by the
// parameter inProgress) and their open offers (open); ownedIn and offeredIn
// select the operators (a condition on the id column that follows, such
// as "IN ($2, $3)").
func loadsSQL(inProgress, ownedIn, open, offeredIn string) string {
	return fmt.Sprintf(`SELECT op, COUNT(*) FROM (
  SELECT %[1]s AS op FROM %[2]s WHERE %[3]s = %[4]s AND %[1]s %[5]s
  UNION ALL
  SELECT %[6]s AS op FROM %[7]s WHERE %[8]s = %[9]s AND %[6]s %[10]s
) AS loads GROUP BY op`,
		chat.FieldOwnerID, chat.Table, chat.FieldStatus, inProgress, ownedIn,
		chatoffer.FieldOperatorID, chatoffer.Table, chatoffer.FieldStatus, open, offeredIn)
}

func (d *Desk) placeholder(i int) string {
	if d.pg {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}

// placeholders returns n placeholders numbered from start.
func (d *Desk) placeholders(n, start int) string {
	p := make([]string, n)
	for i := range p {
		p[i] = d.placeholder(start + i)
	}
	return strings.Join(p, ", ")
}

// lockOperators reads (and on PostgreSQL locks, in id order) the operators
// matching the predicates.
func (d *Desk) lockOperators(ctx context.Context, tx *ent.Tx, ps ...predicate.Operator) ([]*ent.Operator, error) {
	q := tx.Operator.Query().Where(ps...).Order(ent.Asc(operator.FieldID))
	if d.pg {
		q.Modify(lockRows())
	}
	return q.All(ctx)
}

// lockChat reads (and on PostgreSQL locks) one chat.
func (d *Desk) lockChat(ctx context.Context, tx *ent.Tx, id int) (*ent.Chat, error) {
	q := tx.Chat.Query().Where(chat.ID(id))
	if d.pg {
		q.Modify(lockRows())
	}
	c, err := q.Only(ctx)
	return c, notFound(err, "chat", id)
}

func operatorIs(id int) predicate.Operator { return operator.ID(id) }

// member is an operator as routing sees it.
type member struct {
	op    *memberOp
	load  int
	limit int
}

func (m *member) availability() Availability { return availabilityOf(m.op.Status, m.load, m.limit) }

// memberOp is what routing reads of a member: the columns lockMembersPG
// selects (memberColumns), not the whole operator.
type memberOp struct {
	ID             int
	Name           string
	Status         enum.OperatorStatus
	ChatLimit      *int
	LastAcceptedAt *time.Time
}

// memberColumns are memberOp's columns, in its order.
var memberColumns = []string{operator.FieldID, operator.FieldName, operator.FieldStatus, operator.FieldChatLimit,
	operator.FieldLastAcceptedAt}

// memberOf is the member of a locked operator (SQLite reads them whole).
func memberOf(op *ent.Operator) *memberOp {
	return &memberOp{ID: op.ID, Name: op.Name, Status: op.Status, ChatLimit: op.ChatLimit, LastAcceptedAt: op.LastAcceptedAt}
}

// router routes chats of one queue inside one transaction, holding the locks
// of all its members.
type router struct {
	d        *Desk
	tx       *ent.Tx
	q        *ent.Queue
	settings *ent.Setting
	members  []*member
	// offers are the offers of chats read ahead (a release batch).
	offers map[int]chatOffers
	// batch, when set, holds the offers of the routings until flush.
	batch *offerBatch
	// drawn are offer ids drawn ahead (PostgreSQL: newRouterDrawing,
	// releasePending), for any member, each used once.
	drawn []int
	// turnAtCommit: a round-robin turn the routings move is written with
	// the commit, by saveTurn (turnMoved: one did), not at once.
	turnAtCommit, turnMoved bool
}

// newRouter locks the members of a queue and reads their loads.
func (d *Desk) newRouter(ctx context.Context, tx *ent.Tx, queueID int) (*router, error) {
	return d.lockRouter(ctx, tx, queueID, false, false)
}

// selectedOrNull reads a value a query selected beside an entity's fields
// (value is the entity's Value method); ok is false when it is NULL.
func selectedOrNull[T any](value func(string) (ent.Value, error), column string) (t T, ok bool, err error) {
	v, err := value(column)
	if err != nil {
		return t, false, err
	}
	if u, isU := v.(*sql.UnknownType); isU && u != nil {
		v = *u
	}
	if v == nil {
		return t, false, nil
	}
	if t, ok = v.(T); !ok {
		return t, false, fmt.Errorf("%s is %v (%T)", column, v, v)
	}
	return t, true, nil
}

// Columns of lockMembersPG's statements beside the members' own.
const (
	queueRowColumn    = "parley_queue"
	settingsRowColumn = "parley_settings"
	nextOfferColumn   = "parley_next_offer_id"
	offerIDsColumn    = "parley_offer_ids"
)

// membersStatements are lockMembersPG's statements, by whether they take the
// queue's routing mark first (mark) and draw offer ids (draw): fixed
// strings, built once.
var membersStatements = statementsByFlags(membersStatement)

// membersStatement is, joined by store.Then: with mark, the wait for the
// queue's routing mark ($1 its class, $2 the queue); the lock of the
// members that are not disabled, in id order, FOR NO KEY UPDATE as
// lockRows ($1 the queue), with the columns routing reads (memberColumns)
// and, with draw, an offer id drawn for each ACTIVE member of a TO_ALL
// queue (NULL for the others, who get no offer: under TO_ALL every
// available member is offered the chat; under the other rules one is, and
// drawing for all would waste ids; ids come from the offers' range of
// 2^32, ids being type << 32 | n); the members' loads ($1
// the queue, $2 the owned chats' status, $3 the open offers' status); and
// the queue's row and the settings' row as JSON, in one row (every column
// comes along, as ent reads them: the entities' JSON names are the column
// names; $1 the queue, $2 the settings' scope). The loads and the rows are
// statements of their own, sent in the same message: each takes its
// snapshot once the members' locks are held, and so reads what the
// transactions it waited for committed (a subquery of the locking
// statement would not); and the rows come once, not with every member.
func membersStatement(mark, draw bool) string {
	cols := qualified("o", memberColumns)
	members := membersOf("$1")
	drawn := ""
	if draw {
		drawn = fmt.Sprintf(`,
  CASE WHEN o.%s = '%s' AND (SELECT %s FROM %s WHERE %s = $1) = '%s' THEN nextval(pg_get_serial_sequence('%s', '%s')) END AS %s`,
			operator.FieldStatus, enum.StatusActive, queue.FieldRoutingRule, queue.Table, queue.FieldID, enum.RuleToAll,
			chatoffer.Table, chatoffer.FieldID, nextOfferColumn)
	}
	lock := fmt.Sprintf(`SELECT %s%s
FROM %s AS o WHERE o.%s IN (%s) AND NOT o.%s
ORDER BY o.%s FOR NO KEY UPDATE`, strings.Join(cols, ", "), drawn,
		operator.Table, operator.FieldID, members, operator.FieldDisabled, operator.FieldID)
	in := "= ANY(ARRAY(" + members + "))"
	loads := loadsSQL("$2", in, "$3", in)
	rowsOf := fmt.Sprintf(`SELECT (SELECT to_jsonb(q) FROM %s AS q WHERE q.%s = $1) AS %s,
  (SELECT to_jsonb(s) FROM %s AS s WHERE s.%s = $2) AS %s`,
		queue.Table, queue.FieldID, queueRowColumn, setting.Table, setting.FieldScope, settingsRowColumn)
	stmt := lock + store.Then + loads + store.Then + rowsOf
	if mark {
		stmt = fmt.Sprintf(queueLockSQL, "pg_advisory_xact_lock") + store.Then + stmt
	}
	return stmt
}

// membersOf selects the operator ids of a queue's members (queue the
// queue id's placeholder).
func membersOf(queueID string) string {
	return fmt.Sprintf(`SELECT queue_members.%s FROM %s AS queue_members WHERE queue_members.%s = %s`,
		operator.QueuesPrimaryKey[1], operator.QueuesTable, operator.QueuesPrimaryKey[0], queueID)
}

// pendingRelease is releasePending's statement: membersStatement with the
// mark, then pendingStatement, in one message.
var pendingRelease = membersStatement(true, false) + store.Then + pendingRead

// pendingRead is pendingStatement, built once.
var pendingRead = pendingStatement()

// pendingStatement reads the chats of a queue ($1) that Ingest left
// pending, but those the transaction routed already ($2, an array of ids:
// their flag is cleared with the commit), oldest first, at most
// releaseBatch, locked FOR NO KEY UPDATE
// and skipping those another transaction holds (a message to one: it asks
// for a release again); with each, offer ids drawn for its first routing:
// one for each ACTIVE member of a TO_ALL queue, else one. The ids are drawn
// for the rows the locking subquery returns, by a statement that runs once
// the members' locks are held.
func pendingStatement() string {
	return fmt.Sprintf(`SELECT %s, ARRAY(SELECT nextval(pg_get_serial_sequence('%s', '%s')) FROM generate_series(1, n.k)) AS %s
FROM (
  SELECT * FROM %s WHERE %s = $1 AND %s = '%s' AND %s AND NOT (%s = ANY($2::bigint[]))
  ORDER BY %s, %s LIMIT %d FOR NO KEY UPDATE SKIP LOCKED
) AS p, (
  SELECT CASE WHEN q.%s = '%s' THEN
    (SELECT count(*) FROM %s AS o WHERE o.%s IN (%s) AND NOT o.%s AND o.%s = '%s')
  ELSE 1 END AS k FROM %s AS q WHERE q.%s = $1
) AS n
ORDER BY p.%s, p.%s`,
		strings.Join(qualified("p", chat.Columns), ", "), chatoffer.Table, chatoffer.FieldID, offerIDsColumn,
		chat.Table, chat.FieldQueueID, chat.FieldStatus, enum.ChatWaiting, chat.FieldRoutePending, chat.FieldID,
		chat.FieldCreatedAt, chat.FieldID, releaseBatch,
		queue.FieldRoutingRule, enum.RuleToAll, operator.Table, operator.FieldID, membersOf("$1"), operator.FieldDisabled,
		operator.FieldStatus, enum.StatusActive, queue.Table, queue.FieldID,
		chat.FieldCreatedAt, chat.FieldID)
}

// lockedMember is an operator lockMembersPG locked, with their load.
type lockedMember struct {
	op   *memberOp
	load int
}

// lockedQueue is what lockMembersPG read: the members it locked, with the
// queue and the settings (q nil: the queue has no member, or no row); the
// offer ids drawn (with drawOffers, one for each ACTIVE member of a TO_ALL
// queue; with pending, those of the pending chats); with pending, the
// chats pendingStatement read.
type lockedQueue struct {
	members []lockedMember
	q       *ent.Queue
	s       *ent.Setting
	pending []*ent.Chat
	drawn   []int
}

// lockMembersPG locks the members of a queue that are not disabled, in id
// order (lockOperators), and reads the queue, the system settings routing
// falls back to and the members' loads, in one round trip
// (membersStatement); with mark, it first waits for the queue's routing
// mark, held then until the transaction ends; with drawOffers, it draws an
// offer id for each ACTIVE member of a TO_ALL queue; with pending (which
// takes the mark, without drawOffers), it also reads the chats left pending
// with offer ids for them (pendingRelease). The queue and settings
// are read once the members' locks are held, by a statement after the
// locking one: a subquery of the locking statement would read them as they
// were before it waited for a lock (a round-robin turn another routing just
// moved, say), and it would send them with every member. A queue without
// members returns no member: q is then nil.
func (d *Desk) lockMembersPG(ctx context.Context, tx *ent.Tx, queueID int, mark, drawOffers, pending bool) (lockedQueue, error) {
	var out lockedQueue
	args := []any{queueID, queueID, string(enum.ChatInProgress), string(enum.OfferOpen), queueID, settingsScope}
	if mark || pending {
		args = append([]any{routingLockClass, int32(uint32(queueID))}, args...)
	}
	query := membersStatements[b2i(mark)][b2i(drawOffers)]
	if pending {
		mark, drawOffers = true, false
		query, args = pendingRelease, append(args, queueID, "{}")
	}
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return out, fmt.Errorf("lock the members of queue %d: %w", queueID, err)
	}
	defer rows.Close()
	// next moves on to the next statement's rows, once these are read: an
	// error of the statements (a deadlock, to retry) comes with the rows.
	next := func(what string) error {
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock the members of queue %d: %w", queueID, err)
		}
		if !rows.NextResultSet() {
			if err := rows.Err(); err != nil {
				return fmt.Errorf("lock the members of queue %d: %w", queueID, err)
			}
			return fmt.Errorf("lock the members of queue %d: no %s", queueID, what)
		}
		return nil
	}
	if mark {
		for rows.Next() { // the mark's one row (void)
		}
		if err := next("members after the mark"); err != nil {
			return out, err
		}
	}
	var ms []lockedMember
	for rows.Next() {
		op := &memberOp{}
		var limit, offerID stdsql.NullInt64
		var lastAccepted stdsql.NullTime
		dest := []any{&op.ID, &op.Name, &op.Status, &limit, &lastAccepted}
		if drawOffers {
			dest = append(dest, &offerID)
		}
		if err := rows.Scan(dest...); err != nil {
			return out, err
		}
		if limit.Valid {
			n := int(limit.Int64)
			op.ChatLimit = &n
		}
		if lastAccepted.Valid {
			op.LastAcceptedAt = &lastAccepted.Time
		}
		ms = append(ms, lockedMember{op: op})
		if offerID.Valid {
			out.drawn = append(out.drawn, int(offerID.Int64))
		}
	}
	if err := next("loads"); err != nil {
		return out, err
	}
	loads := map[int]int{}
	for rows.Next() {
		var op, n int
		if err := rows.Scan(&op, &n); err != nil {
			return out, err
		}
		loads[op] = n
	}
	if err := next("queue"); err != nil {
		return out, err
	}
	var queueRow, settingsRow []byte
	if rows.Next() {
		if err := rows.Scan(&queueRow, &settingsRow); err != nil {
			return out, err
		}
	}
	if pending {
		for rows.Next() { // the queue's one row, read
		}
		if err := next("pending chats"); err != nil {
			return out, err
		}
		var drawn []int
		if out.pending, drawn, err = scanPending(tx, rows); err != nil {
			return out, err
		}
		out.drawn = append(out.drawn, drawn...)
	}
	if err := rows.Err(); err != nil || len(ms) == 0 {
		return out, err
	}
	for i := range ms {
		ms[i].load = loads[ms[i].op.ID]
	}
	q, s := &ent.Queue{}, defaultSettings()
	if queueRow == nil {
		return out, fmt.Errorf("routing: queue %d has members but no row", queueID)
	}
	if err := json.Unmarshal(queueRow, q); err != nil {
		return out, fmt.Errorf("routing: queue %d: %w", queueID, err)
	}
	if settingsRow != nil { // else no settings row: the defaults
		if err := json.Unmarshal(settingsRow, s); err != nil {
			return out, fmt.Errorf("routing: settings: %w", err)
		}
	}
	out.members, out.q, out.s = ms, q, s
	return out, nil
}

// newRouterDrawing is newRouter that, with drawOffers on PostgreSQL and a
// TO_ALL queue, also draws an offer id for each ACTIVE member as it locks
// them, so that the offers of
// the router's first routing are inserted with the commit (their ids are
// known: the events name them) instead of in a round trip of their own. Only
// for a transaction that reads no offer and no load after routing (the held
// insert is not visible before the commit): the last ingest of a delivery.
func (d *Desk) newRouterDrawing(ctx context.Context, tx *ent.Tx, queueID int, drawOffers bool) (*router, error) {
	return d.lockRouter(ctx, tx, queueID, false, drawOffers)
}

// lockRouter makes a router of a queue: it locks the members and reads
// their loads, the queue and the settings; on PostgreSQL with mark, it
// first waits for the queue's routing mark; with drawOffers, see
// newRouterDrawing.
func (d *Desk) lockRouter(ctx context.Context, tx *ent.Tx, queueID int, mark, drawOffers bool) (*router, error) {
	var l lockedQueue
	if d.pg {
		// The members, their loads, the queue and the settings in one
		// round trip.
		var err error
		if l, err = d.lockMembersPG(ctx, tx, queueID, mark, drawOffers, false); err != nil {
			return nil, err
		}
	}
	return d.routerOf(ctx, tx, queueID, l)
}

// routerOf makes the router of what lockMembersPG read (on SQLite, nothing:
// it reads and locks here).
func (d *Desk) routerOf(ctx context.Context, tx *ent.Tx, queueID int, l lockedQueue) (*router, error) {
	locked, q, s := l.members, l.q, l.s
	if q == nil {
		// SQLite, or a queue without members (or none at all).
		var err error
		if q, s, err = queueForRouting(ctx, tx, queueID); err != nil {
			return nil, err
		}
		if !d.pg {
			ops, err := d.lockOperators(ctx, tx, operator.HasQueuesWith(queue.ID(queueID)), operator.Disabled(false))
			if err != nil {
				return nil, err
			}
			ids := make([]int, len(ops))
			for i, op := range ops {
				ids[i] = op.ID
			}
			loads, err := d.loads(ctx, tx, ids)
			if err != nil {
				return nil, err
			}
			for _, op := range ops {
				locked = append(locked, lockedMember{op: memberOf(op), load: loads[op.ID]})
			}
		}
	}
	r := &router{d: d, tx: tx, q: q, settings: s, drawn: l.drawn}
	for _, l := range locked {
		r.members = append(r.members, &member{op: l.op, load: l.load, limit: limitOf(l.op.ChatLimit, q, s)})
	}
	return r, nil
}

// createOffers offers chat chatID to the chosen members, in one statement:
// held for the commit when the router has an offer id drawn for each
// (newRouterDrawing, releasePending), else an insert that returns the ids.
// expires is zero under TO_ALL (offers that never expire).
func (r *router) createOffers(ctx context.Context, chatID int, chosen []int, now, expires time.Time) ([]*ent.ChatOffer, error) {
	if len(chosen) > len(r.drawn) {
		creates := make([]*ent.ChatOfferCreate, 0, len(chosen))
		for _, i := range chosen {
			creates = append(creates, r.offerCreate(chatID, r.members[i].op.ID, now, expires))
		}
		return r.tx.ChatOffer.CreateBulk(creates...).Save(ctx)
	}
	cols := []string{chatoffer.FieldID, chatoffer.FieldChatID, chatoffer.FieldOperatorID, chatoffer.FieldStatus, chatoffer.FieldCreatedAt}
	if !expires.IsZero() {
		cols = append(cols, chatoffer.FieldExpiresAt)
	}
	ins := r.d.sql().Insert(chatoffer.Table).Columns(cols...)
	offers := make([]*ent.ChatOffer, 0, len(chosen))
	for _, i := range chosen {
		m := r.members[i]
		o := &ent.ChatOffer{ID: r.drawn[0], ChatID: chatID, OperatorID: m.op.ID, Status: enum.OfferOpen, CreatedAt: now}
		r.drawn = r.drawn[1:]
		vals := []any{o.ID, o.ChatID, o.OperatorID, string(o.Status), o.CreatedAt}
		if !expires.IsZero() {
			o.ExpiresAt = &expires
			vals = append(vals, expires)
		}
		ins.Values(vals...)
		offers = append(offers, o)
	}
	return offers, r.d.atCommit(ctx, r.tx, ins)
}

// offerCreate is the insert of an open offer of a chat to an operator
// (expires zero: an offer that never expires, TO_ALL).
func (r *router) offerCreate(chatID, operatorID int, now, expires time.Time) *ent.ChatOfferCreate {
	create := r.tx.ChatOffer.Create().SetChatID(chatID).SetOperatorID(operatorID).SetStatus(enum.OfferOpen).SetCreatedAt(now)
	if !expires.IsZero() {
		create.SetExpiresAt(expires)
	}
	return create
}

// anyAvailable reports whether some member could take a chat now.
func (r *router) anyAvailable() bool {
	for _, m := range r.members {
		if m.availability() == AvailabilityActive {
			return true
		}
	}
	return false
}

func (r *router) acceptTimeout() time.Duration {
	if r.q.AcceptTimeoutSeconds != nil {
		return time.Duration(*r.q.AcceptTimeoutSeconds) * time.Second
	}
	return time.Duration(r.settings.AcceptTimeoutSeconds) * time.Second
}

func (r *router) waitingOrder() enum.WaitingOrder {
	if r.q.WaitingOrder != nil {
		return *r.q.WaitingOrder
	}
	return r.settings.WaitingOrder
}

// route makes one routing attempt for a WAITING chat (R8) and records it
// (R11). TO_ALL offers the chat to every available member that has no offer
// of it yet; TO_AVAILABLE and ROUND_ROBIN offer it to one member at a time,
// so a chat with an open offer is left alone. It returns the operators that
// got an offer. Attempts that change nothing on a chat already routed before
// are not recorded again.
func (r *router) route(ctx context.Context, c *ent.Chat, trigger string) ([]int, error) {
	tx, d := r.tx, r.d
	now := d.Now()
	open, missed := map[int]bool{}, map[int]bool{}
	if trigger != TriggerNewChat && trigger != TriggerTransfer {
		if o, ok := r.offers[c.ID]; ok {
			open, missed = o.open, o.missed
		} else {
			var err error
			if open, missed, err = d.offersOf(ctx, tx, c.ID); err != nil {
				return nil, err
			}
		}
	}
	rule := r.q.RoutingRule
	if rule != enum.RuleToAll && len(open) > 0 {
		return nil, nil
	}
	cands := make([]schema.Candidate, len(r.members))
	var eligible []int // indexes into r.members
	for i, m := range r.members {
		cands[i] = schema.Candidate{OperatorID: m.op.ID, Name: m.op.Name, Status: string(m.op.Status), Load: m.load, Limit: m.limit}
		switch {
		case m.op.Status != enum.StatusActive:
			cands[i].Excluded = ExcludedInactive
		case open[m.op.ID]:
			cands[i].Excluded = ExcludedAlreadyOffered
		case m.load >= m.limit:
			cands[i].Excluded = ExcludedLimitExhausted
		default:
			eligible = append(eligible, i)
		}
	}
	var chosen []int
	if rule == enum.RuleToAll {
		chosen = eligible
	} else if len(eligible) > 0 {
		// Prefer members who have not let this chat's offer expire; when all
		// have, start over rather than leave the chat waiting.
		fresh := slices.DeleteFunc(slices.Clone(eligible), func(i int) bool { return missed[r.members[i].op.ID] })
		pool := eligible
		if len(fresh) > 0 {
			for _, i := range eligible {
				if missed[r.members[i].op.ID] {
					cands[i].Excluded = ExcludedMissed
				}
			}
			pool = fresh
		}
		var pick int
		if rule == enum.RuleRoundRobin {
			pick = r.nextInTurn(pool)
		} else {
			pick = r.leastLoaded(pool, cands)
		}
		for _, i := range pool {
			if i != pick && cands[i].Excluded == "" {
				if rule == enum.RuleRoundRobin {
					cands[i].Excluded = ExcludedNotTheirTurn
				} else if r.members[i].load > r.members[pick].load {
					cands[i].Excluded = ExcludedMoreLoaded
				} else {
					cands[i].Excluded = ExcludedIdleLess
				}
			}
		}
		chosen = []int{pick}
	}

	var offered []int
	var expires time.Time
	if rule != enum.RuleToAll {
		expires = now.Add(r.acceptTimeout())
	}
	for _, i := range chosen {
		m := r.members[i]
		cands[i].Chosen = true
		m.load++
		offered = append(offered, m.op.ID)
	}
	if len(chosen) > 0 {
		if err := r.offer(ctx, c.ID, chosen, now, expires); err != nil {
			return nil, err
		}
	}
	if rule == enum.RuleRoundRobin && len(offered) == 1 {
		r.q.RrLastOperatorID = &offered[0]
		if r.turnAtCommit {
			r.turnMoved = true
		} else if err := tx.Queue.UpdateOneID(r.q.ID).SetRrLastOperatorID(offered[0]).Exec(ctx); err != nil {
			return nil, err
		}
	}
	if len(offered) > 0 {
		if err := d.atCommit(ctx, tx, d.sql().Update(chat.Table).Set(chat.FieldOfferedAt, now).
			Where(sql.EQ(chat.FieldID, c.ID))); err != nil {
			return nil, err
		}
	}
	if len(offered) == 0 && trigger == TriggerCapacity {
		return nil, nil
	}
	outcome := OutcomeWaiting
	if len(offered) > 0 {
		outcome = OutcomeOffered
	}
	// The decision is only read back by the routing log: it is written
	// with the commit.
	candidates, err := json.Marshal(cands)
	if err != nil {
		return nil, err
	}
	chosenIDs, err := json.Marshal(offered)
	if err != nil {
		return nil, err
	}
	if err := d.atCommit(ctx, tx, d.sql().Insert(routingdecision.Table).
		Columns(routingdecision.ChatColumn, routingdecision.FieldRule, routingdecision.FieldAt, routingdecision.FieldTrigger,
			routingdecision.FieldCandidates, routingdecision.FieldOutcome, routingdecision.FieldChosenOperatorIds).
		Values(c.ID, string(rule), now, trigger, json.RawMessage(candidates), outcome, json.RawMessage(chosenIDs))); err != nil {
		return nil, err
	}
	if len(offered) == 0 {
		return nil, r.then(ctx, func(ctx context.Context) error {
			return d.emit(ctx, tx, event{Type: EventChatWaiting, ChatID: c.ID, QueueID: r.q.ID})
		})
	}
	return offered, nil
}

// offerBatch holds the offers of a release's routings, inserted together by
// one statement once every chat of the release is decided (flush), instead
// of one statement per chat; and, in their order, the steps that follow
// each routing and need those offers' ids (events, offer time-outs). No
// routing of the release reads offers back: the chats' offers were read
// ahead (router.offers) and the members' loads are counted in memory.
type offerBatch struct {
	creates []*ent.ChatOfferCreate
	offers  []*ent.ChatOffer
	steps   []func(context.Context) error
}

// offerBatchChunk bounds the offers one insert of a flush carries (each
// takes six parameters; PostgreSQL takes at most 65,535 per statement).
const offerBatchChunk = 1000

// offer offers chat chatID to the chosen members and announces the offers
// (announce): at once, or with the batch's flush when the router batches.
func (r *router) offer(ctx context.Context, chatID int, chosen []int, now, expires time.Time) error {
	b := r.batch
	if b == nil {
		offers, err := r.createOffers(ctx, chatID, chosen, now, expires)
		if err != nil {
			return err
		}
		return r.announce(ctx, chatID, offers, expires)
	}
	from := len(b.creates)
	for _, i := range chosen {
		b.creates = append(b.creates, r.offerCreate(chatID, r.members[i].op.ID, now, expires))
	}
	to := len(b.creates)
	b.steps = append(b.steps, func(ctx context.Context) error { return r.announce(ctx, chatID, b.offers[from:to], expires) })
	return nil
}

// then runs a step of a routing that must follow its offers' announcement:
// at once, or in its place after the batch's flush.
func (r *router) then(ctx context.Context, step func(context.Context) error) error {
	if r.batch == nil {
		return step(ctx)
	}
	r.batch.steps = append(r.batch.steps, step)
	return nil
}

// announce enqueues the time-outs of a chat's new offers (not under TO_ALL,
// whose offers never expire) and emits their CHAT_OFFERED events.
func (r *router) announce(ctx context.Context, chatID int, offers []*ent.ChatOffer, expires time.Time) error {
	for _, o := range offers {
		if !expires.IsZero() {
			if err := r.d.enqueue(ctx, r.tx, jobSpec{kind: jobOfferTimeout, chatID: chatID, ref: o.ID, due: expires}); err != nil {
				return err
			}
		}
		if err := r.d.emit(ctx, r.tx, event{Type: EventChatOffered, ChatID: chatID, OperatorID: o.OperatorID, QueueID: r.q.ID,
			Payload: map[string]any{"offerId": o.ID}}); err != nil {
			return err
		}
	}
	return nil
}

// batchOffers makes the router hold the offers of its routings for flush,
// and the turn they move for saveTurn.
func (r *router) batchOffers() { r.batch, r.turnAtCommit = &offerBatch{}, true }

// saveTurn writes the round-robin turn the routings moved, with the commit
// (nothing later reads it back: the router keeps it in r.q).
func (r *router) saveTurn(ctx context.Context) error {
	if !r.turnMoved {
		return nil
	}
	r.turnMoved = false
	return r.d.atCommit(ctx, r.tx, r.d.sql().Update(queue.Table).Set(queue.FieldRrLastOperatorID, *r.q.RrLastOperatorID).
		Where(sql.EQ(queue.FieldID, r.q.ID)))
}

// flush inserts the offers the router batched, in as few statements as
// their number allows, runs the routings' steps in order and writes the
// queue's round-robin turn with the commit; the router then offers at once
// again.
func (r *router) flush(ctx context.Context) error {
	b := r.batch
	r.batch = nil
	if b == nil {
		return nil
	}
	for chunk := range slices.Chunk(b.creates, offerBatchChunk) {
		offers, err := r.tx.ChatOffer.CreateBulk(chunk...).Save(ctx)
		if err != nil {
			return err
		}
		b.offers = append(b.offers, offers...)
	}
	for _, step := range b.steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	err := r.saveTurn(ctx)
	r.turnAtCommit = false
	return err
}

// leastLoaded picks, among the pool, the member with the fewest chats, ties
// to the one idle longest (oldest last acceptance, never first), then the
// lowest id (R8 TO_AVAILABLE).
func (r *router) leastLoaded(pool []int, _ []schema.Candidate) int {
	best := pool[0]
	for _, i := range pool[1:] {
		a, b := r.members[i], r.members[best]
		switch {
		case a.load != b.load:
			if a.load < b.load {
				best = i
			}
		case idleLonger(a.op.LastAcceptedAt, b.op.LastAcceptedAt):
			best = i
		}
	}
	return best
}

func idleLonger(a, b *time.Time) bool {
	switch {
	case a == nil:
		return b != nil
	case b == nil:
		return false
	}
	return a.Before(*b)
}

// nextInTurn picks the member after the queue's last pick in id order,
// wrapping around (R8 ROUND_ROBIN).
func (r *router) nextInTurn(pool []int) int {
	if r.q.RrLastOperatorID != nil {
		for _, i := range pool {
			if r.members[i].op.ID > *r.q.RrLastOperatorID {
				return i
			}
		}
	}
	return pool[0]
}

// offersOf returns the operators with an open offer of a chat and those
// who let an offer of it expire.
func (d *Desk) offersOf(ctx context.Context, tx *ent.Tx, chatID int) (open, missed map[int]bool, err error) {
	all, err := d.offersOfChats(ctx, tx, []int{chatID})
	if err != nil {
		return nil, nil, err
	}
	o := all[chatID]
	return o.open, o.missed, nil
}

// chatOffers are the operators with an open offer of a chat and those who
// let an offer of it expire.
type chatOffers struct{ open, missed map[int]bool }

// offersOfChats reads the offers of several chats in one statement; every
// chat asked for is in the result.
func (d *Desk) offersOfChats(ctx context.Context, tx *ent.Tx, chatIDs []int) (map[int]chatOffers, error) {
	out := make(map[int]chatOffers, len(chatIDs))
	args := make([]any, len(chatIDs))
	for i, id := range chatIDs {
		out[id] = chatOffers{open: map[int]bool{}, missed: map[int]bool{}}
		args[i] = id
	}
	if len(chatIDs) == 0 {
		return out, nil
	}
	rows, err := tx.QueryContext(ctx, fmt.Sprintf("SELECT %s, %s, %s FROM %s WHERE %s IN (%s)",
		chatoffer.FieldChatID, chatoffer.FieldOperatorID, chatoffer.FieldStatus, chatoffer.Table,
		chatoffer.FieldChatID, d.placeholders(len(chatIDs), 1)), args...)
	if err != nil {
		return nil, fmt.Errorf("offers of chats %v: %w", chatIDs, err)
	}
	defer rows.Close()
	for rows.Next() {
		var chatID, op int
		var status string
		if err := rows.Scan(&chatID, &op, &status); err != nil {
			return nil, err
		}
		switch enum.OfferStatus(status) {
		case enum.OfferOpen:
			out[chatID].open[op] = true
		case enum.OfferExpired:
			out[chatID].missed[op] = true
		}
	}
	return out, rows.Err()
}

// routable selects the waiting chats a routing attempt could change with
// the members available now: under TO_ALL those not yet offered to every one
// of them, under the other rules those with no open offer. Without it a
// release would read the same oldest chats, already offered, again and
// again, and never reach the ones behind them.
func (r *router) routable() predicate.Chat {
	var avail []any
	for _, m := range r.members {
		if m.availability() == AvailabilityActive {
			avail = append(avail, m.op.ID)
		}
	}
	toAll := r.q.RoutingRule == enum.RuleToAll
	return func(s *sql.Selector) {
		t := sql.Table(chatoffer.Table)
		open := sql.Select(sql.Count("*")).From(t).Where(sql.And(
			sql.ColumnsEQ(t.C(chatoffer.FieldChatID), s.C(chat.FieldID)),
			sql.EQ(t.C(chatoffer.FieldStatus), string(enum.OfferOpen))))
		if toAll {
			open.Where(sql.In(t.C(chatoffer.FieldOperatorID), avail...))
		}
		limit := 1
		if toAll {
			limit = len(avail)
		}
		s.Where(sql.P(func(b *sql.Builder) {
			b.Wrap(func(b *sql.Builder) { b.Join(open) }).WriteOp(sql.OpLT).Arg(limit)
		}))
	}
}

// releaseBatch bounds the waiting chats one release routes.
const releaseBatch = 200

// releaseQueue hands waiting chats of a queue to members with capacity,
// oldest first or newest first per setting (R9), until no member can take
// more. It also makes the first routing of new chats that Ingest left to it
// (route_pending): each gets its NEW_CHAT decision, offered or WAITING, in
// its place in the waiting order. Chats locked by another transaction are
// skipped: that transaction is changing them and will enqueue its own
// release if needed.
func (d *Desk) releaseQueue(ctx context.Context, tx *ent.Tx, queueID int) error {
	// The release routes under the queue's routing mark (PostgreSQL): new
	// chats arriving meanwhile are left pending to the next release instead
	// of queueing on the members' locks behind this one.
	r, err := d.lockRouter(ctx, tx, queueID, true, false)
	if ent.IsNotFound(err) || isCode(err, CodeNotFound) {
		return nil // the queue was deleted
	}
	if err != nil {
		return err
	}
	// The release's offers are inserted together, after every decision.
	r.batchOffers()
	order := ent.Asc(chat.FieldCreatedAt)
	if r.waitingOrder() == enum.NewestFirst {
		order = ent.Desc(chat.FieldCreatedAt)
	}
	waiting := func(ps ...predicate.Chat) ([]*ent.Chat, error) {
		q := tx.Chat.Query().Where(chat.QueueID(queueID), chat.StatusEQ(enum.ChatWaiting)).Where(ps...).
			Order(order, ent.Asc(chat.FieldID)).Limit(releaseBatch)
		if d.pg {
			q.Modify(lockRows(sql.WithLockAction(sql.SkipLocked)))
		}
		return q.All(ctx)
	}
	var chats []*ent.Chat
	if r.anyAvailable() {
		if chats, err = waiting(r.routable()); err != nil {
			return err
		}
		// The offers of the chats routed before: a pending chat was never
		// routed (it has none), and its NEW_CHAT routing reads none.
		var ids []int
		for _, c := range chats {
			if !c.RoutePending {
				ids = append(ids, c.ID)
			}
		}
		if r.offers, err = d.offersOfChats(ctx, tx, ids); err != nil {
			return err
		}
	}
	var firsts []int // the pending chats routed
	for _, c := range chats {
		switch {
		case c.RoutePending:
			if _, err := r.route(ctx, c, TriggerNewChat); err != nil {
				return fmt.Errorf("route new chat %d: %w", c.ID, err)
			}
			firsts = append(firsts, c.ID)
		case r.anyAvailable():
			if _, err := r.route(ctx, c, TriggerCapacity); err != nil {
				return fmt.Errorf("release chat %d: %w", c.ID, err)
			}
		}
	}
	if len(chats) == releaseBatch && r.anyAvailable() {
		// More waiting chats may take the capacity left: the next run goes
		// on, pending ones included, in order.
		if err := d.releaseQueueLater(ctx, tx, queueID); err != nil {
			return err
		}
	} else if len(chats) == releaseBatch || len(chats) == 0 {
		// No capacity left for chats past this batch (or none at all): the
		// pending ones among them wait, with their decision recorded.
		pending, err := waiting(chatRoutePending())
		if err != nil {
			return err
		}
		for _, c := range pending {
			if slices.Contains(firsts, c.ID) {
				continue
			}
			if _, err := r.route(ctx, c, TriggerNewChat); err != nil {
				return fmt.Errorf("route new chat %d: %w", c.ID, err)
			}
			firsts = append(firsts, c.ID)
		}
		if len(pending) == releaseBatch {
			if err := d.releaseQueueLater(ctx, tx, queueID); err != nil {
				return err
			}
		}
	}
	if err := r.flush(ctx); err != nil {
		return err
	}
	return d.routedAtCommit(ctx, tx, firsts)
}

// routedAtCommit clears the route_pending flag of chats a release routed,
// with the commit (nothing reads it back).
func (d *Desk) routedAtCommit(ctx context.Context, tx *ent.Tx, chatIDs []int) error {
	if len(chatIDs) == 0 {
		return nil
	}
	ids := make([]any, len(chatIDs))
	for i, id := range chatIDs {
		ids[i] = id
	}
	return d.atCommit(ctx, tx, d.sql().Update(chat.Table).Set(chat.FieldRoutePending, false).Where(sql.In(chat.FieldID, ids...)))
}

// releasePending makes the first routing of the new chats of a queue that
// Ingest left pending (route_pending; PostgreSQL, where a queue is busy while
// another transaction routes a new chat of it): each gets its NEW_CHAT
// decision, offered or WAITING, in the waiting order, as its own routing
// would have made it. The release worker runs it after the commits that
// left them. It takes the queue's routing mark, locks the members, reads
// the pending chats and draws their offer ids in one round trip
// (pendingRelease), and holds every write for the commit: two round trips,
// so that the mark is soon free again for the webhooks that route their
// own new chats. Waiting chats routed before are left to the releases that
// capacity enqueues (releaseQueue), as a new chat's own routing leaves them.
func (d *Desk) releasePending(ctx context.Context, tx *ent.Tx, queueID int) error {
	l, err := d.lockMembersPG(ctx, tx, queueID, true, false, true)
	if err != nil {
		return err
	}
	if len(l.pending) == 0 {
		return nil
	}
	r, err := d.routerOf(ctx, tx, queueID, l)
	if ent.IsNotFound(err) || isCode(err, CodeNotFound) {
		return nil // the queue was deleted
	}
	if err != nil {
		return err
	}
	r.turnAtCommit = true
	var ids []int
	pending := l.pending
	for round := 1; ; round++ {
		if pending, err = d.inWaitingOrder(ctx, tx, r, queueID, pending, ids); err != nil {
			return err
		}
		for _, c := range pending {
			if _, err := r.route(ctx, c, TriggerNewChat); err != nil {
				return fmt.Errorf("route new chat %d: %w", c.ID, err)
			}
			ids = append(ids, c.ID)
		}
		if len(pending) == releaseBatch {
			// More may be pending: another release right after this one.
			if err := d.routeAfterCommit(tx, queueID); err != nil {
				return err
			}
			break
		}
		// New chats left pending while this release ran, in this process
		// (they asked for a release after their commit): they are routed
		// by this transaction, which holds the locks already, rather than
		// by another after it.
		if round == releaseRounds || !d.wanted.take(queueID) {
			break
		}
		var drawn []int
		if pending, drawn, err = d.pendingChats(ctx, tx, queueID, ids); err != nil {
			return err
		}
		r.drawn = append(r.drawn, drawn...)
	}
	if err := r.saveTurn(ctx); err != nil {
		return err
	}
	return d.routedAtCommit(ctx, tx, ids)
}

// releaseRounds bounds the reads of pending chats one release makes (the
// first, with the members' lock, and those of chats left pending while it
// ran).
const releaseRounds = 4

// pendingChats reads the chats of a queue left pending, but those routed
// already (routed, chat ids), with offer ids drawn for them
// (pendingStatement), in one round trip.
func (d *Desk) pendingChats(ctx context.Context, tx *ent.Tx, queueID int, routed []int) ([]*ent.Chat, []int, error) {
	ids := make([]string, len(routed))
	for i, id := range routed {
		ids[i] = strconv.Itoa(id)
	}
	rows, err := tx.QueryContext(ctx, pendingRead, queueID, "{"+strings.Join(ids, ",")+"}")
	if err != nil {
		return nil, nil, fmt.Errorf("pending chats of queue %d: %w", queueID, err)
	}
	defer rows.Close()
	return scanPending(tx, rows)
}

// scanPending reads pendingStatement's rows: the chats and the offer ids
// drawn for them.
func scanPending(tx *ent.Tx, rows *stdsql.Rows) (chats []*ent.Chat, drawn []int, err error) {
	for rows.Next() {
		var ids pq.Int64Array
		c, err := tx.Chat.ScanRow(rows, map[string]any{offerIDsColumn: &ids})
		if err != nil {
			return nil, nil, err
		}
		chats = append(chats, c)
		for _, id := range ids {
			drawn = append(drawn, int(id))
		}
	}
	return chats, drawn, rows.Err()
}

// inWaitingOrder orders the pending chats pendingStatement read (oldest
// first) as the queue's waiting order says (R9); a full batch is read again
// newest first, but the chats the transaction routed already (routed).
func (d *Desk) inWaitingOrder(ctx context.Context, tx *ent.Tx, r *router, queueID int, pending []*ent.Chat, routed []int) ([]*ent.Chat, error) {
	if r.waitingOrder() != enum.NewestFirst {
		return pending, nil
	}
	if len(pending) == releaseBatch {
		// The newest may be past the oldest batch: read them again.
		q := tx.Chat.Query().Where(chat.QueueID(queueID), chat.StatusEQ(enum.ChatWaiting), chatRoutePending(), chat.IDNotIn(routed...)).
			Order(ent.Desc(chat.FieldCreatedAt), ent.Asc(chat.FieldID)).Limit(releaseBatch)
		return q.Modify(lockRows(sql.WithLockAction(sql.SkipLocked))).All(ctx)
	}
	slices.SortStableFunc(pending, func(a, b *ent.Chat) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return a.ID - b.ID
	})
	return pending, nil
}

func isCode(err error, code Code) bool {
	e, ok := err.(*Error)
	return ok && e.Code == code
}

// routeNew routes a chat that just became WAITING (new, transferred to a
// queue, handed over by a bot). holdOffers: nothing later in the
// transaction reads the chat's offers or the members' loads, so the offers
// may be inserted with the commit (see newRouterDrawing).
func (d *Desk) routeNew(ctx context.Context, tx *ent.Tx, c *ent.Chat, queueID int, trigger string, holdOffers bool) error {
	r, err := d.newRouterDrawing(ctx, tx, queueID, holdOffers)
	if err != nil {
		return err
	}
	if _, err = r.route(ctx, c, trigger); err != nil || !c.RoutePending {
		return err
	}
	// Routed before a release came to it (a transfer to a queue).
	return tx.Chat.UpdateOneID(c.ID).SetRoutePending(false).Exec(ctx)
}

// routingLockClass is the PostgreSQL advisory lock that marks a transaction
// routing a new chat of a queue (taken without waiting, exclusive).
// Advisory locks are shared by the whole database, so the key names the
// schema too: installations (and test schemas) that share a database never
// wait for one another. The first key hashes the lock's class and the
// schema, the second is the low 32 bits of the queue id (ids are
// type << 32 | n, the same type for every queue).
const routingLockClass = "parley.route"

// queueLockSQL calls an advisory lock function ($fn) on a queue's lock of a
// class ($1) for queue $2.
var queueLockSQL = "SELECT " + queueLock("%s", "$1", "$2")

// queueLock is a call of an advisory lock function on a queue's lock of a
// class, given the placeholders of the class and the queue id.
func queueLock(fn, class, queue string) string {
	return fn + "(hashtext(" + class + " || ':' || current_schema()), " + queue + ")"
}

// routeAfterCommit asks for a release of the queue as soon as this
// transaction commits (a new chat left pending, or a message to one): the
// process's release worker runs it (runWantedReleases). Nothing is written:
// the pending chat itself is the durable record, and releases are swept
// for pending chats left behind by a process that stopped before its
// worker ran (sweepPending).
func (d *Desk) routeAfterCommit(tx *ent.Tx, queueID int) error {
	return d.addTxQueue(tx, queueID, "routing", func(st *txState) *map[int]bool { return &st.routeLater })
}
