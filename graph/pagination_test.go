package graph_test

import (
	"fmt"
	"slices"
	"sort"
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

type page struct {
	TotalCount int
	PageInfo   struct {
		HasNextPage, HasPreviousPage bool
		StartCursor, EndCursor       *string
	}
	Edges []struct {
		Cursor string
		Node   struct{ ID, Name string }
	}
}

func (p page) names() []string {
	var n []string
	for _, e := range p.Edges {
		n = append(n, e.Node.Name)
	}
	return n
}

// connection describes a listed type for the generic pagination test.
type connection struct {
	field     string // the Query field
	whereType string
	orderType string
	create    func(t *testing.T, s *apptest.Server, name string)
}

var connections = []connection{
	{"operators", "OperatorWhereInput", "OperatorOrder", func(t *testing.T, s *apptest.Server, name string) {
		s.Client().Operator.Create().SetEmail(apptest.Unique("p") + "@parley.test").SetName(name).SetPasswordHash("x").SaveX(bg)
	}},
	{"queues", "QueueWhereInput", "QueueOrder", func(t *testing.T, s *apptest.Server, name string) {
		s.Client().Queue.Create().SetName(name).SaveX(bg)
	}},
	{"contacts", "ContactWhereInput", "ContactOrder", func(t *testing.T, s *apptest.Server, name string) {
		s.Client().Contact.Create().SetName(name).SaveX(bg)
	}},
	{"quickReplies", "QuickReplyWhereInput", "QuickReplyOrder", func(t *testing.T, s *apptest.Server, name string) {
		s.Client().QuickReply.Create().SetName(name).SetText("t").SetSearchKey(name).SaveX(bg)
	}},
	{"accounts", "AccountWhereInput", "AccountOrder", func(t *testing.T, s *apptest.Server, name string) {
		s.Client().Account.Create().SetName(name).SaveX(bg)
	}},
}

// TestPagination_CursorConnections walks operators, queues, contacts (and
// other named lists) forwards with first/after and backwards with
// last/before, filtered with where and sorted with orderBy, and checks that
// every row is seen once, in order, with consistent pageInfo.
func TestPagination_CursorConnections(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	tok := s.CreateOperator(t, enum.RoleOperator).Token // lists are read by any operator
	const n = 7
	for _, c := range connections {
		t.Run(c.field, func(t *testing.T) {
			// Names in a shuffled order, so that NAME order differs from id order.
			var want []string
			for _, i := range []int{4, 1, 6, 0, 3, 5, 2} {
				name := fmt.Sprintf("Pg %s %02d", c.field, i)
				c.create(t, s, name)
				want = append(want, name)
			}
			c.create(t, s, "Other "+c.field) // filtered out by where
			sort.Strings(want)
			query := fmt.Sprintf(`query($first: Int, $after: Cursor, $last: Int, $before: Cursor, $where: %s, $orderBy: %s) {
				%s(first: $first, after: $after, last: $last, before: $before, where: $where, orderBy: $orderBy) {
					totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
					edges { cursor node { id name } } } }`, c.whereType, c.orderType, c.field)
			where := map[string]any{"nameHasPrefix": "Pg " + c.field}
			fetch := func(vars map[string]any) page {
				t.Helper()
				vars["where"] = where
				if _, ok := vars["orderBy"]; !ok {
					vars["orderBy"] = map[string]any{"field": "NAME", "direction": "ASC"}
				}
				var out map[string]page
				s.Do(t, tok, query, vars).OK(t).Decode(t, &out)
				return out[c.field]
			}

			// Forwards, 3 at a time.
			var got []string
			var after any
			for pages := 0; ; pages++ {
				if pages > n {
					t.Fatal("forward pagination does not end")
				}
				p := fetch(map[string]any{"first": 3, "after": after})
				if p.TotalCount != n {
					t.Errorf("totalCount = %d, want %d (where ignored?)", p.TotalCount, n)
				}
				got = append(got, p.names()...)
				if len(p.Edges) > 0 && (*p.PageInfo.StartCursor != p.Edges[0].Cursor || *p.PageInfo.EndCursor != p.Edges[len(p.Edges)-1].Cursor) {
					t.Errorf("pageInfo cursors do not match the edges")
				}
				if !p.PageInfo.HasNextPage {
					break
				}
				after = *p.PageInfo.EndCursor
			}
			if !slices.Equal(got, want) {
				t.Errorf("forwards: %v\nwant       %v", got, want)
			}

			// Backwards, 3 at a time: the same rows, each page in order.
			var back []string
			var before any
			for pages := 0; ; pages++ {
				if pages > n {
					t.Fatal("backward pagination does not end")
				}
				p := fetch(map[string]any{"last": 3, "before": before})
				back = append(p.names(), back...)
				if !p.PageInfo.HasPreviousPage {
					break
				}
				before = *p.PageInfo.StartCursor
			}
			if !slices.Equal(back, want) {
				t.Errorf("backwards: %v\nwant        %v", back, want)
			}

			// Descending order.
			p := fetch(map[string]any{"first": n, "orderBy": map[string]any{"field": "NAME", "direction": "DESC"}})
			desc := slices.Clone(want)
			slices.Reverse(desc)
			if !slices.Equal(p.names(), desc) || p.PageInfo.HasNextPage {
				t.Errorf("DESC: %v (hasNextPage %v)\nwant  %v", p.names(), p.PageInfo.HasNextPage, desc)
			}

			// A page in the middle: after the 2nd row, then before the 6th.
			// (after and before together are not used: entgql v0.7.0 applies
			// the same comparison to both cursors.)
			all := fetch(map[string]any{"first": n})
			if mid := fetch(map[string]any{"first": 3, "after": all.Edges[1].Cursor}); !slices.Equal(mid.names(), want[2:5]) || !mid.PageInfo.HasNextPage {
				t.Errorf("first 3 after #2: %v, want %v", mid.names(), want[2:5])
			}
			if mid := fetch(map[string]any{"last": 3, "before": all.Edges[5].Cursor}); !slices.Equal(mid.names(), want[2:5]) || !mid.PageInfo.HasPreviousPage {
				t.Errorf("last 3 before #6: %v, want %v", mid.names(), want[2:5])
			}

			// first: 0 returns no edges but the count.
			if p := fetch(map[string]any{"first": 0}); len(p.Edges) != 0 || p.TotalCount != n {
				t.Errorf("first 0: %d edges, total %d", len(p.Edges), p.TotalCount)
			}
		})
	}
}

// TestPagination_PageSizeIsBounded: a page over the maximum (500), or a
// negative one, is refused rather than silently truncated; a malformed
// cursor is a validation error.
func TestPagination_PageSizeIsBounded(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	tok := s.AdminToken(t)
	for _, c := range connections {
		for _, args := range []string{"first: 501", "last: 501", "first: -1", "last: -1"} {
			r := s.Do(t, tok, fmt.Sprintf(`{ %s(%s) { totalCount } }`, c.field, args), nil)
			if r.Code() != "VALIDATION" {
				t.Errorf("%s(%s): want VALIDATION, got %s", c.field, args, r.Body)
			}
		}
		s.Do(t, tok, fmt.Sprintf(`{ %s(first: 500) { totalCount } }`, c.field), nil).OK(t)
		r := s.Do(t, tok, fmt.Sprintf(`{ %s(first: 5, after: "not-a-cursor") { totalCount } }`, c.field), nil)
		if r.Code() != "VALIDATION" && r.Code() != "GRAPHQL_VALIDATION_FAILED" {
			t.Errorf("%s with a malformed cursor: %s", c.field, r.Body)
		}
		assertNoLeak(t, r)
	}
	// Every root connection of the schema is bounded, not only those above.
	for _, rf := range rootFields() {
		if rf.def.Arguments.ForName("first") == nil {
			continue
		}
		r := s.Do(t, tok, fmt.Sprintf(`{ %s(first: 501) { totalCount } }`, rf.def.Name), nil)
		if r.Code() != "VALIDATION" {
			t.Errorf("%s(first: 501): want VALIDATION, got %s", rf.def.Name, r.Body)
		}
	}
}
