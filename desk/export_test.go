package desk

import (
	"context"
	"database/sql"
	"fmt"
)

// HoldRoutingMark takes, in tx, the lock that marks a transaction routing a
// new chat of the queue, for tests that make a queue busy.
func HoldRoutingMark(ctx context.Context, tx *sql.Tx, queueID int) error {
	_, err := tx.ExecContext(ctx, fmt.Sprintf(queueLockSQL, "pg_advisory_xact_lock"), routingLockClass, int32(uint32(queueID)))
	return err
}

// MaxSendAttempts is how many attempts an external job gets.
const MaxSendAttempts = maxSendAttempts
