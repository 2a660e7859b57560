package desk_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/contactidentity"
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

// profiles is a provider adapter that answers profile fetches only; during
// runs while the fetch is in flight (between the job's claim and the fill).
type profiles struct {
	profile channels.Profile
	// during runs while the provider answers; err is its answer, if set.
	during func()
	err    error
}

func (*profiles) Provider() string { return string(enum.ProviderTelegram) }
func (*profiles) Parse(channels.Channel, []byte) (channels.Delivery, error) {
	return channels.Delivery{}, channels.ErrUnsupported
}
func (*profiles) Send(context.Context, channels.Channel, channels.Outbound) (channels.SendResult, error) {
	return channels.SendResult{}, channels.ErrUnsupported
}
func (p *profiles) Profile(context.Context, channels.Channel, string) (channels.Profile, error) {
	if p.during != nil {
		p.during()
	}
	return p.profile, p.err
}
func (*profiles) Download(context.Context, channels.Channel, string) (channels.File, error) {
	return channels.File{}, channels.ErrUnsupported
}
func (*profiles) RegisterWebhook(context.Context, channels.Channel, string) error {
	return channels.ErrUnsupported
}

// R2: a new contact's fetched profile fills their empty fields and ends the
// job with one commit whose writes all travel with it (on PostgreSQL one
// round trip: nothing is sent before the COMMIT); both writes hold only
// while the job's claim does: a claim lost during the provider call (its
// lease ran out, another scheduler took the job) changes neither the
// contact nor the job, which the new holder runs.
func TestR2_AFetchedProfileIsOneCommitThatHoldsOnlyUnderItsClaim(t *testing.T) {
	var mu sync.Mutex
	var fill []string // what the fill's transaction sent, "held" or "sent"
	recording := false
	db := storetest.Open(t).WithQueryHook(func(ctx context.Context, s string) {
		mu.Lock()
		defer mu.Unlock()
		// The fill's writes: the contact's, the job's end (not a claim).
		fillWrite := regexp.MustCompile("(?i)query=UPDATE [`\"](contacts[`\"]|jobs[`\"] SET .*done_at)").MatchString(s) &&
			!strings.Contains(s, "RETURNING")
		if recording && fillWrite {
			if store.IsAtCommit(ctx) {
				fill = append(fill, "held")
			} else {
				fill = append(fill, "sent: "+s)
			}
		}
	})
	p := &profiles{profile: channels.Profile{Name: "Olga Petrova", Username: "olga"}}
	pw := newProfileWorld(t, db, p)
	w, deliver, profileJob := pw.World, pw.deliver, pw.job
	ctx := context.Background()

	olga := deliver("7001")
	// The fill's transaction begins after the provider call.
	p.during = func() { mu.Lock(); recording = true; mu.Unlock() }
	w.Must(errOf(w.Desk.RunDueJobs(ctx)))
	mu.Lock()
	recording = false
	sent := fill
	mu.Unlock()
	if got := w.Client().Contact.GetX(ctx, olga.ID); got.Name != "Olga Petrova" || got.Username != "olga" {
		t.Fatalf("contact after the profile job: %q @%s, want the profile's", got.Name, got.Username)
	}
	if j := profileJob(olga); j.Status != enum.JobDone {
		t.Fatalf("profile job: %s, want DONE", j.Status)
	}
	if w.DB.Postgres() && (len(sent) != 2 || sent[0] != "held" || sent[1] != "held") {
		t.Fatalf("the fill's transaction sent %q, want two writes held for its commit", sent)
	}

	// Another scheduler takes the job over while the provider answers.
	ivan := deliver("7002")
	var taken time.Time
	p.during = func() {
		j := profileJob(ivan)
		taken = j.LockedUntil.Add(time.Hour)
		w.Must(j.Update().SetLockedUntil(taken).Exec(ctx))
	}
	w.Must(errOf(w.Desk.RunDueJobs(ctx)))
	if got := w.Client().Contact.GetX(ctx, ivan.ID); got.Name != "" || got.Username != "" {
		t.Fatalf("a fill under a lost claim changed the contact: %q @%s", got.Name, got.Username)
	}
	if j := profileJob(ivan); j.Status != enum.JobPending || !j.LockedUntil.Equal(taken) {
		t.Fatalf("profile job after a lost claim: %s, lease %v; want PENDING under the new holder's lease %v", j.Status, j.LockedUntil, taken)
	}
}

func errOf(_ int, err error) error { return err }

// profileWorld is a desk whose Telegram channel's adapter answers profiles
// (p), for the profile job's tests.
type profileWorld struct {
	*desktest.World
	ch channels.Channel
}

func newProfileWorld(t *testing.T, db *store.DB, p *profiles) *profileWorld {
	w := desktest.NewWith(t, db, desktest.NewClock(), desk.WithAdapters(p))
	q := w.Queue(enum.RuleToAll, []*ent.Operator{w.Operator(active)})
	tg := w.Channel(q, enum.ProviderTelegram)
	ch, err := w.Desk.WebhookChannel(context.Background(), tg.ID, enum.ProviderTelegram)
	w.Must(err)
	return &profileWorld{World: w, ch: ch}
}

// deliver applies a new contact's first message and returns the contact.
func (w *profileWorld) deliver(from string) *ent.Contact {
	w.T.Helper()
	ctx := context.Background()
	_, err := w.Desk.ApplyDelivery(ctx, w.ch, channels.Delivery{Key: "update-" + from, Updates: []channels.Update{{
		Kind: channels.UpdateMessage, Sender: channels.Identity{ExternalID: from}, MessageID: from + ":1",
		MessageKind: string(enum.KindText), Text: "hello"}}}, []byte(`{}`))
	w.Must(err)
	id, err := w.Client().ContactIdentity.Query().Where(contactidentity.ExternalID(from)).Only(ctx)
	w.Must(err)
	return w.Client().Contact.GetX(ctx, id.ContactID)
}

// job is contact c's profile job.
func (w *profileWorld) job(c *ent.Contact) *ent.Job {
	w.T.Helper()
	ctx := context.Background()
	js, err := w.Client().Job.Query().Where(job.KindEQ("FETCH_PROFILE")).All(ctx)
	w.Must(err)
	for _, j := range js {
		id, err := w.Client().ContactIdentity.Get(ctx, desk.PayloadInt(j.Payload, "ref"))
		w.Must(err)
		if id.ContactID == c.ID {
			return j
		}
	}
	w.T.Fatalf("no profile job for contact %d", c.ID)
	return nil
}

// R10: a scheduler whose claim of a job ran out while the provider answered
// (another scheduler took the job over) records neither the failure nor,
// at the last attempt, the giving up over the new holder's claim: the job
// stays pending under the new holder's lease, without the stale error; the
// holder's own run then succeeds.
func TestR10_AFailureUnderALostClaimLeavesTheNewHoldersJobAlone(t *testing.T) {
	p := &profiles{profile: channels.Profile{Name: "Olga Petrova"}}
	w := newProfileWorld(t, storetest.Open(t), p)
	ctx := context.Background()
	olga := w.deliver("7101")
	var taken time.Time
	p.during = func() {
		j := w.job(olga)
		taken = j.LockedUntil.Add(time.Hour)
		w.Must(j.Update().SetLockedUntil(taken).Exec(ctx))
	}
	p.err = errors.New("provider unavailable")
	check := func(when string) {
		t.Helper()
		if j := w.job(olga); j.Status != enum.JobPending || !j.LockedUntil.Equal(taken) || j.LastError != "" {
			t.Fatalf("%s: job %s, lease %v, last error %q; want PENDING under the new holder's lease %v, no error",
				when, j.Status, j.LockedUntil, j.LastError, taken)
		}
	}
	w.Must(errOf(w.Desk.RunDueJobs(ctx)))
	check("a failure under a lost claim")
	// The last attempt fails the same way: giving up is not recorded either.
	w.Must(w.job(olga).Update().SetAttempts(desk.MaxSendAttempts - 1).ClearLockedUntil().Exec(ctx))
	w.Must(errOf(w.Desk.RunDueJobs(ctx)))
	check("giving up under a lost claim")
	// The holder's run.
	p.during, p.err = nil, nil
	w.Must(w.job(olga).Update().ClearLockedUntil().Exec(ctx))
	w.Must(errOf(w.Desk.RunDueJobs(ctx)))
	if j := w.job(olga); j.Status != enum.JobDone || w.Client().Contact.GetX(ctx, olga.ID).Name != "Olga Petrova" {
		t.Fatalf("the holder's run: job %s, want DONE with the profile filled", j.Status)
	}
}

// R10: the scheduler learns when the jobs of this process's commits fall
// due from the commits themselves: a commit that enqueues a job due now
// kicks its loop, which claims the job, without reading the next due time
// from the database again (it does so once a second, for other instances'
// jobs, on the desk's clock, here frozen). Six new contacts' profile jobs,
// each claimed by a loop of its own: one look, the first. (The loop runs
// the jobs it claimed one after another: the sixth fetch begins once the
// fifth job has ended; the sixth is cut short by the stop.)
func TestR10_KickedClaimsDoNotLookForTheNextDueJob(t *testing.T) {
	db, looks, looked, claimed := watchLooks(t)
	fetched := make(chan struct{}, 1)
	p := &profiles{profile: channels.Profile{Name: "Olga Petrova"}, during: func() { fetched <- struct{}{} }}
	w := newProfileWorld(t, db, p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Desk.RunScheduler(ctx) }()
	// The first look, with no job in the database, before the first
	// delivery (a job found due then would be looked for again once claimed).
	// The hook reports a statement as it starts: the claim a kick causes
	// next shows that the look has ended (the loop sends one statement at
	// a time), so that no delivery's job can be seen by it.
	select {
	case <-looked:
	case <-time.After(30 * time.Second):
		t.Fatal("the scheduler never looked for the next due job")
	}
	for len(claimed) > 0 {
		<-claimed
	}
	w.Desk.Kick()
	select {
	case <-claimed:
	case <-time.After(30 * time.Second):
		t.Fatal("the kicked scheduler never claimed")
	}
	var contacts []*ent.Contact
	for i := range 6 {
		contacts = append(contacts, w.deliver(fmt.Sprintf("72%02d", i)))
		select {
		case <-fetched:
		case <-time.After(30 * time.Second):
			t.Fatalf("the profile job of contact %d did not run", i)
		}
	}
	cancel()
	w.Must(<-done)
	for _, c := range contacts[:5] {
		if j := w.job(c); j.Status != enum.JobDone {
			t.Fatalf("profile job of contact %d: %s, want DONE", c.ID, j.Status)
		}
	}
	if n := looks.Load(); n != 1 {
		t.Fatalf("the scheduler looked for the next due job %d times, want once (at its start)", n)
	}
}

// R10: a scheduler whose database fails does not retry its look for the
// next due job at once, in a loop, but after a poll: with the database
// closed, one failed look, then none for a while (the desk's clock, moved
// past a poll to call for the look, then frozen again).
func TestR10_ASchedulerWhoseDatabaseFailsWaitsBeforeLookingAgain(t *testing.T) {
	db, looks, looked, _ := watchLooks(t)
	w := desktest.NewOn(t, db, desktest.NewClock())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Desk.RunScheduler(ctx) }()
	await := func(what string) {
		t.Helper()
		select {
		case <-looked:
		case <-time.After(30 * time.Second):
			t.Fatalf("the scheduler never looked for the next due job %s", what)
		}
	}
	await("at its start")
	w.Must(db.SQL.Close())
	w.Clock.Advance(2 * time.Second)
	w.Desk.Kick()
	await("once its database was closed")
	failed := looks.Load()
	// A window, not a synchronisation: a loop retrying at once would look
	// thousands of times in it.
	<-time.After(300 * time.Millisecond)
	cancel()
	w.Must(<-done)
	if n := looks.Load() - failed; n > 1 {
		t.Fatalf("the scheduler looked %d more times within 300 ms of a failed look, want at most one", n)
	}
}

// watchLooks opens a database that counts the scheduler's looks for the
// next due job (the nextDue query, not a claim's subquery) and signals each
// on looked, and each claim of due jobs on claimed, when they are free
// (as the statement starts).
func watchLooks(t *testing.T) (db *store.DB, looks *atomic.Int64, looked, claimed chan struct{}) {
	nextDue := regexp.MustCompile("(?is)^[^=]*query=SELECT .* FROM [`\"]jobs[`\"] .*ORDER BY")
	claim := regexp.MustCompile("(?is)^[^=]*query=UPDATE [`\"]jobs[`\"] SET .*RETURNING")
	looks, looked, claimed = &atomic.Int64{}, make(chan struct{}, 1), make(chan struct{}, 1)
	signal := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	db = storetest.Open(t).WithQueryHook(func(_ context.Context, s string) {
		switch {
		case nextDue.MatchString(s) && !strings.Contains(s, "SKIP LOCKED"):
			looks.Add(1)
			signal(looked)
		case claim.MatchString(s):
			signal(claimed)
		}
	})
	return db, looks, looked, claimed
}
