package desk

import (
	"context"
	"fmt"

	"github.com/parleydesk/parley/ent"
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
)

// event is one change to record.
type event struct {
	Type       string
	ChatID     int
	OperatorID int
	QueueID    int
	Payload    map[string]any
}

// emit appends an event in tx.
func (d *Desk) emit(ctx context.Context, tx *ent.Tx, e event) error {
	c := tx.Event.Create().SetType(e.Type).SetCreatedAt(d.Now())
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
	if err := c.Exec(ctx); err != nil {
		return fmt.Errorf("event %s: %w", e.Type, err)
	}
	return nil
}
