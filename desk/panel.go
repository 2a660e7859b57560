package desk

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// OperatorLoad is an operator with their derived availability (R7).
type OperatorLoad struct {
	Operator     *ent.Operator
	Availability Availability
	Load         int
	Limit        int
}

// PanelChat is a chat as the panel lists it (R12).
type PanelChat struct {
	Chat        *ent.Chat
	LastMessage *ent.Message
	UnreadCount int
	// WaitingSeconds is how long the customer has been waiting: since the
	// chat arrived for a new chat, since their last unanswered message for
	// an active one (0 when the operator spoke last).
	WaitingSeconds int
}

// Panel is what the calling operator's communication panel shows (R12).
type Panel struct {
	Me          *OperatorLoad
	NewChats    []*PanelChat
	ActiveChats []*PanelChat
}

// QueueOverview is what a supervisor sees of a queue (R12).
type QueueOverview struct {
	Queue        *ent.Queue
	WaitingChats []*PanelChat
	Operators    []*OperatorLoad
}

// TransferTargets lists where a chat can be transferred (R19).
type TransferTargets struct {
	Queues    []*ent.Queue
	Operators []*OperatorLoad
}

// MarshalGQL writes the availability as a GraphQL enum value.
func (a Availability) MarshalGQL(w io.Writer) { _, _ = io.WriteString(w, strconv.Quote(string(a))) }

// UnmarshalGQL reads an availability.
func (a *Availability) UnmarshalGQL(v any) error {
	s, ok := v.(string)
	switch Availability(s) {
	case AvailabilityActive, AvailabilityInactive, AvailabilityLimitExhausted:
		if ok {
			*a = Availability(s)
			return nil
		}
	}
	return fmt.Errorf("%v is not a valid Availability", v)
}

// panelChatLimit bounds each list of a panel or queue overview.
const panelChatLimit = 500

// Eager adds eager loading to the chat query of one list of a panel or a
// queue overview ("newChats", "activeChats", "waitingChats", as the API
// names them): the API layer loads the edges its caller selected (ent's
// With…), so that the chats' contacts, channels … are read in one statement
// per list, not one per chat. It must not narrow the chats' columns (the
// panel reads them).
type Eager func(list string, q *ent.ChatQuery) error

// Panel returns the calling operator's new chats (offered to them) and active
// chats (in work), each with its last message, unread count and waiting time.
// It reads them in a fixed number of statements, whatever the number of chats.
func (d *Desk) Panel(ctx context.Context, eager ...Eager) (*Panel, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	me, err := d.operatorLoads(ctx, nil, operator.ID(a.OperatorID))
	if err != nil {
		return nil, err
	}
	if len(me) == 0 {
		return nil, ErrUnauthenticated
	}
	p := &Panel{Me: me[0]}
	// The operator's open offers first (index on operator and status),
	// rather than an EXISTS over every waiting chat.
	offered, err := d.client.ChatOffer.Query().Where(chatoffer.OperatorID(a.OperatorID), chatoffer.StatusEQ(enum.OfferOpen)).
		Limit(panelChatLimit).Select(chatoffer.FieldChatID).Ints(ctx)
	if err != nil {
		return nil, err
	}
	var newChats []*ent.Chat
	if len(offered) > 0 {
		q := d.client.Chat.Query().Where(chat.StatusEQ(enum.ChatWaiting), chat.IDIn(offered...)).
			Order(ent.Asc(chat.FieldCreatedAt), ent.Asc(chat.FieldID)).Limit(panelChatLimit)
		if newChats, err = allChats(ctx, "newChats", q, eager); err != nil {
			return nil, err
		}
	}
	active, err := allChats(ctx, "activeChats", d.client.Chat.Query().Where(chat.StatusEQ(enum.ChatInProgress), chat.OwnerID(a.OperatorID)).
		Order(ent.Desc(chat.FieldLastMessageAt), ent.Asc(chat.FieldID)).Limit(panelChatLimit), eager)
	if err != nil {
		return nil, err
	}
	lists, err := d.panelChats(ctx, newChats, active)
	if err != nil {
		return nil, err
	}
	p.NewChats, p.ActiveChats = lists[0], lists[1]
	return p, nil
}

// allChats applies the eager loading of a list and runs its query.
func allChats(ctx context.Context, list string, q *ent.ChatQuery, eager []Eager) ([]*ent.Chat, error) {
	for _, e := range eager {
		if e == nil {
			continue
		}
		if err := e(list, q); err != nil {
			return nil, err
		}
	}
	return q.All(ctx)
}

// panelChats adds the last message, unread count and waiting time to each
// list of chats, in two statements for all the lists.
func (d *Desk) panelChats(ctx context.Context, lists ...[]*ent.Chat) ([][]*PanelChat, error) {
	var ids []int
	for _, l := range lists {
		for _, c := range l {
			ids = append(ids, c.ID)
		}
	}
	last, err := d.lastMessages(ctx, ids)
	if err != nil {
		return nil, err
	}
	unread, err := d.unreadCounts(ctx, ids)
	if err != nil {
		return nil, err
	}
	now := d.Now()
	out := make([][]*PanelChat, len(lists))
	for i, l := range lists {
		out[i] = make([]*PanelChat, 0, len(l))
		for _, c := range l {
			pc := &PanelChat{Chat: c, LastMessage: last[c.ID], UnreadCount: unread[c.ID]}
			switch {
			case c.Status == enum.ChatWaiting:
				pc.WaitingSeconds = int(now.Sub(c.CreatedAt).Seconds())
			case pc.LastMessage != nil && pc.LastMessage.Direction == enum.Inbound && c.LastInboundAt != nil:
				pc.WaitingSeconds = int(now.Sub(*c.LastInboundAt).Seconds())
			}
			out[i] = append(out[i], pc)
		}
	}
	return out, nil
}

// lastMessages returns the newest message (by creation, then id) of each of
// the chats that has one, in one statement: for each chat, the first entry
// of its (chat_id, created_at) index read backwards.
func (d *Desk) lastMessages(ctx context.Context, chatIDs []int) (map[int]*ent.Message, error) {
	out := make(map[int]*ent.Message, len(chatIDs))
	if len(chatIDs) == 0 {
		return out, nil
	}
	msgs, err := d.client.Message.Query().Where(func(s *sql.Selector) {
		c := sql.Table(chat.Table).As("c")
		newest := sql.Table(message.Table).As("newest")
		lastOfChat := sql.Select(newest.C(message.FieldID)).From(newest).
			Where(sql.ColumnsEQ(newest.C(message.FieldChatID), c.C(chat.FieldID))).
			OrderBy(sql.Desc(newest.C(message.FieldCreatedAt)), sql.Desc(newest.C(message.FieldID))).Limit(1)
		lastOfChats := sql.Select().From(c).Where(sql.InInts(c.C(chat.FieldID), chatIDs...))
		lastOfChats.AppendSelectExpr(sql.ExprFunc(func(b *sql.Builder) { b.Wrap(func(b *sql.Builder) { b.Join(lastOfChat) }) }))
		s.Where(sql.In(s.C(message.FieldID), lastOfChats))
	}).All(ctx)
	if err != nil {
		return nil, fmt.Errorf("last messages: %w", err)
	}
	for _, m := range msgs {
		out[m.ChatID] = m
	}
	return out, nil
}

// unreadCounts counts, for each of the chats, the customer messages after
// its owner_read_at (all of them when it is not set), in one statement.
func (d *Desk) unreadCounts(ctx context.Context, chatIDs []int) (map[int]int, error) {
	out := make(map[int]int, len(chatIDs))
	if len(chatIDs) == 0 {
		return out, nil
	}
	var rows []struct {
		ChatID int `json:"chat_id"`
		Count  int `json:"count"`
	}
	err := d.client.Message.Query().Where(message.ChatIDIn(chatIDs...), message.DirectionEQ(enum.Inbound), func(s *sql.Selector) {
		c := sql.Table(chat.Table).As("c")
		s.Join(c).On(s.C(message.FieldChatID), c.C(chat.FieldID))
		s.Where(sql.Or(sql.IsNull(c.C(chat.FieldOwnerReadAt)), sql.ColumnsGT(s.C(message.FieldCreatedAt), c.C(chat.FieldOwnerReadAt))))
	}).GroupBy(message.FieldChatID).Aggregate(ent.Count()).Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("unread counts: %w", err)
	}
	for _, r := range rows {
		out[r.ChatID] = r.Count
	}
	return out, nil
}

// operatorLoads returns operators with their availability; the limit is
// the one of queue q when given (routing in that queue), else the
// operator's override or the system setting.
func (d *Desk) operatorLoads(ctx context.Context, q *ent.Queue, where ...predicateOperator) ([]*OperatorLoad, error) {
	ops, err := d.client.Operator.Query().Where(where...).Order(ent.Asc(operator.FieldName), ent.Asc(operator.FieldID)).All(ctx)
	if err != nil {
		return nil, err
	}
	// The system setting is read only when some limit falls back to it.
	s := &ent.Setting{}
	for _, op := range ops {
		if op.ChatLimit == nil && (q == nil || q.ChatLimit == nil) {
			if s, err = d.Settings(ctx); err != nil {
				return nil, err
			}
			break
		}
	}
	ids := make([]int, len(ops))
	for i, op := range ops {
		ids[i] = op.ID
	}
	loads, err := d.loads(ctx, d.client, ids)
	if err != nil {
		return nil, err
	}
	out := make([]*OperatorLoad, len(ops))
	for i, op := range ops {
		limit := chatLimit(op, q, s)
		out[i] = &OperatorLoad{Operator: op, Load: loads[op.ID], Limit: limit,
			Availability: availabilityOf(op.Status, loads[op.ID], limit)}
	}
	return out, nil
}

// OperatorAvailability returns one operator's derived availability (R7).
func (d *Desk) OperatorAvailability(ctx context.Context, operatorID int) (*OperatorLoad, error) {
	l, err := d.OperatorAvailabilities(ctx, []int{operatorID})
	if err != nil {
		return nil, err
	}
	if l[operatorID] == nil {
		return nil, Fail(CodeNotFound, "operator %d not found", operatorID)
	}
	return l[operatorID], nil
}

// OperatorAvailabilities returns the derived availability (R7) of the
// operators that exist among ids, by id, reading them together: a list of
// operators costs the same few statements as one.
func (d *Desk) OperatorAvailabilities(ctx context.Context, ids []int) (map[int]*OperatorLoad, error) {
	if _, err := Require(ctx, AccessOperator); err != nil {
		if _, err := Require(ctx, AccessAdmin); err != nil {
			return nil, err
		}
	}
	l, err := d.operatorLoads(ctx, nil, operator.IDIn(ids...))
	if err != nil {
		return nil, err
	}
	out := make(map[int]*OperatorLoad, len(l))
	for _, o := range l {
		out[o.Operator.ID] = o
	}
	return out, nil
}

// QueueOverview returns a queue's waiting chats and its members'
// availability, for supervisors (R12).
func (d *Desk) QueueOverview(ctx context.Context, queueID int, eager ...Eager) (*QueueOverview, error) {
	if _, err := Require(ctx, AccessSupervisor); err != nil {
		return nil, err
	}
	q, err := d.client.Queue.Get(ctx, queueID)
	if err != nil {
		return nil, notFound(err, "queue", queueID)
	}
	o := &QueueOverview{Queue: q}
	waiting, err := allChats(ctx, "waitingChats", d.client.Chat.Query().Where(chat.QueueID(queueID), chat.StatusEQ(enum.ChatWaiting)).
		Order(ent.Asc(chat.FieldCreatedAt), ent.Asc(chat.FieldID)).Limit(panelChatLimit), eager)
	if err != nil {
		return nil, err
	}
	lists, err := d.panelChats(ctx, waiting)
	if err != nil {
		return nil, err
	}
	o.WaitingChats = lists[0]
	o.Operators, err = d.operatorLoads(ctx, q, operator.HasQueuesWith(queue.ID(queueID)), operator.Disabled(false))
	return o, err
}

// ChatTransferTargets lists every queue and every other operator with their
// availability for the caller's chat (R19).
func (d *Desk) ChatTransferTargets(ctx context.Context, chatID int) (*TransferTargets, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	c, err := d.client.Chat.Get(ctx, chatID)
	if err != nil {
		return nil, notFound(err, "chat", chatID)
	}
	if c.OwnerID == nil || *c.OwnerID != a.OperatorID {
		return nil, Fail(CodeNotChatOwner, "chat %d is not yours", chatID)
	}
	q, err := d.client.Queue.Get(ctx, c.QueueID)
	if err != nil {
		return nil, err
	}
	t := &TransferTargets{}
	if t.Queues, err = d.client.Queue.Query().Order(ent.Asc(queue.FieldPosition), ent.Asc(queue.FieldName)).All(ctx); err != nil {
		return nil, err
	}
	t.Operators, err = d.operatorLoads(ctx, q, operator.IDNEQ(a.OperatorID), operator.Disabled(false))
	return t, err
}

// CanReadMessages reports whether the caller may read a chat's messages
// (R24): until the chat is completed only its owner, supervisors,
// administrators and integrations may (and, while it waits, the operators
// it is offered to); afterwards every operator.
func (d *Desk) CanReadMessages(ctx context.Context, c *ent.Chat) (bool, error) {
	a := ActorFrom(ctx)
	switch {
	case a == nil:
		return false, nil
	case c.Status == enum.ChatCompleted, a.Can(AccessSupervisor), a.Can(AccessIntegration):
		return true, nil
	case c.OwnerID != nil && *c.OwnerID == a.OperatorID:
		return true, nil
	case c.Status == enum.ChatWaiting && a.IsOperator():
		return d.client.ChatOffer.Query().Where(chatoffer.ChatID(c.ID), chatoffer.OperatorID(a.OperatorID),
			chatoffer.StatusEQ(enum.OfferOpen)).Exist(ctx)
	}
	return false, nil
}

// maxHistoryDepth bounds how many ancestors a chat's history follows.
const maxHistoryDepth = 50

// ChatHistory returns the query of a chat's messages including those of its
// ancestors (R20: a transferred chat shows the whole parent history), for the
// caller allowed to read them (R24).
func (d *Desk) ChatHistory(ctx context.Context, c *ent.Chat, withAncestors bool) (*ent.MessageQuery, error) {
	if ok, err := d.CanReadMessages(ctx, c); err != nil {
		return nil, err
	} else if !ok {
		return nil, Fail(CodeForbidden, "the messages of chat %d are visible to its operator until it is completed", c.ID)
	}
	ids := []int{c.ID}
	for p := c.ParentID; withAncestors && p != nil && len(ids) < maxHistoryDepth; {
		ids = append(ids, *p)
		parent, err := d.client.Chat.Query().Where(chat.ID(*p)).Select(chat.FieldParentID).Only(ctx)
		if err != nil {
			return nil, err
		}
		p = parent.ParentID
	}
	return d.client.Message.Query().Where(message.ChatIDIn(ids...)), nil
}

// AuthorizeChatSubscription checks that the caller may follow a chat live:
// whoever may read its messages (R24).
func (d *Desk) AuthorizeChatSubscription(ctx context.Context, chatID int) error {
	c, err := d.client.Chat.Get(ctx, chatID)
	if err != nil {
		return notFound(err, "chat", chatID)
	}
	if ok, err := d.CanReadMessages(ctx, c); err != nil {
		return err
	} else if !ok {
		return Fail(CodeForbidden, "chat %d is visible to its operator until it is completed", chatID)
	}
	return nil
}

// AuthorizeQueueSubscription checks that a supervisor may follow a queue.
func (d *Desk) AuthorizeQueueSubscription(ctx context.Context, queueID int) error {
	if _, err := Require(ctx, AccessSupervisor); err != nil {
		return err
	}
	if ok, err := d.client.Queue.Query().Where(queue.ID(queueID)).Exist(ctx); err != nil {
		return err
	} else if !ok {
		return Fail(CodeNotFound, "queue %d not found", queueID)
	}
	return nil
}
