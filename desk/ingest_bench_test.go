package desk_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// BenchmarkIngest measures the ingest use case (one transaction per
// message) on the database of the run: new chats routed TO_ALL to 20
// operators, and messages appended to open chats.
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
		})
	}
}
