package webhooks_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/channels/metagraph/metagraphtest"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/files"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/inbounddelivery"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/migrate"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/app/apptest"
)

var bg = context.Background()

// env is a Parley server whose provider APIs are the fake, with one active
// channel of each provider configured with the fixtures' secrets, all in
// one queue whose only member is an ACTIVE operator (so new chats are
// offered to them).
type env struct {
	*apptest.Server
	Operator *ent.Operator
	Queue    *ent.Queue
	// Channels and their webhook paths (as the API reports them), by
	// provider directory name: telegram, whatsapp, messenger.
	Channels map[string]*ent.Channel
	Paths    map[string]string
	Files    *files.Dir

	sigs map[string]map[string]string // provider → fixture → X-Hub-Signature-256
}

type envOptions struct {
	metaAppID string
	cfg       func(*app.Config)
}

type envOption func(*envOptions)

// withMetaAppID sets PARLEY_META_APP_ID ("" leaves it unset).
func withMetaAppID(id string) envOption { return func(o *envOptions) { o.metaAppID = id } }

// withConfig edits the server's configuration.
func withConfig(fn func(*app.Config)) envOption { return func(o *envOptions) { o.cfg = fn } }

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	o := envOptions{metaAppID: ourMetaAppID}
	for _, opt := range opts {
		opt(&o)
	}
	provider.preload(t)
	filesDir := t.TempDir()
	s := apptest.New(t,
		apptest.WithConfig(func(c *app.Config) {
			c.TelegramAPIURL = provider.srv.URL
			c.GraphAPIURL = provider.srv.URL
			c.GraphAPIVersion = graphVersion
			c.FilesDir = filesDir
			c.MetaAppID = o.metaAppID
			if o.cfg != nil {
				o.cfg(c)
			}
		}),
		// apptest.New gives the desk a whole Config of its own (session
		// TTL, bcrypt cost), applied after app.New's, which drops the
		// MetaAppID app.New takes from PARLEY_META_APP_ID: set it again.
		apptest.WithDeskOptions(desk.WithConfig(desk.Config{SessionTTL: apptest.SessionTTL,
			PasswordCost: bcrypt.MinCost, MetaAppID: o.metaAppID})),
	)
	store, err := files.NewDir(filesDir)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{Server: s, Channels: map[string]*ent.Channel{}, Paths: map[string]string{}, Files: store,
		sigs: map[string]map[string]string{}}
	for _, p := range []string{"whatsapp", "messenger"} {
		sigs, secret := metagraphtest.Signatures(t, p)
		if secret != metaAppSecret {
			t.Fatalf("%s/_signatures.json: app secret %q, want %q", p, secret, metaAppSecret)
		}
		e.sigs[p] = sigs
	}
	now := s.Desk().Now()
	e.Operator = s.Client().Operator.Create().SetEmail(apptest.Unique("op") + "@parley.test").SetName("Olivia Operator").
		SetPasswordHash("x").SetStatus(enum.StatusActive).SetCreatedAt(now).SetUpdatedAt(now).SaveX(bg)
	e.Queue = s.Client().Queue.Create().SetName("Support").AddMembers(e.Operator).
		SetCreatedAt(now).SetUpdatedAt(now).SaveX(bg)

	// The channels are configured through the API, as an administrator does.
	admin := s.AdminToken(t)
	inputs := map[string]map[string]any{
		"telegram": {"provider": "TELEGRAM", "name": "Acme bot", "token": tgToken, "webhookSecret": tgWebhookSecret},
		"whatsapp": {"provider": "WHATSAPP", "name": "Acme WhatsApp", "externalID": waPhoneNumberID, "token": waToken,
			"appSecret": metaAppSecret, "verifyToken": verifyToken(t, "whatsapp")},
		"messenger": {"provider": "MESSENGER", "name": "Acme page", "externalID": fbPageID, "token": fbPageToken,
			"appSecret": metaAppSecret, "verifyToken": verifyToken(t, "messenger")},
	}
	for _, p := range []string{"telegram", "whatsapp", "messenger"} {
		in := inputs[p]
		in["queueID"] = apptest.ID(e.Queue.ID)
		var out struct {
			CreateChannel struct{ ID, WebhookPath string }
		}
		s.Do(t, admin, `mutation($in: CreateChannelInput!) { createChannel(input: $in) { id webhookPath } }`,
			map[string]any{"in": in}).OK(t).Decode(t, &out)
		e.Channels[p] = s.Client().Channel.GetX(bg, apptest.ParseID(t, out.CreateChannel.ID))
		e.Paths[p] = out.CreateChannel.WebhookPath
	}
	return e
}

// verifyRequest is verify_request.json.
type verifyRequest struct {
	Path             string            `json:"path"`
	Query            map[string]string `json:"query"`
	ExpectedResponse struct {
		Status      int    `json:"status"`
		ContentType string `json:"content_type"`
		Body        string `json:"body"`
	} `json:"expected_response"`
	OnTokenMismatch struct {
		Status int `json:"status"`
	} `json:"on_token_mismatch"`
}

func readVerifyRequest(t testing.TB, prov string) verifyRequest {
	t.Helper()
	var v verifyRequest
	if err := json.Unmarshal(metagraphtest.Fixture(t, prov, "verify_request.json"), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func verifyToken(t testing.TB, prov string) string {
	return readVerifyRequest(t, prov).Query["hub.verify_token"]
}

// fixture returns the exact bytes of a fixture.
func fixture(t testing.TB, prov, name string) []byte {
	t.Helper()
	return provider.fixture(t, prov, name)
}

// webhookFixtures lists the webhook bodies of a provider's fixtures:
// Telegram Updates (an update_id) and Meta deliveries (an object).
func webhookFixtures(t testing.TB, prov string) []string {
	t.Helper()
	if prov != "telegram" {
		return metagraphtest.WebhookFixtures(t, prov)
	}
	dir := metagraphtest.FixtureDir(t, prov)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range ents {
		if de.IsDir() || filepath.Ext(de.Name()) != ".json" {
			continue
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(fixture(t, prov, de.Name()), &probe) == nil && probe["update_id"] != nil {
			names = append(names, de.Name())
		}
	}
	sort.Strings(names)
	return names
}

// sign computes X-Hub-Signature-256 of a body with the app secret.
func sign(body []byte, secret string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// authHeader is the header a provider sends with a fixture: Telegram's
// secret token, or Meta's signature from _signatures.json.
func (e *env) authHeader(t testing.TB, prov, name string) (string, string) {
	t.Helper()
	if prov == "telegram" {
		return "X-Telegram-Bot-Api-Secret-Token", tgWebhookSecret
	}
	sig, ok := e.sigs[prov][name]
	if !ok {
		t.Fatalf("%s/_signatures.json has no signature for %s", prov, name)
	}
	return "X-Hub-Signature-256", sig
}

// reply is an HTTP answer of the server.
type reply struct {
	Status      int
	ContentType string
	Body        string
}

// request sends method path with the body and headers (name, value pairs).
func (e *env) request(t testing.TB, method, path string, body []byte, headers ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, e.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := e.HTTP.Client().Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return reply{}
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return reply{Status: res.StatusCode, ContentType: res.Header.Get("Content-Type"), Body: string(b)}
}

// deliver POSTs a fixture's exact bytes to its channel's webhook with the
// provider's header, as the provider does, and expects 200.
func (e *env) deliver(t testing.TB, prov, name string) {
	t.Helper()
	h, v := e.authHeader(t, prov, name)
	if r := e.request(t, http.MethodPost, e.Paths[prov], fixture(t, prov, name), h, v); r.Status != http.StatusOK {
		t.Fatalf("deliver %s/%s: status %d %q, want 200", prov, name, r.Status, r.Body)
	}
}

// deliverConcurrently POSTs a fixture n times at once; every answer must
// be 200.
func (e *env) deliverConcurrently(t testing.TB, prov, name string, n int) {
	t.Helper()
	h, v := e.authHeader(t, prov, name)
	body := fixture(t, prov, name)
	start := make(chan struct{})
	statuses := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			statuses[i] = e.request(t, http.MethodPost, e.Paths[prov], body, h, v)
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range statuses {
		if r.Status != http.StatusOK {
			t.Fatalf("concurrent delivery %d of %s/%s: status %d %q, want 200", i, prov, name, r.Status, r.Body)
		}
	}
}

// variant is a fixture's events in another body: a Telegram Update with
// another update_id, a Meta body with a trailing newline (another hash,
// re-signed).
func variant(t testing.TB, prov, name string) []byte {
	t.Helper()
	body := fixture(t, prov, name)
	if prov != "telegram" {
		return append(slices.Clone(body), '\n')
	}
	key := deliveryKey(t, prov, body)
	n, _ := strconv.ParseInt(key, 10, 64)
	out := strings.Replace(string(body), `"update_id": `+key, `"update_id": `+strconv.FormatInt(n+1000000, 10), 1)
	if out == string(body) {
		t.Fatalf("%s: update_id not found", name)
	}
	return []byte(out)
}

// deliverVariant delivers variant(prov, name), signed, and expects 200.
func (e *env) deliverVariant(t testing.TB, prov, name string) {
	t.Helper()
	body := variant(t, prov, name)
	h, v := "X-Telegram-Bot-Api-Secret-Token", tgWebhookSecret
	if prov != "telegram" {
		h, v = "X-Hub-Signature-256", sign(body, metaAppSecret)
	}
	if r := e.request(t, http.MethodPost, e.Paths[prov], body, h, v); r.Status != http.StatusOK {
		t.Fatalf("deliver a variant of %s/%s: status %d %q, want 200", prov, name, r.Status, r.Body)
	}
}

// counts is the number of rows of every table.
func (e *env) counts(t testing.TB) map[string]int { return e.RowCounts(t) }

// wantDelta checks that the tables grew by want rows (absent tables: not
// at all) between before and now. The event log is left out: it records
// whatever the live panels are told, an implementation detail here.
func (e *env) wantDelta(t testing.TB, before map[string]int, want map[string]int) {
	t.Helper()
	after := e.counts(t)
	got := map[string]int{}
	for name, n := range after {
		if d := n - before[name]; d != 0 && name != "events" {
			got[name] = d
		}
	}
	for name, n := range want {
		if n == 0 {
			delete(want, name)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows added (-want +got):\n%s", diff)
	}
}

// dump renders every row of every table, for "nothing changed" checks
// that also see updates (a status applied twice, an edit replayed).
func (e *env) dump(t testing.TB) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, tbl := range migrate.Tables {
		rows, err := e.DB().SQL.Query(`SELECT * FROM "` + tbl.Name + `" ORDER BY 1, 2`)
		if err != nil {
			t.Fatalf("dump %s: %v", tbl.Name, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("dump %s: %v", tbl.Name, err)
			}
			var b strings.Builder
			for i, v := range vals {
				if b2, ok := v.([]byte); ok {
					v = string(b2)
				}
				if tm, ok := v.(time.Time); ok {
					v = tm.UTC().Format(time.RFC3339Nano)
				}
				fmt.Fprintf(&b, "%s=%q ", cols[i], fmt.Sprint(v))
			}
			out[tbl.Name] = append(out[tbl.Name], b.String())
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// wantUnchanged fails the test if the database differs from before.
func (e *env) wantUnchanged(t testing.TB, before map[string][]string, what string) {
	t.Helper()
	if diff := cmp.Diff(before, e.dump(t)); diff != "" {
		t.Errorf("%s changed the database (-before +after):\n%s", what, diff)
	}
}

// wantUnchangedBut is wantUnchanged except for one table, which must have
// grown by exactly one row.
func (e *env) wantUnchangedBut(t testing.TB, before map[string][]string, what, table string) {
	t.Helper()
	after := e.dump(t)
	if n := len(after[table]) - len(before[table]); n != 1 {
		t.Errorf("%s added %d rows to %s, want 1", what, n, table)
	}
	if len(after[table]) >= len(before[table]) {
		after[table] = after[table][:len(before[table])]
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("%s changed the database (-before +after):\n%s", what, diff)
	}
}

// runJobs runs every due job (downloads, profiles, sends) on the fake clock.
func (e *env) runJobs(t testing.TB) {
	t.Helper()
	if _, err := e.Desk().RunDueJobs(bg); err != nil {
		t.Fatalf("run jobs: %v", err)
	}
}

// pendingJobs lists the kinds of pending jobs.
func (e *env) pendingJobs(t testing.TB) []string {
	t.Helper()
	var kinds []string
	for _, j := range e.Client().Job.Query().AllX(bg) {
		if j.Status == enum.JobPending {
			kinds = append(kinds, j.Kind)
		}
	}
	sort.Strings(kinds)
	return kinds
}

// stored returns the bytes of a storage key.
func (e *env) stored(t testing.TB, key string) []byte {
	t.Helper()
	if key == "" {
		t.Fatal("no storage key")
	}
	r, err := e.Files.Open(bg, key)
	if err != nil {
		t.Fatalf("open stored file %s: %v", key, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// identity returns the identity of a customer with its contact.
func (e *env) identity(t testing.TB, p enum.Provider, externalID string) *ent.ContactIdentity {
	t.Helper()
	id, err := e.Client().ContactIdentity.Query().
		Where(contactidentity.ProviderEQ(p), contactidentity.ExternalID(externalID)).WithContact().Only(bg)
	if err != nil {
		t.Fatalf("identity %s %s: %v", p, externalID, err)
	}
	return id
}

// message returns the one message with the provider id on the channel,
// with its attachments (ordered by id) and chat.
func (e *env) message(t testing.TB, ch *ent.Channel, providerID string) *ent.Message {
	t.Helper()
	m, err := e.Client().Message.Query().
		Where(message.ChannelID(ch.ID), message.ProviderMessageID(providerID)).
		WithAttachments(func(q *ent.AttachmentQuery) { q.Order(ent.Asc("id")) }).WithChat().Only(bg)
	if err != nil {
		t.Fatalf("message %s: %v", providerID, err)
	}
	return m
}

// delivery returns the stored delivery of a provider key.
func (e *env) delivery(t testing.TB, ch *ent.Channel, key string) *ent.InboundDelivery {
	t.Helper()
	d, err := e.Client().InboundDelivery.Query().
		Where(inbounddelivery.ChannelID(ch.ID), inbounddelivery.ProviderKey(key)).Only(bg)
	if err != nil {
		t.Fatalf("delivery %s: %v", key, err)
	}
	return d
}

// asOperator is a context acting as the env's operator.
func (e *env) asOperator() context.Context {
	return desk.WithActor(bg, &desk.Actor{OperatorID: e.Operator.ID, Role: e.Operator.Role})
}

func bodyKey(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}
