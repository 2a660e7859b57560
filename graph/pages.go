package graph

import (
	"context"
	"sync"

	"entgo.io/contrib/entgql"
	"entgo.io/ent/dialect/sql"
	"github.com/99designs/gqlgen/graphql"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/message"
)

// maxPreloadedMessages bounds the first: of a Chat.messages field that is
// preloaded for a whole page of chats.
const maxPreloadedMessages = 100

// messagePages holds, for the chats of one chats(…) page, the first messages
// of each chat read in one statement, until Chat.messages takes them: a page
// of 20 chats with messages(first: 5) costs one statement instead of 20.
// Entries are keyed by the chat (a pointer loaded for one request), and are
// dropped when taken or when the request ends.
type messagePages struct{ m sync.Map }

// messagePage is the first messages (up to first+1, to tell whether there
// is a next page) of one chat.
type messagePage struct {
	first int
	nodes []*ent.Message
}

// preloadChatMessages preloads the messages of the chats of conn when the
// chats field selects, once, edges { node { messages(first: N) { … } } }
// with nothing but first, and only what the preloaded rows answer (edges,
// their cursors, nodes with scalar fields, pageInfo): then every
// Chat.messages resolver of the page finds its page ready, built exactly as
// Paginate builds it (ascending ids). Anything else is left to Paginate.
func (r *Resolver) preloadChatMessages(ctx context.Context, conn *ent.ChatConnection) error {
	if conn == nil || len(conn.Edges) == 0 || graphql.GetFieldContext(ctx) == nil {
		return nil
	}
	opCtx := graphql.GetOperationContext(ctx)
	var fields []graphql.CollectedField
	for _, e := range graphql.CollectFields(opCtx, graphql.GetFieldContext(ctx).Field.Selections, nil) {
		if e.Name != "edges" {
			continue
		}
		for _, n := range graphql.CollectFields(opCtx, e.Selections, nil) {
			if n.Name != "node" {
				continue
			}
			for _, f := range graphql.CollectFields(opCtx, n.Selections, []string{"Chat", "Node"}) {
				if f.Name == "messages" {
					fields = append(fields, f)
				}
			}
		}
	}
	if len(fields) != 1 {
		return nil
	}
	args := fields[0].ArgumentMap(opCtx.Variables)
	if args["first"] == nil || args["after"] != nil || args["before"] != nil || args["last"] != nil || !pageOnly(opCtx, fields[0]) {
		return nil
	}
	first, err := graphql.UnmarshalInt(args["first"])
	if err != nil || first < 1 || first > maxPreloadedMessages {
		return nil
	}
	ids := make([]int, 0, len(conn.Edges))
	for _, e := range conn.Edges {
		if e != nil && e.Node != nil {
			ids = append(ids, e.Node.ID)
		}
	}
	msgs, err := r.client.Message.Query().Where(firstMessagesOfChats(ids, first+1)).
		Order(ent.Asc(message.FieldID)).All(ctx)
	if err != nil {
		return err
	}
	byChat := make(map[int][]*ent.Message, len(ids))
	for _, m := range msgs {
		byChat[m.ChatID] = append(byChat[m.ChatID], m)
	}
	for _, e := range conn.Edges {
		if e != nil && e.Node != nil {
			r.pages.m.Store(e.Node, &messagePage{first: first, nodes: byChat[e.Node.ID]})
		}
	}
	// Pages a resolver did not take (the caller may not read the chat) go
	// with the request.
	context.AfterFunc(ctx, func() {
		for _, e := range conn.Edges {
			if e != nil && e.Node != nil {
				r.pages.m.Delete(e.Node)
			}
		}
	})
	return nil
}

// pageOnly reports whether the selection of a messages connection asks for
// nothing a page of rows cannot answer: edges (cursor, node with scalar
// fields only) and pageInfo; not totalCount, nor an edge of the messages.
func pageOnly(opCtx *graphql.OperationContext, f graphql.CollectedField) bool {
	for _, c := range graphql.CollectFields(opCtx, f.Selections, nil) {
		switch c.Name {
		case "__typename", "pageInfo":
		case "edges":
			for _, e := range graphql.CollectFields(opCtx, c.Selections, nil) {
				switch e.Name {
				case "__typename", "cursor":
				case "node":
					for _, n := range graphql.CollectFields(opCtx, e.Selections, nil) {
						if len(n.Selections) > 0 {
							return false
						}
					}
				default:
					return false
				}
			}
		default:
			return false
		}
	}
	return true
}

// firstMessagesOfChats keeps the first n messages (by id) of each chat.
func firstMessagesOfChats(chatIDs []int, n int) func(*sql.Selector) {
	return func(s *sql.Selector) {
		w := sql.Table(message.Table).As("w")
		numbered := sql.Select(w.C(message.FieldID)).
			AppendSelectExprAs(sql.RowNumber().PartitionBy(w.C(message.FieldChatID)).OrderBy(w.C(message.FieldID)), "position").
			From(w).Where(sql.InInts(w.C(message.FieldChatID), chatIDs...)).As("numbered")
		s.Where(sql.In(s.C(message.FieldID),
			sql.Select(numbered.C(message.FieldID)).From(numbered).Where(sql.LTE(numbered.C("position"), n))))
	}
}

// take returns the preloaded page of a chat's messages for exactly these
// arguments (nil when there is none), as Paginate would have returned it.
func (p *messagePages) take(c *ent.Chat, after *entgql.Cursor[int], first *int, before *entgql.Cursor[int], last *int) *ent.MessageConnection {
	v, ok := p.m.LoadAndDelete(c)
	if !ok || after != nil || before != nil || last != nil || first == nil || *first != v.(*messagePage).first {
		return nil
	}
	page := v.(*messagePage)
	nodes := page.nodes
	conn := &ent.MessageConnection{Edges: make([]*ent.MessageEdge, 0, len(nodes))}
	if len(nodes) > page.first {
		conn.PageInfo.HasNextPage = true
		nodes = nodes[:page.first]
	}
	for _, m := range nodes {
		conn.Edges = append(conn.Edges, m.ToEdge(ent.DefaultMessageOrder))
	}
	if l := len(conn.Edges); l > 0 {
		conn.PageInfo.StartCursor = &conn.Edges[0].Cursor
		conn.PageInfo.EndCursor = &conn.Edges[l-1].Cursor
	}
	conn.TotalCount = len(nodes)
	return conn
}
