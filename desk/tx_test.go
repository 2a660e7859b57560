package desk_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// A use case runs to its end once begun: its caller's context, cancelled
// inside the transaction (a provider or an operator hanging up, a shutdown
// past its grace), neither fails nor rolls it back. One cancelled before it
// begins stops it with nothing written.
func TestUseCaseIsNotCancelledHalfway(t *testing.T) {
	// The hook cancels the caller's context at the use case's first
	// statement inside its transaction, before the statement is sent.
	var cancelled atomic.Pointer[context.CancelFunc]
	db := storetest.Open(t).WithQueryHook(func(_ context.Context, statement string) {
		if strings.HasPrefix(statement, "Tx(") && !strings.HasSuffix(statement, "committed") {
			if stop := cancelled.Swap(nil); stop != nil {
				(*stop)()
			}
		}
	})
	w := desktest.NewOn(t, db, desktest.NewClock())
	op := w.Operator(active, 5)
	ch := w.Channel(w.Queue(enum.RuleToAll, []*ent.Operator{op}), enum.ProviderAPI)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	cancelled.Store(&stop)
	res, err := w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID,
		Identity: desk.InboundIdentity{ExternalID: "hangs-up"}, Text: "hello"})
	if ctx.Err() == nil {
		t.Fatal("the hook did not cancel the context: the test tests nothing")
	}
	if err != nil {
		t.Fatalf("ingest with its context cancelled halfway: %v, want it committed", err)
	}
	// Its last writes (the offer, the chat's offer time) went with the
	// commit.
	if got := openOffers(w, res.Chat.ID); !got[op.ID] || len(got) != 1 {
		t.Fatalf("offers = %v, want the operator's", got)
	}
	if w.Chat(res.Chat.ID).OfferedAt == nil {
		t.Fatal("the chat has no offer time")
	}

	// Cancelled before it begins: refused, nothing written.
	_, err = w.Desk.Ingest(ctx, desk.Inbound{ChannelID: ch.ID,
		Identity: desk.InboundIdentity{ExternalID: "hangs-up"}, Text: "too late"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("ingest with a cancelled context: %v, want context.Canceled", err)
	}
	if n, err := w.Client().Message.Query().Where(message.ChatID(res.Chat.ID)).Count(context.Background()); err != nil || n != 1 {
		t.Fatalf("messages = %d (%v), want the first one only", n, err)
	}
}
