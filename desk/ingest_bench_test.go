package desk_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// BenchmarkIngest measures the ingest use case (one transaction per
// message) on the database of the run: new chats routed TO_ALL to 20
// operators, and messages appended to open chats. The scheduler runs as in
// the server: on PostgreSQL a new chat that finds its queue busy routing
// another is routed by the release worker, and the timer stops once every
// chat is routed.
func BenchmarkIngest(b *testing.B) {
	for _, mode := range []string{"new-chat", "open-chat"} {
		b.Run(mode, func(b *testing.B) {
			w := desktest.New(b)
			var ops []*ent.Operator
			for range 20 {
				ops = append(ops, w.Operator(active, 1000))
			}
			q := w.Queue(enum.RuleToAll, ops)
			ch := w.Channel(q, enum.ProviderAPI)
			var n atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			scheduler := make(chan error, 1)
			go func() { scheduler <- w.Desk.RunScheduler(ctx) }()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					who := fmt.Sprintf("c%d", i)
					if mode == "open-chat" {
						who = fmt.Sprintf("c%d", i%50)
					}
					if _, err := w.Desk.Ingest(context.Background(), desk.Inbound{ChannelID: ch.ID,
						Identity: desk.InboundIdentity{ExternalID: who}, Text: "hello"}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			// The releases under way end with the scheduler; those asked
			// for after it stopped run here.
			cancel()
			<-scheduler
			w.RunJobs()
			b.StopTimer()
			if pending, err := w.Client().Chat.Query().Where(chat.RoutePending(true)).Count(context.Background()); err != nil || pending != 0 {
				b.Fatalf("%d chats left pending (%v)", pending, err)
			}
		})
	}
}
