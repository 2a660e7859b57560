package desk

import (
	"context"
	"sync"
	"time"

	"github.com/parleydesk/parley/ent"
)

// channelTTL bounds how long a channel read from the database serves
// deliveries. Every webhook and every inbound message needs its channel
// (secrets, queue, active flag), and channels change rarely: a change made
// through this process is seen at once (the cache entry is dropped), one
// made by another instance within channelTTL.
const channelTTL = 2 * time.Second

type channelCache struct {
	mu sync.Mutex
	m  map[int]cachedChannel
}

type cachedChannel struct {
	ch *ent.Channel
	at time.Time
}

// channel returns channel id, from the cache when it was read less than
// channelTTL ago. The entity is shared: callers must not change it. Inside a
// use case's transaction pass it as tx: a read outside it would need a
// second connection while holding one (enough such waits exhaust the pool).
func (d *Desk) channel(ctx context.Context, tx *ent.Tx, id int) (*ent.Channel, error) {
	now := time.Now()
	d.channels.mu.Lock()
	c, ok := d.channels.m[id]
	d.channels.mu.Unlock()
	if ok && now.Sub(c.at) < channelTTL {
		return c.ch, nil
	}
	read := d.client.Channel
	if tx != nil {
		read = tx.Channel
	}
	ch, err := read.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if tx != nil {
		ch = ch.Unwrap()
	}
	d.channels.mu.Lock()
	if d.channels.m == nil {
		d.channels.m = map[int]cachedChannel{}
	}
	d.channels.m[id] = cachedChannel{ch: ch, at: now}
	d.channels.mu.Unlock()
	return ch, nil
}

// forgetChannel drops a channel from the cache after a change.
func (d *Desk) forgetChannel(id int) {
	d.channels.mu.Lock()
	delete(d.channels.m, id)
	d.channels.mu.Unlock()
}
