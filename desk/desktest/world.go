package desktest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// World is a desk over a fresh database with a fake clock, and helpers to
// build what a rule's test needs: operators, queues, channels, messages.
type World struct {
	T     testing.TB
	DB    *store.DB
	Desk  *desk.Desk
	Clock *Clock
	seq   atomic.Int64
}

// New returns a World on a fresh database (SQLite, or PostgreSQL when
// TEST_DATABASE_URL is set).
func New(t testing.TB) *World {
	t.Helper()
	db := storetest.Open(t)
	return NewOn(t, db, NewClock())
}

// NewOn returns a World on an existing database and clock: a second
// instance, or the same one after a restart.
func NewOn(t testing.TB, db *store.DB, clock *Clock) *World {
	t.Helper()
	return NewWith(t, db, clock)
}

// NewWith is NewOn with more options for the desk (adapters, files).
func NewWith(t testing.TB, db *store.DB, clock *Clock, opts ...desk.Option) *World {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d := desk.New(db.Client, append([]desk.Option{desk.WithDialect(db.Dialect), desk.WithWriteLock(db.WriteLock()), desk.WithClock(clock), desk.WithLogger(log),
		desk.WithConfig(desk.Config{PasswordCost: bcrypt.MinCost, SessionTTL: 12 * time.Hour})}, opts...)...)
	w := &World{T: t, DB: db, Desk: d, Clock: clock}
	if _, err := d.Settings(context.Background()); err != nil {
		t.Fatalf("settings: %v", err)
	}
	return w
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Client is the ent client.
func (w *World) Client() *ent.Client { return w.DB.Client }

// Ctx is a context acting as nobody (the system).
func (w *World) Ctx() context.Context { return context.Background() }

// As returns a context acting as the operator.
func (w *World) As(op *ent.Operator) context.Context {
	return desk.WithActor(context.Background(), &desk.Actor{OperatorID: op.ID, Role: op.Role})
}

// AsIntegration returns a context acting as an integration API key.
func (w *World) AsIntegration() context.Context {
	return desk.WithActor(context.Background(), &desk.Actor{APIKeyID: 1, APIKeyRole: enum.ApiKeyIntegration})
}

// AsAdmin returns a context acting as an administrator API key.
func (w *World) AsAdmin() context.Context {
	return desk.WithActor(context.Background(), &desk.Actor{APIKeyID: 1, APIKeyRole: enum.ApiKeyAdmin})
}

func (w *World) next() int64 { return w.seq.Add(1) }

// Operator creates an operator with the given status (and optional limit).
func (w *World) Operator(status enum.OperatorStatus, limit ...int) *ent.Operator {
	w.T.Helper()
	n := w.next()
	now := w.Desk.Now()
	c := w.Client().Operator.Create().SetEmail(fmt.Sprintf("op%d@test.parley", n)).
		SetName(fmt.Sprintf("Operator %d", n)).SetPasswordHash("x").SetStatus(status).
		SetCreatedAt(now).SetUpdatedAt(now)
	if len(limit) > 0 {
		c.SetChatLimit(limit[0])
	}
	op, err := c.Save(context.Background())
	if err != nil {
		w.T.Fatalf("create operator: %v", err)
	}
	return op
}

// QueueOption adjusts a queue before it is created.
type QueueOption func(*ent.QueueCreate)

// Queue creates a queue with a rule and members.
func (w *World) Queue(rule enum.RoutingRule, members []*ent.Operator, opts ...QueueOption) *ent.Queue {
	w.T.Helper()
	now := w.Desk.Now()
	c := w.Client().Queue.Create().SetName(fmt.Sprintf("Queue %d", w.next())).SetRoutingRule(rule).
		SetCreatedAt(now).SetUpdatedAt(now)
	for _, m := range members {
		c.AddMemberIDs(m.ID)
	}
	for _, o := range opts {
		o(c)
	}
	q, err := c.Save(context.Background())
	if err != nil {
		w.T.Fatalf("create queue: %v", err)
	}
	return q
}

// Channel creates an active channel of the provider in the queue.
func (w *World) Channel(q *ent.Queue, p enum.Provider) *ent.Channel {
	w.T.Helper()
	now := w.Desk.Now()
	ch, err := w.Client().Channel.Create().SetName(fmt.Sprintf("Channel %d", w.next())).SetProvider(p).
		SetQueueID(q.ID).SetCreatedAt(now).SetUpdatedAt(now).Save(context.Background())
	if err != nil {
		w.T.Fatalf("create channel: %v", err)
	}
	return ch
}

// WebhookChannel creates an active channel of the provider in the queue and
// returns it with what the webhook handler passes the desk for it.
func (w *World) WebhookChannel(q *ent.Queue, p enum.Provider) (*ent.Channel, channels.Channel) {
	w.T.Helper()
	ch := w.Channel(q, p)
	wc, err := w.Desk.WebhookChannel(context.Background(), ch.ID, p)
	if err != nil {
		w.T.Fatalf("webhook channel: %v", err)
	}
	return ch, wc
}

// Inbound delivers a customer message from the identity on the channel.
func (w *World) Inbound(ch *ent.Channel, externalID, text string) *desk.IngestResult {
	w.T.Helper()
	res, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID,
		Identity: desk.InboundIdentity{ExternalID: externalID, Name: "Customer " + externalID}, Text: text})
	if err != nil {
		w.T.Fatalf("ingest: %v", err)
	}
	return res
}

// RunJobs runs every job due at the clock's time.
func (w *World) RunJobs() int {
	w.T.Helper()
	n, err := w.Desk.RunDueJobs(context.Background())
	if err != nil {
		w.T.Fatalf("run jobs: %v", err)
	}
	return n
}

// Chat re-reads a chat.
func (w *World) Chat(id int) *ent.Chat {
	w.T.Helper()
	c, err := w.Client().Chat.Get(context.Background(), id)
	if err != nil {
		w.T.Fatalf("chat %d: %v", id, err)
	}
	return c
}

// OperatorNow re-reads an operator.
func (w *World) OperatorNow(id int) *ent.Operator {
	w.T.Helper()
	op, err := w.Client().Operator.Get(context.Background(), id)
	if err != nil {
		w.T.Fatalf("operator %d: %v", id, err)
	}
	return op
}

// Code returns the desk error code of err ("" for nil).
func Code(err error) desk.Code {
	if err == nil {
		return ""
	}
	var de *desk.Error
	if errors.As(err, &de) {
		return de.Code
	}
	return desk.AsError(err).Code
}

// WantCode fails the test unless err carries the code.
func (w *World) WantCode(err error, code desk.Code) {
	w.T.Helper()
	if got := Code(err); got != code {
		w.T.Fatalf("error code = %q (%v), want %q", got, err, code)
	}
}

// Must fails the test on err.
func (w *World) Must(err error) {
	w.T.Helper()
	if err != nil {
		w.T.Fatal(err)
	}
}
