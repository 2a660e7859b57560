package desk

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
)

// Releases of new chats left pending (PostgreSQL). A new chat that finds
// its queue busy is stored route_pending and committed unrouted (the
// routing mark, desk/ingest.go); right after the commit, this process's
// release worker routes it, with any others of the queue that arrived
// meanwhile, in one transaction (releasePending). The ingest writes nothing
// else: no job row, which concurrent ingests would queue on. The pending
// chat is the durable record: if the process stops before its worker runs,
// any instance's scheduler finds the chat still pending after pendingGrace
// and releases its queue (sweepPending).

// wantedReleases are the queues to release, asked for by commits of this
// process and not yet run.
type wantedReleases struct {
	mu     sync.Mutex
	queues map[int]bool
	// wake is signalled (without blocking) when a queue is added.
	wake chan struct{}
	// lastSweep is when sweepPending last looked (desk clock).
	lastSweep time.Time
}

// pendingGrace is how long a pending chat is left to the worker of the
// process that committed it before any instance's sweep releases its queue.
const pendingGrace = 5 * time.Second

// wantRelease asks the release worker to release a queue (after a commit).
func (d *Desk) wantRelease(queueID int) {
	w := &d.wanted
	w.mu.Lock()
	if w.queues == nil {
		w.queues = map[int]bool{}
	}
	w.queues[queueID] = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take reports whether a release of the queue was asked for, and clears
// the request: the caller is about to read the queue's pending chats, in a
// statement that sees every chat whose commit asked.
func (w *wantedReleases) take(queueID int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.queues[queueID] {
		return false
	}
	delete(w.queues, queueID)
	return true
}

// releaseWorker runs the wanted releases until ctx ends (started by
// RunScheduler, apart from the jobs, which may wait on providers).
func (d *Desk) releaseWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wanted.wake:
		}
		d.runWantedReleases(ctx)
	}
}

// runWantedReleases releases each wanted queue, in queue order, in one
// transaction each, and returns how many it ran. A queue asked for while
// its release runs is released again: that commit may have come too late
// for the one running. A failed release is logged; its pending chats stay
// pending, so the sweep comes back to them.
func (d *Desk) runWantedReleases(ctx context.Context) int {
	w := &d.wanted
	w.mu.Lock()
	queues := make([]int, 0, len(w.queues))
	for q := range w.queues {
		queues = append(queues, q)
	}
	clear(w.queues)
	w.mu.Unlock()
	slices.Sort(queues)
	ran := 0
	for _, q := range queues {
		if ctx.Err() != nil {
			return ran
		}
		// On the releases' own slot: not behind the webhooks (txSlots).
		err := d.inReleaseTx(ctx, "release pending chats", func(ctx context.Context, tx *ent.Tx) error { return d.releasePending(ctx, tx, q) })
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("release of pending chats failed", "queue_id", q, "err", err)
			}
			continue
		}
		ran++
	}
	return ran
}

// sweepPending, at most once per scheduler poll, asks for a release of
// every queue that has a chat pending for longer than pendingGrace (its
// process stopped before routing it), and returns how many it found.
func (d *Desk) sweepPending(ctx context.Context) (int, error) {
	if !d.pg {
		return 0, nil // SQLite never leaves a chat pending
	}
	now := d.Now()
	w := &d.wanted
	w.mu.Lock()
	due := now.Sub(w.lastSweep) >= schedulerPoll || now.Before(w.lastSweep)
	if due {
		w.lastSweep = now
	}
	w.mu.Unlock()
	if !due {
		return 0, nil
	}
	queues, err := d.client.Chat.Query().Where(chatRoutePending(), chat.CreatedAtLT(now.Add(-pendingGrace))).
		Unique(true).Select(chat.FieldQueueID).Ints(ctx)
	if err != nil {
		return 0, err
	}
	for _, q := range queues {
		d.log.Warn("pending chats left unrouted: releasing their queue", "queue_id", q)
		d.wantRelease(q)
	}
	return len(queues), nil
}
