package main_test

// Scale-out of live subscriptions (R12, DESIGN principles 4 and 6) with real
// processes: two server instances share one PostgreSQL database; an event
// committed by instance A reaches a panel subscriber connected to instance B
// (LISTEN/NOTIFY), and when B's LISTEN connection is killed, B reconnects
// and its subscribers still receive every event exactly once, in order,
// while a subscriber that resumes on B with `after` gets the same events as
// the event log holds.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/desk/store/storetest"
)

const (
	adminEmail    = "ada@instances.parley"
	adminPassword = "instances-admin-password"
	// waitTimeout bounds every wait for a server: a missing event fails the
	// test instead of hanging it (the hubs poll every second at worst).
	waitTimeout = 15 * time.Second
)

func TestR12_LiveEventsReachEveryInstanceAndSurviveAListenerDrop(t *testing.T) {
	if os.Getenv("TEST_DATABASE_URL") == "" {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): instances share events through LISTEN/NOTIFY; SQLite serves one instance")
	}
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		t.Skip("needs Linux /proc to find instance B's LISTEN connection among the database's backends")
	}
	dbURL := storetest.URL(t) // a fresh schema, dropped at the end
	bin := buildServer(t)

	// Both instances start together on the empty database: migrations and
	// the first administrator are serialised in the database.
	var a, b *instance
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a = startInstance(t, bin, dbURL, "A") }()
	go func() { defer wg.Done(); b = startInstance(t, bin, dbURL, "B") }()
	wg.Wait()
	if a == nil || b == nil {
		t.FailNow()
	}

	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	// Administration through instance A.
	adminToken := login(t, a, adminEmail, adminPassword)
	var op struct{ CreateOperator struct{ ID string } }
	a.do(t, adminToken, `mutation($in: CreateOperatorInput!) { createOperator(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"email": "olga@instances.parley", "name": "Olga", "password": "operator-password"}}, &op)
	opID, err := strconv.Atoi(op.CreateOperator.ID)
	if err != nil {
		t.Fatalf("operator id %q: %v", op.CreateOperator.ID, err)
	}
	var queue struct{ CreateQueue struct{ ID string } }
	a.do(t, adminToken, `mutation($in: CreateQueueInput!) { createQueue(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"name": "Sales", "routingRule": "TO_ALL", "chatLimit": 1000,
			"memberIDs": []string{op.CreateOperator.ID}}}, &queue)
	var channel struct{ CreateChannel struct{ ID string } }
	a.do(t, adminToken, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"name": "api", "provider": "API", "queueID": queue.CreateQueue.ID}}, &channel)
	var key struct{ CreateApiKey struct{ Key string } }
	a.do(t, adminToken, `mutation { createApiKey(input: {name: "integration", role: INTEGRATION}) { key } }`, nil, &key)
	opToken := login(t, a, "olga@instances.parley", "operator-password")
	a.do(t, opToken, `mutation { setMyStatus(status: ACTIVE) { status } }`, nil, nil)

	// deliver sends a customer message through instance A and returns the
	// chat id; inbound is the same from the test's goroutine.
	deliver := func(customer, text string) (string, error) {
		var out struct {
			SimulateInbound struct{ Chat struct{ ID string } }
		}
		err := a.query(key.CreateApiKey.Key, `mutation($ch: ID!, $c: String!, $t: String!) {
		  simulateInbound(input: {channelId: $ch, externalId: $c, text: $t}) { chat { id } } }`,
			map[string]any{"ch": channel.CreateChannel.ID, "c": customer, "t": text}, &out)
		return out.SimulateInbound.Chat.ID, err
	}
	inbound := func(t *testing.T, customer, text string) string {
		t.Helper()
		id, err := deliver(customer, text)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	// The operator follows the panel on instance B, from the newest event
	// (so that nothing can fall between the subscription's start and the
	// trigger).
	start := lastEventID(t, db)
	liveWS := b.connect(t, opToken)
	liveWS.subscribe(t, "1", start)

	chatID := inbound(t, "first", "hello")
	ev := liveWS.nextEvent(t, "1")
	if ev.Type != "CHAT_OFFERED" || !ev.Notify || ev.ChatID != chatID {
		t.Fatalf("B's subscriber got %+v, want CHAT_OFFERED with notify for chat %s committed on A", ev, chatID)
	}
	before := ev.id(t)

	// Kill B's LISTEN connection (only B's: A's and other tests' listeners
	// stay up) again and again while A keeps producing: notifications sent
	// while it reconnects are lost, and B must catch up from the log.
	var produced sync.WaitGroup
	produceErrs := make(chan error, 100)
	produce := func(round string, producers, each int) {
		for p := range producers {
			produced.Add(1)
			go func() {
				defer produced.Done()
				for i := range each {
					if _, err := deliver(fmt.Sprintf("%s-p%d-%d", round, p, i), "hi"); err != nil {
						produceErrs <- err
						return
					}
				}
			}()
		}
	}
	waitProduced := func() {
		t.Helper()
		produced.Wait()
		select {
		case err := <-produceErrs:
			t.Fatal(err)
		default:
		}
	}
	firstListener := listenerBackend(t, db, b)
	produce("during", 4, 10)
	producing := make(chan struct{})
	go func() { produced.Wait(); close(producing) }()
	var killed []int
	lostWindows := 0
	for done := false; !done || len(killed) < 3; {
		pid := listenerBackend(t, db, b, killed...) // waits for the reconnected one
		mark := lastEventID(t, db)
		var terminated bool
		if err := db.QueryRow(`SELECT pg_terminate_backend($1)`, pid).Scan(&terminated); err != nil || !terminated {
			t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, terminated, err)
		}
		killed = append(killed, pid)
		b.logs.waitForCount(t, "live: listener disconnected", len(killed))
		b.logs.waitForCount(t, "live: listener reconnected", len(killed))
		if lastEventID(t, db) != mark {
			lostWindows++ // events were committed while B's listener was away
		}
		select {
		case <-producing:
			done = true
		default:
		}
	}
	waitProduced()
	if pid := listenerBackend(t, db, b, killed...); pid == firstListener {
		t.Fatalf("B's listener is still backend %d after its termination", pid)
	}
	t.Logf("B's listener was terminated %d times while A produced; events were committed during %d of the outages", len(killed), lostWindows)

	// After the reconnect: more events, and a subscriber that resumes on B
	// with after while they are being produced (the seam between replay and
	// live stream).
	produce("after", 4, 5)
	resumeWS := b.connect(t, opToken)
	resumeWS.subscribe(t, "1", strconv.Itoa(before))
	waitProduced()

	// One offer per new customer. A new chat that finds its queue busy
	// routing another is offered by a release of the queue just after its
	// ingest commits, so the offers are awaited on the live subscriber
	// before the log is read: then the log must hold exactly what it got.
	received := map[string][]int{}
	for _, sub := range []struct {
		name string
		ws   *wsClient
	}{{"the live subscriber on B", liveWS}, {"the subscriber resumed on B", resumeWS}} {
		for len(received[sub.name]) < 60 {
			received[sub.name] = append(received[sub.name], sub.ws.nextEvent(t, "1").id(t))
		}
	}
	want := panelEvents(t, db, opID, before)
	if len(want) != 60 {
		t.Fatalf("the log holds %d panel events after %d, want 60 (one offer per new customer): %v", len(want), before, want)
	}
	for name, got := range received {
		if !slices.Equal(got, want) {
			t.Fatalf("%s received other events than the log's:\n got %v\nwant %v", name, got, want)
		}
	}
	// Nothing else is pending on either: the next event is a new one.
	last := want[len(want)-1]
	marker := inbound(t, "marker", "hi")
	for _, ws := range []*wsClient{liveWS, resumeWS} {
		ev := ws.nextEvent(t, "1")
		if ev.id(t) <= last || ev.Type != "CHAT_OFFERED" || ev.ChatID != marker {
			t.Fatalf("after the log's events came %+v, want the marker's CHAT_OFFERED for chat %s (a duplicate or a gap?)", ev, marker)
		}
	}
}

// buildServer builds this package's binary once for the test.
func buildServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// instance is a server process.
type instance struct {
	name string
	base string // http://127.0.0.1:port
	cmd  *exec.Cmd
	logs *logWatcher
}

// startInstance starts the binary on a free loopback port and waits until
// /readyz answers; the process is stopped (SIGTERM, then SIGKILL) at the
// end of the test, and its log shown if the test failed.
func startInstance(t *testing.T, bin, dbURL, name string) *instance {
	t.Helper()
	for attempt := 1; ; attempt++ {
		in, err := launch(t, bin, dbURL, name)
		if err == nil {
			return in
		}
		// A port found free may be taken before the server binds it.
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			continue
		}
		t.Errorf("instance %s: %v", name, err)
		return nil
	}
}

func launch(t *testing.T, bin, dbURL, name string) (*instance, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "PARLEY_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		"DATABASE_URL="+dbURL,
		"PARLEY_ADDR="+addr,
		"PARLEY_DATA_DIR="+t.TempDir(),
		"PARLEY_ADMIN_EMAIL="+adminEmail,
		"PARLEY_ADMIN_PASSWORD="+adminPassword,
		// info: the listener's disconnect and reconnect are awaited in the log.
		"PARLEY_LOG_LEVEL=info",
		// Subscribers are read only when the test looks: no graphql-transport-ws
		// ping deadline (two intervals) may expire meanwhile.
		"PARLEY_WS_PING_INTERVAL=2m",
	)
	logs := newLogWatcher()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	in := &instance{name: name, base: "http://" + addr, cmd: cmd, logs: logs}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("exited before it was ready (%v):\n%s", cmd.ProcessState, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not ready within 30s:\n%s", logs.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.base+"/readyz", nil)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		cancel()
		if err == nil && res.StatusCode == http.StatusOK {
			break
		}
		time.Sleep(100 * time.Millisecond) // bounded readiness polling
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("log of instance %s:\n%s", name, logs.String())
		}
	})
	return in, nil
}

// do runs a GraphQL operation and decodes its data into out; any error
// fails the test (call it from the test's goroutine).
func (in *instance) do(t testing.TB, token, query string, vars map[string]any, out any) {
	t.Helper()
	if err := in.query(token, query, vars, out); err != nil {
		t.Fatal(err)
	}
}

// query runs a GraphQL operation and decodes its data into out; a GraphQL
// error is an error.
func (in *instance) query(token, query string, vars map[string]any, out any) error {
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.base+"/graphql", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("instance %s: %w", in.name, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var r struct {
		Data   json.RawMessage `json:"data"`
		Errors []any           `json:"errors"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || res.StatusCode != http.StatusOK || len(r.Errors) > 0 {
		return fmt.Errorf("instance %s: HTTP %d %s\nfor %s", in.name, res.StatusCode, raw, query)
	}
	if out != nil {
		if err := json.Unmarshal(r.Data, out); err != nil {
			return fmt.Errorf("decode %s: %w", r.Data, err)
		}
	}
	return nil
}

func login(t *testing.T, in *instance, email, password string) string {
	t.Helper()
	var out struct{ Login struct{ Token string } }
	in.do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": email, "p": password}, &out)
	return out.Login.Token
}

// lastEventID is the newest event id of the log ("0" when empty).
func lastEventID(t *testing.T, db *sql.DB) string {
	t.Helper()
	var id int
	if err := db.QueryRow(`SELECT COALESCE(MAX(id), 0) FROM events`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(id)
}

// panelEvents returns the ids, in order, of the logged events whose
// audience contains the operator, after an id: what a panel subscriber must
// receive.
func panelEvents(t *testing.T, db *sql.DB, opID, after int) []int {
	t.Helper()
	rows, err := db.Query(`SELECT id, audience FROM events WHERE id > $1 ORDER BY id`, after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int
	for rows.Next() {
		var id int
		var audience []byte
		if err := rows.Scan(&id, &audience); err != nil {
			t.Fatal(err)
		}
		var ops []int
		if len(audience) > 0 {
			if err := json.Unmarshal(audience, &ops); err != nil {
				t.Fatalf("event %d audience %s: %v", id, audience, err)
			}
		}
		if slices.Contains(ops, opID) {
			ids = append(ids, id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// listenerBackend returns the PostgreSQL backend pid of the instance's
// LISTEN connection: the parley-listener connection whose client port is
// one of the process's own TCP sockets. It waits (bounded) for one while
// the listener reconnects. Backends already terminated are not counted.
func listenerBackend(t *testing.T, db *sql.DB, in *instance, terminated ...int) int {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	exclude := []int64{} // not nil: pq.Array(nil) is NULL, and pid = ANY(NULL) is never false
	for _, pid := range terminated {
		exclude = append(exclude, int64(pid))
	}
	for {
		ports := localPorts(t, in.cmd.Process.Pid)
		var pids []int
		rows, err := db.Query(`SELECT pid FROM pg_stat_activity
		  WHERE starts_with(application_name, $1) AND client_port = ANY($2) AND NOT pid = ANY($3)`,
			live.ListenerName+" ", pq.Array(ports), pq.Array(exclude))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		rows.Close()
		switch {
		case len(pids) == 1:
			return pids[0]
		case len(pids) > 1:
			t.Fatalf("instance %s has %d LISTEN connections (%v), want one", in.name, len(pids), pids)
		case time.Now().After(deadline):
			t.Fatalf("instance %s has no LISTEN connection (application_name %s) among its TCP ports %v; is TEST_DATABASE_URL a TCP address?",
				in.name, live.ListenerName, ports)
		}
		time.Sleep(50 * time.Millisecond) // bounded: the listener reconnects within its backoff
	}
}

// localPorts lists the local TCP ports of a process's sockets (Linux /proc).
func localPorts(t *testing.T, pid int) []int64 {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var ports []int64
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			i := strings.LastIndexByte(fields[1], ':')
			if port, err := strconv.ParseInt(fields[1][i+1:], 16, 32); err == nil {
				ports = append(ports, port)
			}
		}
		f.Close()
	}
	return ports
}

// logWatcher keeps a process's output and lets a test wait for a line.
type logWatcher struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced at every write
}

func newLogWatcher() *logWatcher { return &logWatcher{changed: make(chan struct{})} }

func (l *logWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *logWatcher) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitForCount waits until the output contains s at least n times.
func (l *logWatcher) waitForCount(t *testing.T, s string, n int) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		l.mu.Lock()
		found, changed := strings.Count(l.buf.String(), s) >= n, l.changed
		l.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("%q appears fewer than %d times in the log after %s:\n%s", s, n, waitTimeout, l.String())
		}
	}
}

// wsClient is a graphql-transport-ws connection (after server/app/apptest).
type wsClient struct {
	conn *websocket.Conn
}

type wsMessage struct {
	Type    string          `json:"type"`
	ID      string          `json:"id,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// connect dials /graphql, authenticates in connection_init and waits for
// connection_ack.
func (in *instance) connect(t *testing.T, token string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(in.base, "http")+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err != nil {
		t.Fatalf("dial instance %s: %v", in.name, err)
	}
	conn.SetReadLimit(16 << 20)
	t.Cleanup(func() { _ = conn.CloseNow() })
	w := &wsClient{conn: conn}
	w.send(t, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}})
	if m := w.next(t); m.Type != "connection_ack" {
		t.Fatalf("connection_init answered %s %s", m.Type, m.Payload)
	}
	return w
}

func (w *wsClient) send(t *testing.T, msg map[string]any) {
	t.Helper()
	b, _ := json.Marshal(msg)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("websocket write: %v", err)
	}
}

// subscribe starts a panel subscription after an event id.
func (w *wsClient) subscribe(t *testing.T, id, after string) {
	t.Helper()
	w.send(t, map[string]any{"type": "subscribe", "id": id, "payload": map[string]any{
		"query":     `subscription($after: ID) { panel(after: $after) { id type notify chatId } }`,
		"variables": map[string]any{"after": after},
	}})
}

// next returns the next message other than ping/pong (answering pings).
func (w *wsClient) next(t *testing.T) wsMessage {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, b, err := w.conn.Read(ctx)
		cancel()
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				t.Fatalf("websocket closed: %d %s", ce.Code, ce.Reason)
			}
			t.Fatalf("websocket read: %v", err)
		}
		var m wsMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("websocket message %q: %v", b, err)
		}
		switch m.Type {
		case "ping":
			w.send(t, map[string]any{"type": "pong"})
			continue
		case "pong":
			continue
		}
		return m
	}
}

type liveEvent struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Notify bool   `json:"notify"`
	ChatID string `json:"chatId"`
}

func (e liveEvent) id(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(e.ID)
	if err != nil {
		t.Fatalf("event id %q: %v", e.ID, err)
	}
	return n
}

// nextEvent waits for the next event of the operation.
func (w *wsClient) nextEvent(t *testing.T, id string) liveEvent {
	t.Helper()
	m := w.next(t)
	if m.Type != "next" || m.ID != id {
		t.Fatalf("got %s %s %s, want next for %s", m.Type, m.ID, m.Payload, id)
	}
	var p struct {
		Data struct {
			Panel liveEvent `json:"panel"`
		} `json:"data"`
		Errors []any `json:"errors"`
	}
	if err := json.Unmarshal(m.Payload, &p); err != nil || len(p.Errors) > 0 {
		t.Fatalf("event %s: %v", m.Payload, err)
	}
	return p.Data.Panel
}
