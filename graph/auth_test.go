package graph_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/ent/operatorsession"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

const meQuery = `{ me { operator { id email role } apiKey { id name role } sessionExpiresAt } }`

type meResult struct {
	Me struct {
		Operator *struct {
			ID, Email, Role string
		}
		APIKey *struct {
			ID, Name, Role string
		} `json:"apiKey"`
		SessionExpiresAt *time.Time
	}
}

func me(t *testing.T, s *apptest.Server, token string) meResult {
	t.Helper()
	var m meResult
	s.Do(t, token, meQuery, nil).OK(t).Decode(t, &m)
	return m
}

func TestR32_LoginOpensASessionThatIdentifiesTheOperator(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleSupervisor)

	var out struct {
		Login struct {
			Token     string
			ExpiresAt time.Time
			Operator  struct{ ID, Email, Role string }
		}
	}
	// The email is matched case-insensitively and trimmed.
	s.Do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token expiresAt operator { id email role } } }`,
		map[string]any{"e": "  " + strings.ToUpper(op.Email) + " ", "p": op.Password}).OK(t).Decode(t, &out)
	l := out.Login
	if !strings.HasPrefix(l.Token, "pls_") || len(l.Token) < 40 {
		t.Errorf("token %q does not look like a session token", l.Token)
	}
	if want := s.Clock.Now().Add(apptest.SessionTTL); !l.ExpiresAt.Equal(want) {
		t.Errorf("expiresAt = %v, want now + SessionTTL = %v", l.ExpiresAt, want)
	}
	if l.Operator.ID != op.GID || l.Operator.Email != op.Email || l.Operator.Role != "SUPERVISOR" {
		t.Errorf("login operator = %+v, want %s %s", l.Operator, op.GID, op.Email)
	}
	m := me(t, s, l.Token)
	if m.Me.Operator == nil || m.Me.Operator.ID != op.GID || m.Me.APIKey != nil {
		t.Fatalf("me = %+v", m.Me)
	}
	if m.Me.SessionExpiresAt == nil || !m.Me.SessionExpiresAt.Equal(l.ExpiresAt) {
		t.Errorf("me.sessionExpiresAt = %v, want %v", m.Me.SessionExpiresAt, l.ExpiresAt)
	}
	// Only the token's hash is stored.
	sessions, err := s.Client().OperatorSession.Query().All(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, ss := range sessions {
		if strings.Contains(string(ss.TokenHash), l.Token) {
			t.Error("the session token is stored in clear")
		}
	}
	// The bearer scheme is case-insensitive on its first letter, as clients send both.
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ me { operator { id } } }"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "bearer "+l.Token)
	s.Send(t, "", req).OK(t)
}

func TestR32_WrongPasswordAndUnknownEmailAreRefusedAlike(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	sessions := func() int {
		n, err := s.Client().OperatorSession.Query().Count(bg)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := sessions()
	login := `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`
	wrong := s.Do(t, "", login, map[string]any{"e": op.Email, "p": op.Password + "x"})
	unknown := s.Do(t, "", login, map[string]any{"e": "nobody@parley.test", "p": op.Password})
	empty := s.Do(t, "", login, map[string]any{"e": op.Email, "p": ""})
	for name, r := range map[string]apptest.Response{"wrong password": wrong, "unknown email": unknown, "empty password": empty} {
		e := r.Expect(t, "UNAUTHENTICATED")
		if e.Message != wrong.Errors[0].Message {
			t.Errorf("%s: message %q differs from a wrong password's %q (tells which emails exist)", name, e.Message, wrong.Errors[0].Message)
		}
		if strings.Contains(string(r.Body), "pls_") {
			t.Errorf("%s: a token was returned: %s", name, r.Body)
		}
	}
	if after := sessions(); after != before {
		t.Errorf("refused logins opened sessions: %d -> %d", before, after)
	}
}

func TestR32_LogoutEndsOnlyThatSession(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	other := s.Login(t, op.Email, op.Password)

	var out struct{ Logout bool }
	s.Do(t, op.Token, `mutation { logout }`, nil).OK(t).Decode(t, &out)
	if !out.Logout {
		t.Error("logout returned false")
	}
	s.Do(t, op.Token, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	s.Do(t, op.Token, `mutation { logout }`, nil).Expect(t, "UNAUTHENTICATED")
	me(t, s, other) // the other device stays logged in

	ended, err := s.Client().OperatorSession.Query().Where(operatorsession.EndedAtNotNil()).All(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(ended) != 1 || ended[0].EndReason != "LOGOUT" || !ended[0].EndedAt.Equal(s.Clock.Now()) {
		t.Errorf("ended sessions = %+v, want one ended now by LOGOUT", ended)
	}
}

func TestR32_SessionExpiresAfterSessionTTL(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	s.Clock.Advance(apptest.SessionTTL - time.Second)
	me(t, s, op.Token)
	s.Clock.Advance(time.Second)
	s.Do(t, op.Token, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	s.Do(t, op.Token, `mutation { logout }`, nil).Expect(t, "UNAUTHENTICATED")
	// Logging in again gives a fresh session.
	me(t, s, s.Login(t, op.Email, op.Password))
}

func TestR32_DisabledOperatorLosesSessionsAndCannotLogIn(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	s.Do(t, s.AdminToken(t), `mutation($id: ID!) { updateOperator(id: $id, input: {disabled: true}) { disabled } }`,
		map[string]any{"id": op.GID}).OK(t)
	s.Do(t, op.Token, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	s.Do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": op.Email, "p": op.Password}).Expect(t, "FORBIDDEN")
	// Without the right password a disabled account looks like any wrong login.
	s.Do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": op.Email, "p": "wrong-password"}).Expect(t, "UNAUTHENTICATED")

	s.Do(t, s.AdminToken(t), `mutation($id: ID!) { updateOperator(id: $id, input: {disabled: false}) { disabled } }`,
		map[string]any{"id": op.GID}).OK(t)
	me(t, s, s.Login(t, op.Email, op.Password))
}

func TestR32_ChangePassword(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	op := s.CreateOperator(t, enum.RoleOperator)
	otherDevice := s.Login(t, op.Email, op.Password)
	change := `mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }`

	e := s.Do(t, op.Token, change, map[string]any{"c": "not-the-password", "n": "brand-new-password"}).Expect(t, "VALIDATION")
	if e.Field() != "currentPassword" {
		t.Errorf("wrong current password: field %q, want currentPassword", e.Field())
	}
	for _, short := range []string{"short", strings.Repeat("x", 73)} {
		e = s.Do(t, op.Token, change, map[string]any{"c": op.Password, "n": short}).Expect(t, "VALIDATION")
		if e.Field() != "newPassword" {
			t.Errorf("new password of %d bytes: field %q, want newPassword", len(short), e.Field())
		}
	}
	me(t, s, otherDevice) // refusals changed nothing

	var out struct{ ChangePassword bool }
	s.Do(t, op.Token, change, map[string]any{"c": op.Password, "n": "brand-new-password"}).OK(t).Decode(t, &out)
	if !out.ChangePassword {
		t.Error("changePassword returned false")
	}
	me(t, s, op.Token) // the caller's session goes on
	s.Do(t, otherDevice, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	s.Do(t, "", `mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }`,
		map[string]any{"e": op.Email, "p": op.Password}).Expect(t, "UNAUTHENTICATED")
	me(t, s, s.Login(t, op.Email, "brand-new-password"))

	// An API key has no password.
	key := s.CreateAPIKey(t, enum.ApiKeyAdmin)
	s.Do(t, key.Key, change, map[string]any{"c": "x", "n": "brand-new-password"}).Expect(t, "FORBIDDEN")
}

func TestR32_APIKeyAuthenticatesUntilRevokedOrExpired(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	admin := s.AdminToken(t)
	create := `mutation($in: CreateApiKeyInput!) { createApiKey(input: $in) { key apiKey { id name prefix role expiresAt revokedAt createdBy { email } } } }`
	type payload struct {
		CreateAPIKey struct {
			Key    string
			APIKey struct {
				ID, Name, Prefix, Role string
				ExpiresAt, RevokedAt   *time.Time
				CreatedBy              *struct{ Email string }
			} `json:"apiKey"`
		} `json:"createApiKey"`
	}
	var p payload
	s.Do(t, admin, create, map[string]any{"in": map[string]any{"name": "CRM", "role": "INTEGRATION"}}).OK(t).Decode(t, &p)
	k := p.CreateAPIKey
	if !strings.HasPrefix(k.Key, "plk_") || !strings.HasPrefix(k.Key, k.APIKey.Prefix) || len(k.APIKey.Prefix) >= len(k.Key) {
		t.Errorf("key %q, prefix %q", k.Key, k.APIKey.Prefix)
	}
	if k.APIKey.Name != "CRM" || k.APIKey.Role != "INTEGRATION" || k.APIKey.CreatedBy == nil || k.APIKey.CreatedBy.Email != apptest.AdminEmail {
		t.Errorf("api key = %+v", k.APIKey)
	}

	m := me(t, s, k.Key)
	if m.Me.Operator != nil || m.Me.APIKey == nil || m.Me.APIKey.ID != k.APIKey.ID || m.Me.SessionExpiresAt != nil {
		t.Errorf("me with an API key = %+v", m.Me)
	}
	// The key itself is shown once: listing keys never returns it.
	r := s.Do(t, admin, `{ apiKeys { edges { node { id name prefix role } } } }`, nil).OK(t)
	if strings.Contains(string(r.Body), k.Key) {
		t.Error("apiKeys returns the key")
	}

	var revoked struct {
		RevokeAPIKey struct{ RevokedAt *time.Time } `json:"revokeApiKey"`
	}
	s.Do(t, admin, `mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }`, map[string]any{"id": k.APIKey.ID}).OK(t).Decode(t, &revoked)
	if revoked.RevokeAPIKey.RevokedAt == nil || !revoked.RevokeAPIKey.RevokedAt.Equal(s.Clock.Now()) {
		t.Errorf("revokedAt = %v, want now", revoked.RevokeAPIKey.RevokedAt)
	}
	s.Do(t, k.Key, meQuery, nil).Expect(t, "UNAUTHENTICATED")
	// Revoking twice keeps the first revocation.
	s.Clock.Advance(time.Minute)
	s.Do(t, admin, `mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }`, map[string]any{"id": k.APIKey.ID}).OK(t).Decode(t, &revoked)
	if !revoked.RevokeAPIKey.RevokedAt.Equal(s.Clock.Now().Add(-time.Minute)) {
		t.Errorf("second revocation moved revokedAt to %v", revoked.RevokeAPIKey.RevokedAt)
	}

	// An expiring key works until its expiry.
	exp := s.Clock.Now().Add(2 * time.Hour)
	admin = s.Login(t, apptest.AdminEmail, apptest.AdminPassword)
	p = payload{}
	s.Do(t, admin, create, map[string]any{"in": map[string]any{"name": "Temp", "role": "ADMIN", "expiresAt": exp}}).OK(t).Decode(t, &p)
	me(t, s, p.CreateAPIKey.Key)
	s.Clock.Advance(2 * time.Hour)
	s.Do(t, p.CreateAPIKey.Key, meQuery, nil).Expect(t, "UNAUTHENTICATED")

	// A key cannot be born expired.
	admin = s.Login(t, apptest.AdminEmail, apptest.AdminPassword)
	e := s.Do(t, admin, create, map[string]any{"in": map[string]any{"name": "Past", "role": "ADMIN", "expiresAt": s.Clock.Now()}}).Expect(t, "VALIDATION")
	if e.Field() != "expiresAt" {
		t.Errorf("past expiresAt: field %q", e.Field())
	}
	s.Do(t, admin, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": gid(1 << 40)}).Expect(t, "NOT_FOUND")
}

// TestR32_AdminAPIKeyAdministers: an API key with role ADMIN may configure
// Parley like an administrator (and is recorded as no operator).
func TestR32_AdminAPIKeyAdministers(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	key := s.CreateAPIKey(t, enum.ApiKeyAdmin)
	var out struct {
		CreateAPIKey struct {
			APIKey struct{ CreatedBy *struct{ ID string } } `json:"apiKey"`
		} `json:"createApiKey"`
	}
	s.Do(t, key.Key, `mutation { createApiKey(input: {name: "child", role: INTEGRATION}) { apiKey { createdBy { id } } } }`, nil).
		OK(t).Decode(t, &out)
	if out.CreateAPIKey.APIKey.CreatedBy != nil {
		t.Errorf("a key created by a key names an operator: %+v", out.CreateAPIKey.APIKey.CreatedBy)
	}
	s.Do(t, key.Key, `mutation { createQueue(input: {name: "By key"}) { id } }`, nil).OK(t)
}
