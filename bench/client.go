package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// gqlClient calls the server's GraphQL endpoint as an operator's browser or
// an administrator's script would.
type gqlClient struct {
	base string
	http *http.Client
}

func newHTTPClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        conns * 2,
			MaxIdleConnsPerHost: conns * 2,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

type gqlError struct {
	Message    string `json:"message"`
	Extensions struct {
		Code string `json:"code"`
	} `json:"extensions"`
}

// do runs one operation and decodes data into out.
func (c *gqlClient) do(ctx context.Context, token, query string, vars map[string]any, out any) error {
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/graphql", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Data   json.RawMessage `json:"data"`
		Errors []gqlError      `json:"errors"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("graphql: HTTP %d: %.200s", resp.StatusCode, b)
	}
	if len(r.Errors) > 0 {
		return fmt.Errorf("graphql: %s (%s)", r.Errors[0].Message, r.Errors[0].Extensions.Code)
	}
	if out != nil {
		return json.Unmarshal(r.Data, out)
	}
	return nil
}

func (c *gqlClient) login(ctx context.Context, email, password string) (token, id string, err error) {
	var r struct {
		Login struct {
			Token    string `json:"token"`
			Operator struct {
				ID string `json:"id"`
			} `json:"operator"`
		} `json:"login"`
	}
	err = c.do(ctx, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token operator { id } } }`,
		map[string]any{"e": email, "p": password}, &r)
	return r.Login.Token, r.Login.Operator.ID, err
}

// operatorRef is an operator the benchmark acts as.
type operatorRef struct {
	ID    string
	Token string
}

// benchSet is what one measurement routes to: a queue, its operators
// (logged in and ACTIVE, with a limit high enough that offers never
// saturate) and a Telegram and a WhatsApp channel with known secrets.
type benchSet struct {
	Name    string
	QueueID string
	Ops     []operatorRef
	TG      channelRef
	WA      channelRef
}

type channelRef struct {
	ID        string
	Secret    string // Telegram webhook secret or WhatsApp app secret
	AccountID string // WhatsApp phone number id
}

// highLimit is the operators' concurrent-chats limit, the schema's maximum
// (traffic moves on to another set before offers saturate it).
const highLimit = 1000

// newSet creates a queue with k fresh operators and two channels. The
// operators are written directly into the database, active and with a live
// session each (seedOperators), as the growth and subscribers scenarios
// write theirs; the queue with them as members, and the channels, go
// through the API. Creating the operators through the API cost two bcrypt
// hashes each (the password's, then the login's), for over a hundred sets
// a run: without them a full run on two cores went from 9 min 59 s to
// 8 min 10 s, and no figure measured them.
func newSet(ctx context.Context, c *gqlClient, db *database, admin, name, rule string, k int) (*benchSet, error) {
	ops, err := seedOperatorsRetrying(ctx, db, strings.ToLower(strings.ReplaceAll(name, " ", "-")), k,
		func(int) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("seed operators: %w", err)
	}
	return newQueueSet(ctx, c, admin, name, rule, ops)
}

// newQueueSet creates, through the API, a queue with ops as its members
// (offers that wait a day, then count as missed) and a Telegram and a
// WhatsApp channel on it.
func newQueueSet(ctx context.Context, c *gqlClient, admin, name, rule string, ops []operatorRef) (*benchSet, error) {
	s := &benchSet{Name: name, Ops: ops}
	memberIDs := make([]string, len(ops))
	for i, op := range ops {
		memberIDs[i] = op.ID
	}
	var q struct {
		CreateQueue struct{ ID string } `json:"createQueue"`
	}
	if err := c.do(ctx, admin, `mutation($in: CreateQueueInput!) { createQueue(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"name": name, "routingRule": rule, "acceptTimeoutSeconds": 86400,
			"acceptTimeoutAction": "COUNT_MISSED", "memberIDs": memberIDs}}, &q); err != nil {
		return nil, fmt.Errorf("create queue: %w", err)
	}
	s.QueueID = q.CreateQueue.ID
	var err error
	if s.TG, s.WA, err = newChannels(ctx, c, admin, name, s.QueueID); err != nil {
		return nil, err
	}
	return s, nil
}

// newChannels creates a Telegram and a WhatsApp channel on a queue. Tokens
// are placeholders: the outbound side is not benchmarked.
func newChannels(ctx context.Context, c *gqlClient, admin, name, queueID string) (tg, wa channelRef, err error) {
	var ch struct {
		CreateChannel struct{ ID string } `json:"createChannel"`
	}
	tg.Secret = "tg_whsec_" + randomHex(12)
	if err = c.do(ctx, admin, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"provider": "TELEGRAM", "name": name + " Telegram",
			"token": "123456:BENCH-" + randomHex(8), "webhookSecret": tg.Secret, "queueID": queueID}}, &ch); err != nil {
		return tg, wa, fmt.Errorf("create Telegram channel: %w", err)
	}
	tg.ID = ch.CreateChannel.ID
	wa.Secret = "wa_appsecret_" + randomHex(12)
	wa.AccountID = fmt.Sprintf("1102938%08d", time.Now().UnixNano()%100_000_000)
	if err = c.do(ctx, admin, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"provider": "WHATSAPP", "name": name + " WhatsApp", "externalID": wa.AccountID,
			"token": "EAAB-bench-" + randomHex(8), "appSecret": wa.Secret, "verifyToken": "verify-" + randomHex(4),
			"queueID": queueID}}, &ch); err != nil {
		return tg, wa, fmt.Errorf("create WhatsApp channel: %w", err)
	}
	wa.ID = ch.CreateChannel.ID
	return tg, wa, nil
}

// panelSubscription is what an operator's panel subscribes to: the event,
// the chat with its customer's name, and the message.
const panelSubscription = `subscription { panel { id type notify chatId chat { id status contact { name } } message { id text } } }`
