package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Webhook deliveries shaped like the providers' (shared/fixtures/telegram
// and whatsapp): a Telegram Update with the channel's secret header, and a
// WhatsApp Cloud API batch signed with X-Hub-Signature-256.

// ids hands out numbers unique in the run: message sequence numbers and
// contact numbers (Telegram chat ids and WhatsApp numbers derive from them).
var (
	msgSeq     atomic.Int64
	contactSeq atomic.Int64
	runTag     = randomHex(2)
)

// contactRef is a customer the benchmark writes as, on one set's channel.
type contactRef struct {
	n        int64
	whatsapp bool
	set      *benchSet
}

func (c contactRef) name() string { return fmt.Sprintf("k%s-%d", runTag, c.n) }

// delivery is one webhook about to be sent.
type delivery struct {
	seq     int64
	contact contactRef
	isNew   bool
	req     *http.Request
}

const messageText = " Hello! Where is my order #A-1042? It was due yesterday."

// tokenOf is the text every message starts with: the benchmark recognises
// its events by it.
func tokenOf(seq int64) string { return fmt.Sprintf("m%s-%d", runTag, seq) }

func (s *benchSet) telegramRequest(base string, c contactRef, seq int64) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/telegram/"+s.TG.ID, strings.NewReader(telegramUpdate(c, seq)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Telegram-Bot-Api-Secret-Token", s.TG.Secret)
	return req
}

// telegramUpdate is the body of a Telegram webhook: c's message of seq.
func telegramUpdate(c contactRef, seq int64) string {
	chatID := 7_000_000_000 + c.n
	return fmt.Sprintf(`{"update_id":%d,"message":{"message_id":%d,"from":{"id":%d,"is_bot":false,"first_name":%q,"language_code":"en"},`+
		`"chat":{"id":%d,"first_name":%q,"type":"private"},"date":%d,"text":%q}}`,
		seq, seq, chatID, c.name(), chatID, c.name(), time.Now().Unix(), tokenOf(seq)+messageText)
}

func (s *benchSet) whatsappRequest(base string, c contactRef, seq int64) *http.Request {
	waID := fmt.Sprintf("1650%08d", c.n)
	userID := fmt.Sprintf("US.%d", 13491208655302741918-uint64(c.n))
	body := fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102938475610293","changes":[{"value":`+
		`{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":%q},`+
		`"contacts":[{"profile":{"name":%q},"wa_id":%q,"user_id":%q}],`+
		`"messages":[{"from":%q,"from_user_id":%q,"id":"wamid.BENCH%s%d","timestamp":"%d","type":"text","text":{"body":%q}}]},`+
		`"field":"messages"}]}]}`,
		s.WA.AccountID, c.name(), waID, userID, waID, userID, runTag, seq, time.Now().Unix(), tokenOf(seq)+messageText)
	mac := hmac.New(sha256.New, []byte(s.WA.Secret))
	mac.Write([]byte(body))
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/whatsapp/"+s.WA.ID, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return req
}

// traffic makes the deliveries of a run of bench sets: a share of new
// contacts (each opens a chat), the rest to contacts whose chat is open; half
// on Telegram, half on WhatsApp. Every new chat is offered to each operator
// of its set (TO_ALL) and counts toward their load, which may not exceed
// 1,000 (the schema's maximum limit): new contacts move on to the next set
// after rotateAt, so that offers never saturate.
type traffic struct {
	base    string
	newFrac float64

	mu       sync.Mutex
	sets     []*benchSet
	newChats []int
	cur      int
	known    []contactRef // contacts whose first message was acknowledged
	sent     atomic.Int64 // acknowledged deliveries
	overflow atomic.Int64 // new chats beyond the capacity of the sets
}

// rotateAt is how many chats a set's operators are offered before new
// contacts go to the next set. Nobody accepts in the benchmark, so this is
// how many open offers an operator ends up with: a few hundred at most is
// already far beyond a real desk (offers count toward a limit of a few
// chats), and every routing counts its members' open offers.
const rotateAt = 200

func newTraffic(base string, newFrac float64, sets ...*benchSet) *traffic {
	t := &traffic{base: base, newFrac: newFrac}
	for _, s := range sets {
		t.add(s)
	}
	return t
}

func (t *traffic) add(s *benchSet) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sets = append(t.sets, s)
	t.newChats = append(t.newChats, 0)
}

// room is how many more new chats the sets take without saturating.
func (t *traffic) room() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for i := t.cur; i < len(t.sets); i++ {
		n += max(0, rotateAt-t.newChats[i])
	}
	return n
}

// allSets returns the sets of the traffic.
func (t *traffic) allSets() []*benchSet {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*benchSet(nil), t.sets...)
}

func (t *traffic) next(rng *rand.Rand) delivery {
	seq := msgSeq.Add(1)
	t.mu.Lock()
	n := len(t.known)
	var c contactRef
	isNew := n == 0 || rng.Float64() < t.newFrac
	if !isNew {
		c = t.known[rng.IntN(n)]
	} else {
		if t.newChats[t.cur] >= rotateAt && t.cur < len(t.sets)-1 {
			t.cur++
		}
		if t.newChats[t.cur] >= rotateAt {
			t.overflow.Add(1)
		}
		t.newChats[t.cur]++
		c = contactRef{n: contactSeq.Add(1), whatsapp: rng.IntN(2) == 1, set: t.sets[t.cur]}
	}
	t.mu.Unlock()
	d := delivery{seq: seq, contact: c, isNew: isNew}
	if c.whatsapp {
		d.req = c.set.whatsappRequest(t.base, c, seq)
	} else {
		d.req = c.set.telegramRequest(t.base, c, seq)
	}
	return d
}

func (t *traffic) acked(d delivery) {
	t.sent.Add(1)
	if d.isNew {
		t.mu.Lock()
		t.known = append(t.known, d.contact)
		t.mu.Unlock()
	}
}

// source makes the deliveries of a phase and learns which were
// acknowledged.
type source interface {
	next(rng *rand.Rand) delivery
	acked(d delivery)
}

// loadSpec says how to drive a phase.
type loadSpec struct {
	conc int
	// rate, when set, paces the deliveries (open loop); otherwise each worker
	// sends the next delivery when the previous one is acknowledged.
	rate float64
	dur  time.Duration
	// maxN bounds the deliveries of the phase.
	maxN int
}

// phaseResult is what a phase measured at the HTTP level.
type phaseResult struct {
	acked   int
	failed  int
	elapsed time.Duration
	ack     samples
	// ackNew are the acknowledgements of new contacts' messages (their
	// chat is created and routed in the webhook's transaction).
	ackNew samples
	errs   map[string]int
}

func (r phaseResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.acked) / r.elapsed.Seconds()
}

// hooks let a phase observe each delivery: before its POST starts and after
// it is acknowledged.
type hooks struct {
	before func(d delivery, start time.Time)
	after  func(d delivery, start time.Time, ok bool)
}

// drive sends deliveries of t according to spec. Every loop is bounded by
// the duration and by maxN.
func drive(ctx context.Context, client *http.Client, t source, spec loadSpec, h hooks) phaseResult {
	if spec.maxN <= 0 {
		spec.maxN = 1_000_000
	}
	ctx, cancel := context.WithTimeout(ctx, spec.dur+30*time.Second)
	defer cancel()
	var (
		mu  sync.Mutex
		res = phaseResult{errs: map[string]int{}}
		n   atomic.Int64
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(spec.dur)
	var tickets chan struct{}
	if spec.rate > 0 {
		tickets = make(chan struct{}, spec.conc)
		go func() {
			defer close(tickets)
			interval := time.Duration(float64(time.Second) / spec.rate)
			next := time.Now()
			for i := 0; i < spec.maxN; i++ {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return
				}
				select {
				case tickets <- struct{}{}:
				case <-ctx.Done():
					return
				}
				next = next.Add(interval)
			}
		}()
	}
	var last atomic.Int64
	for w := range spec.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			var lat, latNew samples
			acked, failed := 0, 0
			errs := map[string]int{}
			for ctx.Err() == nil {
				if tickets != nil {
					if _, ok := <-tickets; !ok {
						break
					}
				} else if time.Now().After(deadline) {
					break
				}
				if n.Add(1) > int64(spec.maxN) {
					break
				}
				d := t.next(rng)
				d.req = d.req.WithContext(ctx)
				t0 := time.Now()
				if h.before != nil {
					h.before(d, t0)
				}
				resp, err := client.Do(d.req)
				ok := false
				if err != nil {
					errs[shortErr(err)]++
				} else {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						ok = true
					} else {
						errs[fmt.Sprintf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(body))]++
					}
				}
				el := time.Since(t0)
				if ok {
					acked++
					lat = append(lat, el)
					if d.isNew {
						latNew = append(latNew, el)
					}
					t.acked(d)
					last.Store(int64(time.Since(start)))
				} else {
					failed++
				}
				if h.after != nil {
					h.after(d, t0, ok)
				}
			}
			mu.Lock()
			res.acked += acked
			res.failed += failed
			res.ack = append(res.ack, lat...)
			res.ackNew = append(res.ackNew, latNew...)
			for k, v := range errs {
				res.errs[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Duration(last.Load())
	if res.elapsed < spec.dur/2 {
		res.elapsed = time.Since(start)
	}
	return res
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func (r phaseResult) errSummary() string {
	if r.failed == 0 {
		return ""
	}
	var parts []string
	for k, v := range r.errs {
		parts = append(parts, fmt.Sprintf("%d× %s", v, k))
	}
	return strings.Join(parts, "; ")
}

// fakeProviders answers the provider calls the server makes (profile
// photos of new Telegram contacts) on loopback: no photo.
type fakeProviders struct {
	srv   *httptest.Server
	calls atomic.Int64
}

func newFakeProviders() *fakeProviders {
	f := &fakeProviders{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/getUserProfilePhotos"):
			_, _ = io.WriteString(w, `{"ok":true,"result":{"total_count":0,"photos":[]}}`)
		case strings.Contains(r.URL.Path, "/bot"):
			_, _ = io.WriteString(w, `{"ok":true,"result":{"message_id":1,"date":0,"chat":{"id":1,"type":"private"}}}`)
		default:
			_, _ = io.WriteString(w, `{"messages":[{"id":"wamid.fake"}]}`)
		}
	}))
	return f
}
