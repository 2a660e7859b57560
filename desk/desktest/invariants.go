package desktest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Invariants checks, with SQL over the stored state, what the routing engine
// must keep true at every commit (R7–R13, R18, R10: race-free routing) and,
// once nothing is in flight, that no chat is lost (R9). Every check of one
// run reads one snapshot (a REPEATABLE READ transaction on PostgreSQL, a
// read transaction on SQLite), so it may run while the desk works, from
// the same process or from a test that drives several server processes.
//
// The checker is stateful only to avoid re-reading every routing decision at
// every run: decisions never change once written, so each is verified once.
// A few checks read the event log, whose ids follow commit order for the
// changes of one row; pruning old events only makes them see less.
//
// Use one checker per database, from any goroutine (checks are serialised).
// Report lists the violations; the caller decides how to fail.
type Invariants struct {
	db *sql.DB
	pg bool
	// reader is SQLite's snapshot connection (see snapshot).
	reader *sql.DB

	mu     sync.Mutex
	seen   map[int]bool   // routing decisions verified
	chosen map[[2]int]int // (chat, operator) -> decisions that chose the operator
}

// NewInvariants returns a checker over db (postgres says which SQL dialect
// it speaks).
func NewInvariants(db *sql.DB, postgres bool) *Invariants {
	return &Invariants{db: db, pg: postgres, seen: map[int]bool{}, chosen: map[[2]int]int{}}
}

// Invariants returns a checker over the world's database, closed at the
// end of the test.
func (w *World) Invariants() *Invariants {
	iv := NewInvariants(w.DB.SQL, w.DB.Postgres())
	w.T.Cleanup(func() { iv.Close() })
	return iv
}

// Close releases the checker's own connection (SQLite).
func (iv *Invariants) Close() error {
	iv.mu.Lock()
	defer iv.mu.Unlock()
	if iv.reader != nil {
		return iv.reader.Close()
	}
	return nil
}

// snapshot begins the read-only transaction of one check. On PostgreSQL it
// is REPEATABLE READ. On SQLite, Parley's DSN begins every transaction
// IMMEDIATE, which would take the write lock and stall the writers under
// test; the checker opens its own pool on the same file whose transactions
// begin DEFERRED: a read transaction, one WAL snapshot, no lock on writers.
func (iv *Invariants) snapshot(ctx context.Context) (*sql.Tx, error) {
	if iv.pg {
		return iv.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	}
	if iv.reader == nil {
		var seq int
		var name, file string
		if err := iv.db.QueryRowContext(ctx, "PRAGMA database_list").Scan(&seq, &name, &file); err != nil {
			return nil, fmt.Errorf("sqlite file: %w", err)
		}
		if file == "" {
			// An in-memory database: only its own pool sees it.
			return iv.db.BeginTx(ctx, nil)
		}
		r, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)&_txlock=deferred")
		if err != nil {
			return nil, err
		}
		iv.reader = r
	}
	return iv.reader.BeginTx(ctx, nil)
}

// CheckOptions selects the checks that hold only at rest.
type CheckOptions struct {
	// Quiescent says nothing is in flight and every job due at Now has run:
	// no open offer is past its accept timeout, no completion timer is
	// overdue, no job is due, and every waiting chat has an open offer unless
	// no member of its queue can take it (R9: no chat is lost).
	Quiescent bool
	// Now is the desk's clock (required with Quiescent).
	Now time.Time
}

// Report is the outcome of one check: the violations found and what the
// snapshot held.
type Report struct {
	Violations []string
	// Chats counts chats by status; Offers counts offers by status.
	Chats     map[string]int
	Offers    map[string]int
	Decisions int
	Jobs      map[string]int

	perRule map[string]int
}

// OK reports whether no invariant was violated.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

// maxPerInvariant bounds the violations reported per invariant.
const maxPerInvariant = 8

func (r *Report) add(rule string, format string, args ...any) {
	if r.perRule == nil {
		r.perRule = map[string]int{}
	}
	r.perRule[rule]++
	switch n := r.perRule[rule]; {
	case n <= maxPerInvariant:
		r.Violations = append(r.Violations, rule+": "+fmt.Sprintf(format, args...))
	case n == maxPerInvariant+1:
		r.Violations = append(r.Violations, rule+": (more violations not shown)")
	}
}

// Check runs every invariant over one snapshot.
func (iv *Invariants) Check(ctx context.Context, opt CheckOptions) (*Report, error) {
	iv.mu.Lock()
	defer iv.mu.Unlock()
	tx, err := iv.snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("invariants: begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck
	c := &checkRun{iv: iv, tx: tx, ctx: ctx, opt: opt, r: &Report{}}
	for _, step := range []func() error{
		c.counts, c.limits, c.ownership, c.offers, c.openChats, c.offerTimers, c.completion,
		c.messages, c.events, c.statusHistory, c.decisions, c.jobs, c.quiescent,
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	sort.Strings(c.r.Violations)
	return c.r, nil
}

type checkRun struct {
	iv  *Invariants
	tx  *sql.Tx
	ctx context.Context
	opt CheckOptions
	r   *Report
}

// each runs a query and calls fn for every row with the scanned values.
func (c *checkRun) each(query string, fn func(scan func(dst ...any) error) error) error {
	rows, err := c.tx.QueryContext(c.ctx, query)
	if err != nil {
		return fmt.Errorf("invariants: %w\n%s", err, query)
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows.Scan); err != nil {
			return fmt.Errorf("invariants: %w\n%s", err, query)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("invariants: %w\n%s", err, query)
	}
	return nil
}

// violations runs a query that returns only violating rows and reports each
// with its columns.
func (c *checkRun) violations(rule, query string, cols ...string) error {
	return c.each(query, func(scan func(...any) error) error {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := scan(ptrs...); err != nil {
			return err
		}
		parts := make([]string, len(cols))
		for i, v := range vals {
			s := "NULL"
			if v.Valid {
				s = v.String
			}
			parts[i] = cols[i] + "=" + s
		}
		c.r.add(rule, "%s", strings.Join(parts, " "))
		return nil
	})
}

func (c *checkRun) counts() error {
	c.r.Chats, c.r.Offers, c.r.Jobs = map[string]int{}, map[string]int{}, map[string]int{}
	for _, q := range []struct {
		sql string
		dst map[string]int
	}{
		{`SELECT status, COUNT(*) FROM chats GROUP BY status`, c.r.Chats},
		{`SELECT status, COUNT(*) FROM chat_offers GROUP BY status`, c.r.Offers},
		{`SELECT status, COUNT(*) FROM jobs GROUP BY status`, c.r.Jobs},
	} {
		if err := c.each(q.sql, func(scan func(...any) error) error {
			var s string
			var n int
			if err := scan(&s, &n); err != nil {
				return err
			}
			q.dst[s] = n
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// loadsSQL is each operator's load (R7): chats in work plus open offers,
// as rows (operator, load), for operators with a load.
const loadsSQL = `(SELECT op, COUNT(*) AS n FROM (
    SELECT owner_id AS op FROM chats WHERE status = 'IN_PROGRESS' AND owner_id IS NOT NULL
    UNION ALL SELECT operator_id AS op FROM chat_offers WHERE status = 'OPEN') u GROUP BY op)`

// limits: no operator's chats in work plus open offers exceed their limit
// (R7, R10). An operator without an override may route in queues with
// different limits; the bound is then the highest that can apply. (A test
// that lowers a limit below an operator's load must not use this check.)
func (c *checkRun) limits() error {
	return c.violations("R7 load over limit", `SELECT id, status, load, lim FROM (
  SELECT o.id, o.status, COALESCE(l.n, 0) AS load,
    COALESCE(o.chat_limit, (SELECT MAX(m) FROM (SELECT chat_limit AS m FROM queues
      UNION ALL SELECT concurrent_chats FROM settings WHERE scope = 'system' UNION ALL SELECT 5 AS m) ms)) AS lim
  FROM operators o LEFT JOIN `+loadsSQL+` l ON l.op = o.id) o WHERE load > lim`, "operator", "status", "load", "limit")
}

// ownership: a chat in work has one owner, who accepted its one ACCEPTED
// offer, or it is a transfer child given to that operator (no offers at
// all); no chat has two ACCEPTED offers; an ACCEPTED offer belongs to the
// chat's owner; a waiting chat has no owner (R10, R13, R20).
func (c *checkRun) ownership() error {
	if err := c.violations("R13 chat in work without a rightful owner", `SELECT id, owner_id, parent_id, acc, acc_owner, total FROM (
  SELECT c.id, c.owner_id, c.parent_id,
    (SELECT COUNT(*) FROM chat_offers f WHERE f.chat_id = c.id AND f.status = 'ACCEPTED') AS acc,
    (SELECT COUNT(*) FROM chat_offers f WHERE f.chat_id = c.id AND f.status = 'ACCEPTED' AND f.operator_id = c.owner_id) AS acc_owner,
    (SELECT COUNT(*) FROM chat_offers f WHERE f.chat_id = c.id) AS total
  FROM chats c WHERE c.status = 'IN_PROGRESS') c
WHERE owner_id IS NULL OR NOT ((acc = 1 AND acc_owner = 1) OR (parent_id IS NOT NULL AND total = 0))`,
		"chat", "owner", "parent", "accepted_offers", "accepted_by_owner", "offers"); err != nil {
		return err
	}
	if err := c.violations("R10 chat accepted twice", `SELECT chat_id, COUNT(*) FROM chat_offers
WHERE status = 'ACCEPTED' GROUP BY chat_id HAVING COUNT(*) > 1`, "chat", "accepted_offers"); err != nil {
		return err
	}
	if err := c.violations("R13 accepted offer not matching the chat", `SELECT f.id, f.chat_id, f.operator_id, c.status, c.owner_id
FROM chat_offers f JOIN chats c ON c.id = f.chat_id
WHERE f.status = 'ACCEPTED' AND (c.status NOT IN ('IN_PROGRESS', 'COMPLETED') OR c.owner_id IS NULL OR c.owner_id <> f.operator_id)`,
		"offer", "chat", "operator", "chat_status", "owner"); err != nil {
		return err
	}
	return c.violations("R13 waiting chat with an owner", `SELECT id, owner_id FROM chats WHERE status = 'WAITING' AND owner_id IS NOT NULL`,
		"chat", "owner")
}

// offers: open offers exist only for waiting chats, only to ACTIVE operators
// (an operator turning INACTIVE loses them in the same transaction, R4),
// never twice to one operator, one at a time under TO_AVAILABLE and
// ROUND_ROBIN (R8); an offer is closed exactly when it is not open; TO_ALL
// offers have no accept timeout, the others have one.
func (c *checkRun) offers() error {
	for _, v := range []struct {
		rule, sql string
		cols      []string
	}{
		{"R13 open offer of a chat that is not waiting", `SELECT f.id, f.chat_id, f.operator_id, c.status FROM chat_offers f
JOIN chats c ON c.id = f.chat_id WHERE f.status = 'OPEN' AND c.status <> 'WAITING'`,
			[]string{"offer", "chat", "operator", "chat_status"}},
		{"R4 open offer to an operator who is not ACTIVE", `SELECT f.id, f.chat_id, f.operator_id, o.status FROM chat_offers f
JOIN operators o ON o.id = f.operator_id WHERE f.status = 'OPEN' AND (o.status <> 'ACTIVE' OR o.disabled = TRUE)`,
			[]string{"offer", "chat", "operator", "operator_status"}},
		{"R8 operator offered one chat twice", `SELECT chat_id, operator_id, COUNT(*) FROM chat_offers
WHERE status = 'OPEN' GROUP BY chat_id, operator_id HAVING COUNT(*) > 1`,
			[]string{"chat", "operator", "open_offers"}},
		{"R8 several open offers under a one-at-a-time rule", `SELECT f.chat_id, q.routing_rule, COUNT(*) FROM chat_offers f
JOIN chats c ON c.id = f.chat_id JOIN queues q ON q.id = c.queue_id
WHERE f.status = 'OPEN' AND q.routing_rule <> 'TO_ALL' GROUP BY f.chat_id, q.routing_rule HAVING COUNT(*) > 1`,
			[]string{"chat", "rule", "open_offers"}},
		{"R8 offer closed and open at once", `SELECT id, status FROM chat_offers
WHERE (status = 'OPEN' AND closed_at IS NOT NULL) OR (status <> 'OPEN' AND closed_at IS NULL)`,
			[]string{"offer", "status"}},
		{"R8 accept timeout not matching the rule", `SELECT f.id, q.routing_rule, f.expires_at FROM chat_offers f
JOIN chats c ON c.id = f.chat_id JOIN queues q ON q.id = c.queue_id
WHERE (q.routing_rule = 'TO_ALL' AND f.expires_at IS NOT NULL) OR (q.routing_rule <> 'TO_ALL' AND f.expires_at IS NULL)`,
			[]string{"offer", "rule", "expires_at"}},
		{"R13 accept of an offer withdrawn before (without a new offer)", `SELECT a.chat_id, a.operator_id, w.id, a.id FROM events a
JOIN events w ON w.chat_id = a.chat_id AND w.operator_id = a.operator_id AND w.type = 'OFFER_WITHDRAWN' AND w.id < a.id
WHERE a.type = 'CHAT_ACCEPTED' AND NOT EXISTS (SELECT 1 FROM events o WHERE o.chat_id = a.chat_id
  AND o.operator_id = a.operator_id AND o.type = 'CHAT_OFFERED' AND o.id > w.id AND o.id < a.id)`,
			[]string{"chat", "operator", "withdrawn_event", "accepted_event"}},
	} {
		if err := c.violations(v.rule, v.sql, v.cols...); err != nil {
			return err
		}
	}
	return nil
}

// openChats: at most one chat that is not COMPLETED per contact and channel
// (R1); COMPLETED exactly when it has a completion time and reason.
func (c *checkRun) openChats() error {
	if err := c.violations("R1 two open chats of one contact on one channel", `SELECT contact_id, channel_id, COUNT(*) FROM chats
WHERE status <> 'COMPLETED' GROUP BY contact_id, channel_id HAVING COUNT(*) > 1`, "contact", "channel", "open_chats"); err != nil {
		return err
	}
	return c.violations("R17 completion fields not matching the status", `SELECT id, status, completed_at, completion_reason FROM chats
WHERE (status = 'COMPLETED') <> (completed_at IS NOT NULL) OR (status = 'COMPLETED') <> (completion_reason IS NOT NULL)`,
		"chat", "status", "completed_at", "reason")
}

// offerTimers: every offer with an accept timeout has exactly one timer
// job; an EXPIRED offer expired no earlier than its timeout, by its timer
// (DONE in the same transaction), and each expiry made exactly one
// OFFER_TIMEOUT routing decision for the chat (the timer fired once).
// Matching is done in Go: job payloads are JSON, times are text on SQLite.
func (c *checkRun) offerTimers() error {
	type timer struct{ jobs, done int }
	timers := map[int]*timer{} // offer -> its timer jobs
	if err := c.each(`SELECT payload, status FROM jobs WHERE kind = 'OFFER_TIMEOUT'`, func(scan func(...any) error) error {
		var payload []byte
		var status string
		if err := scan(&payload, &status); err != nil {
			return err
		}
		var p struct{ Ref int }
		if err := json.Unmarshal(payload, &p); err != nil {
			return fmt.Errorf("timer payload %q: %w", payload, err)
		}
		t := timers[p.Ref]
		if t == nil {
			t = &timer{}
			timers[p.Ref] = t
		}
		t.jobs++
		if status == "DONE" {
			t.done++
		}
		return nil
	}); err != nil {
		return err
	}
	expired := map[int]int{} // chat -> expired offers
	if err := c.each(`SELECT id, chat_id, status, expires_at, closed_at FROM chat_offers WHERE expires_at IS NOT NULL`, func(scan func(...any) error) error {
		var id, chat int
		var status string
		var expires, closed sql.NullTime
		if err := scan(&id, &chat, &status, &expires, &closed); err != nil {
			return err
		}
		t := timers[id]
		if t == nil || t.jobs != 1 {
			n := 0
			if t != nil {
				n = t.jobs
			}
			c.r.add("R8 offer timer missing or duplicated", "offer=%d chat=%d timer_jobs=%d", id, chat, n)
		}
		if status != "EXPIRED" {
			return nil
		}
		expired[chat]++
		if t == nil || t.done != 1 {
			c.r.add("R8 offer expired without its timer", "offer=%d chat=%d", id, chat)
		}
		if !closed.Valid || closed.Time.Before(expires.Time) {
			c.r.add("R8 offer expired before its accept timeout", "offer=%d expires_at=%v closed_at=%v", id, expires.Time, closed.Time)
		}
		return nil
	}); err != nil {
		return err
	}
	decided := map[int]int{} // chat -> OFFER_TIMEOUT decisions
	if err := c.each(`SELECT chat_routing_decisions, COUNT(*) FROM routing_decisions WHERE "trigger" = 'OFFER_TIMEOUT'
GROUP BY chat_routing_decisions`, func(scan func(...any) error) error {
		var chat, n int
		if err := scan(&chat, &n); err != nil {
			return err
		}
		decided[chat] = n
		return nil
	}); err != nil {
		return err
	}
	for chat, n := range expired {
		if decided[chat] != n {
			c.r.add("R8 expiries and OFFER_TIMEOUT decisions differ", "chat=%d expired_offers=%d timeout_decisions=%d", chat, n, decided[chat])
		}
	}
	for chat, n := range decided {
		if _, ok := expired[chat]; !ok {
			c.r.add("R8 expiries and OFFER_TIMEOUT decisions differ", "chat=%d expired_offers=0 timeout_decisions=%d", chat, n)
		}
	}
	return nil
}

// completion: a chat completed by its completion timeout has exactly one
// system message saying so, no chat has two (R18: the timer fired once),
// and no chat completed twice (one CHAT_COMPLETED event).
func (c *checkRun) completion() error {
	if err := c.violations("R18 completion timeout without exactly one system message", `SELECT c.id, c.completion_reason, COALESCE(m.n, 0)
FROM chats c LEFT JOIN (SELECT chat_id, COUNT(*) AS n FROM messages WHERE author_kind = 'SYSTEM' GROUP BY chat_id) m ON m.chat_id = c.id
WHERE COALESCE(m.n, 0) > 1 OR (c.completion_reason = 'COMPLETION_TIMEOUT' AND COALESCE(m.n, 0) <> 1)`, "chat", "reason", "system_messages"); err != nil {
		return err
	}
	return c.violations("R17 chat completed twice", `SELECT chat_id, COUNT(*) FROM events WHERE type = 'CHAT_COMPLETED'
GROUP BY chat_id HAVING COUNT(*) > 1`, "chat", "completed_events")
}

// messages: a provider message is stored once per channel (R3); a message
// is on its chat's channel.
func (c *checkRun) messages() error {
	if err := c.violations("R3 provider message stored twice", `SELECT channel_id, provider_message_id, COUNT(*) FROM messages
WHERE provider_message_id IS NOT NULL GROUP BY channel_id, provider_message_id HAVING COUNT(*) > 1`,
		"channel", "provider_message_id", "messages"); err != nil {
		return err
	}
	return c.violations("R1 message on another channel than its chat", `SELECT m.id, m.channel_id, c.channel_id FROM messages m
JOIN chats c ON c.id = m.chat_id WHERE m.channel_id <> c.channel_id`, "message", "message_channel", "chat_channel")
}

// events: nothing is added to a chat after it completed (R1: a message
// after completion starts a new chat). Event ids follow commit order for
// one chat, whose row every change locks.
func (c *checkRun) events() error {
	return c.violations("R1 message added to a chat after it completed", `SELECT e.chat_id, e.id, d.id, e.payload FROM events e
JOIN events d ON d.chat_id = e.chat_id AND d.type = 'CHAT_COMPLETED'
WHERE e.type = 'MESSAGE_ADDED' AND e.id > d.id`, "chat", "message_event", "completed_event", "payload")
}

// statusHistory: the recorded status changes of an operator form a chain
// (each starts from the status the previous one set, R6) that ends at the
// operator's status.
func (c *checkRun) statusHistory() error {
	if err := c.violations("R6 status change history broken", `SELECT id, op, previous, status, before FROM (
  SELECT s.id, s.operator_status_changes AS op, s.previous, s.status,
    LAG(s.status) OVER (PARTITION BY s.operator_status_changes ORDER BY s.id) AS before
  FROM operator_status_changes s) h
WHERE status = previous OR (before IS NOT NULL AND (previous IS NULL OR previous <> before))`,
		"change", "operator", "previous", "status", "status_before"); err != nil {
		return err
	}
	return c.violations("R6 operator status differs from the last change", `SELECT o.id, o.status, s.status FROM operators o
JOIN operator_status_changes s ON s.operator_status_changes = o.id
WHERE s.id = (SELECT MAX(x.id) FROM operator_status_changes x WHERE x.operator_status_changes = o.id) AND s.status <> o.status`,
		"operator", "status", "last_change")
}

// candidate is schema.Candidate as stored (JSON).
type candidate struct {
	OperatorID int    `json:"operatorId"`
	Status     string `json:"status"`
	Load       int    `json:"load"`
	Limit      int    `json:"limit"`
	Chosen     bool   `json:"chosen"`
	Excluded   string `json:"excluded"`
}

// decisions: every routing decision (R11) is consistent with what it
// records: only candidates ACTIVE and under the limit are chosen (R7, R8),
// TO_ALL chooses all of them, the other rules one, TO_AVAILABLE the least
// loaded; the outcome matches. And offers and decisions match one to one:
// each offer was made by exactly one recorded decision.
func (c *checkRun) decisions() error {
	iv := c.iv
	var newIDs []int
	if err := c.each(`SELECT id FROM routing_decisions`, func(scan func(...any) error) error {
		var id int
		if err := scan(&id); err != nil {
			return err
		}
		if !iv.seen[id] {
			newIDs = append(newIDs, id)
		}
		c.r.Decisions++
		return nil
	}); err != nil {
		return err
	}
	if len(newIDs) > 0 {
		lo := newIDs[0]
		for _, id := range newIDs {
			lo = min(lo, id)
		}
		if err := c.each(fmt.Sprintf(`SELECT id, chat_routing_decisions, rule, "trigger", outcome, candidates, chosen_operator_ids
FROM routing_decisions WHERE id >= %d`, lo), func(scan func(...any) error) error {
			var id, chat int
			var rule, trigger, outcome string
			var cands, chosen []byte
			if err := scan(&id, &chat, &rule, &trigger, &outcome, &cands, &chosen); err != nil {
				return err
			}
			if iv.seen[id] {
				return nil
			}
			iv.seen[id] = true
			c.decision(id, chat, rule, trigger, outcome, cands, chosen)
			return nil
		}); err != nil {
			return err
		}
	}
	offers := map[[2]int]int{}
	if err := c.each(`SELECT chat_id, operator_id, COUNT(*) FROM chat_offers GROUP BY chat_id, operator_id`, func(scan func(...any) error) error {
		var chat, op, n int
		if err := scan(&chat, &op, &n); err != nil {
			return err
		}
		offers[[2]int{chat, op}] = n
		return nil
	}); err != nil {
		return err
	}
	for k, n := range offers {
		if iv.chosen[k] != n {
			c.r.add("R11 offers and recorded decisions differ", "chat=%d operator=%d offers=%d decisions_choosing=%d", k[0], k[1], n, iv.chosen[k])
		}
	}
	for k, n := range iv.chosen {
		if _, ok := offers[k]; !ok {
			c.r.add("R11 offers and recorded decisions differ", "chat=%d operator=%d offers=0 decisions_choosing=%d", k[0], k[1], n)
		}
	}
	return nil
}

func (c *checkRun) decision(id, chat int, rule, trigger, outcome string, rawCands, rawChosen []byte) {
	bad := func(format string, args ...any) {
		c.r.add("R11 routing decision inconsistent", "decision=%d chat=%d rule=%s trigger=%s: %s", id, chat, rule, trigger, fmt.Sprintf(format, args...))
	}
	var cands []candidate
	if err := json.Unmarshal(rawCands, &cands); err != nil {
		bad("candidates: %v", err)
		return
	}
	var chosenIDs []int
	if len(rawChosen) > 0 && string(rawChosen) != "null" {
		if err := json.Unmarshal(rawChosen, &chosenIDs); err != nil {
			bad("chosen_operator_ids: %v", err)
			return
		}
	}
	want := map[int]bool{}
	for _, op := range chosenIDs {
		if want[op] {
			bad("operator %d chosen twice", op)
		}
		want[op] = true
		c.iv.chosen[[2]int{chat, op}]++
	}
	switch {
	case outcome == "OFFERED" && len(chosenIDs) == 0, outcome == "WAITING" && len(chosenIDs) > 0,
		outcome != "OFFERED" && outcome != "WAITING":
		bad("outcome %s with %d chosen", outcome, len(chosenIDs))
	case trigger == "CAPACITY" && outcome != "OFFERED":
		bad("a capacity release recorded without an offer")
	}
	if rule != "TO_ALL" && len(chosenIDs) > 1 {
		bad("%d operators chosen under a one-at-a-time rule", len(chosenIDs))
	}
	eligible := func(x candidate) bool { return x.Status == "ACTIVE" && x.Load < x.Limit }
	var picked *candidate
	got := 0
	for i, x := range cands {
		switch {
		case x.Chosen:
			got++
			picked = &cands[i]
			if !want[x.OperatorID] {
				bad("candidate %d marked chosen but not in chosen_operator_ids", x.OperatorID)
			}
			if !eligible(x) || x.Excluded != "" {
				bad("chose operator %d: status %s load %d limit %d excluded %q", x.OperatorID, x.Status, x.Load, x.Limit, x.Excluded)
			}
		case x.Excluded == "":
			bad("candidate %d neither chosen nor excluded", x.OperatorID)
		case x.Excluded == "INACTIVE" && x.Status == "ACTIVE",
			x.Excluded == "LIMIT_EXHAUSTED" && x.Load < x.Limit:
			bad("candidate %d excluded as %s: status %s load %d limit %d", x.OperatorID, x.Excluded, x.Status, x.Load, x.Limit)
		case rule == "TO_ALL" && eligible(x) && x.Excluded != "ALREADY_OFFERED":
			bad("TO_ALL left out available operator %d (%s)", x.OperatorID, x.Excluded)
		case outcome == "WAITING" && eligible(x) && x.Excluded != "ALREADY_OFFERED":
			bad("chat left waiting although operator %d was available (%s)", x.OperatorID, x.Excluded)
		}
	}
	if got != len(chosenIDs) {
		bad("%d candidates chosen, %d chosen ids", got, len(chosenIDs))
	}
	if rule == "TO_AVAILABLE" && picked != nil {
		for _, x := range cands {
			if (x.Excluded == "MORE_LOADED" && x.Load <= picked.Load) || (x.Excluded == "IDLE_LESS_LONG" && x.Load != picked.Load) {
				bad("TO_AVAILABLE chose operator %d (load %d) over %d (load %d, %s)", picked.OperatorID, picked.Load, x.OperatorID, x.Load, x.Excluded)
			}
		}
	}
}

// routingJobs are the kinds of job the routing engine's timers use (the
// outbox and downloads, which depend on providers, are not checked here).
const routingJobs = `('RELEASE', 'OFFER_TIMEOUT', 'COMPLETION_DUE', 'SESSION_EXPIRED')`

// jobs: no routing timer failed, not even once.
func (c *checkRun) jobs() error {
	return c.violations("R10 job failed", `SELECT id, kind, status, attempts, last_error FROM jobs
WHERE kind IN `+routingJobs+` AND (status = 'FAILED' OR last_error IS NOT NULL)`, "job", "kind", "status", "attempts", "error")
}

// quiescent: at rest, every timer due has fired and no chat is lost (R9):
// a waiting chat has an open offer to every ACTIVE member under the limit
// (TO_ALL) or one open offer (other rules), unless no member can take it.
func (c *checkRun) quiescent() error {
	if !c.opt.Quiescent {
		return nil
	}
	now := c.opt.Now
	if now.IsZero() {
		return fmt.Errorf("invariants: Quiescent needs Now")
	}
	if err := c.each(`SELECT id, chat_id, expires_at FROM chat_offers WHERE status = 'OPEN' AND expires_at IS NOT NULL`, func(scan func(...any) error) error {
		var id, chat int
		var exp time.Time
		if err := scan(&id, &chat, &exp); err != nil {
			return err
		}
		if !exp.After(now) {
			c.r.add("R8 open offer past its accept timeout at rest", "offer=%d chat=%d expires_at=%v now=%v", id, chat, exp, now)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := c.each(`SELECT id, completion_due_at FROM chats WHERE status = 'IN_PROGRESS' AND completion_due_at IS NOT NULL`, func(scan func(...any) error) error {
		var id int
		var due time.Time
		if err := scan(&id, &due); err != nil {
			return err
		}
		if !due.After(now) {
			c.r.add("R18 completion timer overdue at rest", "chat=%d due=%v now=%v", id, due, now)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := c.each(`SELECT id, kind, due_at, locked_until FROM jobs WHERE status = 'PENDING' AND kind IN `+routingJobs, func(scan func(...any) error) error {
		var id int
		var kind string
		var due time.Time
		var locked sql.NullTime
		if err := scan(&id, &kind, &due, &locked); err != nil {
			return err
		}
		if !due.After(now) && (!locked.Valid || locked.Time.Before(now)) {
			c.r.add("R10 job due but not run at rest", "job=%d kind=%s due=%v", id, kind, due)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := c.violations("R11 new chat never routed at rest", `SELECT id, queue_id FROM chats
WHERE route_pending AND status = 'WAITING'`, "chat", "queue"); err != nil {
		return err
	}
	return c.violations("R9 chat lost: waiting although a member can take it", `SELECT c.id, q.routing_rule, o.id, o.load,
  COALESCE(o.chat_limit, q.chat_limit, s.dflt) FROM (
  SELECT o.id, o.status, o.disabled, o.chat_limit, COALESCE(l.n, 0) AS load
  FROM operators o LEFT JOIN `+loadsSQL+` l ON l.op = o.id) o
JOIN queue_members m ON m.operator_id = o.id
JOIN queues q ON q.id = m.queue_id
JOIN chats c ON c.queue_id = q.id AND c.status = 'WAITING'
CROSS JOIN (SELECT COALESCE(MAX(concurrent_chats), 5) AS dflt FROM settings WHERE scope = 'system') s
WHERE o.status = 'ACTIVE' AND o.disabled = FALSE AND o.load < COALESCE(o.chat_limit, q.chat_limit, s.dflt)
  AND NOT EXISTS (SELECT 1 FROM chat_offers f WHERE f.chat_id = c.id AND f.status = 'OPEN'
    AND (q.routing_rule <> 'TO_ALL' OR f.operator_id = o.id))`, "chat", "rule", "available_operator", "load", "limit")
}
