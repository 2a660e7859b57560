package desk

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/parleydesk/parley/ent"
	entevent "github.com/parleydesk/parley/ent/event"
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

// eventLockKey is the PostgreSQL advisory lock that orders event ids.
const eventLockKey = 0x7061726c6579 // "parley"

// flushEvents appends a transaction's events just before it commits and
// returns the last id. On PostgreSQL the transaction first takes a
// transaction-scoped advisory lock, held until commit: ids are then handed
// out in commit order, so a reader that has seen id N has seen every
// committed event below N and can resume after it with no gap. Only this
// short tail (one insert and the commit) is serialised. SQLite has one
// writer at a time, so its ids are in commit order anyway.
func (d *Desk) flushEvents(ctx context.Context, tx *ent.Tx, events []event) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	if d.pg {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", eventLockKey); err != nil {
			return 0, fmt.Errorf("event lock: %w", err)
		}
	}
	now := d.Now()
	bulk := make([]*ent.EventCreate, len(events))
	for i, e := range events {
		c := tx.Event.Create().SetType(e.Type).SetCreatedAt(now)
		if e.ChatID != 0 {
			c.SetChatID(e.ChatID)
		}
		if e.OperatorID != 0 {
			c.SetOperatorID(e.OperatorID)
		}
		if e.QueueID != 0 {
			c.SetQueueID(e.QueueID)
		}
		if e.Payload != nil {
			c.SetPayload(e.Payload)
		}
		audience := e.Audience
		if audience == nil && e.OperatorID != 0 {
			audience = []int{e.OperatorID}
		}
		if len(audience) > 0 {
			c.SetAudience(audience)
		}
		queues := e.Queues
		if e.QueueID != 0 && !slices.Contains(queues, e.QueueID) {
			queues = append(slices.Clone(queues), e.QueueID)
		}
		if len(queues) > 0 {
			c.SetQueueIds(queues)
		}
		bulk[i] = c
	}
	rows, err := tx.Event.CreateBulk(bulk...).Save(ctx)
	if err != nil {
		return 0, fmt.Errorf("append events: %w", err)
	}
	last := 0
	for _, r := range rows {
		last = max(last, r.ID)
	}
	return last, nil
}

// Notifies reports whether an event calls for the panel's notification to
// the actor (R12: a chat offered to them; the SPA plays its sound).
func Notifies(e *ent.Event, a *Actor) bool {
	return e.Type == EventChatOffered && a != nil && e.OperatorID != nil && *e.OperatorID == a.OperatorID
}

// chatAudience is who sees a change of a chat on their panel: its owner, or
// the operators it is offered to while it waits.
func (d *Desk) chatAudience(ctx context.Context, tx *ent.Tx, c *ent.Chat) ([]int, error) {
	if c.OwnerID != nil && c.Status != enum.ChatWaiting {
		return []int{*c.OwnerID}, nil
	}
	open, _, err := d.offersOf(ctx, tx, c.ID)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(open))
	for id := range open {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// LastEventID is the id of the newest event (0 when there is none).
func (d *Desk) LastEventID(ctx context.Context) (int, error) {
	e, err := d.client.Event.Query().Order(ent.Desc(entevent.FieldID)).Select(entevent.FieldID).First(ctx)
	if ent.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return e.ID, nil
}

// EventsAfter returns up to limit events with an id above after, oldest
// first. It fails with EVENTS_EXPIRED when events after that id were pruned
// (the client must refetch its state instead of resuming).
func (d *Desk) EventsAfter(ctx context.Context, after, limit int) ([]*ent.Event, error) {
	s, err := d.Settings(ctx)
	if err != nil {
		return nil, err
	}
	if after < s.EventsPrunedThrough {
		return nil, Fail(CodeEventsExpired, "events after %d are older than the retention window; refetch and subscribe again", after)
	}
	return d.ReadEvents(ctx, after, limit)
}

// ReadEvents returns up to limit events with an id above after, oldest
// first, without the retention check (the live pump's read).
func (d *Desk) ReadEvents(ctx context.Context, after, limit int) ([]*ent.Event, error) {
	return d.client.Event.Query().Where(entevent.IDGT(after)).Order(ent.Asc(entevent.FieldID)).Limit(limit).All(ctx)
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
	return d.inTx(ctx, "schedule pruning", func(tx *ent.Tx) error {
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
