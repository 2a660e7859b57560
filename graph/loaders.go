package graph

import (
	"context"
	"sync"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent"
)

// siblings reads a computed field of a list's objects together: the first
// object of a list whose field is resolved reads it for every object of the
// list, the others find their value there. A list of N operators then costs
// the statements of one (no N+1), whatever the order in which gqlgen's
// concurrent resolvers arrive. One set serves one query or mutation;
// subscriptions read per object (their field contexts are made anew for
// every event, so a cache keyed by them would only grow).
type siblings struct {
	mu    sync.Mutex
	lists map[*graphql.FieldContext]*siblingLoad
}

type siblingLoad struct {
	once  sync.Once
	loads map[int]*desk.OperatorLoad
	err   error
}

type siblingsKey struct{}

// withSiblings gives each query and mutation its set.
func withSiblings(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
	if oc := graphql.GetOperationContext(ctx); oc.Operation != nil && oc.Operation.Operation == ast.Subscription {
		return next(ctx)
	}
	return next(context.WithValue(ctx, siblingsKey{}, &siblings{lists: map[*graphql.FieldContext]*siblingLoad{}}))
}

// operatorList finds the list the operator of the field being resolved
// belongs to (a list of operators, or a connection's edges) and returns
// that list's field context and how to list the ids of its operators (run
// once per list: the first of its operators reads for all).
func operatorList(ctx context.Context) (*graphql.FieldContext, func() []int) {
	fc := graphql.GetFieldContext(ctx)
	if fc == nil {
		return nil, nil
	}
	// The field's object is a list element (members { availability }) or
	// an element's node (edges { node { availability } }).
	list := enclosingList(fc)
	if list == nil {
		return nil, nil
	}
	switch v := list.Result.(type) {
	case []*ent.Operator:
		if outer, ids := queuesMembers(list); outer != nil {
			return outer, ids
		}
		return list, func() []int {
			ids := make([]int, 0, len(v))
			for _, op := range v {
				if op != nil {
					ids = append(ids, op.ID)
				}
			}
			return ids
		}
	case []*ent.OperatorEdge:
		return list, func() []int {
			ids := make([]int, 0, len(v))
			for _, e := range v {
				if e != nil && e.Node != nil {
					ids = append(ids, e.Node.ID)
				}
			}
			return ids
		}
	}
	return nil, nil
}

// enclosingList is the list field whose element fc's object is, directly
// (a list of objects) or as an edge's node (a connection); nil when there
// is none within those two levels.
func enclosingList(fc *graphql.FieldContext) *graphql.FieldContext {
	for p, depth := fc.Parent, 0; p != nil && depth < 2; p, depth = p.Parent, depth+1 {
		if p.Index != nil {
			return p.Parent
		}
	}
	return nil
}

// operatorAvailability is an operator's availability, read together with
// the other operators of its list.
func (r *Resolver) operatorAvailability(ctx context.Context, id int) (*desk.OperatorLoad, error) {
	s, _ := ctx.Value(siblingsKey{}).(*siblings)
	list, ids := operatorList(ctx)
	if s == nil || list == nil {
		return r.desk.OperatorAvailability(ctx, id)
	}
	s.mu.Lock()
	l := s.lists[list]
	if l == nil {
		l = &siblingLoad{}
		s.lists[list] = l
	}
	s.mu.Unlock()
	l.once.Do(func() { l.loads, l.err = r.desk.OperatorAvailabilities(ctx, ids()) })
	if l.err != nil {
		return nil, l.err
	}
	if v := l.loads[id]; v != nil {
		return v, nil
	}
	return r.desk.OperatorAvailability(ctx, id)
}

// queuesMembers widens a queue's members list to the members of every queue
// of the enclosing list of queues (queues { edges { node { members { … } } } }),
// when their members were loaded with the list (entgql loads a selected edge
// for the whole list): one read for all of them.
func queuesMembers(members *graphql.FieldContext) (*graphql.FieldContext, func() []int) {
	if members.Object != "Queue" || members.Field.Name != "members" {
		return nil, nil
	}
	outer := enclosingList(members)
	if outer == nil {
		return nil, nil
	}
	switch outer.Result.(type) {
	case []*ent.Queue, []*ent.QueueEdge:
	default:
		return nil, nil
	}
	return outer, func() []int {
		var queues []*ent.Queue
		switch v := outer.Result.(type) {
		case []*ent.Queue:
			queues = v
		case []*ent.QueueEdge:
			for _, e := range v {
				if e != nil {
					queues = append(queues, e.Node)
				}
			}
		}
		var ids []int
		for _, q := range queues {
			if q == nil {
				continue
			}
			// As ent's Members resolver reads them: by the field's
			// alias. Members not loaded with the list are not listed:
			// theirs is then read on its own.
			ms, _ := q.Edges.MembersOrErr()
			if a := members.Field.Alias; a != "" {
				ms, _ = q.NamedMembers(a)
			}
			for _, m := range ms {
				ids = append(ids, m.ID)
			}
		}
		return ids
	}
}
