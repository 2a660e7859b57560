package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

// On PostgreSQL a request's use case waits for a transaction slot
// (PARLEY_PG_TRANSACTIONS) before it begins. A client that hangs up
// meanwhile ends the wait: its use case writes nothing, the server logs the
// request's end below ERROR, /readyz shows the waiter gone, and the slot
// serves the next request once free. The client is a real one, over a real
// connection: its hang-up reaches the use case as net/http's cancellation of
// the request.
func TestAClientThatHangsUpWhileWaitingForATransactionSlot(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite's writers queue on its write lock")
	}
	t.Parallel()
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	db := storetest.Open(t).WithQueryHook(func(ctx context.Context, statement string) {
		// The first transaction a request begins once armed keeps the
		// only slot until released.
		if strings.HasSuffix(statement, ": started") && apptest.FromRequest(ctx) && hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	})
	s := apptest.New(t, apptest.WithDB(db), apptest.WithConfig(func(c *app.Config) { c.PGTransactions = 1 }))
	// A failure before the release below must not leave the first
	// request, and the server's shutdown, waiting for ever.
	free := sync.OnceFunc(func() { close(release) })
	t.Cleanup(free)
	admin := s.AdminToken(t)
	createQueue := func(name string) string {
		return `mutation { createQueue(input: {name: "` + name + `"}) { id } }`
	}

	hold.Store(true)
	first := make(chan apptest.Response, 1)
	go func() { first <- s.Do(t, admin, createQueue("First"), nil) }()
	<-held
	if load := readyTransactions(t, s.URL); load.Slots != 1 || load.InUse != 1 || load.Waiting != 0 {
		t.Fatalf("/readyz while the slot is held: %+v, want 1 slot, in use, no waiter", load)
	}

	ctx, hangUp := context.WithCancel(context.Background())
	defer hangUp()
	body, _ := json.Marshal(map[string]any{"query": createQueue("Gave up")})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+admin)
	answered := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		answered <- err
	}()
	awaitTransactions(t, s.URL, "the second request waits for the slot", func(l desk.TransactionLoad) bool { return l.Waiting == 1 })
	hangUp()
	if err := <-answered; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client that hung up got %v, want its own cancellation", err)
	}
	awaitTransactions(t, s.URL, "the wait ended with the client", func(l desk.TransactionLoad) bool { return l.Waiting == 0 })

	free()
	(<-first).OK(t)
	s.Do(t, admin, createQueue("After"), nil).OK(t)
	var names []string
	for _, q := range s.Client().Queue.Query().Order(queue.ByID()).AllX(context.Background()) {
		names = append(names, q.Name)
	}
	if got := strings.Join(names, ","); got != "First,After" {
		t.Errorf("queues %q, want First and After: the request that gave up must write nothing", got)
	}
	logs := s.Logs()
	if strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "code=CANCELLED") {
		t.Errorf("the request that gave up was logged as:\n%s\nwant CANCELLED, below ERROR", logs)
	}
}

// readyTransactions reads the transaction slots' load from /readyz.
func readyTransactions(t *testing.T, base string) desk.TransactionLoad {
	t.Helper()
	res, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Status       string                `json:"status"`
		Transactions *desk.TransactionLoad `json:"transactions"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || res.StatusCode != http.StatusOK || body.Transactions == nil {
		t.Fatalf("/readyz: %d, %+v (%v); want ready with the transaction slots' load", res.StatusCode, body, err)
	}
	return *body.Transactions
}

// awaitTransactions polls /readyz until cond holds, for at most 10 s: the
// server's side of a wait has no event a client can await.
func awaitTransactions(t *testing.T, base, what string, cond func(desk.TransactionLoad) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		load := readyTransactions(t, base)
		if cond(load) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %+v", what, load)
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by the deadline
	}
}
