package live

import (
	"context"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk"
)

// ListenerName is the application_name of the LISTEN connection.
const ListenerName = "parley-listener"

// Listen wakes the hub whenever another instance notifies, until ctx ends;
// self is this instance's name (desk.Desk.Instance), whose own
// notifications it skips. After a reconnect lib/pq delivers nil:
// notifications sent meanwhile are lost, so the hub is woken to resync from
// the event log (it reads by cursor, so nothing is missed).
func Listen(ctx context.Context, dsn string, h *Hub, self string, log *slog.Logger) error {
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
	if err := l.Listen(desk.EventsChannel); err != nil {
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
				// nil after a reconnect: read the log.
				if n == nil || needsRead(n.Extra, self, h.Cursor) {
					h.Wake()
				}
			case <-ping.C:
				go func() { _ = l.Ping() }()
			}
		}
	}()
	return nil
}

// needsRead reports whether a notification ("<id> <instance>") calls for a
// read of the event log. This instance's own commits report their events to
// the hub directly (Hub.Committed): reading them back would cost a query
// for nothing, and its notification usually arrives first. An id the pump
// has passed (a notification overtaken by a poll) needs no read either.
// Anything else, unreadable payloads included, does.
func needsRead(extra, self string, cursor func() int) bool {
	idText, instance, _ := strings.Cut(extra, " ")
	if instance != "" && instance == self {
		return false
	}
	id, err := strconv.Atoi(idText)
	return err != nil || id > cursor()
}
