package desk

import (
	"context"
	"time"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/schema/enum"
)

type (
	predicateOffer    = predicate.ChatOffer
	predicateOperator = predicate.Operator
)

func chatIs(id int) predicate.Chat { return chat.ID(id) }

func contactIs(id int) predicate.Contact { return contact.ID(id) }

func minutes(n int) time.Duration { return time.Duration(n) * time.Minute }

// SetMyStatus changes the calling operator's status (R5).
func (d *Desk) SetMyStatus(ctx context.Context, status enum.OperatorStatus) (*ent.Operator, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	return d.setStatus(ctx, a.OperatorID, status, enum.ReasonManual)
}

// SetOperatorStatus changes another operator's status (supervisors and
// administrators).
func (d *Desk) SetOperatorStatus(ctx context.Context, operatorID int, status enum.OperatorStatus) (*ent.Operator, error) {
	if _, err := Require(ctx, AccessSupervisor); err != nil {
		return nil, err
	}
	return d.setStatus(ctx, operatorID, status, enum.ReasonAdmin)
}

func (d *Desk) setStatus(ctx context.Context, operatorID int, status enum.OperatorStatus, reason enum.StatusChangeReason) (*ent.Operator, error) {
	if err := operator.StatusValidator(status); err != nil {
		return nil, invalid("status", "unknown status %q", status)
	}
	var op *ent.Operator
	err := d.inTx(ctx, "set status", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		if op, err = tx.Operator.Get(ctx, operatorID); err != nil {
			return notFound(err, "operator", operatorID)
		}
		if op.Disabled && status == enum.StatusActive {
			return Fail(CodeConflict, "operator %d is disabled", operatorID)
		}
		if err := d.changeStatus(ctx, tx, op, status, reason); err != nil {
			return err
		}
		op, err = tx.Operator.Get(ctx, operatorID)
		return err
	})
	return detach(op, err)
}

// afterStatusChange applies what a status change means for routing (R4, R9):
// an operator turning INACTIVE gets no new chats, so their open offers go to
// others; one turning ACTIVE releases waiting chats of their queues.
func (d *Desk) afterStatusChange(ctx context.Context, tx *ent.Tx, op *ent.Operator, from, to enum.OperatorStatus, reason enum.StatusChangeReason) error {
	queues, err := tx.Operator.Query().Where(operator.ID(op.ID)).QueryQueues().IDs(ctx)
	if err != nil {
		return err
	}
	if err := d.emit(ctx, tx, event{Type: EventOperatorStatus, OperatorID: op.ID, Queues: queues,
		Payload: map[string]any{"status": string(to), "previous": string(from), "reason": string(reason)}}); err != nil {
		return err
	}
	if to == enum.StatusInactive {
		return d.withdrawOffers(ctx, tx, chatoffer.OperatorID(op.ID))
	}
	return d.releaseCapacity(ctx, tx, op.ID)
}

// expireSession ends a session whose token expired, so that R6 applies when
// it was the operator's last one.
func (d *Desk) expireSession(ctx context.Context, tx *ent.Tx, sessionID int) error {
	s, err := tx.OperatorSession.Get(ctx, sessionID)
	if ent.IsNotFound(err) {
		return nil
	}
	if err != nil || s.EndedAt != nil || s.ExpiresAt.After(d.Now()) {
		return err
	}
	opID, err := s.QueryOperator().OnlyID(ctx)
	if err != nil {
		return err
	}
	return d.endSessions(ctx, tx, opID, []int{s.ID}, "EXPIRED", enum.ReasonSessionExpired)
}
