package live

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk/store/storetest"
)

// TestListener_ReadsTheLogForOtherInstancesOnly: a notification of this
// instance's own commit (reported to the hub directly), of another scope's
// (an installation in another schema) or of an id the pump has passed wakes
// no read of the log; another instance's of the scope, an older instance's
// payload without a scope or a name, and an unreadable one do.
func TestListener_ReadsTheLogForOtherInstancesOnly(t *testing.T) {
	cursor := func() int { return 10 }
	for _, c := range []struct {
		extra string
		want  bool
	}{
		{"11 self", false},
		{"11 other", true},
		{"10 other", false},
		{"11", true},
		{"9", false},
		{"garbage", true},
		{"", true},
		{"x self", false},
		{"11 self s1", false},
		{"11 other s1", true},
		{"10 other s1", false},
		{"11 other s2", false},
		{"11 self s2", false},
	} {
		if got := needsRead(c.extra, "self", "s1", cursor); got != c.want {
			t.Errorf("needsRead(%q) = %v, want %v", c.extra, got, c.want)
		}
	}
}

// peersSeen records what a listener tells its desk of other instances.
type peersSeen struct {
	name    string
	mu      sync.Mutex
	last    *bool
	changed chan struct{}
}

func newPeersSeen(name string) *peersSeen {
	return &peersSeen{name: name, changed: make(chan struct{}, 1)}
}

func (p *peersSeen) Instance() string { return p.name }

func (p *peersSeen) SetPeers(present bool) {
	p.mu.Lock()
	p.last = &present
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// await waits (bounded) until the listener last told want.
func (p *peersSeen) await(t *testing.T, want bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		p.mu.Lock()
		ok := p.last != nil && *p.last == want
		p.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-p.changed:
		case <-deadline:
			t.Fatalf("instance %s: the listener never told peers=%v", p.name, want)
		}
	}
}

// TestListener_TellsTheDeskWhetherOtherInstancesListen: an instance alone in
// its schema is told so (its commits then notify nobody); an instance that
// joins sees the others at once, and they learn of it from its hello (their
// own counts are an hour away here); when the others stop, the remaining
// one's next count tells it it is alone again. An instance of another
// schema in the same database is no peer.
func TestListener_TellsTheDeskWhetherOtherInstancesListen(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("needs PostgreSQL (set TEST_DATABASE_URL): the listener is PostgreSQL's")
	}
	defer func(d time.Duration) { PeerCheck = d }(PeerCheck)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	listen := func(dsn string, name string, check time.Duration) (*peersSeen, context.CancelFunc) {
		t.Helper()
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		p := newPeersSeen(name)
		PeerCheck = check
		if err := Listen(ctx, dsn, db, New(nil, Options{}), p, log); err != nil {
			t.Fatal(err)
		}
		return p, cancel
	}
	dsn := storetest.URL(t)
	a, stopA := listen(dsn, "instance-a", time.Hour)
	a.await(t, false)

	other, _ := listen(storetest.URL(t), "instance-o", time.Hour)
	other.await(t, false)

	b, stopB := listen(dsn, "instance-b", time.Hour)
	b.await(t, true)
	a.await(t, true)

	c, _ := listen(dsn, "instance-c", 50*time.Millisecond)
	c.await(t, true)
	stopA()
	stopB()
	c.await(t, false)
}
