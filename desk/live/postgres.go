package live

import (
	"context"
	"database/sql"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/parleydesk/parley/desk"
)

// ListenerName starts the application_name of every instance's LISTEN
// connection: "parley-listener <scope> <instance>", the scope naming the
// database schema the instance serves (instances of one deployment share
// it) and the instance its desk (desk.Desk.Instance).
const ListenerName = "parley-listener"

// PeerCheck is how often a listener counts the other instances listening
// in its scope (a new one also announces itself at once).
var PeerCheck = 5 * time.Second

// Peers is the desk as the listener sees it: its instance name, and where
// it is told whether other instances listen for its events (its commits
// notify them only then).
type Peers interface {
	Instance() string
	SetPeers(present bool)
}

// hello starts the notification an instance sends when its listener
// (re)connects: "hello <scope> <instance>".
const hello = "hello"

// Listen wakes the hub whenever another instance notifies, until ctx ends,
// and keeps the desk told whether other instances listen (Peers): a
// PostgreSQL notification costs a transaction on every listening connection
// of the database and a database-wide lock at each commit, so an instance
// alone sends none. Each listener's connection carries its scope and
// instance in its application_name; the listener counts the others' at
// start, every PeerCheck and after a reconnect, and announces itself
// (hello) whenever it (re)connects, so that the instances already running
// notify again at once. Between an instance's arrival and the others'
// reading its hello, their commits may go unnotified: its hub reads them
// from the log on its next wake-up or poll (Options.Poll).
//
// Its own notifications are skipped (the commit reports them to the hub
// directly). After a reconnect lib/pq delivers nil: notifications sent
// meanwhile are lost, so the hub is woken to resync from the event log (it
// reads by cursor, so nothing is missed).
func Listen(ctx context.Context, dsn string, db *sql.DB, h *Hub, d Peers, log *slog.Logger) error {
	var scope string
	if err := db.QueryRowContext(ctx, `SELECT `+desk.EventsScope).Scan(&scope); err != nil {
		return err
	}
	self := d.Instance()
	name := ListenerName + " " + scope + " " + self
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("application_name", name)
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
	p := &peerWatch{db: db, d: d, name: name, scope: scope, log: log}
	p.announce(ctx)
	p.check(ctx)
	every := PeerCheck
	go func() {
		defer l.Close()
		ping := time.NewTicker(30 * time.Second)
		defer ping.Stop()
		peers := time.NewTicker(every)
		defer peers.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case n := <-l.Notify:
				switch {
				case n == nil: // reconnected
					p.announce(ctx)
					p.check(ctx)
					h.Wake()
				case strings.HasPrefix(n.Extra, hello+" "):
					if p.hello(n.Extra) {
						d.SetPeers(true)
					}
				case needsRead(n.Extra, self, scope, h.Cursor):
					h.Wake()
				}
			case <-peers.C:
				p.check(ctx)
			case <-ping.C:
				go func() { _ = l.Ping() }()
			}
		}
	}()
	return nil
}

// peerWatch keeps a desk told whether other instances of its scope listen.
// Its methods run on the listener's goroutine, one at a time, so that a
// count never overwrites a later hello: a hello read before a count was
// sent after its listener connected, which the count then sees.
type peerWatch struct {
	db          *sql.DB
	d           Peers
	name, scope string
	log         *slog.Logger
}

// announce tells the other instances of the scope that this one listens.
func (p *peerWatch) announce(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	payload := hello + " " + p.scope + " " + p.d.Instance()
	if _, err := p.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, desk.EventsChannel, payload); err != nil && ctx.Err() == nil {
		p.log.Warn("live: announcing this instance failed", "err", err)
	}
}

// check counts the other instances listening in the scope (and those of
// earlier versions, named ListenerName alone, in the database); when it
// cannot, the desk keeps notifying.
func (p *peerWatch) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var others int
	err := p.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
	  WHERE datname = current_database() AND backend_type = 'client backend'
	    AND (application_name LIKE $1 AND application_name <> $2 OR application_name = $3)`,
		ListenerName+" "+p.scope+" %", p.name, ListenerName).Scan(&others)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("live: counting the other instances failed; notifying them", "err", err)
		}
		others = 1
	}
	p.d.SetPeers(others > 0)
}

// hello reports whether a notification is another instance of the scope
// announcing itself.
func (p *peerWatch) hello(extra string) bool {
	f := strings.Fields(extra)
	return len(f) == 3 && f[0] == hello && f[1] == p.scope && f[2] != p.d.Instance()
}

// needsRead reports whether a notification ("<id> <instance> <scope>";
// earlier versions send no scope) calls for a read of the event log. This
// instance's own commits report their events to the hub directly
// (Hub.Committed): reading them back would cost a query for nothing, and
// its notification usually arrives first. Another scope's (an installation
// in another schema of the database) are not of this log, and a read woken
// by them would only race this instance's own commits to their hub. An id
// the pump has passed (a notification overtaken by a poll) needs no read
// either. Anything else, unreadable payloads included, does.
func needsRead(extra, self, scope string, cursor func() int) bool {
	idText, rest, _ := strings.Cut(extra, " ")
	instance, from, scoped := strings.Cut(rest, " ")
	if instance != "" && instance == self || scoped && from != scope {
		return false
	}
	id, err := strconv.Atoi(idText)
	return err != nil || id > cursor()
}
