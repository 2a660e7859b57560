package desk_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/event"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/operatorstatuschange"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// acceptedChat ingests a message and has op accept the chat.
func acceptedChat(w *desktest.World, ch *ent.Channel, op *ent.Operator, who string) *ent.Chat {
	w.T.Helper()
	res := w.Inbound(ch, who, "hello from "+who)
	c, err := w.Desk.AcceptChat(w.As(op), res.Chat.ID)
	w.Must(err)
	return c
}

func TestR1_MessageJoinsOpenChatAndAfterCompletionStartsANewRoutedOne(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	other := w.Channel(q, enum.ProviderAPI)

	first := w.Inbound(ch, "c1", "one")
	second := w.Inbound(ch, "c1", "two")
	if !first.NewChat || second.NewChat || second.Chat.ID != first.Chat.ID {
		t.Fatalf("second message opened chat %d (new=%v), want it appended to %d", second.Chat.ID, second.NewChat, first.Chat.ID)
	}
	// The same person on another channel is another chat.
	if elsewhere := w.Inbound(other, "c1", "three"); !elsewhere.NewChat {
		t.Fatal("a message on another channel joined the first channel's chat")
	}
	_, err := w.Desk.AcceptChat(w.As(op), first.Chat.ID)
	w.Must(err)
	_, err = w.Desk.CompleteChat(w.As(op), first.Chat.ID)
	w.Must(err)
	after := w.Inbound(ch, "c1", "four")
	if !after.NewChat || after.Chat.ID == first.Chat.ID || after.Chat.Status != enum.ChatWaiting {
		t.Fatalf("message after completion: new=%v chat %d status %s, want a new WAITING chat", after.NewChat, after.Chat.ID, after.Chat.Status)
	}
	if got := openOffers(w, after.Chat.ID); !got[op.ID] {
		t.Fatal("the new chat was not routed again")
	}
	n, err := w.Client().Contact.Query().Count(context.Background())
	w.Must(err)
	if n != 1 {
		t.Fatalf("contacts = %d, want 1 (found by identity)", n)
	}
}

func TestR2_ContactCreatedFromIdentityOnFirstMessage(t *testing.T) {
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	res, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID, Text: "hi",
		Identity: desk.InboundIdentity{ExternalID: "42", Name: "Ann Lee", Username: "ann", Phone: "+15550001"}})
	w.Must(err)
	c, err := w.Client().Contact.Query().Where(contact.HasChatsWith(chat.ID(res.Chat.ID))).WithIdentities().Only(context.Background())
	w.Must(err)
	if c.Name != "Ann Lee" || c.Phone != "+15550001" || c.Username != "ann" {
		t.Fatalf("contact = %+v", c)
	}
	if len(c.Edges.Identities) != 1 || c.Edges.Identities[0].ExternalID != "42" || c.Edges.Identities[0].Provider != enum.ProviderAPI {
		t.Fatalf("identities = %+v", c.Edges.Identities)
	}
}

func TestR3_RedeliveredMessageIDChangesNothing(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	in := desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: "c1"}, ProviderMessageID: "m-1", Text: "hi"}

	var wg sync.WaitGroup
	results := make([]*desk.IngestResult, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := w.Desk.Ingest(context.Background(), in)
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	fresh := 0
	for _, r := range results {
		if r != nil && !r.Duplicate {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d deliveries stored the message, want exactly 1", fresh)
	}
	for _, count := range []func(context.Context) (int, error){
		w.Client().Message.Query().Count,
		w.Client().Chat.Query().Count,
		w.Client().Contact.Query().Count,
	} {
		n, err := count(context.Background())
		w.Must(err)
		if n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
	}
}

func TestR1_ConcurrentFirstMessagesOfOneContactOpenOneChat(t *testing.T) {
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID,
				Identity: desk.InboundIdentity{ExternalID: "same"}, Text: "hi"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	chats, err := w.Client().Chat.Query().Count(context.Background())
	w.Must(err)
	msgs, err := w.Client().Message.Query().Count(context.Background())
	w.Must(err)
	if chats != 1 || msgs != 8 {
		t.Fatalf("chats = %d, messages = %d; want 1 chat with 8 messages", chats, msgs)
	}
}

func TestR1_InactiveChannelRefusesMessages(t *testing.T) {
	w := desktest.New(t)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	w.Must(w.Client().Channel.UpdateOneID(ch.ID).SetActive(false).Exec(context.Background()))
	_, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID, Identity: desk.InboundIdentity{ExternalID: "x"}, Text: "hi"})
	w.WantCode(err, desk.CodeChannelInactive)
	if n, _ := w.Client().Message.Query().Count(context.Background()); n != 0 {
		t.Fatalf("%d messages stored on an inactive channel", n)
	}
}

func TestR5_StatusChangesAreRecordedAndNewOperatorsStartInactive(t *testing.T) {
	w := desktest.New(t)
	op, err := w.Desk.CreateOperator(w.AsAdmin(), desk.CreateOperatorInput{Email: "new@test.parley", Name: "New", Password: "long enough", Role: enum.RoleOperator})
	w.Must(err)
	if op.Status != enum.StatusInactive {
		t.Fatalf("new operator status = %s, want INACTIVE", op.Status)
	}
	w.Clock.Advance(time.Minute)
	got, err := w.Desk.SetMyStatus(w.As(op), enum.StatusActive)
	w.Must(err)
	if got.Status != enum.StatusActive || got.StatusChangedAt == nil || !got.StatusChangedAt.Equal(w.Desk.Now()) {
		t.Fatalf("after setMyStatus: %+v", got)
	}
	changes, err := w.Client().OperatorStatusChange.Query().Where(operatorstatuschange.HasOperatorWith()).All(context.Background())
	w.Must(err)
	if len(changes) != 1 || changes[0].Status != enum.StatusActive || *changes[0].Previous != enum.StatusInactive || changes[0].Reason != enum.ReasonManual {
		t.Fatalf("status changes = %+v", changes)
	}
	_, err = w.Desk.SetMyStatus(w.AsAdmin(), enum.StatusActive)
	w.WantCode(err, desk.CodeForbidden)
	_, err = w.Desk.SetOperatorStatus(w.As(op), op.ID, enum.StatusInactive)
	w.WantCode(err, desk.CodeForbidden)
}

func TestR6_LastSessionEndingSetsInactiveAndLoginRestores(t *testing.T) {
	w := desktest.New(t)
	_, err := w.Desk.CreateOperator(w.AsAdmin(), desk.CreateOperatorInput{Email: "r6@test.parley", Name: "R6", Password: "long enough", Role: enum.RoleOperator})
	w.Must(err)
	ctx := context.Background()
	login := func() context.Context {
		res, err := w.Desk.Login(ctx, "r6@test.parley", "long enough", desk.SessionMeta{})
		w.Must(err)
		a, err := w.Desk.Authenticate(ctx, res.Token)
		w.Must(err)
		return desk.WithActor(ctx, a)
	}
	s1 := login()
	s2 := login()
	op, err := w.Desk.SetMyStatus(s1, enum.StatusActive)
	w.Must(err)

	w.Must(w.Desk.Logout(s1))
	if got := w.OperatorNow(op.ID); got.Status != enum.StatusActive {
		t.Fatalf("status after ending one of two sessions = %s, want ACTIVE", got.Status)
	}
	w.Must(w.Desk.Logout(s2))
	if got := w.OperatorNow(op.ID); got.Status != enum.StatusInactive {
		t.Fatalf("status after the last logout = %s, want INACTIVE", got.Status)
	}
	login()
	if got := w.OperatorNow(op.ID); got.Status != enum.StatusActive {
		t.Fatalf("status after login = %s, want ACTIVE restored", got.Status)
	}

	// Expiry ends the session by itself: a timer, no call needed.
	w.Clock.Advance(12*time.Hour + time.Second)
	w.RunJobs()
	got := w.OperatorNow(op.ID)
	if got.Status != enum.StatusInactive || got.StatusBeforeLogout == nil || *got.StatusBeforeLogout != enum.StatusActive {
		t.Fatalf("after expiry: status %s before-logout %v, want INACTIVE remembering ACTIVE", got.Status, got.StatusBeforeLogout)
	}
	last, err := w.Client().OperatorStatusChange.Query().Order(ent.Desc(operatorstatuschange.FieldID)).First(ctx)
	w.Must(err)
	if last.Reason != enum.ReasonSessionExpired {
		t.Fatalf("last change reason = %s, want SESSION_EXPIRED", last.Reason)
	}
	login()
	if got := w.OperatorNow(op.ID); got.Status != enum.StatusActive {
		t.Fatalf("status after login following expiry = %s, want ACTIVE", got.Status)
	}
}

func TestR7_AvailabilityIsDerivedFromLoadAndTheLimitChain(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	w.Must(w.Client().Setting.Update().SetConcurrentChats(2).Exec(ctx))
	plain := w.Operator(active)
	override := w.Operator(active, 1)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{plain, override})
	ch := w.Channel(q, enum.ProviderAPI)

	avail := func(op *ent.Operator) *desk.OperatorLoad {
		l, err := w.Desk.OperatorAvailability(w.As(op), op.ID)
		w.Must(err)
		return l
	}
	if l := avail(plain); l.Availability != desk.AvailabilityActive || l.Limit != 2 || l.Load != 0 {
		t.Fatalf("plain = %+v, want ACTIVE 0/2 (system setting)", l)
	}
	// An offer counts: the override operator (limit 1) is exhausted by it.
	c1 := w.Inbound(ch, "c1", "one")
	if l := avail(override); l.Availability != desk.AvailabilityLimitExhausted || l.Load != 1 || l.Limit != 1 {
		t.Fatalf("override = %+v, want LIMIT_EXHAUSTED 1/1", l)
	}
	_, err := w.Desk.AcceptChat(w.As(plain), c1.Chat.ID)
	w.Must(err)
	if l := avail(override); l.Availability != desk.AvailabilityActive || l.Load != 0 {
		t.Fatalf("override after the other accepted = %+v, want ACTIVE 0/1", l)
	}
	w.Inbound(ch, "c2", "two")
	if l := avail(plain); l.Availability != desk.AvailabilityLimitExhausted || l.Load != 2 {
		t.Fatalf("plain = %+v, want LIMIT_EXHAUSTED 2/2 (one in work, one offered)", l)
	}
	// A third chat finds nobody: it waits (R9) and the decision says why.
	c3 := w.Inbound(ch, "c3", "three")
	if got := openOffers(w, c3.Chat.ID); len(got) != 0 {
		t.Fatalf("third chat offers = %v, want none", got)
	}
	ds := decisions(w, c3.Chat.ID)
	if len(ds) != 1 || ds[0].Outcome != desk.OutcomeWaiting {
		t.Fatalf("decisions = %+v, want one WAITING", ds)
	}
	for _, c := range ds[0].Candidates {
		if c.Excluded != desk.ExcludedLimitExhausted {
			t.Fatalf("candidate %+v, want LIMIT_EXHAUSTED", c)
		}
	}
	// A queue override applies when the operator has none.
	w.Must(w.Client().Queue.UpdateOneID(q.ID).SetChatLimit(4).Exec(ctx))
	ov, err := w.Desk.QueueOverview(w.AsAdmin(), q.ID)
	w.Must(err)
	for _, o := range ov.Operators {
		want := 4
		if o.Operator.ID == override.ID {
			want = 1
		}
		if o.Limit != want {
			t.Fatalf("%s limit in queue = %d, want %d", o.Operator.Name, o.Limit, want)
		}
	}
}

// TestR8_R9_AQueueWithoutItsOwnValuesRoutesByTheSystemSettings: the
// waiting order and the accept timeout of the system settings apply to a
// queue that sets neither.
func TestR8_R9_AQueueWithoutItsOwnValuesRoutesByTheSystemSettings(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	s, err := w.Desk.Settings(ctx)
	w.Must(err)
	w.Must(w.Client().Setting.UpdateOneID(s.ID).SetWaitingOrder(enum.NewestFirst).SetAcceptTimeoutSeconds(45).Exec(ctx))
	op := w.Operator(inactive, 1)
	q := w.Queue(enum.RuleToAvailable, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	old := w.Inbound(ch, "c1", "first")
	w.Clock.Advance(time.Second)
	young := w.Inbound(ch, "c2", "second")
	_, err = w.Desk.SetMyStatus(w.As(op), enum.StatusActive)
	w.Must(err)
	w.RunJobs()
	if !openOffers(w, young.Chat.ID)[op.ID] || len(openOffers(w, old.Chat.ID)) != 0 {
		t.Fatalf("newest first: offers old=%v young=%v", openOffers(w, old.Chat.ID), openOffers(w, young.Chat.ID))
	}
	o, err := w.Client().ChatOffer.Query().Where(chatoffer.ChatID(young.Chat.ID)).Only(ctx)
	w.Must(err)
	if o.ExpiresAt == nil || !o.ExpiresAt.Equal(o.CreatedAt.Add(45*time.Second)) {
		t.Fatalf("offer created %v expires %v, want 45 s later (the system accept timeout)", o.CreatedAt, o.ExpiresAt)
	}
}

func TestR9_WaitingChatsAreReleasedOldestFirstWhenCapacityAppears(t *testing.T) {
	for _, order := range []enum.WaitingOrder{enum.OldestFirst, enum.NewestFirst} {
		t.Run(string(order), func(t *testing.T) {
			w := desktest.New(t)
			op := w.Operator(inactive, 1)
			q := w.Queue(enum.RuleToAvailable, []*ent.Operator{op}, func(c *ent.QueueCreate) { c.SetWaitingOrder(order) })
			ch := w.Channel(q, enum.ProviderAPI)
			old := w.Inbound(ch, "c1", "first")
			w.Clock.Advance(time.Second)
			young := w.Inbound(ch, "c2", "second")
			if len(openOffers(w, old.Chat.ID))+len(openOffers(w, young.Chat.ID)) != 0 {
				t.Fatal("offers to an INACTIVE operator")
			}
			_, err := w.Desk.SetMyStatus(w.As(op), enum.StatusActive)
			w.Must(err)
			w.RunJobs()
			want, other := old, young
			if order == enum.NewestFirst {
				want, other = young, old
			}
			if !openOffers(w, want.Chat.ID)[op.ID] || len(openOffers(w, other.Chat.ID)) != 0 {
				t.Fatalf("%s: offers old=%v young=%v", order, openOffers(w, old.Chat.ID), openOffers(w, young.Chat.ID))
			}
			// Completing frees the slot: the other chat follows.
			_, err = w.Desk.AcceptChat(w.As(op), want.Chat.ID)
			w.Must(err)
			w.RunJobs()
			if len(openOffers(w, other.Chat.ID)) != 0 {
				t.Fatal("offered beyond the limit")
			}
			_, err = w.Desk.CompleteChat(w.As(op), want.Chat.ID)
			w.Must(err)
			w.RunJobs()
			if !openOffers(w, other.Chat.ID)[op.ID] {
				t.Fatal("the waiting chat was not released when the operator completed a chat")
			}
			ds := decisions(w, other.Chat.ID)
			if last := ds[len(ds)-1]; last.Trigger != desk.TriggerCapacity || last.Outcome != desk.OutcomeOffered {
				t.Fatalf("last decision = %+v, want CAPACITY/OFFERED", last)
			}
		})
	}
}

func TestR9_JoiningAQueueOrARaisedLimitReleasesWaitingChats(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active, 0)
	q := w.Queue(enum.RuleToAll, nil)
	ch := w.Channel(q, enum.ProviderAPI)
	res := w.Inbound(ch, "c1", "hi")
	_, err := w.Desk.UpdateOperator(w.AsAdmin(), op.ID, desk.UpdateOperatorInput{AddQueueIDs: []int{q.ID}})
	w.Must(err)
	w.RunJobs()
	if len(openOffers(w, res.Chat.ID)) != 0 {
		t.Fatal("offered to an operator with limit 0")
	}
	one := 1
	_, err = w.Desk.UpdateOperator(w.AsAdmin(), op.ID, desk.UpdateOperatorInput{ChatLimit: &one})
	w.Must(err)
	w.RunJobs()
	if !openOffers(w, res.Chat.ID)[op.ID] {
		t.Fatal("raising the limit did not release the waiting chat")
	}
}

func TestR8_RoundRobinTakesTurns(t *testing.T) {
	w := desktest.New(t)
	a, b, c := w.Operator(active), w.Operator(active), w.Operator(active)
	q := w.Queue(enum.RuleRoundRobin, []*ent.Operator{a, b, c})
	ch := w.Channel(q, enum.ProviderAPI)
	var got []int
	for _, who := range []string{"c1", "c2", "c3", "c4"} {
		res := w.Inbound(ch, who, "hi")
		offers := openOffers(w, res.Chat.ID)
		if len(offers) != 1 {
			t.Fatalf("offers = %v, want one", offers)
		}
		for id := range offers {
			got = append(got, id)
			_, err := w.Desk.AcceptChat(w.As(w.OperatorNow(id)), res.Chat.ID)
			w.Must(err)
		}
	}
	want := []int{a.ID, b.ID, c.ID, a.ID}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("turns = %v, want %v", got, want)
		}
	}
}

func TestR12_PanelListsNewAndActiveChatsWithUnreadAndWaiting(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	work := acceptedChat(w, ch, op, "c1")
	w.Clock.Advance(10 * time.Second)
	w.Inbound(ch, "c1", "are you there?")
	offered := w.Inbound(ch, "c2", "new one")
	w.Clock.Advance(30 * time.Second)

	p, err := w.Desk.Panel(w.As(op))
	w.Must(err)
	if len(p.NewChats) != 1 || p.NewChats[0].Chat.ID != offered.Chat.ID || p.NewChats[0].WaitingSeconds != 30 ||
		p.NewChats[0].UnreadCount != 1 || p.NewChats[0].LastMessage.Text != "new one" {
		t.Fatalf("new chats = %+v", p.NewChats)
	}
	if len(p.ActiveChats) != 1 || p.ActiveChats[0].Chat.ID != work.ID || p.ActiveChats[0].UnreadCount != 2 ||
		p.ActiveChats[0].WaitingSeconds != 30 || p.ActiveChats[0].LastMessage.Text != "are you there?" {
		t.Fatalf("active chats = %+v", p.ActiveChats[0])
	}
	if p.Me.Load != 2 || p.Me.Availability != desk.AvailabilityActive {
		t.Fatalf("me = %+v", p.Me)
	}
	_, err = w.Desk.SendMessage(w.As(op), work.ID, "yes", nil)
	w.Must(err)
	p, err = w.Desk.Panel(w.As(op))
	w.Must(err)
	if a := p.ActiveChats[0]; a.UnreadCount != 0 || a.WaitingSeconds != 0 {
		t.Fatalf("after replying: unread %d waiting %d, want 0 and 0", a.UnreadCount, a.WaitingSeconds)
	}
	_, err = w.Desk.Panel(w.AsAdmin())
	w.WantCode(err, desk.CodeForbidden)
	_, err = w.Desk.QueueOverview(w.As(op), q.ID)
	w.WantCode(err, desk.CodeForbidden)
}

func TestR17_CompleteRecordsFirstResponseAndDuration(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	c := acceptedChat(w, ch, op, "c1")
	w.Clock.Advance(90 * time.Second)
	_, err := w.Desk.SendMessage(w.As(op), c.ID, "hello", nil)
	w.Must(err)
	w.Clock.Advance(10 * time.Minute)
	done, err := w.Desk.CompleteChat(w.As(op), c.ID)
	w.Must(err)
	if done.Status != enum.ChatCompleted || *done.CompletionReason != enum.CompletedByOperator ||
		*done.FirstResponseSeconds != 90 || *done.DurationSeconds != 690 {
		t.Fatalf("completed = status %s reason %v first %v duration %v", done.Status, done.CompletionReason, done.FirstResponseSeconds, done.DurationSeconds)
	}
}

func TestR18_CompletionTimeoutMeasuresCustomerSilence(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op}, func(c *ent.QueueCreate) { c.SetCompletionTimeoutMinutes(10) })
	ch := w.Channel(q, enum.ProviderAPI)
	c := acceptedChat(w, ch, op, "c1")

	_, err := w.Desk.SendMessage(w.As(op), c.ID, "anything else?", nil)
	w.Must(err)
	if due := w.Chat(c.ID).CompletionDueAt; due == nil || !due.Equal(w.Desk.Now().Add(10*time.Minute)) {
		t.Fatalf("due = %v, want now+10m", due)
	}
	// The customer answers before the timeout: the timer is cleared.
	w.Clock.Advance(9 * time.Minute)
	w.Inbound(ch, "c1", "yes, one thing")
	if due := w.Chat(c.ID).CompletionDueAt; due != nil {
		t.Fatalf("due after a customer message = %v, want none", due)
	}
	w.Clock.Advance(2 * time.Minute)
	w.RunJobs()
	if got := w.Chat(c.ID); got.Status != enum.ChatInProgress {
		t.Fatalf("status = %s, want IN_PROGRESS (the customer answered)", got.Status)
	}
	// The operator answers and the customer stays silent.
	_, err = w.Desk.SendMessage(w.As(op), c.ID, "here you go", nil)
	w.Must(err)
	w.Clock.Advance(10 * time.Minute)
	w.RunJobs()
	got := w.Chat(c.ID)
	if got.Status != enum.ChatCompleted || *got.CompletionReason != enum.CompletedByTimeout {
		t.Fatalf("status %s reason %v, want COMPLETED by COMPLETION_TIMEOUT", got.Status, got.CompletionReason)
	}
	sys, err := w.Client().Message.Query().Where(message.ChatID(c.ID), message.AuthorKindEQ(enum.AuthorSystem)).Count(context.Background())
	w.Must(err)
	if sys != 1 {
		t.Fatalf("system messages = %d, want 1", sys)
	}
	if w.RunJobs() != 0 {
		t.Fatal("jobs ran again")
	}
}

func TestR19_R20_TransferToAnOperatorAndToAQueue(t *testing.T) {
	w := desktest.New(t)
	from, to, busy := w.Operator(active), w.Operator(inactive), w.Operator(active, 0)
	other := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{from, to, busy})
	q2 := w.Queue(enum.RuleToAvailable, []*ent.Operator{other})
	ch := w.Channel(q, enum.ProviderAPI)
	c := acceptedChat(w, ch, from, "c1")
	_, err := w.Desk.SendMessage(w.As(from), c.ID, "let me pass you on", nil)
	w.Must(err)

	targets, err := w.Desk.ChatTransferTargets(w.As(from), c.ID)
	w.Must(err)
	avail := map[int]desk.Availability{}
	for _, o := range targets.Operators {
		avail[o.Operator.ID] = o.Availability
	}
	if avail[to.ID] != desk.AvailabilityInactive || avail[busy.ID] != desk.AvailabilityLimitExhausted ||
		avail[other.ID] != desk.AvailabilityActive || len(targets.Queues) != 2 {
		t.Fatalf("targets = %v, %d queues", avail, len(targets.Queues))
	}
	if _, ok := avail[from.ID]; ok {
		t.Fatal("the caller is listed as a target")
	}
	_, err = w.Desk.TransferChat(w.As(from), desk.TransferInput{ChatID: c.ID, OperatorID: &busy.ID})
	w.WantCode(err, desk.CodeLimitExhausted)

	note := "VIP customer"
	res, err := w.Desk.TransferChat(w.As(from), desk.TransferInput{ChatID: c.ID, OperatorID: &to.ID, Note: &note})
	w.Must(err)
	if res.Completed.Status != enum.ChatCompleted || *res.Completed.CompletionReason != enum.CompletedByTransfer {
		t.Fatalf("parent = %s %v", res.Completed.Status, res.Completed.CompletionReason)
	}
	child := res.Chat
	if child.Status != enum.ChatInProgress || *child.OwnerID != to.ID || *child.ParentID != c.ID || child.TransferNote != note {
		t.Fatalf("child = %+v", child)
	}
	// The child shows the whole parent history to its new owner.
	hq, err := w.Desk.ChatHistory(w.As(to), child, true)
	w.Must(err)
	n, err := hq.Count(context.Background())
	w.Must(err)
	if n != 2 {
		t.Fatalf("history = %d messages, want the parent's 2", n)
	}
	// The new owner transfers on to a queue: WAITING and routed there.
	res2, err := w.Desk.TransferChat(w.As(to), desk.TransferInput{ChatID: child.ID, QueueID: &q2.ID})
	w.Must(err)
	if res2.Chat.Status != enum.ChatWaiting || res2.Chat.QueueID != q2.ID || !openOffers(w, res2.Chat.ID)[other.ID] {
		t.Fatalf("queue child = %+v offers %v", res2.Chat, openOffers(w, res2.Chat.ID))
	}
	ds := decisions(w, res2.Chat.ID)
	if len(ds) != 1 || ds[0].Trigger != desk.TriggerTransfer {
		t.Fatalf("decisions = %+v", ds)
	}
	hq, err = w.Desk.ChatHistory(w.As(other), w.Chat(res2.Chat.ID), true)
	w.Must(err)
	if n, _ := hq.Count(context.Background()); n != 2 {
		t.Fatalf("grandchild history = %d, want 2", n)
	}
}

func TestR24_MessagesOfOpenChatsAreHiddenFromOtherOperators(t *testing.T) {
	w := desktest.New(t)
	owner, stranger := w.Operator(active), w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{owner})
	ch := w.Channel(q, enum.ProviderAPI)
	c := acceptedChat(w, ch, owner, "c1")
	_, err := w.Desk.ChatHistory(w.As(stranger), c, false)
	w.WantCode(err, desk.CodeForbidden)
	_, err = w.Desk.ChatHistory(w.As(owner), c, false)
	w.Must(err)
	_, err = w.Desk.ChatHistory(w.AsAdmin(), c, false)
	w.Must(err)
	done, err := w.Desk.CompleteChat(w.As(owner), c.ID)
	w.Must(err)
	_, err = w.Desk.ChatHistory(w.As(stranger), done, false)
	w.Must(err)
}

// TestBadInput: each refusal has its own code and changes nothing.
func TestBadInput_LifecycleRefusalsChangeNothing(t *testing.T) {
	w := desktest.New(t)
	op, other := w.Operator(active), w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op, other})
	ch := w.Channel(q, enum.ProviderAPI)
	mine := acceptedChat(w, ch, op, "c1")
	theirs := acceptedChat(w, ch, other, "c2")
	done := acceptedChat(w, ch, op, "c3")
	_, err := w.Desk.CompleteChat(w.As(op), done.ID)
	w.Must(err)
	ctx := context.Background()
	events := func() int {
		n, err := w.Client().Event.Query().Count(ctx)
		w.Must(err)
		return n
	}
	before := events()
	missing := 999999
	for name, tc := range map[string]struct {
		call func() error
		code desk.Code
	}{
		"unknown chat":            {func() error { _, err := w.Desk.AcceptChat(w.As(op), missing); return err }, desk.CodeNotFound},
		"accept a completed chat": {func() error { _, err := w.Desk.AcceptChat(w.As(op), done.ID); return err }, desk.CodeChatCompleted},
		"accept a taken chat":     {func() error { _, err := w.Desk.AcceptChat(w.As(op), theirs.ID); return err }, desk.CodeChatAlreadyTaken},
		"complete twice":          {func() error { _, err := w.Desk.CompleteChat(w.As(op), done.ID); return err }, desk.CodeChatCompleted},
		"complete someone else's": {func() error { _, err := w.Desk.CompleteChat(w.As(op), theirs.ID); return err }, desk.CodeNotChatOwner},
		"transfer someone else's": {func() error {
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: theirs.ID, QueueID: &q.ID})
			return err
		}, desk.CodeNotChatOwner},
		"transfer to unknown queue": {func() error {
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: mine.ID, QueueID: &missing})
			return err
		}, desk.CodeNotFound},
		"transfer to unknown operator": {func() error {
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: mine.ID, OperatorID: &missing})
			return err
		}, desk.CodeNotFound},
		"transfer to both": {func() error {
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: mine.ID, QueueID: &q.ID, OperatorID: &other.ID})
			return err
		}, desk.CodeValidation},
		"transfer to yourself": {func() error {
			_, err := w.Desk.TransferChat(w.As(op), desk.TransferInput{ChatID: mine.ID, OperatorID: &op.ID})
			return err
		}, desk.CodeValidation},
		"send to someone else's":   {func() error { _, err := w.Desk.SendMessage(w.As(op), theirs.ID, "hi", nil); return err }, desk.CodeNotChatOwner},
		"send empty":               {func() error { _, err := w.Desk.SendMessage(w.As(op), mine.ID, "  ", nil); return err }, desk.CodeValidation},
		"send to a completed chat": {func() error { _, err := w.Desk.SendMessage(w.As(op), done.ID, "hi", nil); return err }, desk.CodeChatCompleted},
		"accept as an API key":     {func() error { _, err := w.Desk.AcceptChat(w.AsIntegration(), mine.ID); return err }, desk.CodeForbidden},
		"ingest without sender": {func() error {
			_, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID, Text: "x"})
			return err
		}, desk.CodeValidation},
		"ingest on unknown channel": {func() error {
			_, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: missing, Identity: desk.InboundIdentity{ExternalID: "x"}, Text: "x"})
			return err
		}, desk.CodeNotFound},
	} {
		t.Run(name, func(t *testing.T) {
			if got := desktest.Code(tc.call()); got != tc.code {
				t.Fatalf("code = %q, want %q", got, tc.code)
			}
		})
	}
	if after := events(); after != before {
		t.Fatalf("refusals appended %d events", after-before)
	}
	if got := w.Chat(mine.ID); got.Status != enum.ChatInProgress || *got.OwnerID != op.ID {
		t.Fatalf("chat changed: %+v", got)
	}
	if n, _ := w.Client().Event.Query().Where(event.Type(desk.EventChatTransferred)).Count(ctx); n != 0 {
		t.Fatal("a transfer happened")
	}
}

// TestR9_AReleaseReachesWaitingChatsPastOneBatch: with more chats waiting
// than one release routes (200), a member joining a TO_ALL queue is offered
// every one of them: each release goes on past the chats offered already
// rather than reading the same oldest ones again.
func TestR9_AReleaseReachesWaitingChatsPastOneBatch(t *testing.T) {
	w := desktest.New(t)
	a, b := w.Operator(active, 1000), w.Operator(active, 1000)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{a})
	ch := w.Channel(q, enum.ProviderAPI)
	const n = 230
	for i := range n {
		w.Inbound(ch, fmt.Sprintf("batch-%d", i), "hi")
	}
	_, err := w.Desk.UpdateOperator(w.AsAdmin(), b.ID, desk.UpdateOperatorInput{AddQueueIDs: []int{q.ID}})
	w.Must(err)
	// Bounded: a release that makes no progress would enqueue itself
	// forever; the deadline turns that into a failure instead of a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := w.Desk.RunDueJobs(ctx); err != nil {
		t.Fatalf("run jobs: %v (a release that never ends?)", err)
	}
	offered, err := w.Client().ChatOffer.Query().Where(chatoffer.OperatorID(b.ID), chatoffer.StatusEQ(enum.OfferOpen)).Count(ctx)
	w.Must(err)
	if offered != n {
		t.Fatalf("B was offered %d of the %d waiting chats", offered, n)
	}
	atRest(t, w, w.Invariants(), "after the releases")
}

// TestR1_AMessageWithANULCharacterIsRefused: U+0000 in any field of an
// inbound message is refused as invalid, naming the field, and stores
// nothing, on both databases (PostgreSQL cannot store it in text).
func TestR1_AMessageWithANULCharacterIsRefused(t *testing.T) {
	w := desktest.New(t)
	op := w.Operator(active)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	ch := w.Channel(q, enum.ProviderAPI)
	for _, c := range []struct {
		field string
		in    desk.Inbound
	}{
		{"externalId", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c\x001"}, Text: "hi"}},
		{"name", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c1", Name: "a\x00b"}, Text: "hi"}},
		{"username", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c1", Username: "u\x00"}, Text: "hi"}},
		{"phone", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c1", Phone: "\x00"}, Text: "hi"}},
		{"providerMessageId", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c1"}, ProviderMessageID: "m\x00", Text: "hi"}},
		{"text", desk.Inbound{Identity: desk.InboundIdentity{ExternalID: "c1"}, Text: "h\x00i"}},
	} {
		c.in.ChannelID = ch.ID
		_, err := w.Desk.Ingest(context.Background(), c.in)
		var de *desk.Error
		if !errors.As(err, &de) || de.Code != desk.CodeValidation || de.Field != c.field {
			t.Errorf("%s with a NUL: %v, want a validation error on %s", c.field, err, c.field)
		}
	}
	if n := w.Client().Contact.Query().CountX(context.Background()); n != 0 {
		t.Fatalf("%d contacts stored, want none", n)
	}
}
