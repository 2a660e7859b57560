package graph

import (
	"context"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// stream subscribes to the hub and hands the stream's channel to gqlgen.
// Over the websocket transport nothing waits on that channel: the operation
// follows the stream, reads it when the hub says it has events, and when the
// hub ends the subscription for a reason (EVENTS_EXPIRED, SLOW_CONSUMER,
// UNAUTHENTICATED) ends the operation with an error with that code (see
// wsOp). No goroutine is spent on an idle subscription.
func (r *Resolver) stream(ctx context.Context, a *desk.Actor, scope live.Scope, after *int) (<-chan *ent.Event, error) {
	if r.hub == nil {
		return nil, desk.Fail(desk.CodeInternal, "live events are not available")
	}
	op := wsOperation(ctx)
	var notify func()
	if op != nil {
		notify = op.kick
	}
	// Another transport (a subscription POSTed over HTTP) waits on the
	// channel for its first event, as gqlgen does; the stream ends with
	// the request's context.
	st, err := r.hub.Subscribe(ctx, a, scope, after, notify)
	if err != nil {
		return nil, err
	}
	// Registered: a credential ended from now on ends the stream; one that
	// ended before is caught here.
	if err := r.desk.StillAuthenticated(ctx, a); err != nil {
		st.Close()
		return nil, err
	}
	if op != nil {
		op.follow(st)
	}
	return st.C, nil
}
