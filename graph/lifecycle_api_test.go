package graph_test

import (
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// TestR13_LifecycleOverGraphQL drives a chat from the API channel to
// completion through the GraphQL API, as an integrator and operators would.
func TestR13_LifecycleOverGraphQL(t *testing.T) {
	s := apptest.New(t)
	admin := s.AdminToken(t)
	alice := s.CreateOperator(t, enum.RoleOperator)
	bob := s.CreateOperator(t, enum.RoleOperator)
	key := s.CreateAPIKey(t, enum.ApiKeyIntegration)

	var q struct{ CreateQueue struct{ ID string } }
	s.Do(t, admin, `mutation($m: [ID!]) { createQueue(input: {name: "Support", routingRule: TO_ALL, memberIDs: $m}) { id } }`,
		map[string]any{"m": []string{alice.GID, bob.GID}}).OK(t).Decode(t, &q)
	var ch struct{ CreateChannel struct{ ID string } }
	s.Do(t, admin, `mutation($q: ID!) { createChannel(input: {name: "Site", provider: API, queueID: $q}) { id } }`,
		map[string]any{"q": q.CreateQueue.ID}).OK(t).Decode(t, &ch)

	for _, op := range []apptest.Operator{alice, bob} {
		s.Do(t, op.Token, `mutation { setMyStatus(status: ACTIVE) { status availability { availability load limit } } }`, nil).OK(t)
	}
	inbound := `mutation($ch: ID!, $text: String!) {
	  simulateInbound(input: {channelId: $ch, externalId: "cust-1", name: "Customer", messageId: $text, text: $text}) {
	    newChat duplicate chat { id status }
	  }
	}`
	var in struct {
		SimulateInbound struct {
			NewChat, Duplicate bool
			Chat               struct{ ID, Status string }
		}
	}
	s.Do(t, key.Key, inbound, map[string]any{"ch": ch.CreateChannel.ID, "text": "hello"}).OK(t).Decode(t, &in)
	if !in.SimulateInbound.NewChat || in.SimulateInbound.Chat.Status != "WAITING" {
		t.Fatalf("simulateInbound = %+v", in.SimulateInbound)
	}
	chatID := in.SimulateInbound.Chat.ID
	// A retry with the same message id changes nothing.
	s.Do(t, key.Key, inbound, map[string]any{"ch": ch.CreateChannel.ID, "text": "hello"}).OK(t).Decode(t, &in)
	if !in.SimulateInbound.Duplicate || in.SimulateInbound.Chat.ID != chatID {
		t.Fatalf("redelivery = %+v", in.SimulateInbound)
	}
	// Operators cannot play the API channel.
	s.Do(t, alice.Token, inbound, map[string]any{"ch": ch.CreateChannel.ID, "text": "x"}).Expect(t, "FORBIDDEN")

	var panel struct {
		Panel struct {
			Me struct {
				Availability string
				Load         int
			}
			NewChats []struct {
				Chat        struct{ ID string }
				UnreadCount int
				LastMessage struct{ Text string }
			}
		}
	}
	s.Do(t, alice.Token, `{ panel { me { availability load } newChats { chat { id } unreadCount lastMessage { text } } } }`, nil).OK(t).Decode(t, &panel)
	if len(panel.Panel.NewChats) != 1 || panel.Panel.NewChats[0].Chat.ID != chatID || panel.Panel.NewChats[0].LastMessage.Text != "hello" || panel.Panel.Me.Load != 1 {
		t.Fatalf("panel = %+v", panel.Panel)
	}

	if r := s.Do(t, alice.Token, `mutation($id: ID!) { acceptChat(id: $id) { status owner { id } } }`, map[string]any{"id": chatID}); len(r.Errors) > 0 {
		t.Fatal(s.Logs())
	}
	s.Do(t, bob.Token, `mutation($id: ID!) { acceptChat(id: $id) { status } }`, map[string]any{"id": chatID}).Expect(t, "CHAT_ALREADY_TAKEN")
	// R24: Bob may not read Alice's chat while it is open.
	s.Do(t, bob.Token, `query($id: ID!) { node(id: $id) { ... on Chat { messages { totalCount } } } }`, map[string]any{"id": chatID}).Expect(t, "FORBIDDEN")

	s.Do(t, alice.Token, `mutation($id: ID!) { sendMessage(chatId: $id, text: "How can I help?") { deliveryStatus direction } }`,
		map[string]any{"id": chatID}).OK(t)
	var chat struct {
		Node struct {
			Status   string
			Messages struct {
				TotalCount int
				Edges      []struct {
					Node struct{ Text, Direction string }
				}
			}
			RoutingDecisions []struct {
				Rule, Outcome string
				Candidates    []struct {
					Name   string
					Chosen bool
				}
			}
		}
	}
	s.Do(t, alice.Token, `query($id: ID!) { node(id: $id) { ... on Chat {
	  status
	  messages(first: 10) { totalCount edges { node { text direction } } }
	  routingDecisions { rule outcome candidates { name chosen } }
	} } }`, map[string]any{"id": chatID}).OK(t).Decode(t, &chat)
	if chat.Node.Status != "IN_PROGRESS" || chat.Node.Messages.TotalCount != 2 || chat.Node.Messages.Edges[1].Node.Direction != "OUTBOUND" {
		t.Fatalf("chat = %+v", chat.Node)
	}
	if len(chat.Node.RoutingDecisions) != 1 || chat.Node.RoutingDecisions[0].Rule != "TO_ALL" || len(chat.Node.RoutingDecisions[0].Candidates) != 2 {
		t.Fatalf("routing decisions = %+v", chat.Node.RoutingDecisions)
	}

	var targets struct {
		TransferTargets struct {
			Operators []struct {
				Operator     struct{ ID string }
				Availability string
			}
		}
	}
	s.Do(t, alice.Token, `query($id: ID!) { transferTargets(chatId: $id) { queues { id } operators { operator { id } availability } } }`,
		map[string]any{"id": chatID}).OK(t).Decode(t, &targets)
	found := false
	for _, o := range targets.TransferTargets.Operators {
		found = found || (o.Operator.ID == bob.GID && o.Availability == "ACTIVE")
	}
	if !found {
		t.Fatalf("Bob is not an ACTIVE transfer target: %+v", targets)
	}
	var tr struct {
		TransferChat struct {
			Completed struct{ Status, CompletionReason string }
			Chat      struct {
				ID, Status string
			}
		}
	}
	s.Do(t, alice.Token, `mutation($id: ID!, $to: ID!) { transferChat(input: {chatId: $id, operatorId: $to, note: "over to you"}) {
	  completed { status completionReason } chat { id status } } }`,
		map[string]any{"id": chatID, "to": bob.GID}).OK(t).Decode(t, &tr)
	if tr.TransferChat.Completed.Status != "COMPLETED" || tr.TransferChat.Completed.CompletionReason != "TRANSFERRED" ||
		tr.TransferChat.Chat.Status != "IN_PROGRESS" {
		t.Fatalf("transfer = %+v", tr.TransferChat)
	}
	child := tr.TransferChat.Chat.ID
	// R20: Bob sees the whole history; Alice no longer may while it is open.
	var hist struct {
		Node struct{ History struct{ TotalCount int } }
	}
	s.Do(t, bob.Token, `query($id: ID!) { node(id: $id) { ... on Chat { history { totalCount } } } }`, map[string]any{"id": child}).OK(t).Decode(t, &hist)
	if hist.Node.History.TotalCount != 2 {
		t.Fatalf("history = %d messages, want 2", hist.Node.History.TotalCount)
	}
	s.Do(t, alice.Token, `query($id: ID!) { node(id: $id) { ... on Chat { history { totalCount } } } }`, map[string]any{"id": child}).Expect(t, "FORBIDDEN")
	s.Do(t, bob.Token, `mutation($id: ID!) { completeChat(id: $id) { status durationSeconds } }`, map[string]any{"id": child}).OK(t)
	s.Do(t, bob.Token, `mutation($id: ID!) { completeChat(id: $id) { status } }`, map[string]any{"id": child}).Expect(t, "CHAT_COMPLETED")
	s.Do(t, bob.Token, `mutation { acceptChat(id: "999999") { status } }`, nil).Expect(t, "NOT_FOUND")
}
