package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Seeding writes rows directly in the database, fast: thousands of
// operators with sessions (a GraphQL login costs a bcrypt comparison each),
// and the growth data set. Rows are what the server itself would have
// written; ids come from the tables' own sequences (ent's per-type ranges),
// so every id stays a valid global id.

// now is a timestamp as the server stores it (UTC, microseconds).
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// batch inserts rows with multi-row INSERT statements.
type batch struct {
	d     *database
	tx    *sql.Tx
	table string
	cols  []string
	size  int
	rows  [][]any
	n     int
}

func (d *database) batch(tx *sql.Tx, table string, cols ...string) *batch {
	return &batch{d: d, tx: tx, table: table, cols: cols, size: max(1, 4000/len(cols))}
}

// add queues a row; flush writes them (callers flush tables in foreign key
// order).
func (b *batch) add(_ context.Context, vals ...any) error {
	b.rows = append(b.rows, vals)
	return nil
}

func (b *batch) flush(ctx context.Context) error {
	for len(b.rows) > 0 {
		n := min(len(b.rows), b.size)
		if err := b.write(ctx, b.rows[:n]); err != nil {
			return err
		}
		b.rows = b.rows[n:]
	}
	b.rows = nil
	return nil
}

func (b *batch) write(ctx context.Context, rows [][]any) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "INSERT INTO %s (%s) VALUES ", b.table, strings.Join(b.cols, ", "))
	args := make([]any, 0, len(rows)*len(b.cols))
	for i, r := range rows {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for j, v := range r {
			if j > 0 {
				sb.WriteString(", ")
			}
			args = append(args, v)
			sb.WriteString(b.d.ph(len(args)))
		}
		sb.WriteByte(')')
	}
	if _, err := b.tx.ExecContext(ctx, sb.String(), args...); err != nil {
		return fmt.Errorf("insert into %s: %w", b.table, err)
	}
	b.n += len(rows)
	return nil
}

// allocIDs reserves n consecutive ids of a table's sequence and returns the
// first; rows are then inserted with explicit ids.
func (d *database) allocIDs(ctx context.Context, tx *sql.Tx, table string, n int) (int64, error) {
	var last int64
	if d.kind == dbPostgres {
		err := tx.QueryRowContext(ctx, `SELECT setval(pg_get_serial_sequence($1, 'id'),
			nextval(pg_get_serial_sequence($1, 'id')) + $2 - 1)`, table, n).Scan(&last)
		return last - int64(n) + 1, err
	}
	// SQLite: AUTOINCREMENT keeps the last id in sqlite_sequence (ent set its
	// start to the table's range); explicit ids above it move it on.
	var seq int64
	err := tx.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = ?`, table).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("sqlite_sequence of %s: %w", table, err)
	}
	var maxID sql.NullInt64
	if err := tx.QueryRowContext(ctx, "SELECT max(id) FROM "+table).Scan(&maxID); err != nil {
		return 0, err
	}
	return max(seq, maxID.Int64) + 1, nil
}

// column returns the first of the candidate names that the table has: ent
// names a foreign key after its edge unless the schema gives it a field, so
// the name moves as the schema evolves.
func (d *database) column(ctx context.Context, table string, candidates ...string) (string, error) {
	db, err := d.sql()
	if err != nil {
		return "", err
	}
	q := `SELECT column_name FROM information_schema.columns WHERE table_name = $1 AND table_schema = current_schema()`
	if d.kind == dbSQLite {
		q = `SELECT name FROM pragma_table_info(?)`
	}
	rows, err := db.QueryContext(ctx, q, table)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return "", err
		}
		have[c] = true
	}
	for _, c := range candidates {
		if have[c] {
			return c, nil
		}
	}
	return "", fmt.Errorf("table %s has none of the columns %s", table, strings.Join(candidates, ", "))
}

var benchPasswordHash = func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte(benchPass), bcrypt.DefaultCost)
	return string(h)
}()

func newSessionToken() (string, []byte) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := "pls_" + base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(tok))
	return tok, h[:]
}

// seedOperatorsRetrying is seedOperators, tried up to three times: on
// SQLite a busy server may hold the write lock longer than the busy timeout.
func seedOperatorsRetrying(ctx context.Context, d *database, prefix string, n int, active func(int) bool) ([]operatorRef, error) {
	var err error
	for attempt := 1; attempt <= 3 && ctx.Err() == nil; attempt++ {
		var ops []operatorRef
		if ops, err = seedOperators(ctx, d, prefix, n, active); err == nil {
			return ops, nil
		}
		logf("%s: seed operators %s: %v", dbLabel(d.kind), prefix, err)
	}
	return nil, errors.Join(err, ctx.Err())
}

// seedOperators creates n operators, each with a live session, and returns
// their ids and bearer tokens. active(i) says which start ACTIVE.
func seedOperators(ctx context.Context, d *database, prefix string, n int, active func(int) bool) ([]operatorRef, error) {
	db, err := d.sql()
	if err != nil {
		return nil, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck
	first, err := d.allocIDs(ctx, tx, "operators", n)
	if err != nil {
		return nil, err
	}
	firstSession, err := d.allocIDs(ctx, tx, "operator_sessions", n)
	if err != nil {
		return nil, err
	}
	sessionOp, err := d.column(ctx, "operator_sessions", "operator_id", "operator_sessions")
	if err != nil {
		return nil, err
	}
	t := now()
	ops := d.batch(tx, "operators", "id", "created_at", "updated_at", "email", "name", "password_hash", "role",
		"status", "chat_limit", "disabled", "missed_offers")
	sessions := d.batch(tx, "operator_sessions", "id", "token_hash", "created_at", "expires_at", "last_seen_at",
		"user_agent", "remote_addr", sessionOp)
	out := make([]operatorRef, n)
	for i := range n {
		id := first + int64(i)
		status := "INACTIVE"
		if active != nil && active(i) {
			status = "ACTIVE"
		}
		if err := ops.add(ctx, id, t, t, fmt.Sprintf("%s-%s-%d@bench.parley", prefix, runTag, i), fmt.Sprintf("%s %d", prefix, i),
			benchPasswordHash, "OPERATOR", status, highLimit, false, 0); err != nil {
			return nil, err
		}
		tok, hash := newSessionToken()
		if err := sessions.add(ctx, firstSession+int64(i), hash, t, t.Add(12*time.Hour), t, "parley-bench", "127.0.0.1", id); err != nil {
			return nil, err
		}
		out[i] = operatorRef{ID: strconv.FormatInt(id, 10), Token: tok}
	}
	// Operators first: sessions refer to them.
	if err := ops.flush(ctx); err != nil {
		return nil, err
	}
	if err := sessions.flush(ctx); err != nil {
		return nil, err
	}
	return out, tx.Commit()
}

// growthPlan places the growth data set: every contact has one completed
// chat and one open chat; open chats go 20 to an operator (10 in progress,
// 10 offered and waiting), each chat has messagesPerChat messages.
type growthPlan struct {
	channelID, queueID int64
	ops                []operatorRef // chats of contact g go to ops[g/20]
	messagesPerChat    int
}

const openChatsPerOperator = 20

// seedChats writes contacts [lo, hi) with their identities, chats, offers
// and messages, committing every chunk contacts so that the server keeps
// working meanwhile (SQLite has one writer).
func seedChats(ctx context.Context, d *database, p growthPlan, lo, hi int, progress func(done int)) error {
	db, err := d.sql()
	if err != nil {
		return err
	}
	const chunk = 2500
	base := now().Add(-72 * time.Hour)
	for start := lo; start < hi; start += chunk {
		end := min(hi, start+chunk)
		if err := seedChunk(ctx, d, db, p, start, end, base); err != nil {
			return err
		}
		if progress != nil {
			progress(end - lo)
		}
	}
	return nil
}

func seedChunk(ctx context.Context, d *database, db *sql.DB, p growthPlan, lo, hi int, base time.Time) error {
	n := hi - lo
	identContact, err := d.column(ctx, "contact_identities", "contact_id", "contact_identities")
	if err != nil {
		return err
	}
	author, err := d.column(ctx, "messages", "author_id", "message_author")
	if err != nil {
		return err
	}
	setBased := d.kind == dbPostgres
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck
	contactID, err := d.allocIDs(ctx, tx, "contacts", n)
	if err != nil {
		return err
	}
	identityID, err := d.allocIDs(ctx, tx, "contact_identities", n)
	if err != nil {
		return err
	}
	chatID, err := d.allocIDs(ctx, tx, "chats", 2*n)
	if err != nil {
		return err
	}
	offerID, err := d.allocIDs(ctx, tx, "chat_offers", n)
	if err != nil {
		return err
	}
	contacts := d.batch(tx, "contacts", "id", "created_at", "updated_at", "name", "phone")
	idents := d.batch(tx, "contact_identities", "id", "created_at", "updated_at", "provider", "external_id",
		"display_name", "phone", "unreachable", identContact)
	chats := d.batch(tx, "chats", "id", "status", "created_at", "offered_at", "accepted_at", "completed_at",
		"completion_reason", "last_message_at", "last_inbound_at", "owner_read_at", "first_response_seconds",
		"duration_seconds", "duplicates_found", "channel_id", "owner_id", "contact_id", "queue_id")
	offers := d.batch(tx, "chat_offers", "id", "status", "created_at", "chat_id", "operator_id")
	messages := d.batch(tx, "messages", "direction", "author_kind", "kind", "text", "channel_id", "delivery_status",
		"created_at", "chat_id", author)
	for i := range n {
		g := lo + i
		op, _ := strconv.ParseInt(p.ops[g/openChatsPerOperator].ID, 10, 64)
		t0 := base.Add(time.Duration(g) * time.Second)
		cid := contactID + int64(i)
		name := fmt.Sprintf("Seeded customer %d", g)
		phone := fmt.Sprintf("+1555%07d", g)
		if err := contacts.add(ctx, cid, t0, t0, name, phone); err != nil {
			return err
		}
		if err := idents.add(ctx, identityID+int64(i), t0, t0, "API", fmt.Sprintf("seed-%s-%d", runTag, g), name, phone, false, cid); err != nil {
			return err
		}
		// The completed chat, a day before the open one.
		done := chatID + 2*int64(i)
		tc := t0.Add(-24 * time.Hour)
		end := tc.Add(time.Duration(p.messagesPerChat) * time.Minute)
		if err := chats.add(ctx, done, "COMPLETED", tc, tc, tc.Add(30*time.Second), end, "OPERATOR", end, end, end,
			60, int64(end.Sub(tc).Seconds()), 0, p.channelID, op, cid, p.queueID); err != nil {
			return err
		}
		if !setBased {
			if err := addMessages(ctx, messages, p, done, op, tc, true); err != nil {
				return err
			}
		}
		// The open chat: in progress for the first half of an operator's
		// share, waiting with an open offer for the other half.
		open := done + 1
		last := t0.Add(time.Duration(p.messagesPerChat) * time.Minute)
		if g%openChatsPerOperator < openChatsPerOperator/2 {
			err = chats.add(ctx, open, "IN_PROGRESS", t0, t0, t0.Add(30*time.Second), nil, nil, last, last, t0, 60, nil, 0,
				p.channelID, op, cid, p.queueID)
			if err == nil && !setBased {
				err = addMessages(ctx, messages, p, open, op, t0, true)
			}
		} else {
			err = chats.add(ctx, open, "WAITING", t0, t0, nil, nil, nil, last, last, nil, nil, nil, 0,
				p.channelID, nil, cid, p.queueID)
			if err == nil {
				err = offers.add(ctx, offerID+int64(i), "OPEN", t0, open, op)
			}
			if err == nil && !setBased {
				err = addMessages(ctx, messages, p, open, op, t0, false)
			}
		}
		if err != nil {
			return err
		}
	}
	for _, b := range []*batch{contacts, idents, chats, offers, messages} {
		if err := b.flush(ctx); err != nil {
			return err
		}
	}
	if setBased {
		// PostgreSQL writes the messages itself: the customer and the
		// operator take turns, a waiting chat has only the customer's.
		_, err := tx.ExecContext(ctx, fmt.Sprintf(`INSERT INTO messages (direction, author_kind, kind, text, channel_id,
			delivery_status, created_at, chat_id, %s)
			SELECT CASE WHEN c.status <> 'WAITING' AND k %% 2 = 1 THEN 'OUTBOUND' ELSE 'INBOUND' END,
				CASE WHEN c.status <> 'WAITING' AND k %% 2 = 1 THEN 'OPERATOR' ELSE 'CUSTOMER' END,
				'TEXT',
				CASE WHEN c.status <> 'WAITING' AND k %% 2 = 1 THEN 'Answer ' || k || ': we are looking into it.'
					ELSE 'Message ' || k || ': where is my order #A-' || (c.id %% 100000) || '?' END,
				c.channel_id,
				CASE WHEN c.status <> 'WAITING' AND k %% 2 = 1 THEN 'SENT' END,
				c.created_at + k * interval '1 minute',
				c.id,
				CASE WHEN c.status <> 'WAITING' AND k %% 2 = 1 THEN c.owner_id END
			FROM chats c CROSS JOIN generate_series(0, $1 - 1) k
			WHERE c.id BETWEEN $2 AND $3`, author), p.messagesPerChat, chatID, chatID+int64(2*n)-1)
		if err != nil {
			return fmt.Errorf("insert messages: %w", err)
		}
	}
	return tx.Commit()
}

// addMessages writes a chat's messages: the customer and the operator take
// turns (a waiting chat has only the customer's).
func addMessages(ctx context.Context, b *batch, p growthPlan, chatID, op int64, start time.Time, answered bool) error {
	for k := range p.messagesPerChat {
		t := start.Add(time.Duration(k) * time.Minute)
		var err error
		if answered && k%2 == 1 {
			err = b.add(ctx, "OUTBOUND", "OPERATOR", "TEXT", fmt.Sprintf("Answer %d: we are looking into it.", k), p.channelID, "SENT", t, chatID, op)
		} else {
			err = b.add(ctx, "INBOUND", "CUSTOMER", "TEXT", fmt.Sprintf("Message %d: where is my order #A-%d?", k, chatID%100000),
				p.channelID, nil, t, chatID, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// settle brings a freshly loaded database to the steady state of one that
// grew over months, so that the measurement does not pay for the bulk load:
// PostgreSQL vacuums and analyses (visibility map, hint bits, statistics:
// what autovacuum would do in the next minutes) and checkpoints; SQLite
// updates its statistics as the server does at every start and after an
// hour of writes (PRAGMA optimize, desk/store/statistics.go; a plain
// ANALYZE would measure a database the server never keeps) and checkpoints
// its WAL.
func settle(ctx context.Context, d *database) error {
	db, err := d.sql()
	if err != nil {
		return err
	}
	if d.kind == dbPostgres {
		if _, err := db.ExecContext(ctx, "VACUUM (ANALYZE)"); err != nil {
			return err
		}
		if _, err := db.ExecContext(ctx, "CHECKPOINT"); err != nil {
			logf("CHECKPOINT: %v (the measurement may overlap a checkpoint)", err)
		}
		return nil
	}
	if _, err := db.ExecContext(ctx, "PRAGMA optimize=0x10002"); err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return err
}

// dbSize is the size of the database on disk.
func dbSize(ctx context.Context, d *database) int64 {
	db, err := d.sql()
	if err != nil {
		return 0
	}
	var n int64
	if d.kind == dbPostgres {
		_ = db.QueryRowContext(ctx, "SELECT pg_database_size(current_database())").Scan(&n)
	} else {
		_ = db.QueryRowContext(ctx, "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").Scan(&n)
	}
	return n
}
