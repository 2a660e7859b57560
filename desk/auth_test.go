package desk_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/apikey"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/operatorsession"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// newOperator creates an operator with a known password through the use case.
func newOperator(w *desktest.World, email string, role enum.Role) *ent.Operator {
	w.T.Helper()
	op, err := w.Desk.CreateOperator(w.AsAdmin(), desk.CreateOperatorInput{Email: email, Name: "Op", Password: "password-1", Role: role})
	w.Must(err)
	return op
}

func TestR32_LoginStoresOnlyAHashAndRecordsWhereFrom(t *testing.T) {
	w := desktest.New(t)
	op := newOperator(w, "who@test.parley", enum.RoleOperator)
	ctx := context.Background()
	res, err := w.Desk.Login(ctx, "WHO@test.parley ", "password-1", desk.SessionMeta{UserAgent: strings.Repeat("u", 600), RemoteAddr: "10.0.0.1:5555"})
	w.Must(err)
	if res.Operator.ID != op.ID || !res.ExpiresAt.Equal(w.Desk.Now().Add(12*time.Hour)) {
		t.Errorf("login result = %+v", res)
	}
	s, err := w.Client().OperatorSession.Query().Only(ctx)
	w.Must(err)
	if bytes.Contains(s.TokenHash, []byte(res.Token)) || len(s.TokenHash) != 32 {
		t.Errorf("token hash = %x (%d bytes): not a SHA-256 of the token", s.TokenHash, len(s.TokenHash))
	}
	if len(s.UserAgent) != 500 || s.RemoteAddr != "10.0.0.1:5555" || !s.CreatedAt.Equal(w.Desk.Now()) {
		t.Errorf("session = %+v", s)
	}
	// The password is stored as a bcrypt hash.
	got, err := w.Client().Operator.Get(ctx, op.ID)
	w.Must(err)
	if !strings.HasPrefix(got.PasswordHash, "$2") || strings.Contains(got.PasswordHash, "password-1") {
		t.Errorf("password hash %q", got.PasswordHash)
	}
	// Two logins are two sessions with different tokens.
	res2, err := w.Desk.Login(ctx, "who@test.parley", "password-1", desk.SessionMeta{})
	w.Must(err)
	if res2.Token == res.Token {
		t.Error("two logins returned the same token")
	}
}

func TestR32_AuthenticateRefusesEveryBadCredential(t *testing.T) {
	w := desktest.New(t)
	op := newOperator(w, "auth@test.parley", enum.RoleSupervisor)
	ctx := context.Background()
	res, err := w.Desk.Login(ctx, "auth@test.parley", "password-1", desk.SessionMeta{})
	w.Must(err)
	a, err := w.Desk.Authenticate(ctx, res.Token)
	w.Must(err)
	if a.OperatorID != op.ID || a.Role != enum.RoleSupervisor || a.APIKeyID != 0 || !a.SessionExpiresAt.Equal(res.ExpiresAt) {
		t.Errorf("actor = %+v", a)
	}
	for _, cred := range []string{"", "pls_", "plk_", "Bearer " + res.Token, res.Token + "x", strings.ToUpper(res.Token), "x" + res.Token[1:]} {
		_, err := w.Desk.Authenticate(ctx, cred)
		w.WantCode(err, desk.CodeUnauthenticated)
	}
	// An ended session.
	w.Must(w.Desk.Logout(desk.WithActor(ctx, a)))
	_, err = w.Desk.Authenticate(ctx, res.Token)
	w.WantCode(err, desk.CodeUnauthenticated)

	// A disabled operator's live session (disabled directly, without the use case that ends sessions).
	res, err = w.Desk.Login(ctx, "auth@test.parley", "password-1", desk.SessionMeta{})
	w.Must(err)
	w.Must(w.Client().Operator.UpdateOneID(op.ID).SetDisabled(true).Exec(ctx))
	_, err = w.Desk.Authenticate(ctx, res.Token)
	w.WantCode(err, desk.CodeUnauthenticated)
}

func TestR32_SessionLastSeenIsWrittenAtMostOncePerMinute(t *testing.T) {
	w := desktest.New(t)
	newOperator(w, "seen@test.parley", enum.RoleOperator)
	ctx := context.Background()
	res, err := w.Desk.Login(ctx, "seen@test.parley", "password-1", desk.SessionMeta{})
	w.Must(err)
	login := w.Desk.Now()
	lastSeen := func() time.Time {
		s, err := w.Client().OperatorSession.Query().Only(ctx)
		w.Must(err)
		return s.LastSeenAt
	}
	w.Clock.Advance(59 * time.Second)
	_, err = w.Desk.Authenticate(ctx, res.Token)
	w.Must(err)
	if !lastSeen().Equal(login) {
		t.Errorf("last seen written within the minute: %v", lastSeen())
	}
	w.Clock.Advance(time.Second)
	_, err = w.Desk.Authenticate(ctx, res.Token)
	w.Must(err)
	if !lastSeen().Equal(w.Desk.Now()) {
		t.Errorf("last seen = %v, want %v", lastSeen(), w.Desk.Now())
	}
}

func TestR32_APIKeysAreHashedPrefixedAndExpire(t *testing.T) {
	w := desktest.New(t)
	admin := newOperator(w, "keys@test.parley", enum.RoleAdmin)
	ctx := context.Background()
	exp := w.Desk.Now().Add(time.Hour)
	p, err := w.Desk.CreateAPIKey(w.As(admin), desk.CreateAPIKeyInput{Name: "  CRM  ", Role: enum.ApiKeyIntegration, ExpiresAt: &exp})
	w.Must(err)
	k, err := w.Client().ApiKey.Query().Where(apikey.ID(p.APIKey.ID)).WithCreatedBy().Only(ctx)
	w.Must(err)
	if k.Name != "CRM" || !strings.HasPrefix(p.Key, k.Prefix) || len(k.Prefix) != len("plk_")+6 || bytes.Contains(k.KeyHash, []byte(p.Key)) {
		t.Errorf("stored key = %+v", k)
	}
	if k.Edges.CreatedBy == nil || k.Edges.CreatedBy.ID != admin.ID {
		t.Errorf("created by = %+v", k.Edges.CreatedBy)
	}
	a, err := w.Desk.Authenticate(ctx, p.Key)
	w.Must(err)
	if a.APIKeyID != k.ID || a.APIKeyRole != enum.ApiKeyIntegration || a.IsOperator() || a.Can(desk.AccessAdmin) || !a.Can(desk.AccessIntegration) {
		t.Errorf("key actor = %+v", a)
	}
	// Its first use is recorded.
	k, err = w.Client().ApiKey.Get(ctx, k.ID)
	w.Must(err)
	if k.LastUsedAt == nil || !k.LastUsedAt.Equal(w.Desk.Now()) {
		t.Errorf("last used = %v", k.LastUsedAt)
	}
	w.Clock.Advance(time.Hour)
	_, err = w.Desk.Authenticate(ctx, p.Key)
	w.WantCode(err, desk.CodeUnauthenticated)

	// Revocation is immediate; a revoked key stays revoked.
	p, err = w.Desk.CreateAPIKey(w.AsAdmin(), desk.CreateAPIKeyInput{Name: "Other", Role: enum.ApiKeyAdmin})
	w.Must(err)
	_, err = w.Desk.RevokeAPIKey(w.AsAdmin(), p.APIKey.ID)
	w.Must(err)
	_, err = w.Desk.Authenticate(ctx, p.Key)
	w.WantCode(err, desk.CodeUnauthenticated)
	_, err = w.Desk.RevokeAPIKey(w.AsAdmin(), 123456789)
	w.WantCode(err, desk.CodeNotFound)
	// A key created by a key names no operator.
	k, err = w.Client().ApiKey.Query().Where(apikey.ID(p.APIKey.ID)).WithCreatedBy().Only(ctx)
	w.Must(err)
	if k.Edges.CreatedBy != nil {
		t.Errorf("a key created by a key has creator %+v", k.Edges.CreatedBy)
	}
}

func TestR32_EnsureAdminCreatesTheFirstAdministratorOnce(t *testing.T) {
	w := desktest.New(t)
	ctx := context.Background()
	created, err := w.Desk.EnsureAdmin(ctx, " Root@Example.com ", "", "root-password")
	w.Must(err)
	if !created {
		t.Fatal("first EnsureAdmin did not create")
	}
	op, err := w.Client().Operator.Query().Where(operator.Email("root@example.com")).Only(ctx)
	w.Must(err)
	if op.Role != enum.RoleAdmin || op.Name != "Administrator" || op.Status != enum.StatusInactive {
		t.Errorf("administrator = %+v", op)
	}
	// Again (a restart, or another instance): nothing changes, the password stays.
	created, err = w.Desk.EnsureAdmin(ctx, "root@example.com", "Other", "other-password")
	w.Must(err)
	if created {
		t.Error("second EnsureAdmin created again")
	}
	if _, err := w.Desk.Login(ctx, "root@example.com", "root-password", desk.SessionMeta{}); err != nil {
		t.Errorf("the first password no longer works: %v", err)
	}
	_, err = w.Desk.EnsureAdmin(ctx, "not an email", "X", "root-password")
	w.WantCode(err, desk.CodeValidation)
	_, err = w.Desk.EnsureAdmin(ctx, "short@example.com", "X", "short")
	w.WantCode(err, desk.CodeValidation)
	if n, err := w.Client().Operator.Query().Count(ctx); err != nil || n != 1 {
		t.Errorf("%d operators (%v), want 1", n, err)
	}
}

func TestR32_PasswordChangesEndOtherSessions(t *testing.T) {
	w := desktest.New(t)
	op := newOperator(w, "pw@test.parley", enum.RoleOperator)
	ctx := context.Background()
	session := func() (*desk.Actor, string) {
		res, err := w.Desk.Login(ctx, "pw@test.parley", "password-1", desk.SessionMeta{})
		w.Must(err)
		a, err := w.Desk.Authenticate(ctx, res.Token)
		w.Must(err)
		return a, res.Token
	}
	me, myToken := session()
	_, otherToken := session()
	w.Must(w.Desk.ChangePassword(desk.WithActor(ctx, me), "password-1", "password-2"))
	if _, err := w.Desk.Authenticate(ctx, myToken); err != nil {
		t.Errorf("the caller's session ended: %v", err)
	}
	_, err := w.Desk.Authenticate(ctx, otherToken)
	w.WantCode(err, desk.CodeUnauthenticated)
	ended, err := w.Client().OperatorSession.Query().Where(operatorsession.EndedAtNotNil()).All(ctx)
	w.Must(err)
	if len(ended) != 1 || ended[0].EndReason != "PASSWORD_CHANGED" {
		t.Errorf("ended sessions = %+v", ended)
	}

	// An administrator setting a password ends every session.
	_, err = w.Desk.UpdateOperator(w.AsAdmin(), op.ID, desk.UpdateOperatorInput{Password: refOf("password-3")})
	w.Must(err)
	_, err = w.Desk.Authenticate(ctx, myToken)
	w.WantCode(err, desk.CodeUnauthenticated)
	n, err := w.Client().OperatorSession.Query().Where(operatorsession.EndReason("ADMIN")).Count(ctx)
	w.Must(err)
	if n != 1 {
		t.Errorf("%d sessions ended by ADMIN, want 1", n)
	}
	_, err = w.Desk.Login(ctx, "pw@test.parley", "password-2", desk.SessionMeta{})
	w.WantCode(err, desk.CodeUnauthenticated)
	_, err = w.Desk.Login(ctx, "pw@test.parley", "password-3", desk.SessionMeta{})
	w.Must(err)

	// Only an operator has a password to change.
	w.WantCode(w.Desk.ChangePassword(w.AsAdmin(), "x", "password-4"), desk.CodeForbidden)
	w.WantCode(w.Desk.ChangePassword(ctx, "x", "password-4"), desk.CodeUnauthenticated)
}

func refOf[T any](v T) *T { return &v }
