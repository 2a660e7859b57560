package desk_test

import (
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent/job"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// R10 (timers as jobs): a scheduler leases the jobs due with one statement
// per batch, an UPDATE that picks them (skipping those another scheduler
// holds, on PostgreSQL) and returns them: no read of the jobs before it.
// Twenty due jobs are two batches of sixteen at most, and a third claim
// finds none left; each job runs once.
func TestR10_ASchedulerClaimsDueJobsWithOneStatementPerBatch(t *testing.T) {
	jobsStatement := regexp.MustCompile("(?i)^[^=]*query=(SELECT .* FROM|UPDATE) [`\"]jobs[`\"]")
	var mu sync.Mutex
	var reads, claims int
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, s string) {
		m := jobsStatement.FindStringSubmatch(s)
		if m == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m[1] != "UPDATE" && !regexp.MustCompile(`(?i)\bIN \(SELECT`).MatchString(s):
			reads++
		case regexp.MustCompile(`(?i)RETURNING`).MatchString(s):
			claims++
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx := context.Background()
	for range 20 {
		// A completion timer of no chat: it runs and does nothing else.
		w.Must(w.Client().Job.Create().SetKind("COMPLETION_DUE").SetDueAt(w.Clock.Now()).SetCreatedAt(w.Clock.Now()).Exec(ctx))
	}
	mu.Lock()
	reads, claims = 0, 0
	mu.Unlock()
	n, err := w.Desk.RunDueJobs(ctx)
	w.Must(err)
	if n != 20 {
		t.Fatalf("ran %d jobs, want 20", n)
	}
	mu.Lock()
	r, c := reads, claims
	mu.Unlock()
	if r != 0 || c != 3 {
		t.Fatalf("the scheduler read the jobs %d times and claimed %d times, want no read and 3 claims (16, 4, none)", r, c)
	}
	jobs, err := w.Client().Job.Query().Where(job.KindEQ("COMPLETION_DUE")).All(ctx)
	w.Must(err)
	for _, j := range jobs {
		if j.Status != enum.JobDone || j.Attempts != 1 || j.LockedUntil == nil {
			t.Fatalf("job %d: %s after %d attempts (lease %v), want DONE after one claimed attempt", j.ID, j.Status, j.Attempts, j.LockedUntil)
		}
	}
}

// The scheduler's loop claims again only after a full batch: a batch
// smaller than one left nothing due when it was claimed, so the loop goes
// on to the next due time (a job due by then runs at once) without a claim
// that would find nothing. Three due jobs: one claim, then the look for the
// next due time.
func TestR10_TheSchedulerSparesAClaimThatWouldFindNothing(t *testing.T) {
	claim := regexp.MustCompile("(?is)^[^=]*query=UPDATE [`\"]jobs[`\"].*RETURNING")
	nextDue := regexp.MustCompile("(?is)^[^=]*query=SELECT .* FROM [`\"]jobs[`\"] .*ORDER BY")
	var mu sync.Mutex
	claims := 0
	looked := make(chan int, 1)
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, s string) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case claim.MatchString(s):
			claims++
		case nextDue.MatchString(s) && !strings.Contains(s, "SKIP LOCKED"):
			select {
			case looked <- claims:
			default:
			}
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx, cancel := context.WithCancel(context.Background())
	for range 3 {
		w.Must(w.Client().Job.Create().SetKind("COMPLETION_DUE").SetDueAt(w.Clock.Now()).SetCreatedAt(w.Clock.Now()).Exec(ctx))
	}
	done := make(chan error, 1)
	go func() { done <- w.Desk.RunScheduler(ctx) }()
	var n int
	select {
	case n = <-looked:
	case <-time.After(30 * time.Second):
		t.Fatal("the scheduler never looked for the next due job")
	}
	cancel()
	w.Must(<-done)
	if n != 1 {
		t.Fatalf("the scheduler claimed %d times before looking for the next due job, want 1 (three jobs, one batch)", n)
	}
	left, err := w.Client().Job.Query().Where(job.KindEQ("COMPLETION_DUE"), job.StatusNEQ(enum.JobDone)).Count(context.Background())
	w.Must(err)
	if left != 0 {
		t.Fatalf("%d of the 3 jobs were not run", left)
	}
}
