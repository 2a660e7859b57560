package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

// On PostgreSQL a request's use case waits for a transaction slot
// (PARLEY_PG_TRANSACTIONS) before it begins. A client that hangs up
// meanwhile ends the wait: its use case writes nothing, the server logs the
// request's end below ERROR, /readyz shows the waiter gone, and the slot
// serves the next request once free; a provider's webhook delivered again
// is then stored once. The clients are real ones, over real connections:
// the hang-up reaches the use case as net/http's cancellation of the
// request.
func TestAClientThatHangsUpWhileWaitingForATransactionSlot(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): SQLite's writers queue on its write lock")
	}
	t.Parallel()
	db, hd := storetest.WithHolder(storetest.Open(t))
	r := newRig(t, apptest.WithDB(db), apptest.WithConfig(func(c *app.Config) { c.PGTransactions = 1 }))
	tg := r.channel(t, "TELEGRAM", nil)
	update := apptest.Fixture(t, "telegram", "inbound_text.json")

	for _, tc := range []struct {
		name, path, contentType string
		header                  http.Header
		body                    []byte
		logged                  string // the INFO line of the request's end
		written                 func() int
	}{{
		name: "GraphQL", path: "/graphql", contentType: "application/json",
		header: http.Header{"Authorization": {"Bearer " + r.admin}},
		body:   []byte(`{"query": "mutation { createQueue(input: {name: \"Gave up\"}) { id } }"}`),
		logged: "code=CANCELLED",
		written: func() int {
			return r.s.Client().Queue.Query().Where(queue.Name("Gave up")).CountX(context.Background())
		},
	}, {
		name: "webhook", path: "/webhooks/telegram/" + strconv.Itoa(tg), contentType: "application/json",
		header: http.Header{"X-Telegram-Bot-Api-Secret-Token": {tgSecret}},
		body:   update,
		logged: "webhook: apply delivery: the request ended first",
		written: func() int {
			return r.s.Client().Message.Query().Where(message.TextContains("Hello")).CountX(context.Background())
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			// The first transaction a request begins keeps the only slot.
			h := hd.Arm(t, apptest.FromRequest)
			first := make(chan apptest.Response, 1)
			go func() {
				first <- r.s.Do(t, r.admin, `mutation { createQueue(input: {name: "First `+tc.name+`"}) { id } }`, nil)
			}()
			<-h.Held()
			if load := readyTransactions(t, r.s.URL); load.Slots != 1 || load.InUse != 1 || load.Waiting != 0 {
				t.Fatalf("/readyz while the slot is held: %+v, want 1 slot, in use, no waiter", load)
			}

			ctx, hangUp := context.WithCancel(context.Background())
			defer hangUp()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.s.URL+tc.path, bytes.NewReader(tc.body))
			req.Header = tc.header.Clone()
			req.Header.Set("Content-Type", tc.contentType)
			answered := make(chan error, 1)
			go func() {
				res, err := http.DefaultClient.Do(req)
				if err == nil {
					res.Body.Close()
				}
				answered <- err
			}()
			awaitTransactions(t, r.s.URL, "the request waits for the slot", func(l desk.TransactionLoad) bool { return l.Waiting == 1 })
			hangUp()
			if err := <-answered; !errors.Is(err, context.Canceled) {
				t.Fatalf("the client that hung up got %v, want its own cancellation", err)
			}
			awaitTransactions(t, r.s.URL, "the wait ended with the client", func(l desk.TransactionLoad) bool { return l.Waiting == 0 })

			h.Release()
			(<-first).OK(t)
			if n := tc.written(); n != 0 {
				t.Fatalf("the request that gave up wrote %d rows", n)
			}
			logs := r.s.Logs()
			if strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, tc.logged) {
				t.Fatalf("the request that gave up was logged as:\n%s\nwant %q, below ERROR", logs, tc.logged)
			}
			// The slot serves the next request: the same one again, as
			// a provider delivers a webhook it got no answer to.
			res, err := http.DefaultClient.Do(func() *http.Request {
				again, _ := http.NewRequest(http.MethodPost, r.s.URL+tc.path, bytes.NewReader(tc.body))
				again.Header = req.Header.Clone()
				return again
			}())
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK || tc.written() != 1 {
				t.Fatalf("the request sent again: %d, %d rows written; want 200 and one", res.StatusCode, tc.written())
			}
		})
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
