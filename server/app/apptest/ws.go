package apptest

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// WS is a graphql-transport-ws client connection for tests.
type WS struct {
	t    testing.TB
	conn *websocket.Conn
}

// WSMessage is one protocol message from the server.
type WSMessage struct {
	Type    string          `json:"type"`
	ID      string          `json:"id,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// wsTimeout bounds every wait for a server message: a missing message fails
// the test instead of hanging it.
const wsTimeout = 10 * time.Second

// DialWS opens a websocket to /graphql with the subprotocol and sends
// connection_init with the credential (none when empty). It returns the
// connection before the acknowledgement: use Init for the usual path.
func (s *Server) DialWS(t testing.TB, subprotocol string, header map[string]string) *WS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wsTimeout)
	defer cancel()
	opts := &websocket.DialOptions{Subprotocols: []string{subprotocol}, HTTPHeader: map[string][]string{}}
	for k, v := range header {
		opts.HTTPHeader[k] = []string{v}
	}
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.URL, "http")+"/graphql", opts)
	if err != nil {
		t.Fatalf("dial websocket: %v", err)
	}
	conn.SetReadLimit(16 << 20)
	ws := &WS{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return ws
}

// Connect dials with graphql-transport-ws, authenticates with the
// credential and waits for connection_ack.
func (s *Server) Connect(t testing.TB, credential string) *WS {
	t.Helper()
	ws := s.DialWS(t, "graphql-transport-ws", nil)
	ws.Send("connection_init", "", map[string]any{"Authorization": "Bearer " + credential})
	if m := ws.Next(); m.Type != "connection_ack" {
		t.Fatalf("connection_init answered %s %s", m.Type, m.Payload)
	}
	return ws
}

// Send writes a protocol message.
func (w *WS) Send(typ, id string, payload any) {
	w.t.Helper()
	msg := map[string]any{"type": typ}
	if id != "" {
		msg["id"] = id
	}
	if payload != nil {
		msg["payload"] = payload
	}
	b, err := json.Marshal(msg)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wsTimeout)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageText, b); err != nil {
		w.t.Fatalf("websocket write: %v", err)
	}
}

// Subscribe starts an operation.
func (w *WS) Subscribe(id, query string, vars map[string]any) {
	w.t.Helper()
	w.Send("subscribe", id, map[string]any{"query": query, "variables": vars})
}

// Next returns the next message other than ping/pong (answering pings).
func (w *WS) Next() WSMessage {
	w.t.Helper()
	for {
		m, err := w.Read(wsTimeout)
		if err != nil {
			w.t.Fatalf("websocket read: %v", err)
		}
		switch m.Type {
		case "ping":
			w.Send("pong", "", nil)
			continue
		case "pong", "ka":
			continue
		}
		return m
	}
}

// Read returns the next raw message, or the error that ended the
// connection (a websocket.CloseError carries the close code).
func (w *WS) Read(timeout time.Duration) (WSMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, b, err := w.conn.Read(ctx)
	if err != nil {
		return WSMessage{}, err
	}
	var m WSMessage
	if err := json.Unmarshal(b, &m); err != nil {
		w.t.Fatalf("websocket message %q: %v", b, err)
	}
	return m, nil
}

// Close closes the connection normally.
func (w *WS) Close() { _ = w.conn.Close(websocket.StatusNormalClosure, "bye") }

// Drop closes the TCP connection without a closing handshake (a network
// drop).
func (w *WS) Drop() { _ = w.conn.CloseNow() }

// LiveEvent is the part of a LiveEvent tests look at.
type LiveEvent struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Notify bool   `json:"notify"`
	ChatID string `json:"chatId"`
}

// NextEvent waits for a "next" message of the operation and decodes its
// single root field; it fails on anything else.
func (w *WS) NextEvent(id, field string) LiveEvent {
	w.t.Helper()
	m := w.Next()
	if m.Type != "next" || m.ID != id {
		w.t.Fatalf("got %s %s %s, want next for %s", m.Type, m.ID, m.Payload, id)
	}
	var p struct {
		Data   map[string]LiveEvent `json:"data"`
		Errors []Error              `json:"errors"`
	}
	if err := json.Unmarshal(m.Payload, &p); err != nil {
		w.t.Fatal(err)
	}
	if len(p.Errors) > 0 {
		w.t.Fatalf("event with errors: %s", m.Payload)
	}
	return p.Data[field]
}

// ErrorCodes decodes the codes of an "error" message, or of a "next"
// message carrying errors (how gqlgen answers a subscription refused
// before it starts).
func (m WSMessage) ErrorCodes() []string {
	var errs []Error
	if m.Type == "next" {
		var p struct {
			Errors []Error `json:"errors"`
		}
		_ = json.Unmarshal(m.Payload, &p)
		errs = p.Errors
	} else {
		_ = json.Unmarshal(m.Payload, &errs)
	}
	var out []string
	for _, e := range errs {
		out = append(out, e.Code())
	}
	return out
}

// ExpectRefused waits for the operation to be refused or ended with the
// code, skipping the events delivered before.
func (w *WS) ExpectRefused(id, code string) {
	w.t.Helper()
	for {
		m := w.Next()
		if m.ID != id {
			w.t.Fatalf("got %s for %q, want operation %q", m.Type, m.ID, id)
		}
		codes := m.ErrorCodes()
		if len(codes) == 0 && m.Type == "next" {
			continue
		}
		if !slices.Contains(codes, code) {
			w.t.Fatalf("got %s %s, want an error %s", m.Type, m.Payload, code)
		}
		return
	}
}
