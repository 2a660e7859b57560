package desk

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/parleydesk/parley/ent"
)

// HoldRoutingMark takes, in tx, the lock that marks a transaction routing a
// new chat of the queue, for tests that make a queue busy.
func HoldRoutingMark(ctx context.Context, tx *sql.Tx, queueID int) error {
	_, err := tx.ExecContext(ctx, fmt.Sprintf(queueLockSQL, "pg_advisory_xact_lock"), routingLockClass, int32(uint32(queueID)))
	return err
}

// EventLockHash is the first key of the events' advisory lock (its second
// is 0): tests hold an append open under it and watch reads wait.
const EventLockHash = eventLockHash

// MaxSendAttempts is how many attempts an external job gets.
const MaxSendAttempts = maxSendAttempts

// EventsAfter returns up to limit events with an id above after, oldest
// first, as a resumption would see them on a hub whose cursor is the
// newest event (tests read what a use case appended with it): it reads
// once the appends in flight have ended, and fails with EVENTS_EXPIRED
// when events after that id were pruned.
func (d *Desk) EventsAfter(ctx context.Context, after, limit int) ([]*ent.Event, error) {
	if err := d.checkRetention(ctx, after); err != nil {
		return nil, err
	}
	return d.ReadEvents(ctx, after, limit)
}

// RunWantedReleases runs the releases this process's commits asked for, as
// the release worker does, and returns how many ran: no job is claimed.
func (d *Desk) RunWantedReleases(ctx context.Context) int { return d.runWantedReleases(ctx) }
