package graph_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	entschema "github.com/parleydesk/parley/ent/schema"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// nodeFixture creates one row of every type that implements Node, directly
// with the ent client, and returns their ids by GraphQL type name.
func nodeFixture(t *testing.T, s *apptest.Server) map[string]int {
	t.Helper()
	c := s.Client()
	now := s.Clock.Now()
	op := c.Operator.Create().SetEmail("node@parley.test").SetName("Node Op").SetPasswordHash("x").SaveX(bg)
	q := c.Queue.Create().SetName("Node queue").AddMembers(op).SaveX(bg)
	ch := c.Channel.Create().SetProvider(enum.ProviderAPI).SetName("Node channel").SetQueueID(q.ID).SaveX(bg)
	acc := c.Account.Create().SetName("Node account").SaveX(bg)
	ct := c.Contact.Create().SetName("Node contact").SetAccountID(acc.ID).SaveX(bg)
	chat := c.Chat.Create().SetStatus(enum.ChatInProgress).SetCreatedAt(now).SetLastMessageAt(now).
		SetChannelID(ch.ID).SetContactID(ct.ID).SetQueueID(q.ID).SetOwnerID(op.ID).SaveX(bg)
	msg := c.Message.Create().SetDirection(enum.Inbound).SetAuthorKind(enum.AuthorCustomer).SetText("hi").
		SetChannelID(ch.ID).SetCreatedAt(now).SetChatID(chat.ID).SaveX(bg)
	settings, err := s.Desk().Settings(bg)
	if err != nil {
		t.Fatal(err)
	}
	key := s.CreateAPIKey(t, enum.ApiKeyIntegration)
	return map[string]int{
		"Account":    acc.ID,
		"ApiKey":     key.ID,
		"Attachment": c.Attachment.Create().SetKind(enum.KindPhoto).SetStatus(enum.AttachmentPending).SetCreatedAt(now).SetMessageID(msg.ID).SaveX(bg).ID,
		"Channel":    ch.ID,
		"Chat":       chat.ID,
		"ChatAction": c.ChatAction.Create().SetCaption("Case").SetKind(enum.ActionCreateCase).SetQueueID(q.ID).SaveX(bg).ID,
		"ChatOffer": c.ChatOffer.Create().SetStatus(enum.OfferAccepted).SetCreatedAt(now).
			SetChatID(chat.ID).SetOperatorID(op.ID).SaveX(bg).ID,
		"Contact": ct.ID,
		"ContactIdentity": c.ContactIdentity.Create().SetProvider(enum.ProviderTelegram).SetExternalID("42").
			SetContactID(ct.ID).SaveX(bg).ID,
		"ContactMerge": c.ContactMerge.Create().SetSurvivorID(ct.ID).SetMergedID(ct.ID + 1).
			SetMoved(map[string][]int{}).SetAt(now).SetByID(op.ID).SaveX(bg).ID,
		"Draft":         c.Draft.Create().SetText("draft").SetUpdatedAt(now).SetOperatorID(op.ID).SetChatID(chat.ID).SaveX(bg).ID,
		"DuplicateRule": c.DuplicateRule.Create().SetName("Same phone").SetField(enum.DuplicatePhone).SaveX(bg).ID,
		"Message":       msg.ID,
		"Operator":      op.ID,
		"OperatorStatusChange": c.OperatorStatusChange.Create().SetStatus(enum.StatusActive).
			SetPrevious(enum.StatusInactive).SetReason(enum.ReasonManual).SetAt(now).SetOperatorID(op.ID).SaveX(bg).ID,
		"Queue":      q.ID,
		"QuickReply": c.QuickReply.Create().SetName("Hello").SetText("Hello!").SetSearchKey("hello\nhello!").SaveX(bg).ID,
		"RoutingDecision": c.RoutingDecision.Create().SetRule(enum.RuleToAvailable).SetAt(now).SetTrigger("NEW_CHAT").
			SetCandidates([]entschema.Candidate{{OperatorID: op.ID, Name: op.Name, Status: "ACTIVE", Load: 0, Limit: 5, Chosen: true}}).
			SetOutcome("OFFERED").SetChosenOperatorIds([]int{op.ID}).SetChatID(chat.ID).SaveX(bg).ID,
		"Setting":     settings.ID,
		"SupportCase": c.SupportCase.Create().SetSubject("Help").SetRegisteredAt(now).SetContactID(ct.ID).SetChatID(chat.ID).SaveX(bg).ID,
	}
}

// nodeTypes lists the types of the served schema that implement Node.
func nodeTypes() []string {
	var names []string
	for _, def := range schema.GetPossibleTypes(schema.Types["Node"]) {
		names = append(names, def.Name)
	}
	sort.Strings(names)
	return names
}

// TestNode_EveryTypeRoundTripsThroughNode: node(id:) and nodes(ids:)
// resolve an id of every type implementing Node to that type and id, and
// every field of the type that needs no argument resolves without error.
// A new Node type fails this test until nodeFixture creates one.
func TestNode_EveryTypeRoundTripsThroughNode(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	ids := nodeFixture(t, s)

	types := nodeTypes()
	if len(types) < 20 {
		t.Fatalf("only %d Node types in the schema: %v", len(types), types)
	}
	seen := map[int]string{}
	var all []string
	for _, typ := range types {
		id, ok := ids[typ]
		if !ok {
			t.Errorf("type %s implements Node but nodeFixture creates none: add it", typ)
			continue
		}
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share the id %d: ids are not globally unique", typ, other, id)
		}
		seen[id] = typ
		all = append(all, gid(id))
		t.Run(typ, func(t *testing.T) {
			// The minimal selection matters: field collection then loads
			// only the id, which is how authorisation that reads other
			// columns breaks.
			for _, q := range []string{
				`query($id: ID!) { node(id: $id) { __typename id } }`,
				fmt.Sprintf(`query($id: ID!) { node(id: $id) { __typename id ... on %s %s } }`, typ, leafSelection(typ, 1)),
			} {
				r := s.Do(t, admin, q, map[string]any{"id": gid(id)})
				if len(r.Errors) > 0 {
					t.Fatalf("node(%s): %s\nquery: %s", typ, r.Body, q)
				}
				var out struct {
					Node struct {
						Typename string `json:"__typename"`
						ID       string
					}
				}
				r.Decode(t, &out)
				if out.Node.Typename != typ || out.Node.ID != gid(id) {
					t.Errorf("node(%d) = %s %s, want %s %d", id, out.Node.Typename, out.Node.ID, typ, id)
				}
			}
		})
	}

	// nodes(ids:) answers in the order asked.
	var out struct {
		Nodes []struct {
			Typename string `json:"__typename"`
			ID       string
		}
	}
	s.Do(t, admin, `query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }`, map[string]any{"ids": all}).OK(t).Decode(t, &out)
	if len(out.Nodes) != len(all) {
		t.Fatalf("nodes returned %d of %d", len(out.Nodes), len(all))
	}
	for i, n := range out.Nodes {
		if want := seen[apptest.ParseID(t, all[i])]; n.ID != all[i] || n.Typename != want {
			t.Errorf("nodes[%d] = %s %s, want %s %s", i, n.Typename, n.ID, want, all[i])
		}
	}
}

// TestR32_NodeHidesApiKeysFromNonAdmins: node(id:) must not bypass the
// access rules of the lists: API keys are configuration.
func TestR32_NodeHidesApiKeysFromNonAdmins(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	key := s.CreateAPIKey(t, enum.ApiKeyAdmin)
	q := s.Client().Queue.Create().SetName("Q").SaveX(bg)
	one := `query($id: ID!) { node(id: $id) { id ... on ApiKey { name prefix } } }`
	many := `query($ids: [ID!]!) { nodes(ids: $ids) { id } }`
	for name, tok := range map[string]string{
		"operator":        s.CreateOperator(t, enum.RoleOperator).Token,
		"supervisor":      s.CreateOperator(t, enum.RoleSupervisor).Token,
		"integration key": s.CreateAPIKey(t, enum.ApiKeyIntegration).Key,
	} {
		r := s.Do(t, tok, one, map[string]any{"id": gid(key.ID)})
		if r.Code() != "FORBIDDEN" || strings.Contains(string(r.Body), "prefix\"") {
			t.Errorf("%s: node(api key) = %s", name, r.Body)
		}
		r = s.Do(t, tok, many, map[string]any{"ids": []string{gid(q.ID), gid(key.ID)}})
		if r.Code() != "FORBIDDEN" {
			t.Errorf("%s: nodes(queue, api key) = %s", name, r.Body)
		}
		// Other nodes stay readable.
		s.Do(t, tok, one, map[string]any{"id": gid(q.ID)}).OK(t)
	}
	s.Do(t, s.AdminToken(t), one, map[string]any{"id": gid(key.ID)}).OK(t)
	s.Do(t, key.Key, one, map[string]any{"id": gid(key.ID)}).OK(t)
}

// TestNode_Limits: unknown ids are NOT_FOUND and nodes(ids:) is bounded.
func TestNode_Limits(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	for _, id := range []string{"0", "999999", gid(1<<32 + 7), "-5"} {
		r := s.Do(t, admin, `query($id: ID!) { node(id: $id) { id } }`, map[string]any{"id": id})
		if r.Code() != "NOT_FOUND" {
			t.Errorf("node(%s): want NOT_FOUND, got %s", id, r.Body)
		}
		assertNoLeak(t, r)
	}
	ids := make([]string, 501)
	for i := range ids {
		ids[i] = gid(i + 1)
	}
	s.Do(t, admin, `query($ids: [ID!]!) { nodes(ids: $ids) { id } }`, map[string]any{"ids": ids}).Expect(t, "VALIDATION")
}
