package live

import (
	"context"
	"database/sql"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/lib/pq"
)

// Channel is the PostgreSQL notification channel of committed events.
const Channel = "parley_events"

// Notifier tells other instances, after commit, the newest event id: one
// NOTIFY at a time carrying only an id, coalescing whatever commits in the
// meantime, so that notifying never serialises write transactions (a
// pg_notify inside each transaction would).
type Notifier struct {
	db   *sql.DB
	log  *slog.Logger
	kick chan struct{}

	mu   sync.Mutex
	last int
	sent int
}

// NewNotifier returns a notifier sending through db until ctx ends.
func NewNotifier(ctx context.Context, db *sql.DB, log *slog.Logger) *Notifier {
	n := &Notifier{db: db, log: log, kick: make(chan struct{}, 1)}
	go n.run(ctx)
	return n
}

// Notify records that events up to lastID were committed.
func (n *Notifier) Notify(lastID int) {
	n.mu.Lock()
	n.last = max(n.last, lastID)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *Notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
		n.mu.Lock()
		last, sent := n.last, n.sent
		n.mu.Unlock()
		if last <= sent {
			continue
		}
		// No arguments: lib/pq sends it in one round trip (the simple
		// protocol), as one implicit transaction rather than two.
		if _, err := n.db.ExecContext(ctx, "NOTIFY "+Channel+", '"+strconv.Itoa(last)+"'"); err != nil {
			if ctx.Err() == nil {
				n.log.Warn("live: notify", "err", err)
			}
			continue // the other instances' poll catches up
		}
		n.mu.Lock()
		n.sent = max(n.sent, last)
		n.mu.Unlock()
	}
}

// ListenerName is the application_name of the LISTEN connection.
const ListenerName = "parley-listener"

// Listen wakes the hub whenever another instance notifies, until ctx ends.
// After a reconnect lib/pq delivers nil: notifications sent meanwhile are
// lost, so the hub is woken to resync from the event log (it reads by
// cursor, so nothing is missed).
func Listen(ctx context.Context, dsn string, h *Hub, log *slog.Logger) error {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("application_name", ListenerName)
		u.RawQuery = q.Encode()
		dsn = u.String()
	}
	l := pq.NewListener(dsn, 50*time.Millisecond, 5*time.Second, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventDisconnected:
			log.Warn("live: listener disconnected", "err", err)
		case pq.ListenerEventReconnected:
			log.Info("live: listener reconnected")
		case pq.ListenerEventConnectionAttemptFailed:
			log.Warn("live: listener connection failed", "err", err)
		}
	})
	if err := l.Listen(Channel); err != nil {
		l.Close()
		return err
	}
	go func() {
		defer l.Close()
		ping := time.NewTicker(30 * time.Second)
		defer ping.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case n := <-l.Notify:
				// An id, or nil after a reconnect (read the log then). An
				// id the pump has passed (this instance's own commits, or
				// a notification overtaken by a poll) needs no read.
				if n != nil {
					if id, err := strconv.Atoi(n.Extra); err == nil && id <= h.Cursor() {
						continue
					}
				}
				h.Wake()
			case <-ping.C:
				go func() { _ = l.Ping() }()
			}
		}
	}()
	return nil
}
