package graph

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/coder/websocket"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
)

// The websocket transport serves subscriptions (and any other operation)
// over graphql-transport-ws and the legacy graphql-ws (the protocol of
// subscriptions-transport-ws), on gqlgen's executor.
//
// It replaces gqlgen's transport.Websocket for what an open subscription
// costs: gqlgen keeps, per connection, the net/http handler goroutine with
// its buffers, a goroutine that waits for the context to close the socket,
// one for keep-alive or pings, and one per operation blocked on the
// resolver's channel. Ten thousand panels open make that tens of thousands
// of goroutines. Here a connection has one goroutine, the one that reads it:
//   - after the upgrade the handler returns (net/http forgets a hijacked
//     connection) and a fresh goroutine reads the socket, through buffers
//     sized for protocol messages rather than net/http's 4 KB ones;
//   - pings and the connection_init timeout are timers (time.AfterFunc),
//     which cost a goroutine only while they fire;
//   - an operation has no goroutine of its own: the hub tells it when its
//     stream has an event (live.Stream's notify), and a goroutine started
//     then runs gqlgen's response handler for what is ready and ends.
//
// http.Server.Shutdown does not see hijacked connections: Websockets closes
// them (the server calls its Shutdown).

const (
	protocolTransportWS = "graphql-transport-ws"
	protocolLegacy      = "graphql-ws"

	// writeTimeout bounds one message's write: a client that stops reading
	// is dropped rather than holding the operation that writes to it.
	writeTimeout = 10 * time.Second
	// readLimit bounds a client message (gqlgen's default).
	readLimit = 1 << 20
	// The socket's buffers: client messages are small (a subscribe, a
	// pong); a larger server message goes to the socket past the buffer.
	readBufferSize  = 512
	writeBufferSize = 1024

	// closeUnauthorized refuses a connection_init without a valid
	// credential (graphql-transport-ws's Unauthorized; the legacy protocol
	// gets it too, as it did from gqlgen's transport with our InitFunc).
	closeUnauthorized websocket.StatusCode = 4401
	// closeDuplicateID refuses a subscribe whose id is already running
	// (graphql-transport-ws).
	closeDuplicateID websocket.StatusCode = 4409
)

// Websockets tracks the open websockets of a handler, for a graceful
// shutdown.
type Websockets struct {
	mu      sync.Mutex
	conns   map[*wsConn]struct{}
	closing bool
	open    sync.WaitGroup
}

// NewWebsockets returns an empty set; pass it in Options.Websockets.
func NewWebsockets() *Websockets { return &Websockets{conns: map[*wsConn]struct{}{}} }

// Open is the number of open websockets.
func (w *Websockets) Open() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.conns)
}

// Shutdown closes every websocket (1001, going away) and refuses new ones;
// it returns when they are closed, or, when ctx ends first, drops those
// whose clients did not answer the close.
func (w *Websockets) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	w.closing = true
	conns := slices.Collect(maps.Keys(w.conns))
	w.mu.Unlock()
	for _, c := range conns {
		// The close handshake waits for the client: concurrently.
		go c.close(websocket.StatusGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() {
		w.open.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			_ = c.ws.CloseNow()
		}
		return ctx.Err()
	}
}

func (w *Websockets) add(c *wsConn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return false
	}
	w.conns[c] = struct{}{}
	w.open.Add(1)
	return true
}

func (w *Websockets) remove(c *wsConn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.conns[c]; ok {
		delete(w.conns, c)
		w.open.Done()
	}
}

// wsTransport is the gqlgen transport for websocket upgrades.
type wsTransport struct {
	desk   *desk.Desk
	log    *slog.Logger
	accept websocket.AcceptOptions
	ping   time.Duration
	init   time.Duration // the connection_init timeout
	conns  *Websockets
}

var _ graphql.Transport = (*wsTransport)(nil)

func newWSTransport(d *desk.Desk, opts Options, log *slog.Logger) *wsTransport {
	var patterns []string
	for _, o := range opts.Origins {
		if u, err := url.Parse(o); err == nil && u.Host != "" {
			patterns = append(patterns, u.Host)
		}
	}
	conns := opts.Websockets
	if conns == nil {
		conns = NewWebsockets()
	}
	init := opts.InitTimeout
	if init <= 0 {
		init = 10 * time.Second
	}
	return &wsTransport{desk: d, log: log, ping: opts.PingInterval, init: init, conns: conns,
		accept: websocket.AcceptOptions{
			// gqlgen's order: a client offering both gets the legacy
			// protocol; one offering none gets it too.
			Subprotocols:   []string{protocolLegacy, protocolTransportWS},
			OriginPatterns: patterns,
		}}
}

func (t *wsTransport) Supports(r *http.Request) bool { return r.Header.Get("Upgrade") != "" }

// Do upgrades the request and returns: the connection lives on in its own
// goroutine.
func (t *wsTransport) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	hj := &smallBuffers{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, &t.accept)
	if err != nil {
		// Accept answered (403 for a foreign origin, 426 for a bad upgrade).
		t.log.Debug("websocket upgrade refused", "err", err)
		return
	}
	ws.SetReadLimit(readLimit)
	// The request's context ends when this handler returns; the
	// connection keeps its values (the actor of an Authorization header,
	// the session metadata) without its cancellation.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	c := &wsConn{t: t, exec: exec, ws: ws, nc: hj.conn, legacy: ws.Subprotocol() != protocolTransportWS,
		ctx: ctx, cancel: cancel}
	if !t.conns.add(c) {
		c.close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	go c.serve()
}

// smallBuffers hands coder/websocket the hijacked connection with small
// buffers instead of net/http's (4 KB each way), which it would keep for
// the connection's life.
type smallBuffers struct {
	http.ResponseWriter
	conn net.Conn
}

func (s *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, readBufferSize)
	if n := brw.Reader.Buffered(); n > 0 {
		// What net/http read ahead (the client's first frame may follow
		// the 101 before the hijack): into the new reader's buffer, where
		// coder/websocket looks for it (it then replaces the reader's
		// source with the connection).
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(readBufferSize, n))
		if _, err := br.Peek(n); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	s.conn = conn
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, writeBufferSize)), nil
}

// wsConn is one websocket.
type wsConn struct {
	t      *wsTransport
	exec   graphql.GraphExecutor
	ws     *websocket.Conn
	nc     net.Conn // for write deadlines
	legacy bool     // graphql-ws rather than graphql-transport-ws
	// ctx carries the actor once authenticated; cancel ends every
	// operation of the connection.
	ctx    context.Context
	cancel context.CancelFunc

	// unanswered counts the pings sent since the client last sent anything.
	unanswered atomic.Int32
	closing    atomic.Bool

	mu     sync.Mutex // serialises writes; guards what follows
	ops    map[string]*wsOp
	closed bool
	pinger *time.Timer
}

// wsMessage is a protocol message, either way.
type wsMessage struct {
	Type    string          `json:"type"`
	ID      string          `json:"id,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

var errInvalidMessage = errors.New("invalid message")

func (c *wsConn) read() (wsMessage, error) {
	_, b, err := c.ws.Read(context.Background())
	if err != nil {
		return wsMessage{}, err
	}
	var m wsMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return wsMessage{}, errInvalidMessage
	}
	c.unanswered.Store(0) // whatever the client sends shows it is there
	return m, nil
}

// serve reads the connection until it closes.
func (c *wsConn) serve() {
	defer c.release()
	if !c.init() {
		return
	}
	c.mu.Lock()
	if !c.closed {
		c.pinger = time.AfterFunc(c.t.pingDelay(true), c.tick)
	}
	c.mu.Unlock()
	for {
		start := graphql.Now()
		m, err := c.read()
		if errors.Is(err, errInvalidMessage) {
			c.connectionError("invalid json")
			c.close(websocket.StatusProtocolError, "decoding error")
			return
		}
		if err != nil {
			return // closed by the client, by the server, or broken
		}
		switch {
		case m.Type == "subscribe" && !c.legacy, m.Type == "start" && c.legacy:
			c.subscribe(m, start)
		case m.Type == "complete" && !c.legacy, m.Type == "stop" && c.legacy:
			c.stop(m.ID)
		case m.Type == "ping" && !c.legacy:
			c.send("pong", "", m.Payload)
		case m.Type == "pong" && !c.legacy:
		case m.Type == "connection_terminate" && c.legacy:
			c.close(websocket.StatusNormalClosure, "terminated")
			return
		default:
			c.connectionError("unexpected message " + m.Type)
			c.close(websocket.StatusProtocolError, "unexpected message")
			return
		}
	}
}

// init waits for connection_init and authenticates it: with the payload's
// credential ({"Authorization": "Bearer …"} or {"authToken": "…"}), or
// else the upgrade request's. Refused: 4401.
func (c *wsConn) init() bool {
	timer := time.AfterFunc(c.t.init, func() {
		c.close(websocket.StatusProtocolError, "connection initialisation timeout")
	})
	m, err := c.read()
	timer.Stop()
	switch {
	case errors.Is(err, errInvalidMessage):
		c.connectionError("invalid json")
		c.close(websocket.StatusProtocolError, "decoding error")
		return false
	case err != nil:
		return false
	case m.Type == "connection_terminate" && c.legacy:
		c.close(websocket.StatusNormalClosure, "terminated")
		return false
	case m.Type != "connection_init":
		c.connectionError("unexpected message " + m.Type)
		c.close(websocket.StatusProtocolError, "unexpected message")
		return false
	}
	var payload map[string]any
	if len(m.Payload) > 0 && json.Unmarshal(m.Payload, &payload) != nil {
		c.connectionError("invalid json")
		c.close(websocket.StatusProtocolError, "decoding error")
		return false
	}
	ctx, err := c.t.authenticate(c.ctx, payload)
	if err != nil {
		c.connectionError(err.Error())
		c.close(closeUnauthorized, "terminated")
		return false
	}
	c.ctx = ctx // read by operations, all started after this
	c.send("connection_ack", "", nil)
	if c.legacy {
		c.send("ka", "", nil)
	}
	return true
}

func (t *wsTransport) authenticate(ctx context.Context, payload map[string]any) (context.Context, error) {
	credential := initCredential(payload)
	if credential == "" {
		if desk.ActorFrom(ctx) != nil {
			return ctx, nil // authenticated by the upgrade request
		}
		return nil, desk.ErrUnauthenticated
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	a, err := t.desk.Authenticate(actx, credential)
	if err != nil {
		t.log.Info("websocket refused", "reason", err.Error())
		return nil, desk.ErrUnauthenticated
	}
	return desk.WithActor(ctx, a), nil
}

// tick pings the client about every PingInterval (pingDelay).
// graphql-transport-ws clients answer the protocol's ping with pong; one
// that has sent nothing through two pings is dropped. The legacy protocol
// has no ping: its clients get "ka" and a websocket ping frame, which every
// websocket client answers.
func (c *wsConn) tick() {
	if c.closing.Load() {
		return
	}
	if c.legacy {
		c.send("ka", "", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 2*c.t.ping)
		err := c.ws.Ping(ctx)
		cancel()
		if err != nil {
			c.abort()
			return
		}
	} else {
		if c.unanswered.Add(1) > 2 {
			c.abort()
			return
		}
		c.send("ping", "", nil)
	}
	c.mu.Lock()
	if !c.closed {
		c.pinger.Reset(c.t.pingDelay(false))
	}
	c.mu.Unlock()
}

// pingDelay is the time until a connection's next ping: PingInterval give
// or take 10%, and a connection's first between half an interval and one.
// Clients that connected together (all of them, after a restart or a
// network drop) would otherwise be pinged together for as long as they
// stay: with thousands of them, a burst of writes and answers every
// interval that delays the live events sent meanwhile. A silent client is
// still dropped no sooner than two intervals after its last word (the
// third unanswered tick comes after at least 0.5 + 0.9 + 0.9 intervals).
func (t *wsTransport) pingDelay(first bool) time.Duration {
	if first {
		return t.ping/2 + rand.N(max(t.ping/2, 1))
	}
	return t.ping - t.ping/10 + rand.N(max(t.ping/5, 1))
}

// close ends the operations and closes the socket with a close handshake
// (waiting for the client's answer, at most a few seconds); abort closes it
// without one (the client is gone).
func (c *wsConn) close(code websocket.StatusCode, reason string) {
	if c.closing.Swap(true) {
		return
	}
	c.end()
	_ = c.ws.Close(code, reason)
}

func (c *wsConn) abort() {
	if c.closing.Swap(true) {
		return
	}
	c.end()
	_ = c.ws.CloseNow()
}

// end cancels every operation (their hub subscriptions end with their
// contexts) and stops writes.
func (c *wsConn) end() {
	c.cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.ops = nil
	if c.pinger != nil {
		c.pinger.Stop()
	}
}

// release runs when the reading stops.
func (c *wsConn) release() {
	c.abort()
	c.t.conns.remove(c)
}

// send writes a message; errors close the connection.
func (c *wsConn) send(typ, id string, payload []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeLocked(typ, id, payload)
}

func (c *wsConn) writeLocked(typ, id string, payload []byte) {
	if c.closed {
		return
	}
	b := make([]byte, 0, 32+len(id)+len(payload))
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	if id != "" {
		b = append(b, `,"id":`...)
		q, _ := json.Marshal(id)
		b = append(b, q...)
	}
	if len(payload) > 0 {
		b = append(b, `,"payload":`...)
		b = append(b, payload...)
	}
	b = append(b, '}')
	if c.nc != nil {
		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	}
	err := c.ws.Write(context.Background(), websocket.MessageText, b)
	if c.nc != nil {
		_ = c.nc.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		c.closed = true
		// The socket is broken: close it; the read loop then releases the
		// rest (abort takes c.mu, held here).
		go c.abort()
	}
}

// connectionError tells a legacy client why the connection is refused
// (graphql-transport-ws has no such message: the close reason says it).
func (c *wsConn) connectionError(msg string) {
	if !c.legacy {
		return
	}
	b, _ := json.Marshal(&gqlerror.Error{Message: msg})
	c.send("connection_error", "", b)
}

// subscribe starts an operation.
func (c *wsConn) subscribe(m wsMessage, start time.Time) {
	params := &graphql.RawParams{}
	dec := json.NewDecoder(bytes.NewReader(m.Payload))
	dec.UseNumber()
	if err := dec.Decode(params); err != nil {
		c.mu.Lock()
		c.writeErrorLocked(m.ID, &gqlerror.Error{Message: "invalid json"})
		c.writeLocked("complete", m.ID, nil)
		c.mu.Unlock()
		return
	}
	params.ReadTime = graphql.TraceTiming{Start: start, End: graphql.Now()}
	ctx, cancel := context.WithCancel(graphql.StartOperationTrace(c.ctx))
	op := &wsOp{c: c, id: m.ID, cancel: cancel}
	// The goroutine started here drains the operation first: kicks that
	// come meanwhile only count (see kick).
	op.signals.Store(1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return
	}
	if _, running := c.ops[m.ID]; running {
		c.mu.Unlock()
		cancel()
		c.close(closeDuplicateID, "Subscriber for "+m.ID+" already exists")
		return
	}
	if c.ops == nil {
		c.ops = map[string]*wsOp{}
	}
	c.ops[m.ID] = op
	c.mu.Unlock()
	go op.start(ctx, params)
}

// stop ends an operation at the client's request (complete, or the legacy
// stop); the server confirms with complete, as gqlgen did.
func (c *wsConn) stop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if op := c.ops[id]; op != nil {
		delete(c.ops, id)
		op.cancel()
		c.writeLocked("complete", id, nil)
	}
}

func (c *wsConn) writeErrorLocked(id string, errs ...*gqlerror.Error) {
	b, err := json.Marshal(errs)
	if err != nil {
		b = []byte(`[{"message":"internal error"}]`)
	}
	c.writeLocked("error", id, b)
}

func (c *wsConn) dataType() string {
	if c.legacy {
		return "data"
	}
	return "next"
}

// wsOp is one operation of a connection. A subscription's events are not
// waited for by a goroutine: the hub calls kick when the stream has some,
// and drain runs gqlgen's response handler while the stream is ready, which
// then never blocks.
type wsOp struct {
	c      *wsConn
	id     string
	cancel context.CancelFunc

	// Set by start before the first drain; drains are ordered by signals.
	ctx       context.Context
	responses graphql.ResponseHandler
	stream    atomic.Pointer[live.Stream]
	// signals counts kicks not yet drained; the one that makes it 1 starts
	// a drain, which runs until it finds no more.
	signals atomic.Int32
	over    bool // the response handler ended (touched by drains only)
}

type wsOpKey struct{}

// wsOperation is the websocket operation a resolver runs for, if any.
func wsOperation(ctx context.Context) *wsOp {
	op, _ := ctx.Value(wsOpKey{}).(*wsOp)
	return op
}

// follow makes the operation read the stream when it is ready instead of
// waiting on it (the resolver calls it before returning the stream's
// channel).
func (op *wsOp) follow(st *live.Stream) { op.stream.Store(st) }

// kick is the stream's notify: it must not block (it runs under the hub's
// lock).
func (op *wsOp) kick() {
	if op.signals.Add(1) == 1 {
		go op.drain()
	}
}

// start runs the operation: gqlgen parses, validates and dispatches it (the
// resolver subscribes here), then its responses are sent.
func (op *wsOp) start(ctx context.Context, params *graphql.RawParams) {
	c := op.c
	defer op.recover()
	rc, errs := c.exec.CreateOperationContext(ctx, params)
	if errs != nil {
		resp := c.exec.DispatchError(graphql.WithOperationContext(ctx, rc), errs)
		if errcode.GetErrorKind(errs) == errcode.KindProtocol {
			op.finish("error", resp.Errors)
			return
		}
		op.sendData(&graphql.Response{Errors: errs})
		op.finish("complete", nil)
		return
	}
	ctx = context.WithValue(graphql.WithOperationContext(ctx, rc), wsOpKey{}, op)
	op.responses, op.ctx = c.exec.DispatchOperation(ctx, rc)
	if op.stream.Load() == nil {
		// Not a hub stream: a refusal, a query or a mutation answers at
		// once (an unpaced stream would hold this goroutine, as gqlgen's
		// transport does).
		for {
			resp := op.responses(op.ctx)
			if resp == nil {
				break
			}
			op.sendData(resp)
		}
		op.finish("complete", nil)
		return
	}
	op.drain()
}

// drain sends what the stream has ready; when the stream has ended, it
// ends the operation: with an error carrying the hub's reason
// (EVENTS_EXPIRED, SLOW_CONSUMER, UNAUTHENTICATED), or complete.
func (op *wsOp) drain() {
	defer op.recover()
	for {
		n := op.signals.Load()
		for !op.over && op.ready() {
			resp := op.responses(op.ctx)
			if resp == nil {
				op.over = true
				op.end()
				break
			}
			op.sendData(resp)
		}
		// A kick after the Load above makes this fail and drains again.
		if op.signals.CompareAndSwap(n, 0) {
			return
		}
	}
}

func (op *wsOp) ready() bool {
	st := op.stream.Load()
	return st != nil && st.Ready()
}

func (op *wsOp) end() {
	var de *desk.Error
	if err := op.stream.Load().Err(); errors.As(err, &de) {
		op.finish("error", gqlerror.List{{Message: de.Message, Extensions: map[string]any{"code": string(de.Code)}}})
		return
	}
	op.finish("complete", nil)
}

func (op *wsOp) recover() {
	if r := recover(); r != nil {
		op.c.t.log.Error("panic in websocket operation", "panic", r, "stack", string(debug.Stack()))
		op.over = true
		op.finish("error", gqlerror.List{{Message: "internal error", Extensions: map[string]any{"code": string(desk.CodeInternal)}}})
	}
}

// sendData sends a response unless the operation was stopped.
func (op *wsOp) sendData(resp *graphql.Response) {
	b, err := json.Marshal(resp)
	if err != nil {
		panic(err)
	}
	c := op.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ops[op.id] == op {
		c.writeLocked(c.dataType(), op.id, b)
	}
}

// finish sends the operation's last message, once, unless the client
// stopped it or the connection closed; and cancels it.
func (op *wsOp) finish(typ string, errs gqlerror.List) {
	c := op.c
	c.mu.Lock()
	defer c.mu.Unlock()
	op.cancel()
	if c.ops[op.id] != op {
		return
	}
	delete(c.ops, op.id)
	if typ == "error" {
		c.writeErrorLocked(op.id, errs...)
		return
	}
	c.writeLocked(typ, op.id, nil)
}
