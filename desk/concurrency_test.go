package desk_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/routingdecision"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// R10 acceptance: routing is race-free. Many goroutines drive one desk (or
// several desks on one database) at once, while a checker asserts the
// invariants of desktest.Invariants over the stored state during the run
// and at the end.

// testSeed is the base seed of the random generators (one per goroutine,
// derived from it): PARLEY_TEST_SEED to replay a run, else the time.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PARLEY_TEST_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PARLEY_TEST_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("seed %d (replay with PARLEY_TEST_SEED=%d)", seed, seed)
	return seed
}

func newRand(seed, stream uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, stream)) }

// outcomes counts the results of the calls of a run by call and code.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *outcomes) add(call string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	code := "ok"
	if err != nil {
		code = string(desktest.Code(err))
	}
	o.n[call+" "+code]++
}

func (o *outcomes) get(key string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[key]
}

func (o *outcomes) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	keys := make([]string, 0, len(o.n))
	for k := range o.n {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s := ""
	for _, k := range keys {
		s += fmt.Sprintf("  %-40s %d\n", k, o.n[k])
	}
	return s
}

// expected reports whether err is nil or carries one of the codes a call
// may answer under contention (R13, R17, R19).
func expected(err error, codes ...desk.Code) bool {
	return err == nil || slices.Contains(codes, desktest.Code(err))
}

// checker runs the invariants repeatedly until stopped and keeps what it
// found.
type checker struct {
	iv     *desktest.Invariants
	runs   atomic.Int64
	mu     sync.Mutex
	found  []string
	errors []error
}

func (c *checker) check(ctx context.Context, opt desktest.CheckOptions) *desktest.Report {
	r, err := c.iv.Check(ctx, opt)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.errors = append(c.errors, err)
		return nil
	}
	c.runs.Add(1)
	for _, v := range r.Violations {
		if !slices.Contains(c.found, v) && len(c.found) < 60 {
			c.found = append(c.found, v)
		}
	}
	return r
}

// loop checks every interval until stop is closed.
func (c *checker) loop(stop <-chan struct{}, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			c.check(context.Background(), desktest.CheckOptions{})
		}
	}
}

func (c *checker) report(t *testing.T, when string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, err := range c.errors {
		t.Errorf("%s: invariant check failed to run: %v", when, err)
	}
	for _, v := range c.found {
		t.Errorf("%s: invariant violated: %s", when, v)
	}
	c.found, c.errors = nil, nil
}

// atRest checks the invariants that hold once nothing is in flight and
// every due job ran, and fails the test on any violation.
func atRest(t *testing.T, w *desktest.World, iv *desktest.Invariants, when string) *desktest.Report {
	t.Helper()
	r, err := iv.Check(context.Background(), desktest.CheckOptions{Quiescent: true, Now: w.Desk.Now()})
	if err != nil {
		t.Fatalf("%s: invariants: %v", when, err)
	}
	for _, v := range r.Violations {
		t.Errorf("%s: invariant violated: %s", when, v)
	}
	return r
}

// runJobsUntilIdle runs due jobs until a pass runs none.
func runJobsUntilIdle(t *testing.T, w *desktest.World) int {
	t.Helper()
	total := 0
	for range 1000 {
		n := w.RunJobs()
		if n == 0 {
			return total
		}
		total += n
	}
	t.Fatal("jobs keep running: more than 1000 passes")
	return total
}

func members(ops []*ent.Operator, from, to int) []*ent.Operator { return slices.Clone(ops[from:to]) }

// r10Scale sizes the run: PostgreSQL takes the full load; SQLite, which
// serialises writers, a smaller one that keeps the test within seconds.
type r10Scale struct {
	operators, chats, ingesters, followUps int
	runFor                                 time.Duration // operators keep working at least this long
}

func scale() r10Scale {
	if storetest.Postgres() {
		return r10Scale{operators: 60, chats: 1000, ingesters: 64, followUps: 500, runFor: 3 * time.Second}
	}
	return r10Scale{operators: 50, chats: 400, ingesters: 64, followUps: 200, runFor: 2 * time.Second}
}

// ingested is what an acknowledged inbound message said.
type ingested struct {
	externalID string
	channelID  int
	messageID  int
	chatID     int
}

func TestR10_ConcurrentRoutingKeepsInvariants(t *testing.T) {
	sc := scale()
	seed := testSeed(t)
	w := desktest.New(t)
	ctx := context.Background()
	admin := w.AsAdmin()

	// Operators with limit 3; every fifth starts INACTIVE.
	ops := make([]*ent.Operator, sc.operators)
	for i := range ops {
		st := active
		if i%5 == 4 {
			st = inactive
		}
		ops[i] = w.Operator(st, 3)
	}
	n := len(ops)
	// Overlapping memberships, so that routings of different queues contend
	// for the same operators.
	qAll := w.Queue(enum.RuleToAll, members(ops, 0, n/2), func(c *ent.QueueCreate) {
		c.SetCompletionTimeoutMinutes(3)
	})
	qAvail := w.Queue(enum.RuleToAvailable, members(ops, n*3/10, n*8/10), func(c *ent.QueueCreate) {
		c.SetAcceptTimeoutSeconds(60) // SET_INACTIVE on timeout (the default)
	})
	qRR := w.Queue(enum.RuleRoundRobin, append(members(ops, n*6/10, n), ops[:3]...), func(c *ent.QueueCreate) {
		c.SetAcceptTimeoutSeconds(45).SetAcceptTimeoutAction(enum.TimeoutCountMissed).SetCompletionTimeoutMinutes(10)
	})
	queues := []*ent.Queue{qAll, qAvail, qRR}
	var channels []*ent.Channel
	for _, q := range queues {
		channels = append(channels, w.Channel(q, enum.ProviderAPI), w.Channel(q, enum.ProviderTelegram))
	}
	t.Logf("%d operators (limit 3), %d chats from %d goroutines, %d follow-ups; queues TO_ALL %d, TO_AVAILABLE %d, ROUND_ROBIN %d",
		n, sc.chats, sc.ingesters, sc.followUps, qAll.ID, qAvail.ID, qRR.ID)

	var (
		out       outcomes
		msgs      sync.Map // provider message id -> ingested
		newChats  atomic.Int64
		transfers atomic.Int64
		failed    atomic.Bool
	)
	fail := func(format string, args ...any) {
		failed.Store(true)
		t.Errorf(format, args...)
	}
	var seenMu sync.Mutex
	var seenChats []int // every chat id seen, for stray calls
	sawChat := func(id int) {
		seenMu.Lock()
		seenChats = append(seenChats, id)
		seenMu.Unlock()
	}
	randomChat := func(r *rand.Rand) int {
		seenMu.Lock()
		defer seenMu.Unlock()
		if len(seenChats) == 0 {
			return 0
		}
		return seenChats[r.IntN(len(seenChats))]
	}

	ingestDone := make(chan struct{})
	stop := make(chan struct{})
	chk := &checker{iv: w.Invariants()}
	var bg sync.WaitGroup // workers that run until stop
	bg.Go(func() { chk.loop(stop, 100*time.Millisecond) })

	// Ingestion: sc.ingesters goroutines deliver the first message of
	// sc.chats new customers, follow-ups to customers seen before (their
	// own, and a few "hot" customers every goroutine writes to at once),
	// and redeliveries of messages already acknowledged (R3).
	var ing sync.WaitGroup
	const hot = 8
	for g := range sc.ingesters {
		ing.Go(func() {
			r := newRand(seed, uint64(g))
			var mine []ingested
			seq := 0
			deliver := func(ext string, ch *ent.Channel, pmid string) *desk.IngestResult {
				res, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID, ProviderMessageID: pmid,
					Identity: desk.InboundIdentity{ExternalID: ext, Name: "Customer " + ext}, Text: "message " + pmid})
				out.add("ingest", err)
				if err != nil {
					fail("ingest %s from %s: %v", pmid, ext, err)
					return nil
				}
				if res.Duplicate {
					return res
				}
				if res.NewChat {
					newChats.Add(1)
				}
				sawChat(res.Chat.ID)
				in := ingested{externalID: ext, channelID: ch.ID, messageID: res.Message.ID, chatID: res.Chat.ID}
				if _, dup := msgs.LoadOrStore(pmid, in); dup {
					fail("provider message %s acknowledged twice as new", pmid)
				}
				return res
			}
			for k := g; k < sc.chats; k += sc.ingesters {
				if failed.Load() {
					return
				}
				seq++
				ext := fmt.Sprintf("cust-%d", k)
				ch := channels[r.IntN(len(channels))]
				pmid := fmt.Sprintf("g%d-m%d", g, seq)
				res := deliver(ext, ch, pmid)
				if res == nil {
					return
				}
				if !res.NewChat || res.Duplicate {
					fail("the first message of a new customer %s did not open a chat (new %v, duplicate %v)", ext, res.NewChat, res.Duplicate)
				}
				mine = append(mine, ingested{externalID: ext, channelID: ch.ID})
				// Follow-ups: sc.followUps in all, spread over the goroutines.
				if r.IntN(sc.chats) < sc.followUps {
					seq++
					pmid := fmt.Sprintf("g%d-m%d", g, seq)
					if r.IntN(4) == 0 {
						h := r.IntN(hot)
						deliver(fmt.Sprintf("hot-%d", h), channels[h%len(channels)], pmid)
					} else {
						c := mine[r.IntN(len(mine))]
						deliver(c.externalID, channelByID(channels, c.channelID), pmid)
					}
				}
				// A redelivery of a message acknowledged before changes nothing.
				if r.IntN(10) == 0 && seq > 1 {
					old := fmt.Sprintf("g%d-m%d", g, 1+r.IntN(seq-1))
					v, ok := msgs.Load(old)
					if !ok {
						continue
					}
					prev := v.(ingested)
					res, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: prev.channelID, ProviderMessageID: old,
						Identity: desk.InboundIdentity{ExternalID: prev.externalID}, Text: "again"})
					out.add("redeliver", err)
					switch {
					case err != nil:
						fail("redeliver %s: %v", old, err)
					case !res.Duplicate || res.Message.ID != prev.messageID || res.NewChat:
						fail("redelivery of %s: duplicate %v message %d (want %d) new chat %v", old, res.Duplicate, res.Message.ID, prev.messageID, res.NewChat)
					}
				}
			}
		})
	}
	go func() { ing.Wait(); close(ingestDone) }()

	// Operators: each reads their panel and accepts offered chats, sends
	// messages, completes, transfers, switches status, and now and then
	// makes a call that must be refused (a chat not offered or not theirs).
	for i, op := range ops {
		bg.Go(func() {
			r := newRand(seed, 1000+uint64(i))
			me := w.As(op)
			acceptRate := 7
			switch {
			case i == n-2:
				// A member of the ROUND_ROBIN queue (COUNT_MISSED, so it
				// stays ACTIVE) never accepts nor changes status, and the
				// supervisor leaves it alone: its turns end in accept
				// timeouts however quick the others are (a status change
				// would withdraw its offers first), which the run must
				// exercise.
				acceptRate = 0
			case i%4 == 3:
				acceptRate = 1
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				p, err := w.Desk.Panel(me)
				if err != nil {
					fail("panel of %d: %v", op.ID, err)
					return
				}
				switch {
				case p.Me.Operator.Status == enum.StatusInactive && r.IntN(3) == 0:
					_, err := w.Desk.SetMyStatus(me, enum.StatusActive)
					out.add("setMyStatus", err)
					if err != nil {
						fail("set ACTIVE: %v", err)
					}
				case p.Me.Operator.Status == enum.StatusActive && acceptRate > 0 && r.IntN(40) == 0:
					_, err := w.Desk.SetMyStatus(me, enum.StatusInactive)
					out.add("setMyStatus", err)
					if err != nil {
						fail("set INACTIVE: %v", err)
					}
				}
				// A quarter of the operators are slow to accept: their
				// offers often time out.
				if len(p.NewChats) > 0 && r.IntN(10) < acceptRate {
					c := p.NewChats[r.IntN(len(p.NewChats))].Chat
					_, err := w.Desk.AcceptChat(me, c.ID)
					out.add("accept", err)
					if !expected(err, desk.CodeChatAlreadyTaken, desk.CodeChatNotOffered, desk.CodeChatCompleted, desk.CodeLimitExhausted) {
						fail("accept %d by %d: %v", c.ID, op.ID, err)
					}
				}
				for _, pc := range p.ActiveChats {
					c := pc.Chat
					switch x := r.IntN(100); {
					case x < 20:
						_, err := w.Desk.CompleteChat(me, c.ID)
						out.add("complete", err)
						if !expected(err, desk.CodeNotChatOwner, desk.CodeChatCompleted) {
							fail("complete %d by %d: %v", c.ID, op.ID, err)
						}
					case x < 45:
						_, err := w.Desk.SendMessage(me, c.ID, "reply", nil)
						out.add("send", err)
						if !expected(err, desk.CodeNotChatOwner, desk.CodeChatCompleted) {
							fail("send in %d by %d: %v", c.ID, op.ID, err)
						}
					case x < 48:
						in := desk.TransferInput{ChatID: c.ID}
						if r.IntN(2) == 0 {
							in.QueueID = &queues[r.IntN(len(queues))].ID
						} else {
							to := ops[r.IntN(n)].ID
							if to == op.ID {
								continue
							}
							in.OperatorID = &to
						}
						res, err := w.Desk.TransferChat(me, in)
						out.add("transfer", err)
						if !expected(err, desk.CodeNotChatOwner, desk.CodeChatCompleted, desk.CodeLimitExhausted) {
							fail("transfer %d by %d: %v", c.ID, op.ID, err)
						}
						if err == nil {
							transfers.Add(1)
							sawChat(res.Chat.ID)
						}
					}
				}
				switch r.IntN(50) {
				case 0:
					_, err := w.Desk.AcceptChat(me, randomChat(r))
					out.add("stray accept", err)
					if !expected(err, desk.CodeChatAlreadyTaken, desk.CodeChatNotOffered, desk.CodeChatCompleted, desk.CodeNotFound) {
						fail("stray accept by %d: %v", op.ID, err)
					}
				case 1:
					_, err := w.Desk.CompleteChat(me, randomChat(r))
					out.add("stray complete", err)
					if !expected(err, desk.CodeNotChatOwner, desk.CodeChatCompleted, desk.CodeNotFound) {
						fail("stray complete by %d: %v", op.ID, err)
					}
				}
			}
		})
	}

	// A supervisor switches operators' status behind their back, so that
	// status changes race with their own accepts.
	bg.Go(func() {
		r := newRand(seed, 5000)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			st := enum.StatusActive
			if r.IntN(3) == 0 {
				st = enum.StatusInactive
			}
			k := r.IntN(n - 1) // any operator but n-2, which never accepts
			if k >= n-2 {
				k++
			}
			_, err := w.Desk.SetOperatorStatus(admin, ops[k].ID, st)
			out.add("setOperatorStatus", err)
			if err != nil {
				fail("supervisor sets status: %v", err)
			}
		}
	})

	// Two schedulers run due jobs while the clock moves 200 times as fast
	// as real time (an accept timeout of 60 s passes in 0.3 s), so that
	// accept and completion timeouts fire while everything goes on.
	for range 2 {
		bg.Go(func() {
			idle := time.NewTicker(2 * time.Millisecond)
			defer idle.Stop()
			for {
				n, err := w.Desk.RunDueJobs(ctx)
				out.add("runDueJobs", err)
				if err != nil {
					fail("run due jobs: %v", err)
				}
				if n > 0 {
					continue
				}
				select { // nothing due: let the clock move on
				case <-stop:
					return
				case <-idle.C:
				}
			}
		})
	}
	bg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				w.Clock.Advance(200 * now.Sub(last))
				last = now
			}
		}
	})

	start := time.Now()
	<-ingestDone
	ingestTime := time.Since(start)
	// Let the operators work the backlog a little longer, then stop all.
	if rest := sc.runFor - ingestTime; rest > 0 {
		timer := time.NewTimer(rest)
		<-timer.C
	}
	close(stop)
	bg.Wait()
	t.Logf("ingestion took %v, the run %v; %d checks during the run", ingestTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), chk.runs.Load())
	t.Logf("outcomes:\n%s", out.String())
	chk.report(t, "during the run")
	if chk.runs.Load() < 3 {
		t.Errorf("only %d invariant checks ran during the run", chk.runs.Load())
	}
	if failed.Load() {
		t.FailNow()
	}
	if got := out.get("accept LIMIT_EXHAUSTED"); got > 0 {
		t.Errorf("%d accepts refused with LIMIT_EXHAUSTED although no limit was lowered: an offer counts in the load (R7)", got)
	}
	if out.get("accept ok") == 0 || out.get("complete ok") == 0 || out.get("transfer ok") == 0 || out.get("send ok") == 0 {
		t.Errorf("the run did not exercise every call:\n%s", out.String())
	}

	// At rest: everyone ACTIVE with spare capacity (an administrator
	// doubles the limits), every due job run: no chat may be lost (R9).
	for _, op := range ops {
		_, err := w.Desk.UpdateOperator(admin, op.ID, desk.UpdateOperatorInput{ChatLimit: ptr(6)})
		w.Must(err)
		_, err = w.Desk.SetOperatorStatus(admin, op.ID, enum.StatusActive)
		w.Must(err)
	}
	runJobsUntilIdle(t, w)
	r := atRest(t, w, chk.iv, "at rest")
	t.Logf("at rest: chats %v, offers %v, jobs %v, %d routing decisions", r.Chats, r.Offers, r.Jobs, r.Decisions)
	if r.Offers["EXPIRED"] == 0 {
		t.Errorf("no accept timeout fired during the run")
	}

	// One more round at rest: all operators at once take and end the chats
	// offered to them; the capacity freed goes to waiting chats, and again
	// no chat is lost.
	var round sync.WaitGroup
	for _, op := range ops {
		round.Go(func() {
			me := w.As(op)
			p, err := w.Desk.Panel(me)
			if err != nil {
				t.Errorf("last round: panel: %v", err)
				return
			}
			for _, pc := range p.NewChats {
				_, err := w.Desk.AcceptChat(me, pc.Chat.ID)
				if !expected(err, desk.CodeChatAlreadyTaken, desk.CodeChatCompleted) {
					t.Errorf("last round: accept %d by %d: %v", pc.Chat.ID, op.ID, err)
				}
			}
			if p, err = w.Desk.Panel(me); err != nil {
				t.Errorf("last round: panel: %v", err)
				return
			}
			for _, pc := range p.ActiveChats {
				if _, err := w.Desk.CompleteChat(me, pc.Chat.ID); err != nil {
					t.Errorf("last round: complete %d by %d: %v", pc.Chat.ID, op.ID, err)
				}
			}
		})
	}
	round.Wait()
	runJobsUntilIdle(t, w)
	r2 := atRest(t, w, chk.iv, "after the last round")
	if r2.Chats["COMPLETED"] <= r.Chats["COMPLETED"] || r2.Chats["IN_PROGRESS"] != 0 {
		t.Errorf("last round: chats %v -> %v, want more completed and none in work", r.Chats, r2.Chats)
	}
	r = r2

	// Counts add up: every chat is a new conversation or a transfer child,
	// every acknowledged message is stored once, in the chat it was
	// acknowledged with, of its customer.
	total, err := w.Client().Chat.Query().Count(ctx)
	w.Must(err)
	roots, err := w.Client().Chat.Query().Where(chat.ParentIDIsNil()).Count(ctx)
	w.Must(err)
	if want := int(newChats.Load() + transfers.Load()); total != want || roots != int(newChats.Load()) ||
		r.Chats["COMPLETED"]+r.Chats["WAITING"]+r.Chats["IN_PROGRESS"] != total {
		t.Errorf("chats: %d stored (%d without parent; by status %v), want %d new + %d transfers", total, roots, r.Chats, newChats.Load(), transfers.Load())
	}
	if newChats.Load() < int64(sc.chats) {
		t.Errorf("%d new chats, want at least %d", newChats.Load(), sc.chats)
	}
	stored, err := w.Client().Message.Query().Where(message.DirectionEQ(enum.Inbound)).All(ctx)
	w.Must(err)
	acked := 0
	msgs.Range(func(_, _ any) bool { acked++; return true })
	if len(stored) != acked {
		t.Errorf("%d inbound messages stored, %d acknowledged", len(stored), acked)
	}
	contactOf := map[string]int{}
	chatContact := map[int]int{}
	chats, err := w.Client().Chat.Query().All(ctx)
	w.Must(err)
	for _, c := range chats {
		chatContact[c.ID] = c.ContactID
	}
	for _, m := range stored {
		if m.ProviderMessageID == nil {
			t.Errorf("message %d has no provider id", m.ID)
			continue
		}
		v, ok := msgs.Load(*m.ProviderMessageID)
		if !ok {
			t.Errorf("message %d (%s) stored but never acknowledged", m.ID, *m.ProviderMessageID)
			continue
		}
		in := v.(ingested)
		if in.messageID != m.ID || in.chatID != m.ChatID || in.channelID != m.ChannelID {
			t.Errorf("message %s: stored as %d in chat %d, acknowledged as %d in chat %d", *m.ProviderMessageID, m.ID, m.ChatID, in.messageID, in.chatID)
		}
		key := fmt.Sprintf("%s@%s", in.externalID, providerOf(channels, in.channelID))
		if c, ok := contactOf[key]; ok && c != chatContact[m.ChatID] {
			t.Errorf("customer %s has messages in chats of contacts %d and %d", key, c, chatContact[m.ChatID])
		}
		contactOf[key] = chatContact[m.ChatID]
	}
}

func ptr[T any](v T) *T { return &v }

func channelByID(chs []*ent.Channel, id int) *ent.Channel {
	for _, c := range chs {
		if c.ID == id {
			return c
		}
	}
	return nil
}

func providerOf(chs []*ent.Channel, id int) enum.Provider { return channelByID(chs, id).Provider }

// TestR10_TimersFireOnceAcrossInstances: two desks on one database (two
// server instances) run the same due timers at once, while the clock jumps
// past the job lease: every completion timeout completes its chat exactly
// once with one system message (R18), every accept timeout expires its offer
// once and re-routes the chat once (R8).
func TestR10_TimersFireOnceAcrossInstances(t *testing.T) {
	w1 := desktest.New(t)
	w2 := desktest.NewOn(t, w1.DB, w1.Clock)
	ctx := context.Background()
	chats, offered := 100, 40
	if !storetest.Postgres() {
		chats, offered = 80, 30
	}
	var ops, others []*ent.Operator
	for range 15 {
		ops = append(ops, w1.Operator(active, 20))
	}
	for range 10 {
		others = append(others, w1.Operator(active, 20))
	}
	done := w1.Queue(enum.RuleToAll, ops, func(c *ent.QueueCreate) { c.SetCompletionTimeoutMinutes(5) })
	avail := w1.Queue(enum.RuleToAvailable, others, func(c *ent.QueueCreate) {
		c.SetAcceptTimeoutSeconds(30).SetAcceptTimeoutAction(enum.TimeoutCountMissed)
	})
	chDone, chAvail := w1.Channel(done, enum.ProviderAPI), w1.Channel(avail, enum.ProviderAPI)

	// Chats in work whose operator replied: completion due in 5 minutes.
	var inWork []int
	for i := range chats {
		res := w1.Inbound(chDone, fmt.Sprintf("done-%d", i), "hello")
		op := ops[i%len(ops)]
		_, err := w1.Desk.AcceptChat(w1.As(op), res.Chat.ID)
		w1.Must(err)
		_, err = w1.Desk.SendMessage(w1.As(op), res.Chat.ID, "how can I help?", nil)
		w1.Must(err)
		inWork = append(inWork, res.Chat.ID)
	}
	// Chats offered and not accepted: accept timeout in 30 seconds.
	for i := range offered {
		w1.Inbound(chAvail, fmt.Sprintf("avail-%d", i), "hello")
	}
	runJobsUntilIdle(t, w1)
	iv := w1.Invariants()
	atRest(t, w1, iv, "before the timers")

	w1.Clock.Advance(5*time.Minute + time.Second)
	// Three schedulers per instance; the first moves the clock past the
	// lease of running jobs twice, so that claims expire and are taken over
	// by the other instance while the first still works on them.
	var wg sync.WaitGroup
	var ran [2]atomic.Int64
	var jumps atomic.Int64
	for i := range 6 {
		w := []*desktest.World{w1, w2}[i%2]
		wg.Go(func() {
			for pass := 0; ; pass++ {
				if i == 0 && pass%3 == 2 && jumps.Load() < 2 {
					jumps.Add(1)
					w.Clock.Advance(61 * time.Second)
				}
				n, err := w.Desk.RunDueJobs(ctx)
				if err != nil {
					t.Errorf("instance %d: run due jobs: %v", i%2+1, err)
					return
				}
				ran[i%2].Add(int64(n))
				if n == 0 && (i != 0 || jumps.Load() == 2) {
					return
				}
			}
		})
	}
	wg.Wait()
	runJobsUntilIdle(t, w1)
	t.Logf("jobs run: instance 1: %d, instance 2: %d", ran[0].Load(), ran[1].Load())
	if ran[0].Load() == 0 || ran[1].Load() == 0 {
		t.Logf("one instance ran no job (scheduling luck); the invariants still hold")
	}
	atRest(t, w1, iv, "after the timers")

	for _, id := range inWork {
		c := w1.Chat(id)
		if c.Status != enum.ChatCompleted || c.CompletionReason == nil || *c.CompletionReason != enum.CompletedByTimeout {
			t.Errorf("chat %d: %s (%v), want COMPLETED by COMPLETION_TIMEOUT", id, c.Status, c.CompletionReason)
		}
		sys, err := w1.Client().Message.Query().Where(message.ChatID(id), message.AuthorKindEQ(enum.AuthorSystem)).Count(ctx)
		w1.Must(err)
		if sys != 1 {
			t.Errorf("chat %d has %d system messages, want 1", id, sys)
		}
	}
	completed := countEvents(t, w1, desk.EventChatCompleted)
	if completed != chats {
		t.Errorf("%d CHAT_COMPLETED events, want %d (one per chat)", completed, chats)
	}
	expired, err := w1.Client().ChatOffer.Query().Where(chatoffer.StatusEQ(enum.OfferExpired)).Count(ctx)
	w1.Must(err)
	timeouts, err := w1.Client().RoutingDecision.Query().Where(routingdecision.Trigger(desk.TriggerTimeout)).Count(ctx)
	w1.Must(err)
	missed := 0
	for _, op := range others {
		missed += w1.OperatorNow(op.ID).MissedOffers
	}
	// Each of the offered chats expired at least once (at +5 min), and again
	// after each jump of the clock past 30 seconds.
	if expired < offered || timeouts != expired || missed != expired {
		t.Errorf("expired offers %d, OFFER_TIMEOUT decisions %d, missed offers %d: want equal and at least %d", expired, timeouts, missed, offered)
	}
	open, err := w1.Client().ChatOffer.Query().Where(chatoffer.StatusEQ(enum.OfferOpen)).Count(ctx)
	w1.Must(err)
	if open != offered {
		t.Errorf("%d open offers, want one per waiting chat (%d)", open, offered)
	}
}

func countEvents(t *testing.T, w *desktest.World, typ string) int {
	t.Helper()
	var n int
	err := w.DB.SQL.QueryRow(`SELECT COUNT(*) FROM events WHERE type = '` + typ + `'`).Scan(&n)
	w.Must(err)
	return n
}

// TestTimersSurviveRestart: timers are data (R8, R18). A timer that falls
// due while no instance runs fires once when a new instance starts on the
// same database; running the jobs again does nothing.
func TestTimersSurviveRestart(t *testing.T) {
	url := storetest.URL(t)
	clock := desktest.NewClock()
	open := func() *store.DB {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		db, err := store.Open(ctx, url, "")
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { db.Close() })
		if err := db.Migrate(ctx); err != nil {
			t.Fatalf("migrate: %v", err)
		}
		return db
	}
	db1 := open()
	w1 := desktest.NewOn(t, db1, clock)
	a, b, c := w1.Operator(active), w1.Operator(active), w1.Operator(active)
	q1 := w1.Queue(enum.RuleToAll, []*ent.Operator{a}, func(q *ent.QueueCreate) { q.SetCompletionTimeoutMinutes(5) })
	q2 := w1.Queue(enum.RuleToAvailable, []*ent.Operator{b, c}, func(q *ent.QueueCreate) { q.SetAcceptTimeoutSeconds(30) })
	inWork := w1.Inbound(w1.Channel(q1, enum.ProviderAPI), "c1", "hello").Chat
	_, err := w1.Desk.AcceptChat(w1.As(a), inWork.ID)
	w1.Must(err)
	_, err = w1.Desk.SendMessage(w1.As(a), inWork.ID, "hi, how can I help?", nil)
	w1.Must(err)
	waiting := w1.Inbound(w1.Channel(q2, enum.ProviderAPI), "c2", "hello").Chat
	first := openOffers(w1, waiting.ID)
	if len(first) != 1 {
		t.Fatalf("offers = %v, want one", first)
	}
	runJobsUntilIdle(t, w1)

	// The server stops; both timers fall due while it is down.
	w1.Must(db1.Close())
	clock.Advance(10 * time.Minute)

	w2 := desktest.NewOn(t, open(), clock)
	if n := w2.RunJobs(); n < 2 {
		t.Fatalf("%d jobs ran after the restart, want both timers", n)
	}
	runJobsUntilIdle(t, w2)
	got := w2.Chat(inWork.ID)
	if got.Status != enum.ChatCompleted || *got.CompletionReason != enum.CompletedByTimeout {
		t.Fatalf("chat in work: %s, want COMPLETED by timeout", got.Status)
	}
	var missed, next *ent.Operator = b, c
	if first[c.ID] {
		missed, next = c, b
	}
	if op := w2.OperatorNow(missed.ID); op.Status != enum.StatusInactive || op.MissedOffers != 1 {
		t.Errorf("operator who missed the offer: %s, %d missed; want INACTIVE, 1", op.Status, op.MissedOffers)
	}
	if got := openOffers(w2, waiting.ID); len(got) != 1 || !got[next.ID] {
		t.Errorf("offers after the timeout = %v, want the other operator", got)
	}
	snapshot := func() [3]int {
		sys, err := w2.Client().Message.Query().Where(message.AuthorKindEQ(enum.AuthorSystem)).Count(context.Background())
		w2.Must(err)
		ds, err := w2.Client().RoutingDecision.Query().Count(context.Background())
		w2.Must(err)
		ev, err := w2.Client().Event.Query().Count(context.Background())
		w2.Must(err)
		return [3]int{sys, ds, ev}
	}
	before := snapshot()
	if before[0] != 1 {
		t.Errorf("%d system messages, want 1", before[0])
	}
	iv := w2.Invariants()
	atRest(t, w2, iv, "after the restart")
	// Again, and on a third instance: nothing is due, nothing changes.
	if n := w2.RunJobs(); n != 0 {
		t.Errorf("%d jobs ran again", n)
	}
	if n := desktest.NewOn(t, w2.DB, clock).RunJobs(); n != 0 {
		t.Errorf("%d jobs ran on another instance", n)
	}
	if after := snapshot(); after != before {
		t.Errorf("state changed by running the jobs again: %v -> %v", before, after)
	}
}

// TestR1_MessageRacingCompletionNeverJoinsACompletedChat: a customer
// message that arrives while the operator completes or transfers the
// customer's chat either joins the chat before it ends or goes to the chat
// that follows (a new one, R1, or the transfer's child, R20); it is never
// appended to a chat already completed.
func TestR1_MessageRacingCompletionNeverJoinsACompletedChat(t *testing.T) {
	w := desktest.New(t)
	op, other := w.Operator(active, 1000), w.Operator(active, 1000)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	ctx := context.Background()
	rounds := 80
	if !storetest.Postgres() {
		rounds = 30
	}
	for i := range rounds {
		ext := fmt.Sprintf("race-%d", i)
		first := w.Inbound(ch, ext, "hello").Chat
		_, err := w.Desk.AcceptChat(w.As(op), first.ID)
		w.Must(err)
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				_, err := w.Desk.CompleteChat(w.As(op), first.ID)
				w.Must(err)
				return
			}
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: first.ID, OperatorID: &other.ID})
			w.Must(err)
		})
		var res *desk.IngestResult
		wg.Go(func() {
			<-start
			var err error
			res, err = w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: ext},
				ProviderMessageID: ext + "-2", Text: "are you there?"})
			w.Must(err)
		})
		close(start)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if got := w.Chat(res.Chat.ID); got.Status == enum.ChatCompleted && res.Chat.ID != first.ID {
			t.Errorf("round %d: the message went to chat %d, completed", i, got.ID)
		}
	}
	runJobsUntilIdle(t, w)
	atRest(t, w, w.Invariants(), "after the races")
}

// TestR10_InstancesStartingTogetherCreateOneAdministrator: instances
// started at once on an empty database all ensure the first administrator
// (PARLEY_ADMIN_EMAIL): exactly one creates it and none fails, or a
// deployment of several instances would crash at its first start.
func TestR10_InstancesStartingTogetherCreateOneAdministrator(t *testing.T) {
	w := desktest.New(t)
	const instances = 8
	var wg sync.WaitGroup
	created := make([]bool, instances)
	errs := make([]error, instances)
	start := make(chan struct{})
	for i := range instances {
		d := desktest.NewOn(t, w.DB, w.Clock).Desk
		wg.Go(func() {
			<-start
			created[i], errs[i] = d.EnsureAdmin(context.Background(), "first@admin.parley", "First", "first-admin-password")
		})
	}
	close(start)
	wg.Wait()
	n := 0
	for i := range instances {
		if errs[i] != nil {
			t.Errorf("instance %d: ensure the administrator: %v", i+1, errs[i])
		}
		if created[i] {
			n++
		}
	}
	admins, err := w.Client().Operator.Query().Count(context.Background())
	w.Must(err)
	if n != 1 || admins != 1 {
		t.Errorf("%d instances created the administrator, %d operators stored; want 1 and 1", n, admins)
	}
}
