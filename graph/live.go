package graph

import (
	"context"
	"errors"

	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// stream subscribes to the hub and forwards its events to gqlgen; when the
// hub ends the subscription for a reason (EVENTS_EXPIRED, SLOW_CONSUMER,
// UNAUTHENTICATED), the client gets an error with that code.
func (r *Resolver) stream(ctx context.Context, a *desk.Actor, scope live.Scope, after *int) (<-chan *ent.Event, error) {
	if r.hub == nil {
		return nil, desk.Fail(desk.CodeInternal, "live events are not available")
	}
	ctx, cancel := context.WithCancel(ctx)
	st, err := r.hub.Subscribe(ctx, a, scope, after)
	if err != nil {
		cancel()
		return nil, err
	}
	// Registered: a credential ended from now on ends the stream; one that
	// ended before is caught here.
	if err := r.desk.StillAuthenticated(ctx, a); err != nil {
		cancel()
		return nil, err
	}
	out := make(chan *ent.Event)
	go func() {
		defer cancel()
		defer close(out)
		for e := range st.C {
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
		var de *desk.Error
		if err := st.Err(); errors.As(err, &de) {
			transport.AddSubscriptionError(ctx, &gqlerror.Error{Message: de.Message,
				Extensions: map[string]any{"code": string(de.Code)}})
		}
	}()
	return out, nil
}
