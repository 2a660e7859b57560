package desk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/job"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Timers are data (DESIGN principle 2): an accept timeout, a completion
// timeout, a waiting-chat release or a session expiry is a job row with a due
// time. Any instance's scheduler claims due jobs (a lease, SKIP LOCKED on
// PostgreSQL), runs each in one transaction that also marks it done with a
// conditional update, so a job's effect commits exactly once even when two
// instances race or one dies mid-way. Handlers re-check the state they act
// on, so a job that has become pointless (the offer was accepted, the
// customer answered) ends as a no-op.

// Job kinds.
const (
	jobRelease        = "RELEASE"         // route waiting chats of a queue (payload queue)
	jobOfferTimeout   = "OFFER_TIMEOUT"   // an offer was not accepted in time (payload offer)
	jobCompletionDue  = "COMPLETION_DUE"  // customer silence completes a chat (chat_id)
	jobSessionExpired = "SESSION_EXPIRED" // a session's token expires (payload session)
	jobLateStatus     = "LATE_STATUS"     // a delivery status that overtook its send (ref channel)
	jobSend           = "SEND"            // the outbox: send a message to the provider (ref message)
	jobDownload       = "DOWNLOAD"        // copy an inbound attachment into storage (ref attachment)
	jobFetchProfile   = "FETCH_PROFILE"   // fill a new contact from the provider's profile (ref identity)
)

const (
	// jobLease outlasts the longest provider call sequence of a job (a
	// Telegram text split in several parts, 30s timeout each).
	jobLease       = 5 * time.Minute
	jobMaxAttempts = 10
	jobBatch       = 16
	// schedulerPoll bounds how late a job enqueued by another instance runs.
	schedulerPoll = time.Second
)

// jobSpec is a job to enqueue.
type jobSpec struct {
	kind   string
	dedupe string // while pending, one job per key: enqueuing again moves its due time
	chatID int
	ref    int // the row the job is about: queue, offer or session
	due    time.Time
	// payload adds fields to the job's payload.
	payload map[string]any
}

// enqueue stores a job in the transaction of the use case that needs it and
// wakes the local scheduler after commit when it is already due.
func (d *Desk) enqueue(ctx context.Context, tx *ent.Tx, j jobSpec) error {
	payload := map[string]any{"ref": j.ref}
	for k, v := range j.payload {
		payload[k] = v
	}
	if j.dedupe != "" {
		c := tx.Job.Create().SetKind(j.kind).SetDueAt(j.due).SetCreatedAt(d.Now()).SetPayload(payload).SetDedupeKey(j.dedupe)
		if j.chatID != 0 {
			c.SetChatID(j.chatID)
		}
		if err := c.OnConflict(sql.ConflictColumns(job.FieldDedupeKey)).
			Update(func(u *ent.JobUpsert) { u.UpdateDueAt() }).Exec(ctx); err != nil {
			return fmt.Errorf("enqueue %s: %w", j.kind, err)
		}
	} else {
		// A job without a dedupe key is read by the scheduler only, after
		// commit: it is written with the commit, by a plain INSERT that sets
		// what ent's create would (the schema's defaults included).
		body, err := json.Marshal(payload)
		if err != nil {
			return fmt.Errorf("enqueue %s: %w", j.kind, err)
		}
		var chatID any
		if j.chatID != 0 {
			chatID = j.chatID
		}
		if err := d.atCommit(ctx, tx, d.sql().Insert(job.Table).Columns(job.FieldKind, job.FieldPayload, job.FieldDueAt,
			job.FieldStatus, job.FieldAttempts, job.FieldCreatedAt, job.FieldChatID).
			Values(j.kind, json.RawMessage(body), j.due, string(job.DefaultStatus), job.DefaultAttempts, d.Now(), chatID)); err != nil {
			return fmt.Errorf("enqueue %s: %w", j.kind, err)
		}
	}
	if st, ok := d.txs.Load(tx); ok {
		if ts := st.(*txState); !j.due.After(d.Now()) {
			ts.kick = true
		} else if ts.due.IsZero() || j.due.Before(ts.due) {
			ts.due = j.due
		}
	}
	return nil
}

// dueHint is the earliest due time of the jobs this process's commits
// enqueued since the scheduler last took it (RunScheduler).
type dueHint struct {
	mu sync.Mutex
	at time.Time
}

// note lowers the hint to t.
func (h *dueHint) note(t time.Time) {
	h.mu.Lock()
	if h.at.IsZero() || t.Before(h.at) {
		h.at = t
	}
	h.mu.Unlock()
}

// take returns the hint and clears it.
func (h *dueHint) take() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.at
	h.at = time.Time{}
	return t
}

// Kick wakes the scheduler (without blocking).
func (d *Desk) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// RunScheduler processes due jobs until ctx ends: at once when kicked, when
// the next job falls due, and at least every second (jobs enqueued by other
// instances). Safe with any number of instances on one database.
func (d *Desk) RunScheduler(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var worker sync.WaitGroup
	worker.Go(func() { d.releaseWorker(ctx) })
	defer worker.Wait() // returns after the worker's last release
	// next is the earliest due time known: read from the database at
	// looked, then lowered by the due times this process's commits gave
	// their jobs (dueHint). The database is read again once a second
	// (other instances' jobs) or when next has passed, not after every
	// claim: a commit that enqueues a job due now kicks the loop, which
	// claims it, and would otherwise cost a look as well.
	var next, looked time.Time
	for {
		if _, err := d.sweepPending(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("scheduler: look for pending chats", "err", err)
		}
		if _, err := d.runDueJobs(ctx, false); err != nil && ctx.Err() == nil {
			d.log.Error("scheduler", "err", err)
		}
		now := d.Now()
		if hint := d.dues.take(); !hint.IsZero() && (next.IsZero() || hint.Before(next)) {
			next = hint
		}
		if looked.IsZero() || now.Sub(looked) >= schedulerPoll || now.Before(looked) || (!next.IsZero() && !next.After(now)) {
			switch n, err := d.nextDue(ctx); {
			case err == nil:
				next = n
			case !next.After(now):
				// A failed look is tried again after a poll, not at once
				// (the database may be down).
				next = time.Time{}
			}
			looked = now
		}
		wait := max(schedulerPoll-now.Sub(looked), 0)
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(now), 0))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		case <-timer.C:
		}
	}
}

func (d *Desk) nextDue(ctx context.Context) (time.Time, error) {
	j, err := d.client.Job.Query().Where(job.StatusEQ(enum.JobPending)).
		Order(ent.Asc(job.FieldDueAt)).First(ctx)
	if ent.IsNotFound(err) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	if j.LockedUntil != nil && j.LockedUntil.After(j.DueAt) {
		return *j.LockedUntil, nil
	}
	return j.DueAt, nil
}

// RunDueJobs runs the releases this process's commits asked for (and those
// of chats left pending, see sweepPending), then every job due now, and
// returns how many it ran: what the scheduler and its release worker do, in
// the caller's goroutine. Tests call it after moving their clock.
func (d *Desk) RunDueJobs(ctx context.Context) (int, error) {
	if _, err := d.sweepPending(ctx); err != nil {
		return 0, err
	}
	ran := d.runWantedReleases(ctx)
	n, err := d.runDueJobs(ctx, true)
	return ran + n, err
}

// runDueJobs runs the jobs due now and returns how many it ran. With all,
// it claims again until a claim finds none (jobs that fell due while it
// ran, or that the jobs it ran enqueued, run too); without, it stops after a
// batch smaller than a full one, which left no job due when it was
// claimed: the scheduler's loop looks at the next due time next (a job due
// by then runs at once) and spares a claim that would find nothing.
func (d *Desk) runDueJobs(ctx context.Context, all bool) (int, error) {
	ran := 0
	for {
		jobs, err := d.claimJobs(ctx)
		if err != nil || len(jobs) == 0 {
			return ran, err
		}
		for _, j := range jobs {
			if ctx.Err() != nil {
				return ran, ctx.Err()
			}
			if externalJob(j.Kind) {
				if d.runExternal(ctx, j) {
					ran++
				}
				continue
			}
			if d.runJob(ctx, j) {
				ran++
			}
		}
		if !all && len(jobs) < jobBatch {
			return ran, nil
		}
	}
}

// claimJobs leases a batch of due jobs. Claiming clears the dedupe key, so a
// change after the claim enqueues a fresh job instead of being absorbed by one
// already running. It is one statement, an UPDATE of the due jobs (on
// PostgreSQL locked FOR NO KEY UPDATE SKIP LOCKED by its subquery, so that
// schedulers never wait for one another, and picked once) RETURNING them,
// and it commits in the same round trip (store.InlineCommit).
func (d *Desk) claimJobs(ctx context.Context) ([]*ent.Job, error) {
	var claimed []*ent.Job
	err := d.inTx(ctx, "claim jobs", func(ctx context.Context, tx *ent.Tx) error {
		claimed = nil
		now := d.Now()
		lease := now.Add(jobLease)
		due := d.sql().Select(job.FieldID).From(sql.Table(job.Table)).
			Where(sql.And(sql.EQ(job.FieldStatus, string(enum.JobPending)), sql.LTE(job.FieldDueAt, now),
				sql.Or(sql.IsNull(job.FieldLockedUntil), sql.LT(job.FieldLockedUntil, now)))).
			OrderBy(job.FieldDueAt, job.FieldID).Limit(jobBatch)
		picked := sql.In(job.FieldID, due)
		if d.pg {
			due.For(sql.LockNoKeyUpdate, sql.WithLockAction(sql.SkipLocked))
			// = ANY(ARRAY(…)) runs the subquery once (an InitPlan): IN
			// (…) may be planned as a join that runs it again for rows of
			// the outer scan, each run skipping rows the runs before it
			// locked, so that one claim would take more than a batch (a
			// known pitfall of LIMIT with SKIP LOCKED).
			picked = sql.P(func(b *sql.Builder) {
				b.Ident(job.FieldID).WriteString(" = ANY(ARRAY")
				b.Wrap(func(b *sql.Builder) { b.Join(due) })
				b.WriteString(")")
			})
		}
		query, args := d.sql().Update(job.Table).Set(job.FieldLockedUntil, lease).Add(job.FieldAttempts, 1).
			SetNull(job.FieldDedupeKey).Where(picked).Returning(job.Columns...).Query()
		rows, err := tx.QueryContext(ctx, query+store.InlineCommit, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			j, err := tx.Job.ScanRow(rows, nil)
			if err != nil {
				return err
			}
			claimed = append(claimed, j)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		// RETURNING keeps no order: run them in the order they fell due.
		slices.SortFunc(claimed, func(a, b *ent.Job) int {
			if c := a.DueAt.Compare(b.DueAt); c != 0 {
				return c
			}
			return a.ID - b.ID
		})
		return nil
	})
	return claimed, err
}

// runJob runs one claimed job in one transaction that ends by marking the job
// done, only if this claim still holds.
func (d *Desk) runJob(ctx context.Context, j *ent.Job) bool {
	err := d.inTx(ctx, "job "+j.Kind, func(ctx context.Context, tx *ent.Tx) error {
		if err := d.handleJob(ctx, tx, j); err != nil {
			return err
		}
		return d.finishJob(ctx, tx, j)
	})
	switch {
	case err == nil:
		return true
	case ctx.Err() != nil:
		return false // shutting down: the lease expires and another run retries it
	case errors.Is(err, errJobLost):
		d.log.Warn("job claimed elsewhere", "job_id", j.ID, "kind", j.Kind)
		return false
	}
	d.log.Error("job failed", "job_id", j.ID, "kind", j.Kind, "attempt", j.Attempts, "err", err)
	upd := d.client.Job.Update().Where(claimed(j)).SetLastError(truncate(err.Error(), 1000))
	var retry time.Time
	if j.Attempts >= jobMaxAttempts {
		upd.SetStatus(enum.JobFailed).SetDoneAt(d.Now())
	} else {
		retry = d.Now().Add(time.Duration(j.Attempts*j.Attempts) * time.Second)
		upd.SetLockedUntil(retry)
	}
	d.recordFailure(ctx, j, upd, retry)
	return false
}

var errJobLost = errors.New("job lease lost")

func (d *Desk) handleJob(ctx context.Context, tx *ent.Tx, j *ent.Job) error {
	ref := jobRef(j)
	switch j.Kind {
	case jobRelease:
		return d.releaseQueue(ctx, tx, ref)
	case jobOfferTimeout:
		return d.expireOffer(ctx, tx, ref)
	case jobCompletionDue:
		if j.ChatID == nil {
			return nil
		}
		return d.completeIfDue(ctx, tx, *j.ChatID)
	case jobSessionExpired:
		return d.expireSession(ctx, tx, ref)
	case jobPruneEvents:
		return d.pruneEvents(ctx, tx)
	case jobLateStatus:
		return d.retryLateStatus(ctx, tx, j)
	}
	d.log.Error("unknown job kind", "job_id", j.ID, "kind", j.Kind)
	return nil
}

func jobRef(j *ent.Job) int { return PayloadInt(j.Payload, "ref") }

// PayloadInt reads an id from a JSON payload (an event's, a job's): numbers
// decode as float64 once stored; 0 when absent.
func PayloadInt(payload map[string]any, key string) int {
	switch v := payload[key].(type) {
	case float64:
		return int(v)
	case int:
		return v
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

// releaseCapacity enqueues a release of waiting chats for each queue the
// operator belongs to: their capacity grew (R9).
func (d *Desk) releaseCapacity(ctx context.Context, tx *ent.Tx, operatorID int) error {
	qids, err := tx.Operator.Query().Where(operatorIs(operatorID)).QueryQueues().IDs(ctx)
	if err != nil {
		return err
	}
	for _, q := range qids {
		if err := d.releaseQueueLater(ctx, tx, q); err != nil {
			return err
		}
	}
	return nil
}

// releaseQueueLater asks for a release of a queue's waiting chats, due now.
// The job is written at the end of the transaction (flushReleases).
func (d *Desk) releaseQueueLater(_ context.Context, tx *ent.Tx, queueID int) error {
	return d.addTxQueue(tx, queueID, "release", func(st *txState) *map[int]bool { return &st.releases })
}

// addTxQueue adds a queue to one of the queue sets of a use case's
// transaction (set picks which), for what its commit does.
func (d *Desk) addTxQueue(tx *ent.Tx, queueID int, what string, set func(*txState) *map[int]bool) error {
	v, ok := d.txs.Load(tx)
	if !ok {
		return fmt.Errorf("%s of queue %d outside a use case transaction", what, queueID)
	}
	m := set(v.(*txState))
	if *m == nil {
		*m = map[int]bool{}
	}
	(*m)[queueID] = true
	return nil
}

func releaseKey(queueID int) string { return "release:" + strconv.Itoa(queueID) }

// flushReleases writes the release jobs a transaction asked for, last and
// in queue order. A release job is one row per queue (its dedupe key), which
// concurrent transactions upsert: taking those row locks after every other
// lock of the use case, in one global order, means a transaction waiting for
// one never holds a chat or operator lock another waits for (no deadlock).
func (d *Desk) flushReleases(ctx context.Context, tx *ent.Tx, st *txState) error {
	if len(st.releases) == 0 {
		return nil
	}
	ids := make([]int, 0, len(st.releases))
	for id := range st.releases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := d.enqueue(ctx, tx, jobSpec{kind: jobRelease, dedupe: releaseKey(id), ref: id, due: d.Now()}); err != nil {
			return err
		}
	}
	return nil
}
