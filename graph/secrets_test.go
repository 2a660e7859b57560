package graph_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vektah/gqlparser/v2/ast"

	"github.com/parleydesk/parley/ent/channel"
	"github.com/parleydesk/parley/server/app/apptest"
)

// secretFields are write-only fields (R32) and hashes; no output type may
// have them and no filter or order may test them.
var secretFields = []string{"token", "appSecret", "verifyToken", "webhookSecret", "secret", "passwordHash", "keyHash", "tokenHash"}

// TestR32_SchemaExposesNoSecretField checks the served schema itself: no
// object field returns a secret (except the shown-once login token and API
// key payloads) and no where-input or order field can probe one.
func TestR32_SchemaExposesNoSecretField(t *testing.T) {
	t.Parallel()
	shownOnce := map[string]bool{"LoginPayload.token": true, "CreateApiKeyPayload.key": true}
	for _, def := range schema.Types {
		if strings.HasPrefix(def.Name, "__") {
			continue
		}
		for _, f := range def.Fields {
			for _, sf := range secretFields {
				switch def.Kind {
				case ast.Object, ast.Interface:
					if f.Name == sf && !shownOnce[def.Name+"."+f.Name] {
						t.Errorf("%s.%s returns a secret", def.Name, f.Name)
					}
				case ast.InputObject:
					if strings.HasSuffix(def.Name, "WhereInput") && strings.HasPrefix(f.Name, sf) {
						t.Errorf("%s.%s filters on a secret", def.Name, f.Name)
					}
				}
			}
		}
		if def.Kind == ast.Enum && strings.HasSuffix(def.Name, "OrderField") {
			for _, v := range def.EnumValues {
				for _, sf := range []string{"TOKEN", "SECRET", "HASH"} {
					if strings.Contains(v.Name, sf) {
						t.Errorf("%s.%s orders by a secret", def.Name, v.Name)
					}
				}
			}
		}
	}
}

// TestR32_ProviderSecretsAreNeverReturned sets every channel secret and a
// chat action's secret through the API, then reads channels in every way
// the API offers (payloads, lists, node, nested under queues, errors): no
// answer contains a secret, and hasToken and the like say they are set.
func TestR32_ProviderSecretsAreNeverReturned(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	q := s.Client().Queue.Create().SetName("Q").SaveX(bg)
	secrets := map[string]string{}
	secret := func(name string) string {
		v := fmt.Sprintf("S3CR3T-%s-%s", name, apptest.Unique(""))
		secrets[name] = v
		return v
	}
	var bodies []string
	do := func(query string, vars map[string]any) apptest.Response {
		r := s.Do(t, admin, query, vars)
		bodies = append(bodies, string(r.Body))
		return r
	}
	channelSel := leafSelection("Channel", 2)
	create := `mutation($in: CreateChannelInput!) { createChannel(input: $in) ` + channelSel + ` }`
	inputs := map[string]map[string]any{
		"telegram": {"provider": "TELEGRAM", "name": "Bot", "queueID": gid(q.ID),
			"token": secret("tg-token"), "webhookSecret": secret("tg-webhook")},
		"whatsapp": {"provider": "WHATSAPP", "name": "WA", "queueID": gid(q.ID), "externalID": "1234567890",
			"token": secret("wa-token"), "appSecret": secret("wa-app"), "verifyToken": secret("wa-verify")},
		"messenger": {"provider": "MESSENGER", "name": "Page", "queueID": gid(q.ID), "externalID": "998877",
			"token": secret("fb-token"), "appSecret": secret("fb-app"), "verifyToken": secret("fb-verify"),
			"botMode": "FIRST_LINE", "botAppID": "263902037430900"},
		"telegram with a generated webhook secret": {"provider": "TELEGRAM", "name": "Bot 2", "queueID": gid(q.ID),
			"token": secret("tg2-token")},
	}
	ids := map[string]string{}
	for name, in := range inputs {
		var out struct {
			CreateChannel struct {
				ID                                                       string
				HasToken, HasAppSecret, HasVerifyToken, HasWebhookSecret bool
				WebhookPath                                              string
			}
		}
		do(create, map[string]any{"in": in}).OK(t).Decode(t, &out)
		c := out.CreateChannel
		ids[name] = c.ID
		meta := strings.HasPrefix(in["provider"].(string), "W") || in["provider"] == "MESSENGER"
		if !c.HasToken || c.HasAppSecret != meta || c.HasVerifyToken != meta || c.HasWebhookSecret == meta {
			t.Errorf("%s: has* flags = %+v", name, c)
		}
		if want := "/webhooks/" + strings.ToLower(in["provider"].(string)) + "/" + c.ID; c.WebhookPath != want {
			t.Errorf("%s: webhookPath %q, want %q", name, c.WebhookPath, want)
		}
	}
	// The generated Telegram secret is stored, and is a secret too.
	gen := s.Client().Channel.Query().Where(channel.Name("Bot 2")).OnlyX(bg)
	if len(gen.WebhookSecret) < 20 {
		t.Errorf("generated webhook secret %q is too weak", gen.WebhookSecret)
	}
	secrets["generated"] = gen.WebhookSecret
	// Stored as given.
	wa := s.Client().Channel.Query().Where(channel.Name("WA")).OnlyX(bg)
	if wa.Token != secrets["wa-token"] || wa.AppSecret != secrets["wa-app"] || wa.VerifyToken != secrets["wa-verify"] {
		t.Error("WhatsApp secrets were not stored as given")
	}

	// A chat action's signing secret is write-only too.
	do(`mutation($q: ID!, $s: String!) { createChatAction(input: {caption: "Hook", kind: WEBHOOK, url: "https://crm.example/hook", secret: $s, queueID: $q}) `+
		leafSelection("ChatAction", 2)+` }`, map[string]any{"q": gid(q.ID), "s": secret("action")}).OK(t)

	// Every way of reading a channel.
	for _, id := range ids {
		do(`query($id: ID!) { node(id: $id) { id ... on Channel `+channelSel+` } }`, map[string]any{"id": id}).OK(t)
		do(`query($id: ID!) { nodes(ids: [$id]) { id ... on Channel `+channelSel+` } }`, map[string]any{"id": id}).OK(t)
		do(`mutation($id: ID!) { updateChannel(id: $id, input: {name: "Renamed"}) `+channelSel+` }`, map[string]any{"id": id}).OK(t)
		do(`mutation($id: ID!) { setChannelActive(id: $id, active: false) `+channelSel+` }`, map[string]any{"id": id}).OK(t)
		// Refusals that concern a channel with secrets.
		do(`mutation($id: ID!) { updateChannel(id: $id, input: {clearToken: true}) { id } }`, map[string]any{"id": id}).Expect(t, "VALIDATION")
		do(`mutation($id: ID!) { updateChannel(id: $id, input: {name: ""}) { id } }`, map[string]any{"id": id}).Expect(t, "VALIDATION")
	}
	do(`{ channels { edges { node `+channelSel+` } } }`, nil).OK(t)
	do(`{ queues { edges { node { channels `+channelSel+` chatActions `+leafSelection("ChatAction", 1)+` } } } }`, nil).OK(t)
	do(`{ chatActions { edges { node `+leafSelection("ChatAction", 1)+` } } }`, nil).OK(t)
	// Filtering on a secret is not possible.
	do(`query($t: String!) { channels(where: {token: $t}) { totalCount } }`, map[string]any{"t": secrets["wa-token"][:4]}).
		Expect(t, "GRAPHQL_VALIDATION_FAILED")

	for name, v := range secrets {
		for _, b := range bodies {
			if strings.Contains(b, v) {
				t.Errorf("secret %s returned: %s", name, b)
			}
		}
		if strings.Contains(s.Logs(), v) {
			t.Errorf("secret %s written to the log", name)
		}
	}

	// Replacing a secret works without reading it.
	var out struct{ UpdateChannel struct{ HasAppSecret bool } }
	do(`mutation($id: ID!, $s: String!) { updateChannel(id: $id, input: {appSecret: $s}) { hasAppSecret } }`,
		map[string]any{"id": ids["whatsapp"], "s": "new-app-secret"}).OK(t).Decode(t, &out)
	if !out.UpdateChannel.HasAppSecret || s.Client().Channel.GetX(bg, wa.ID).AppSecret != "new-app-secret" {
		t.Error("app secret not replaced")
	}
}
