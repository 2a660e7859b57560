package graph_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/graph"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

// The websocket transport (graph/websocket.go), through clients that show
// what happens on the wire: coder/websocket's, and a raw one that answers
// nothing unless told (for keep-alive and close codes).

// wsWorld is a GraphQL handler over an apptest server's desk and hub with
// the websocket options of a test (ping interval, init timeout).
type wsWorld struct {
	s     *apptest.Server
	op    apptest.Operator
	conns *graph.Websockets
	url   string
}

func newWSWorld(t *testing.T, opts graph.Options) *wsWorld {
	t.Helper()
	s := apptest.New(t)
	w := &wsWorld{s: s, op: s.CreateOperator(t, enum.RoleOperator), conns: graph.NewWebsockets()}
	log := slog.New(slog.DiscardHandler)
	opts.Hub, opts.Websockets, opts.Logger = s.App.Hub, w.conns, log
	srv := httptest.NewServer(graph.Authenticate(s.Desk(), log, graph.NewHandler(s.Desk(), opts)))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.conns.Shutdown(ctx)
		srv.Close()
	})
	w.url = srv.URL
	return w
}

// waitUntil waits for a condition the test cannot await otherwise (the
// server's side of a connection), for at most 10 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawSocket is a websocket client written by hand: it answers no ping and
// no close frame unless the test does.
type rawSocket struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, base, subprotocol string) *rawSocket {
	t.Helper()
	return dialRawWith(t, base, subprotocol, nil)
}

// dialRawWith sends first (a frame) in the same write as the upgrade
// request, before the server's answer: the server reads it ahead with the
// request, as it may from any eager client.
func dialRawWith(t *testing.T, base, subprotocol string, first []byte) *rawSocket {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Appendf(nil, "GET /graphql HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
		u.Host, base64.StdEncoding.EncodeToString(key), subprotocol)
	if _, err := conn.Write(append(req, first...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("Sec-WebSocket-Protocol") != subprotocol {
		t.Fatalf("upgrade answered %d, subprotocol %q", res.StatusCode, res.Header.Get("Sec-WebSocket-Protocol"))
	}
	return &rawSocket{t: t, conn: conn, br: br}
}

const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// maskedFrame is one frame as a client sends it (masked).
func maskedFrame(opcode byte, payload []byte) []byte {
	frame := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n < 1<<16:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	default:
		panic("frame too large for this client")
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	frame = append(frame, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	return frame
}

func (r *rawSocket) write(opcode byte, payload []byte) {
	r.t.Helper()
	_ = r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.conn.Write(maskedFrame(opcode, payload)); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

func (r *rawSocket) send(typ, id string, payload any) {
	r.t.Helper()
	m := map[string]any{"type": typ}
	if id != "" {
		m["id"] = id
	}
	if payload != nil {
		m["payload"] = payload
	}
	b, _ := json.Marshal(m)
	r.write(opText, b)
}

// frame reads one server frame (unmasked, unfragmented: what this server
// sends).
func (r *rawSocket) frame(timeout time.Duration) (opcode byte, payload []byte, err error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// message reads frames until a protocol message, failing on anything else
// but pings (which it leaves unanswered) and keep-alives.
func (r *rawSocket) message() apptest.WSMessage {
	r.t.Helper()
	for {
		op, p, err := r.frame(10 * time.Second)
		if err != nil {
			r.t.Fatalf("raw read: %v", err)
		}
		switch op {
		case opPing:
			continue
		case opText:
			var m apptest.WSMessage
			if err := json.Unmarshal(p, &m); err != nil {
				r.t.Fatalf("message %q: %v", p, err)
			}
			if m.Type == "ka" || m.Type == "ping" {
				continue
			}
			return m
		default:
			r.t.Fatalf("got frame %x %q, want a message", op, p)
		}
	}
}

// closed reads until the server closes: the close frame's code, or 1006
// when the connection ended without one.
func (r *rawSocket) closed() (code int, reason string) {
	r.t.Helper()
	for {
		op, p, err := r.frame(10 * time.Second)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatal("the server did not close the connection within 10s")
		}
		if err != nil {
			return 1006, ""
		}
		if op == opClose {
			if len(p) < 2 {
				return 1005, ""
			}
			return int(binary.BigEndian.Uint16(p)), string(p[2:])
		}
	}
}

func (r *rawSocket) init(credential string) {
	r.t.Helper()
	r.send("connection_init", "", map[string]any{"Authorization": "Bearer " + credential})
	if m := r.message(); m.Type != "connection_ack" {
		r.t.Fatalf("connection_init answered %s %s", m.Type, m.Payload)
	}
}

var protocols = []string{"graphql-transport-ws", "graphql-ws"}

func subscribeType(protocol string) string {
	if protocol == "graphql-ws" {
		return "start"
	}
	return "subscribe"
}

func dataType(protocol string) string {
	if protocol == "graphql-ws" {
		return "data"
	}
	return "next"
}

func stopType(protocol string) string {
	if protocol == "graphql-ws" {
		return "stop"
	}
	return "complete"
}

// A client that stops answering is dropped after two ping intervals
// without an answer: graphql-transport-ws's ping message for one, a
// websocket ping frame for the legacy protocol (which has none). Its
// subscription ends with it.
func TestWebsocket_KeepAliveDropsASilentClient(t *testing.T) {
	const interval = 50 * time.Millisecond
	w := newWSWorld(t, graph.Options{PingInterval: interval})
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			raw := dialRaw(t, w.url, protocol)
			raw.init(w.op.Token)
			start := time.Now() // the client's last word
			raw.send(subscribeType(protocol), "1", map[string]any{"query": panelSub})
			waitUntil(t, "the subscription is registered", func() bool { return w.s.App.Hub.Subscribers() == 1 })
			pings := 0
			for dropped := false; !dropped; {
				op, p, err := raw.frame(10 * time.Second)
				var ne net.Error
				switch {
				case errors.As(err, &ne) && ne.Timeout():
					t.Fatalf("a silent client was not dropped within 10s (%d pings)", pings)
				case err != nil:
					dropped = true // the server closed the connection
				case op == opPing || op == opText && strings.Contains(string(p), `"type":"ping"`):
					pings++ // unanswered
				}
			}
			if pings == 0 {
				t.Fatal("dropped without a ping")
			}
			if d := time.Since(start); d < 2*interval {
				t.Fatalf("dropped after %v, before two ping intervals", d)
			}
			waitUntil(t, "the connection and its subscription are freed", func() bool {
				return w.conns.Open() == 0 && w.s.App.Hub.Subscribers() == 0
			})
		})
	}
}

// Clients that connect together are not pinged together: after a restart
// every client reconnects at once, and thousands of pings and answers in
// the same instant, every interval, would delay the live events sent
// meanwhile. Each connection's first ping comes between half an interval
// and one after its connection_ack, not a whole interval after it.
func TestWebsocket_ClientsConnectedTogetherArePingedApart(t *testing.T) {
	const interval = time.Second
	const n = 16
	w := newWSWorld(t, graph.Options{PingInterval: interval})
	type first struct{ acked, pinged time.Time }
	got := make(chan first, n)
	for range n {
		raw := dialRaw(t, w.url, "graphql-transport-ws")
		raw.init(w.op.Token)
		acked := time.Now()
		go func() {
			for {
				op, p, err := raw.frame(10 * time.Second)
				if err != nil {
					got <- first{acked: acked}
					return
				}
				if op == opText && strings.Contains(string(p), `"type":"ping"`) {
					got <- first{acked: acked, pinged: time.Now()}
					return
				}
			}
		}()
	}
	var delays []time.Duration
	for range n {
		f := <-got
		if f.pinged.IsZero() {
			t.Fatal("a connection was not pinged within 10s")
		}
		d := f.pinged.Sub(f.acked)
		// The server arms the timer as it sends the ack, which the client
		// reads a moment later: allow a tenth of an interval for that.
		if d < interval/2-interval/10 {
			t.Errorf("first ping %v after the ack, before half an interval", d)
		}
		delays = append(delays, d)
	}
	// In step (each a whole interval after its ack) they would be apart by
	// scheduling noise alone; spread over half an interval, sixteen first
	// pings fall within an eighth of one with a probability of 16·(1/4)^15.
	if spread := slices.Max(delays) - slices.Min(delays); spread < interval/8 {
		t.Errorf("the first pings came %v after their acks, within %v of each other: in step", delays, spread)
	}
}

// A client that answers is kept for as long as it does, well past the
// intervals that drop a silent one.
func TestWebsocket_KeepAliveKeepsAClientThatAnswers(t *testing.T) {
	// Long enough that a busy machine does not delay the answers by two
	// intervals.
	const interval = 200 * time.Millisecond
	w := newWSWorld(t, graph.Options{PingInterval: interval})
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			raw := dialRaw(t, w.url, protocol)
			raw.init(w.op.Token)
			for answered := 0; answered < 5; {
				op, p, err := raw.frame(10 * time.Second)
				if err != nil {
					t.Fatalf("after %d answered pings: %v", answered, err)
				}
				switch {
				case op == opPing:
					raw.write(opPong, p)
					answered++
				case op == opText && strings.Contains(string(p), `"type":"ping"`):
					raw.send("pong", "", nil)
					answered++
				case op == opClose:
					t.Fatalf("closed after %d answered pings: %q", answered, p)
				}
			}
			// Still served.
			raw.send(subscribeType(protocol), "q", map[string]any{"query": "{ __typename }"})
			if m := raw.message(); m.Type != dataType(protocol) || m.ID != "q" || !strings.Contains(string(m.Payload), "Query") {
				t.Fatalf("query answered %s %s %s", m.Type, m.ID, m.Payload)
			}
			if m := raw.message(); m.Type != "complete" || m.ID != "q" {
				t.Fatalf("got %s %s after the answer, want complete", m.Type, m.ID)
			}
		})
	}
}

// Both subprotocols serve a subscription from start to stop: the legacy
// one with connection_ack, ka, start, data, stop, complete and
// connection_terminate (closed 1000).
func TestWebsocket_BothSubprotocolsServeASubscription(t *testing.T) {
	lw := newLiveWorld(t)
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			raw := dialRaw(t, lw.s.URL, protocol)
			raw.send("connection_init", "", map[string]any{"authToken": lw.op.Token})
			if m := raw.message(); m.Type != "connection_ack" {
				t.Fatalf("connection_init answered %s %s", m.Type, m.Payload)
			}
			raw.send(subscribeType(protocol), "1", map[string]any{"query": panelSub,
				"variables": map[string]any{"after": lastEventID(t, lw.s)}})
			chatID := lw.inbound(t, "both-"+protocol, "hello")
			m := raw.message()
			var p struct {
				Data   struct{ Panel apptest.LiveEvent }
				Errors []apptest.Error
			}
			_ = json.Unmarshal(m.Payload, &p)
			if m.Type != dataType(protocol) || m.ID != "1" || p.Data.Panel.ChatID != chatID || len(p.Errors) > 0 {
				t.Fatalf("got %s %s %s, want %s with the offer of %s", m.Type, m.ID, m.Payload, dataType(protocol), chatID)
			}
			raw.send(stopType(protocol), "1", nil)
			for {
				m := raw.message()
				if m.Type == "complete" && m.ID == "1" {
					break
				}
				if m.Type != dataType(protocol) {
					t.Fatalf("got %s %s after stop, want complete", m.Type, m.Payload)
				}
			}
			waitUntil(t, "the stopped subscription is freed", func() bool { return lw.s.App.Hub.Subscribers() == 0 })
			if protocol == "graphql-ws" {
				raw.send("connection_terminate", "", nil)
				if code, _ := raw.closed(); code != 1000 {
					t.Fatalf("connection_terminate closed with %d, want 1000", code)
				}
			}
		})
	}
}

// connection_init with a wrong credential (or none) is refused with 4401;
// the legacy protocol says why first (connection_error).
func TestWebsocket_RefusedAuthenticationClosesWith4401(t *testing.T) {
	w := newWSWorld(t, graph.Options{})
	for _, protocol := range protocols {
		for _, payload := range []map[string]any{{"Authorization": "Bearer nope"}, {"authToken": "nope"}, {}} {
			t.Run(fmt.Sprintf("%s %v", protocol, payload), func(t *testing.T) {
				raw := dialRaw(t, w.url, protocol)
				raw.send("connection_init", "", payload)
				var types []string
				for {
					op, p, err := raw.frame(10 * time.Second)
					if err != nil {
						t.Fatalf("read: %v (got %v)", err, types)
					}
					if op == opClose {
						if code := binary.BigEndian.Uint16(p); code != 4401 {
							t.Fatalf("closed with %d, want 4401", code)
						}
						break
					}
					var m apptest.WSMessage
					_ = json.Unmarshal(p, &m)
					types = append(types, m.Type)
				}
				want := []string(nil)
				if protocol == "graphql-ws" {
					want = []string{"connection_error"}
				}
				if !slices.Equal(types, want) {
					t.Fatalf("got %v before the close, want %v", types, want)
				}
			})
		}
	}
}

// A client may send connection_init without waiting for the upgrade's
// answer: the server reads it ahead with the request and must not lose it.
func TestWebsocket_AFrameSentWithTheUpgradeRequestIsRead(t *testing.T) {
	w := newWSWorld(t, graph.Options{})
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			init, _ := json.Marshal(map[string]any{"type": "connection_init", "payload": map[string]any{"authToken": w.op.Token}})
			raw := dialRawWith(t, w.url, protocol, maskedFrame(opText, init))
			if m := raw.message(); m.Type != "connection_ack" {
				t.Fatalf("connection_init answered %s %s", m.Type, m.Payload)
			}
		})
	}
}

// A connection that sends no connection_init in time is closed.
func TestWebsocket_InitTimeoutClosesTheConnection(t *testing.T) {
	w := newWSWorld(t, graph.Options{InitTimeout: 50 * time.Millisecond})
	raw := dialRaw(t, w.url, "graphql-transport-ws")
	if code, reason := raw.closed(); code != 1002 || reason != "connection initialisation timeout" {
		t.Fatalf("closed with %d %q, want 1002", code, reason)
	}
	raw.conn.Close() // instead of answering the close frame
	waitUntil(t, "the connection is freed", func() bool { return w.conns.Open() == 0 })
}

// A subscribe with the id of a running operation is a protocol error
// (graphql-transport-ws: 4409).
func TestWebsocket_DuplicateOperationIDIsRefused(t *testing.T) {
	w := newWSWorld(t, graph.Options{})
	raw := dialRaw(t, w.url, "graphql-transport-ws")
	raw.init(w.op.Token)
	raw.send("subscribe", "1", map[string]any{"query": panelSub})
	waitUntil(t, "the subscription is registered", func() bool { return w.s.App.Hub.Subscribers() == 1 })
	raw.send("subscribe", "1", map[string]any{"query": panelSub})
	if code, _ := raw.closed(); code != 4409 {
		t.Fatalf("closed with %d, want 4409", code)
	}
	waitUntil(t, "the subscription is freed", func() bool { return w.s.App.Hub.Subscribers() == 0 })
}

// The client going away frees its subscriptions and the connection.
func TestWebsocket_ClientGoingAwayFreesItsSubscriptions(t *testing.T) {
	w := newWSWorld(t, graph.Options{})
	ws := dialRaw(t, w.url, "graphql-transport-ws")
	ws.init(w.op.Token)
	ws.send("subscribe", "1", map[string]any{"query": panelSub})
	ws.send("subscribe", "2", map[string]any{"query": panelSub})
	waitUntil(t, "the subscriptions are registered", func() bool { return w.s.App.Hub.Subscribers() == 2 })
	ws.conn.Close()
	waitUntil(t, "the connection and its subscriptions are freed", func() bool {
		return w.conns.Open() == 0 && w.s.App.Hub.Subscribers() == 0
	})
}

// A burst of events beyond the subscription's buffer ends it with the
// stable SLOW_CONSUMER code, after the events it was sent, in order.
func TestWebsocket_SlowConsumerEndsTheOperationWithItsCode(t *testing.T) {
	s := apptest.New(t, apptest.WithConfig(func(c *app.Config) { c.SubscriptionBuf = 2 }))
	op := s.CreateOperator(t, enum.RoleOperator)
	ws := s.Connect(t, op.Token)
	ws.Subscribe("1", `subscription { panel { id type } }`, nil)
	hub := s.App.Hub
	waitUntil(t, "the subscription is registered", func() bool { return hub.Subscribers() == 1 })
	// Dispatched at once, as a local commit hands them over: far more
	// than the buffer before the operation can send the first.
	var burst []*ent.Event
	first := hub.Cursor() + 1
	for i := range 200 {
		burst = append(burst, &ent.Event{ID: first + i, Type: desk.EventMessageAdded, Audience: []int{op.ID}})
	}
	hub.Committed(burst)
	next := first
	for {
		m := ws.Next()
		if m.ID != "1" {
			t.Fatalf("got %s for %q", m.Type, m.ID)
		}
		if m.Type == "error" {
			if codes := m.ErrorCodes(); !slices.Equal(codes, []string{string(desk.CodeSlowConsumer)}) {
				t.Fatalf("ended with %s, want SLOW_CONSUMER", m.Payload)
			}
			break
		}
		var p struct {
			Data struct{ Panel apptest.LiveEvent }
		}
		_ = json.Unmarshal(m.Payload, &p)
		if id, _ := strconv.Atoi(p.Data.Panel.ID); m.Type != "next" || id != next {
			t.Fatalf("got %s %s, want event %d", m.Type, m.Payload, next)
		}
		next++
	}
	if next-first >= len(burst) {
		t.Fatal("every event was sent: the burst did not overrun the buffer")
	}
	waitUntil(t, "the subscription is freed", func() bool { return hub.Subscribers() == 0 })
}

// Websockets.Shutdown closes every websocket (1001) and waits for them.
func TestWebsocket_ShutdownClosesEverySocket(t *testing.T) {
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	modern := s.Connect(t, op.Token)
	modern.Subscribe("1", panelSub, nil)
	legacy := dialRaw(t, s.URL, "graphql-ws")
	legacy.init(op.Token)
	waitUntil(t, "the subscription is registered", func() bool { return s.App.Hub.Subscribers() == 1 })
	if n := s.App.Websockets.Open(); n != 2 {
		t.Fatalf("%d websockets open, want 2", n)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.App.Websockets.Shutdown(ctx)
	}()
	_, err := modern.Read(10 * time.Second)
	if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
		t.Fatalf("modern client: %v, want a close with 1001", err)
	}
	code, _ := legacy.closed()
	if code != 1001 {
		t.Fatalf("legacy client closed with %d, want 1001", code)
	}
	legacy.conn.Close() // the raw client does not answer the close frame
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := s.App.Websockets.Open(); n != 0 {
		t.Fatalf("%d websockets open after Shutdown", n)
	}
	waitUntil(t, "the subscription is freed", func() bool { return s.App.Hub.Subscribers() == 0 })
	// New websockets are refused from now on.
	late := s.DialWS(t, "graphql-transport-ws", nil)
	if _, err := late.Read(10 * time.Second); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("a websocket opened after Shutdown: %v, want a close with 1001", err)
	}
}

// The server's graceful stop (Run's context cancelled) closes the
// websockets, which http.Server.Shutdown does not see, and Run returns.
func TestWebsocket_GracefulStopClosesWebsockets(t *testing.T) {
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.App.Run(ctx, ln) }()
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	conn, _, err := websocket.Dial(dctx, "ws://"+ln.Addr().String()+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	send := func(m string) {
		if err := conn.Write(dctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"connection_init","payload":{"Authorization":"Bearer ` + op.Token + `"}}`)
	if _, b, err := conn.Read(dctx); err != nil || !strings.Contains(string(b), "connection_ack") {
		t.Fatalf("connection_init answered %s %v", b, err)
	}
	send(`{"type":"subscribe","id":"1","payload":{"query":"subscription { panel { id } }"}}`)
	waitUntil(t, "the subscription is registered", func() bool { return s.App.Hub.Subscribers() == 1 })
	cancel()
	_, _, err = conn.Read(dctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
		t.Fatalf("the websocket ended with %v, want a close with 1001", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
