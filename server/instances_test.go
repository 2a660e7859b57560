package main

// R10 with real processes: two server instances share one PostgreSQL
// database; integrators deliver customer messages to both, operators work
// their panels on both, both run the timers; the invariants of
// desktest.Invariants hold during the run and at rest.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
)

const (
	r10AdminEmail    = "admin@r10.parley"
	r10AdminPassword = "r10-admin-password"
)

func TestR10_TwoServerProcesses(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("R10 across processes needs PostgreSQL (set TEST_DATABASE_URL): two processes on one SQLite file are not a supported deployment")
	}
	began := time.Now()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PARLEY_TEST_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PARLEY_TEST_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("seed %d (replay with PARLEY_TEST_SEED=%d)", seed, seed)
	dbURL := storetest.URL(t)
	bin := r10Build(t)

	// Both processes start at once on the empty database: the migration
	// and the first administrator must be safe to race.
	var procs [2]*r10Proc
	var starting sync.WaitGroup
	for i := range procs {
		starting.Go(func() { procs[i] = r10Start(t, bin, dbURL, fmt.Sprintf("parley-%d", i+1)) })
	}
	starting.Wait()
	if procs[0] == nil || procs[1] == nil {
		t.FailNow()
	}
	t.Logf("built and started two servers in %v", time.Since(began).Round(time.Millisecond))
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var admins int
	if err := db.QueryRow(`SELECT COUNT(*) FROM operators WHERE email = $1`, r10AdminEmail).Scan(&admins); err != nil || admins != 1 {
		t.Fatalf("administrators after two starts: %d (%v), want 1", admins, err)
	}
	pick := func(r *rand.Rand) *r10Proc { return procs[r.IntN(len(procs))] }

	// Administration, on either instance.
	r := rand.New(rand.NewPCG(seed, 0))
	admin := pick(r).login(t, r10AdminEmail, r10AdminPassword)
	type idOut struct{ ID string }
	var qAll, qAvail struct{ CreateQueue idOut }
	pick(r).must(t, admin, `mutation($in: CreateQueueInput!) { createQueue(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"name": "All", "routingRule": "TO_ALL"}}, &qAll)
	pick(r).must(t, admin, `mutation($in: CreateQueueInput!) { createQueue(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"name": "Available", "routingRule": "TO_AVAILABLE",
			"acceptTimeoutSeconds": 5, "acceptTimeoutAction": "COUNT_MISSED"}}, &qAvail)
	queues := []string{qAll.CreateQueue.ID, qAvail.CreateQueue.ID}
	var channels []string
	for i, q := range queues {
		var ch struct{ CreateChannel idOut }
		pick(r).must(t, admin, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id } }`,
			map[string]any{"in": map[string]any{"name": fmt.Sprintf("api-%d", i), "provider": "API", "queueID": q}}, &ch)
		channels = append(channels, ch.CreateChannel.ID)
	}
	var key struct{ CreateApiKey struct{ Key string } }
	pick(r).must(t, admin, `mutation { createApiKey(input: {name: "integration", role: INTEGRATION}) { key } }`, nil, &key)

	// Operators with limit 3: the first third in the TO_ALL queue, the last
	// third in the TO_AVAILABLE one, the middle in both. They log in on
	// either instance and turn ACTIVE.
	const operators = 12
	// A quarter of the operators, members of the TO_AVAILABLE queue only,
	// never accept: their offers time out (5 s) and go to the next one.
	slow := func(i int) bool { return i%4 == 3 }
	type op struct {
		id    string
		token string
	}
	ops := make([]op, operators)
	var setup sync.WaitGroup
	var setupErr atomic.Value
	for i := range ops {
		setup.Go(func() {
			r := rand.New(rand.NewPCG(seed, 100+uint64(i)))
			var member []string
			if i < 2*operators/3 && !slow(i) {
				member = append(member, queues[0])
			}
			if i >= operators/3 || slow(i) {
				member = append(member, queues[1])
			}
			email := fmt.Sprintf("op%d@r10.parley", i)
			var created struct{ CreateOperator idOut }
			if err := pick(r).call(admin, `mutation($in: CreateOperatorInput!) { createOperator(input: $in) { id } }`,
				map[string]any{"in": map[string]any{"email": email, "name": fmt.Sprintf("Operator %d", i),
					"password": "operator-password", "chatLimit": 3, "queueIDs": member}}, &created); err != nil {
				setupErr.Store(err)
				return
			}
			var login struct{ Login struct{ Token string } }
			if err := pick(r).call("", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
				map[string]any{"e": email, "p": "operator-password"}, &login); err != nil {
				setupErr.Store(err)
				return
			}
			ops[i] = op{id: created.CreateOperator.ID, token: login.Login.Token}
			if err := pick(r).call(ops[i].token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil, nil); err != nil {
				setupErr.Store(err)
			}
		})
	}
	setup.Wait()
	if err, _ := setupErr.Load().(error); err != nil {
		t.Fatalf("setup: %v", err)
	}
	t.Logf("set up %d operators at %v", operators, time.Since(began).Round(time.Millisecond))

	iv := desktest.NewInvariants(db, true)
	runStart := time.Now()
	var (
		stop     = make(chan struct{})
		bg       sync.WaitGroup
		failed   atomic.Bool
		outMu    sync.Mutex
		outcomes = map[string]int{}
		acked    sync.Map // message id (provider's) -> [2]string{message id, chat id}
		newChats atomic.Int64
		checks   atomic.Int64
		found    []string
	)
	fail := func(format string, args ...any) {
		failed.Store(true)
		t.Errorf(format, args...)
	}
	count := func(call string, err error) string {
		code := "ok"
		if err != nil {
			var ge *r10Error
			if !errors.As(err, &ge) {
				fail("%s: %v", call, err)
				return "transport"
			}
			code = ge.code
		}
		outMu.Lock()
		outcomes[call+" "+code]++
		outMu.Unlock()
		return code
	}

	// The checker: invariants over the shared database during the run.
	bg.Go(func() {
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			rep, err := iv.Check(context.Background(), desktest.CheckOptions{})
			if err != nil {
				fail("invariants: %v", err)
				return
			}
			checks.Add(1)
			for _, v := range rep.Violations {
				if !slices.Contains(found, v) && len(found) < 40 {
					found = append(found, v)
				}
			}
		}
	})

	// Operators accept, reply, complete and switch status on random
	// instances (the slow ones only watch their panel).
	for i, o := range ops {
		bg.Go(func() {
			r := rand.New(rand.NewPCG(seed, 200+uint64(i)))
			pace := time.NewTicker(20 * time.Millisecond)
			defer pace.Stop()
			for {
				select {
				case <-stop:
					return
				case <-pace.C: // a person's pace, not a busy loop
				}
				var p struct {
					Panel struct {
						Me       struct{ Operator struct{ Status string } }
						NewChats []struct{ Chat idOut }
						Active   []struct{ Chat idOut } `json:"activeChats"`
					}
				}
				if err := pick(r).call(o.token, `{ panel { me { operator { status } } newChats { chat { id } } activeChats { chat { id } } } }`, nil, &p); err != nil {
					fail("panel: %v", err)
					return
				}
				if slow(i) {
					continue
				}
				switch status := p.Panel.Me.Operator.Status; {
				case status == "INACTIVE" && r.IntN(3) == 0, status == "ACTIVE" && r.IntN(30) == 0:
					next := map[string]string{"ACTIVE": "INACTIVE", "INACTIVE": "ACTIVE"}[status]
					if code := count("setMyStatus", pick(r).call(o.token, `mutation($s: OperatorStatus!) { setMyStatus(status: $s) { status } }`,
						map[string]any{"s": next}, nil)); code != "ok" {
						fail("setMyStatus %s: %s", next, code)
					}
				}
				if n := len(p.Panel.NewChats); n > 0 && r.IntN(10) < 7 {
					id := p.Panel.NewChats[r.IntN(n)].Chat.ID
					switch code := count("acceptChat", pick(r).call(o.token, `mutation($id: ID!) { acceptChat(id: $id) { id } }`,
						map[string]any{"id": id}, nil)); code {
					case "ok", "CHAT_ALREADY_TAKEN", "CHAT_NOT_OFFERED", "CHAT_COMPLETED":
					default:
						fail("acceptChat %s: %s", id, code)
					}
				}
				for _, c := range p.Panel.Active {
					var code string
					switch x := r.IntN(10); {
					case x < 3:
						code = count("completeChat", pick(r).call(o.token, `mutation($id: ID!) { completeChat(id: $id) { id } }`,
							map[string]any{"id": c.Chat.ID}, nil))
					case x < 6:
						code = count("sendMessage", pick(r).call(o.token, `mutation($id: ID!) { sendMessage(chatId: $id, text: "reply") { id } }`,
							map[string]any{"id": c.Chat.ID}, nil))
					default:
						continue
					}
					if code != "ok" && code != "CHAT_COMPLETED" && code != "NOT_CHAT_OWNER" {
						fail("chat %s: %s", c.Chat.ID, code)
					}
				}
			}
		})
	}

	// Integrators deliver new customers' first messages and follow-ups on
	// both instances at once.
	const ingesters, perIngester = 16, 25
	var ing sync.WaitGroup
	for g := range ingesters {
		ing.Go(func() {
			r := rand.New(rand.NewPCG(seed, 1000+uint64(g)))
			var mine [][2]string // customer, channel
			for k := range perIngester {
				if failed.Load() {
					return
				}
				c := [2]string{fmt.Sprintf("cust-%d-%d", g, k), channels[r.IntN(len(channels))]}
				follow := len(mine) > 0 && r.IntN(3) == 0
				if follow {
					c = mine[r.IntN(len(mine))]
				}
				msgID := fmt.Sprintf("m-%d-%d", g, k)
				var out struct {
					SimulateInbound struct {
						Chat    idOut
						Message idOut
						NewChat bool
						Dup     bool `json:"duplicate"`
					}
				}
				err := pick(r).call(key.CreateApiKey.Key, `mutation($in: InboundMessageInput!) {
				  simulateInbound(input: $in) { chat { id } message { id } newChat duplicate } }`,
					map[string]any{"in": map[string]any{"channelId": c[1], "externalId": c[0], "messageId": msgID,
						"text": "hello " + msgID, "name": "Customer " + c[0]}}, &out)
				if code := count("simulateInbound", err); code != "ok" {
					fail("simulateInbound %s: %s", msgID, code)
					return
				}
				res := out.SimulateInbound
				if res.Dup || (!follow && !res.NewChat) {
					fail("simulateInbound %s: new chat %v, duplicate %v", msgID, res.NewChat, res.Dup)
				}
				if res.NewChat {
					newChats.Add(1)
				}
				acked.Store(msgID, [2]string{res.Message.ID, res.Chat.ID})
				if !follow {
					mine = append(mine, c)
				}
			}
		})
	}
	ing.Wait()
	// Let the operators and the timers (5 s accept timeouts) work a little
	// longer, then stop.
	if rest := 8*time.Second - time.Since(runStart); rest > 0 {
		<-time.After(rest)
	}
	close(stop)
	bg.Wait()
	for _, p := range procs {
		if p.exited() {
			t.Fatalf("instance %s exited during the run:\n%s", p.name, p.logs.String())
		}
		for _, line := range strings.Split(p.logs.String(), "\n") {
			if strings.Contains(line, "level=ERROR") {
				t.Errorf("instance %s logged an error: %s", p.name, line)
			}
		}
	}
	outMu.Lock()
	t.Logf("run done at %v, %d checks; outcomes: %v", time.Since(began).Round(time.Millisecond), checks.Load(), outcomes)
	outMu.Unlock()
	for _, v := range found {
		t.Errorf("during the run: invariant violated: %s", v)
	}
	if failed.Load() {
		t.FailNow()
	}
	if checks.Load() < 3 {
		t.Errorf("only %d invariant checks ran during the run", checks.Load())
	}

	// At rest: everyone ACTIVE; the instances' schedulers run the releases
	// and the timers due (within about a second); then no chat may be lost.
	for _, o := range ops {
		if err := pick(r).call(o.token, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil, nil); err != nil {
			t.Fatalf("setMyStatus ACTIVE: %v", err)
		}
	}
	var rep *desktest.Report
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		// The servers run on the wall clock; allow the scheduler's poll.
		rep, err = iv.Check(context.Background(), desktest.CheckOptions{Quiescent: true, Now: time.Now().Add(-2 * time.Second)})
		if err != nil {
			t.Fatalf("invariants: %v", err)
		}
		// An offer expires 5 s after it was made if nobody took it: on a
		// loaded machine the run can end before the first does. The servers
		// go on running, so the wait goes on until one has (or the
		// deadline, and the check below fails).
		if (rep.OK() && rep.Offers["EXPIRED"] > 0) || time.Now().After(deadline) {
			break
		}
		<-time.After(200 * time.Millisecond) // bounded wait for the schedulers
	}
	for _, v := range rep.Violations {
		t.Errorf("at rest: invariant violated: %s", v)
	}
	t.Logf("at rest: chats %v, offers %v, jobs %v, %d routing decisions", rep.Chats, rep.Offers, rep.Jobs, rep.Decisions)
	if rep.Offers["ACCEPTED"] == 0 || rep.Chats["COMPLETED"] == 0 || rep.Offers["EXPIRED"] == 0 {
		t.Errorf("the run accepted %d, completed %d chats and let %d offers expire; want some of each",
			rep.Offers["ACCEPTED"], rep.Chats["COMPLETED"], rep.Offers["EXPIRED"])
	}

	// Every acknowledged message is stored once, in the chat it was
	// acknowledged with; every new chat acknowledged is stored.
	rows, err := db.Query(`SELECT id, provider_message_id, chat_id FROM messages WHERE direction = 'INBOUND'`)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for rows.Next() {
		var id, chat int
		var pmid string
		if err := rows.Scan(&id, &pmid, &chat); err != nil {
			t.Fatal(err)
		}
		stored++
		v, ok := acked.Load(pmid)
		if !ok {
			t.Errorf("message %s stored but never acknowledged", pmid)
			continue
		}
		if ack := v.([2]string); ack != [2]string{strconv.Itoa(id), strconv.Itoa(chat)} {
			t.Errorf("message %s stored as %d in chat %d, acknowledged as %v", pmid, id, chat, ack)
		}
	}
	rows.Close()
	if stored != ingesters*perIngester {
		t.Errorf("%d inbound messages stored, %d acknowledged", stored, ingesters*perIngester)
	}
	var chats int
	if err := db.QueryRow(`SELECT COUNT(*) FROM chats`).Scan(&chats); err != nil {
		t.Fatal(err)
	}
	if chats != int(newChats.Load()) {
		t.Errorf("%d chats stored, %d acknowledged as new", chats, newChats.Load())
	}
	t.Logf("done at %v", time.Since(began).Round(time.Millisecond))
}

// r10Build builds the server binary once for the test, from the module root.
func r10Build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley")
	cmd := exec.Command("go", "build", "-o", bin, "./server")
	cmd.Dir = ".." // the test runs in server/
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// r10Proc is a server process.
type r10Proc struct {
	name string
	base string
	cmd  *exec.Cmd
	logs *r10Log
	done chan struct{}
}

func (p *r10Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// r10Log keeps what a process wrote.
type r10Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *r10Log) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *r10Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// r10Start starts the binary on a free loopback port and waits for /readyz;
// it is stopped (SIGTERM, then SIGKILL) at the end of the test.
func r10Start(t *testing.T, bin, dbURL, name string) *r10Proc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p, err := r10Launch(t, bin, dbURL, name)
		if err == nil {
			return p
		}
		// A port found free may be taken before the server binds it.
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			continue
		}
		t.Errorf("instance %s: %v", name, err)
		return nil
	}
}

func r10Launch(t *testing.T, bin, dbURL, name string) (*r10Proc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "PARLEY_") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(bin)
	cmd.Env = append(env, "DATABASE_URL="+dbURL, "PARLEY_ADDR="+addr, "PARLEY_DATA_DIR="+t.TempDir(),
		"PARLEY_ADMIN_EMAIL="+r10AdminEmail, "PARLEY_ADMIN_PASSWORD="+r10AdminPassword, "PARLEY_LOG_LEVEL=warn")
	p := &r10Proc{name: name, base: "http://" + addr, cmd: cmd, logs: &r10Log{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(45 * time.Second)
	for {
		if p.exited() {
			return nil, fmt.Errorf("exited before it was ready (%v):\n%s", cmd.ProcessState, p.logs.String())
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not ready within 45s:\n%s", p.logs.String())
		}
		res, err := client.Get(p.base + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		<-time.After(50 * time.Millisecond) // bounded readiness polling
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, p.logs.String())
		}
	})
	return p, nil
}

// r10Error is a GraphQL error with its extensions.code.
type r10Error struct{ code, msg string }

func (e *r10Error) Error() string { return e.code + ": " + e.msg }

var r10Client = &http.Client{Timeout: 30 * time.Second}

// call runs a GraphQL operation on the instance and decodes its data into
// out. A GraphQL error is returned as *r10Error; anything else (transport,
// HTTP status, undecodable answer) as another error.
func (p *r10Proc) call(token, query string, vars map[string]any, out any) error {
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, p.base+"/graphql", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := r10Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("%s: read: %w", p.name, err)
	}
	var env struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Message    string         `json:"message"`
			Extensions map[string]any `json:"extensions"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("%s: HTTP %d, not JSON: %s", p.name, res.StatusCode, raw)
	}
	if len(env.Errors) > 0 {
		code, _ := env.Errors[0].Extensions["code"].(string)
		return &r10Error{code: code, msg: fmt.Sprintf("%s (%s, HTTP %d)", env.Errors[0].Message, p.name, res.StatusCode)}
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", p.name, res.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return fmt.Errorf("%s: decode %s: %w", p.name, env.Data, err)
		}
	}
	return nil
}

// must is call that fails the test on any error (the test's goroutine).
func (p *r10Proc) must(t *testing.T, token, query string, vars map[string]any, out any) {
	t.Helper()
	if err := p.call(token, query, vars, out); err != nil {
		t.Fatalf("%s: %v", strings.Fields(query)[0], err)
	}
}

func (p *r10Proc) login(t *testing.T, email, password string) string {
	t.Helper()
	var out struct{ Login struct{ Token string } }
	p.must(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": email, "p": password}, &out)
	return out.Login.Token
}
