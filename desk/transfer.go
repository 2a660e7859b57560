package desk

import (
	"context"
	"strings"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// TransferInput says where a chat goes: a queue or an operator, never both.
type TransferInput struct {
	ChatID     int
	QueueID    *int
	OperatorID *int
	Note       *string
}

// TransferResult is the completed chat and its child.
type TransferResult struct {
	Completed *ent.Chat
	Chat      *ent.Chat
}

// TransferChat hands the caller's chat to a queue or an operator (R19–R20):
// the chat completes and a child chat with the same contact and channel is
// created, IN_PROGRESS for the target operator or WAITING and routed by the
// target queue's rule. Targets whose limit is exhausted are refused.
func (d *Desk) TransferChat(ctx context.Context, in TransferInput) (*TransferResult, error) {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return nil, err
	}
	if (in.QueueID == nil) == (in.OperatorID == nil) {
		return nil, invalid("queueId", "give either a queue or an operator to transfer to")
	}
	note := ""
	if in.Note != nil {
		note = strings.TrimSpace(*in.Note)
		if len(note) > 2000 {
			return nil, invalid("note", "the note is longer than 2000 characters")
		}
	}
	if in.OperatorID != nil && *in.OperatorID == a.OperatorID {
		return nil, invalid("operatorId", "you cannot transfer a chat to yourself")
	}
	res := &TransferResult{}
	err = d.inTx(ctx, "transfer chat", func(ctx context.Context, tx *ent.Tx) error {
		parent, err := d.ownChat(ctx, tx, in.ChatID, a.OperatorID)
		if err != nil {
			return err
		}
		now := d.Now()
		child := tx.Chat.Create().SetChannelID(parent.ChannelID).SetContactID(parent.ContactID).
			SetParentID(parent.ID).SetCreatedAt(now).SetLastMessageAt(parent.LastMessageAt).
			SetNillableLastInboundAt(parent.LastInboundAt).SetNillableReplyWindowEndsAt(parent.ReplyWindowEndsAt).
			SetTransferNote(note)
		var target *ent.Operator
		if in.QueueID != nil {
			if ok, err := tx.Queue.Query().Where(queue.ID(*in.QueueID)).Exist(ctx); err != nil {
				return err
			} else if !ok {
				return Fail(CodeNotFound, "queue %d not found", *in.QueueID)
			}
			child.SetQueueID(*in.QueueID).SetStatus(enum.ChatWaiting)
		} else {
			ops, err := d.lockOperators(ctx, tx, operator.ID(*in.OperatorID), operator.Disabled(false))
			if err != nil {
				return err
			}
			if len(ops) == 0 {
				return Fail(CodeNotFound, "operator %d not found", *in.OperatorID)
			}
			target = ops[0]
			q, err := tx.Queue.Get(ctx, parent.QueueID)
			if err != nil {
				return err
			}
			s, err := d.settingsTx(ctx, tx)
			if err != nil {
				return err
			}
			loads, err := d.loads(ctx, tx, []int{target.ID})
			if err != nil {
				return err
			}
			if loads[target.ID] >= chatLimit(target, q, s) {
				return Fail(CodeLimitExhausted, "%s has no free chat slot", target.Name)
			}
			child.SetQueueID(parent.QueueID).SetStatus(enum.ChatInProgress).SetOwnerID(target.ID).SetAcceptedAt(now)
		}
		// The parent completes first: a contact has one open chat per channel.
		if res.Completed, err = d.complete(ctx, tx, parent, enum.CompletedByTransfer); err != nil {
			return err
		}
		if res.Chat, err = child.Save(ctx); err != nil {
			return err
		}
		ev := event{Type: EventChatTransferred, ChatID: res.Chat.ID, QueueID: res.Chat.QueueID,
			Payload: map[string]any{"parentId": parent.ID, "from": a.OperatorID}}
		if target != nil {
			ev.OperatorID = target.ID
		}
		if err := d.emit(ctx, tx, ev); err != nil {
			return err
		}
		if target == nil {
			return d.routeNew(ctx, tx, res.Chat, res.Chat.QueueID, TriggerTransfer, false)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Completed, res.Chat = res.Completed.Unwrap(), res.Chat.Unwrap()
	return res, nil
}
