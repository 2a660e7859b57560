package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// A graphql-transport-ws client on coder/websocket (as server/app/apptest
// has), small enough to hold ten thousand connections in one process.

type wsMessage struct {
	Type    string          `json:"type"`
	ID      string          `json:"id,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// liveEvent is the part of a panel event the benchmark reads.
type liveEvent struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	ChatID string `json:"chatId"`
	Chat   *struct {
		Contact *struct {
			Name string `json:"name"`
		} `json:"contact"`
	} `json:"chat"`
	Message *struct {
		Text string `json:"text"`
	} `json:"message"`
}

// nextPayload is the payload of a panel subscription's next message.
type nextPayload struct {
	Data struct {
		Panel *liveEvent `json:"panel"`
	} `json:"data"`
	Errors []gqlError `json:"errors"`
}

// subscription is one websocket with one panel subscription.
type subscription struct {
	conn   *websocket.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

// subStats counts what happened to subscriptions.
type subStats struct {
	events  atomic.Int64
	ended   atomic.Int64 // error or complete from the server, or a dropped connection
	lastEnd atomic.Value // string
}

// subscribePanel opens a websocket, authenticates in connection_init with
// the token, subscribes to the panel and hands every event to sink (with the
// time it was read) until close.
func subscribePanel(ctx context.Context, base, token string, st *subStats, sink func(time.Time, *liveEvent)) (*subscription, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(base, "http")+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	conn.SetReadLimit(1 << 20)
	write := func(ctx context.Context, m map[string]any) error {
		b, _ := json.Marshal(m)
		return conn.Write(ctx, websocket.MessageText, b)
	}
	if err := write(dctx, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}}); err != nil {
		conn.CloseNow()
		return nil, err
	}
	for {
		_, b, err := conn.Read(dctx)
		if err != nil {
			conn.CloseNow()
			return nil, fmt.Errorf("connection_init: %w", err)
		}
		var m wsMessage
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		if m.Type == "ping" {
			_ = write(dctx, map[string]any{"type": "pong"})
			continue
		}
		if m.Type == "connection_ack" {
			break
		}
		conn.CloseNow()
		return nil, fmt.Errorf("connection_init answered %s %s", m.Type, m.Payload)
	}
	if err := write(dctx, map[string]any{"type": "subscribe", "id": "1", "payload": map[string]any{"query": panelSubscription}}); err != nil {
		conn.CloseNow()
		return nil, err
	}
	rctx, rcancel := context.WithCancel(context.Background())
	s := &subscription{conn: conn, cancel: rcancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			_, b, err := conn.Read(rctx)
			if err != nil {
				if rctx.Err() == nil {
					st.ended.Add(1)
					st.lastEnd.Store("read: " + err.Error())
				}
				return
			}
			at := time.Now()
			var m wsMessage
			if json.Unmarshal(b, &m) != nil {
				continue
			}
			switch m.Type {
			case "ping":
				wctx, c := context.WithTimeout(rctx, 10*time.Second)
				_ = write(wctx, map[string]any{"type": "pong"})
				c()
			case "next":
				var p nextPayload
				if json.Unmarshal(m.Payload, &p) != nil {
					continue
				}
				if len(p.Errors) > 0 {
					st.ended.Add(1)
					st.lastEnd.Store("error: " + p.Errors[0].Message + " " + p.Errors[0].Extensions.Code)
					continue
				}
				if p.Data.Panel != nil {
					st.events.Add(1)
					if sink != nil {
						sink(at, p.Data.Panel)
					}
				}
			case "error", "complete":
				st.ended.Add(1)
				st.lastEnd.Store(m.Type + ": " + string(m.Payload))
			}
		}
	}()
	return s, nil
}

func (s *subscription) close() {
	s.cancel()
	_ = s.conn.CloseNow()
	<-s.done
}

// connectMany opens n panel subscriptions with tokens(i), par at a time.
func connectMany(ctx context.Context, base string, n, par int, token func(int) string, st *subStats,
	sink func(i int) func(time.Time, *liveEvent)) ([]*subscription, error) {
	subs := make([]*subscription, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				var s *subscription
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					var sk func(time.Time, *liveEvent)
					if sink != nil {
						sk = sink(i)
					}
					if s, err = subscribePanel(ctx, base, token(i), st, sk); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("subscription %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				subs[i] = s
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(subs)
		return nil, firstErr
	}
	return subs, nil
}

func closeAll(subs []*subscription) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, s := range subs {
		if s == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.close()
		}()
	}
	wg.Wait()
}

// tracker matches panel events to the deliveries that caused them and
// measures the time from the start of each POST to each receipt.
type tracker struct {
	mu        sync.Mutex
	bySeq     map[int64]*pending
	byContact map[string]int64
	// messagesOf are the deliveries of messages to a contact's open chat,
	// by the contact's name.
	messagesOf map[string][]int64
	stray      int
}

type pending struct {
	start  time.Time
	ack    time.Time // when the webhook's answer was read (zero before)
	expect int
	got    int
	phase  *deliveryPhase
	isNew  bool
}

// deliveryPhase collects the receipts of one measurement.
type deliveryPhase struct {
	receipts samples // every (delivery, subscriber) receipt
	first    samples // the first receipt of each delivery
	// afterAck is, for every receipt, how long after the webhook's answer
	// it came (0 when it came first): the live delivery's own share.
	afterAck samples
	// afterAckNew is afterAck for new chats' offers only.
	afterAckNew samples
	expected    int
	got         int
	// done, while wait waits, is closed when got reaches expected.
	done chan struct{}
}

// settled closes done once every expected receipt came (t.mu held).
func (ph *deliveryPhase) settled() {
	if ph.done != nil && ph.got >= ph.expected {
		close(ph.done)
		ph.done = nil
	}
}

func newTracker() *tracker {
	return &tracker{bySeq: map[int64]*pending{}, byContact: map[string]int64{}, messagesOf: map[string][]int64{}}
}

// expect registers a delivery about to be posted: expect receipts are due.
func (t *tracker) expect(d delivery, start time.Time, expect int, ph *deliveryPhase) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bySeq[d.seq] = &pending{start: start, expect: expect, phase: ph, isNew: d.isNew}
	if d.isNew {
		t.byContact[d.contact.name()] = d.seq
	} else {
		t.messagesOf[d.contact.name()] = append(t.messagesOf[d.contact.name()], d.seq)
	}
	ph.expected += expect
}

// acked records when the webhook of a delivery was answered.
func (t *tracker) acked(d delivery, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.bySeq[d.seq]; p != nil {
		p.ack = at
	}
}

// failed withdraws the receipts of a delivery the server did not accept.
func (t *tracker) failed(d delivery) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.bySeq[d.seq]; p != nil {
		p.phase.expected -= p.expect - p.got
		p.expect = p.got
		p.phase.settled()
	}
}

// receive records one panel event read at `at`. A new chat reaches panels
// as CHAT_OFFERED (matched by its customer's name), a message in an open
// chat as MESSAGE_ADDED (matched by the text).
func (t *tracker) receive(at time.Time, e *liveEvent) {
	var seq int64
	switch {
	case e.Type == "MESSAGE_ADDED" && e.Message != nil:
		tok, _, _ := strings.Cut(e.Message.Text, " ")
		seq = parseToken(tok)
	case e.Type == "CHAT_OFFERED" && e.Chat != nil && e.Chat.Contact != nil:
		t.mu.Lock()
		seq = t.byContact[e.Chat.Contact.Name]
		t.mu.Unlock()
	default:
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.bySeq[seq]
	if p == nil || p.isNew != (e.Type == "CHAT_OFFERED") || p.got >= p.expect {
		t.stray++
		return
	}
	t.credit(p, at)
	if e.Type == "CHAT_OFFERED" {
		// A message that reached a new chat before its offers (the chat
		// waited for a release of its queue) had no panel to go to: the
		// offer brings the chat with it.
		for _, m := range t.messagesOf[e.Chat.Contact.Name] {
			if q := t.bySeq[m]; q != nil && !q.ack.IsZero() && at.After(q.ack) && q.got < q.expect {
				t.credit(q, at)
			}
		}
	}
}

// credit records a receipt of p's delivery at `at` (t.mu held).
func (t *tracker) credit(p *pending, at time.Time) {
	p.got++
	lat := at.Sub(p.start)
	p.phase.got++
	p.phase.receipts = append(p.phase.receipts, lat)
	var after time.Duration // 0: the event came before the answer
	if !p.ack.IsZero() && at.After(p.ack) {
		after = at.Sub(p.ack)
	}
	p.phase.afterAck = append(p.phase.afterAck, after)
	if p.isNew {
		p.phase.afterAckNew = append(p.phase.afterAckNew, after)
	}
	if p.got == 1 {
		p.phase.first = append(p.phase.first, lat)
	}
	p.phase.settled()
}

func parseToken(tok string) int64 {
	prefix := "m" + runTag + "-"
	if !strings.HasPrefix(tok, prefix) {
		return 0
	}
	n, _ := strconv.ParseInt(tok[len(prefix):], 10, 64)
	return n
}

// wait blocks until every expected receipt of the phase arrived or the
// timeout passed, and returns a copy of the phase. It is called once the
// phase's deliveries were all posted, so that expected no longer grows.
func (t *tracker) wait(ph *deliveryPhase, timeout time.Duration) deliveryPhase {
	t.mu.Lock()
	if ph.got < ph.expected {
		done := make(chan struct{})
		ph.done = done
		t.mu.Unlock()
		timer := time.NewTimer(timeout)
		select {
		case <-done:
		case <-timer.C:
		}
		timer.Stop()
		t.mu.Lock()
		ph.done = nil
	}
	defer t.mu.Unlock()
	return deliveryPhase{receipts: append(samples(nil), ph.receipts...), first: append(samples(nil), ph.first...),
		afterAck: append(samples(nil), ph.afterAck...), afterAckNew: append(samples(nil), ph.afterAckNew...), expected: ph.expected, got: ph.got}
}
