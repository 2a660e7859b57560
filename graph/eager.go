package graph

import (
	"context"

	"github.com/99designs/gqlgen/graphql"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// eagerChats returns the eager loading of the chat lists of the current
// field (panel, queueOverview): for the chats of a list (desk's list names
// are the fields of the result: newChats, activeChats, waitingChats), the
// edges selected under its `chat` field are loaded with one query per edge
// and list, each collected by entgql for its own nested selection (as
// Paginate does for connections), instead of one query per chat.
//
// The chats' own columns are never narrowed (desk reads them). An edge
// selected more than once for the same list (aliases) is left to its field
// resolver, which loads it lazily: eager loading is only ever an
// optimisation.
func eagerChats(ctx context.Context) desk.Eager {
	fc := graphql.GetFieldContext(ctx)
	if fc == nil {
		return nil
	}
	opCtx := graphql.GetOperationContext(ctx)
	return func(list string, q *ent.ChatQuery) error {
		// The edges under <list> { chat { … } }, by name.
		edges := map[string][]graphql.CollectedField{}
		for _, l := range graphql.CollectFields(opCtx, fc.Field.Selections, nil) {
			if l.Name != list {
				continue
			}
			for _, c := range graphql.CollectFields(opCtx, l.Selections, nil) {
				if c.Name != "chat" {
					continue
				}
				for _, e := range graphql.CollectFields(opCtx, c.Selections, []string{"Chat", "Node"}) {
					edges[e.Name] = append(edges[e.Name], e)
				}
			}
		}
		var err error
		// nested is the context entgql collects an edge's own selection in.
		nested := func(f graphql.CollectedField) context.Context {
			return graphql.WithFieldContext(ctx, &graphql.FieldContext{Parent: fc, Object: "Chat", Field: f})
		}
		for name, fs := range edges {
			if len(fs) != 1 {
				continue
			}
			f := fs[0]
			switch name {
			case "channel":
				q.WithChannel(func(e *ent.ChannelQuery) { _, err = e.CollectFields(nested(f), "Channel", "Node") })
			case "contact":
				q.WithContact(func(e *ent.ContactQuery) { _, err = e.CollectFields(nested(f), "Contact", "Node") })
			case "queue":
				q.WithQueue(func(e *ent.QueueQuery) { _, err = e.CollectFields(nested(f), "Queue", "Node") })
			case "owner":
				q.WithOwner(func(e *ent.OperatorQuery) { _, err = e.CollectFields(nested(f), "Operator", "Node") })
			case "parent":
				q.WithParent(func(e *ent.ChatQuery) { _, err = e.CollectFields(nested(f), "Chat", "Node") })
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
}
