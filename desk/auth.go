package desk

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/mail"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/apikey"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/operatorsession"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// Credentials are told apart by prefix: session tokens of operators and API
// keys of integrators. Only their SHA-256 is stored.
const (
	sessionTokenPrefix = "pls_"
	apiKeyPrefix       = "plk_"
	// lastSeenResolution bounds how often a session's last_seen_at is written.
	lastSeenResolution = time.Minute
)

// SessionMeta describes where a login comes from.
type SessionMeta struct {
	UserAgent  string
	RemoteAddr string
}

// LoginResult is a new session.
type LoginResult struct {
	Token     string
	ExpiresAt time.Time
	Operator  *ent.Operator
}

func newSecret(prefix string) (token string, hash []byte) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	token = prefix + base64.RawURLEncoding.EncodeToString(b)
	return token, hashSecret(token)
}

func hashSecret(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// dummyHash is compared against when the email is unknown, so that a login
// takes as long whether or not the operator exists.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("parley-timing-equaliser"), bcrypt.DefaultCost)

func (d *Desk) hashPassword(password string) ([]byte, error) {
	if err := checkPassword(password); err != nil {
		return nil, err
	}
	return bcrypt.GenerateFromPassword([]byte(password), d.cfg.PasswordCost)
}

func checkPassword(p string) error {
	if len(p) < 8 || len(p) > 72 {
		return invalid("password", "a password has 8 to 72 bytes")
	}
	return nil
}

func normaliseEmail(email string) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email {
		return "", invalid("email", "%q is not an email address", email)
	}
	return email, nil
}

var errBadLogin = Fail(CodeUnauthenticated, "wrong email or password")

// Login checks an operator's email and password and opens a session (R32).
// The status the operator had before their last logout is restored (R6).
func (d *Desk) Login(ctx context.Context, email, password string, meta SessionMeta) (*LoginResult, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	op, err := d.client.Operator.Query().Where(operator.Email(email)).Only(ctx)
	if err != nil && !ent.IsNotFound(err) {
		return nil, err
	}
	if op == nil {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return nil, errBadLogin
	}
	if bcrypt.CompareHashAndPassword([]byte(op.PasswordHash), []byte(password)) != nil {
		return nil, errBadLogin
	}
	if op.Disabled {
		return nil, Fail(CodeForbidden, "this operator is disabled")
	}
	token, hash := newSecret(sessionTokenPrefix)
	now := d.Now()
	res := &LoginResult{Token: token, ExpiresAt: now.Add(d.cfg.SessionTTL)}
	err = d.inTx(ctx, "login", func(ctx context.Context, tx *ent.Tx) error {
		op, err := tx.Operator.Get(ctx, op.ID)
		if err != nil {
			return err
		}
		session, err := tx.OperatorSession.Create().
			SetOperatorID(op.ID).SetTokenHash(hash).
			SetCreatedAt(now).SetExpiresAt(res.ExpiresAt).SetLastSeenAt(now).
			SetUserAgent(truncate(meta.UserAgent, 500)).SetRemoteAddr(truncate(meta.RemoteAddr, 100)).
			Save(ctx)
		if err != nil {
			return err
		}
		// The session's expiry is a timer, so that R6 applies even when
		// the operator never calls again.
		if err := d.enqueue(ctx, tx, jobSpec{kind: jobSessionExpired, ref: session.ID, due: res.ExpiresAt}); err != nil {
			return err
		}
		if op.StatusBeforeLogout != nil {
			if err := d.changeStatus(ctx, tx, op, *op.StatusBeforeLogout, enum.ReasonLogin); err != nil {
				return err
			}
			if op, err = tx.Operator.UpdateOneID(op.ID).ClearStatusBeforeLogout().Save(ctx); err != nil {
				return err
			}
		}
		res.Operator = op
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Operator = res.Operator.Unwrap()
	d.log.Info("operator logged in", "operator_id", op.ID)
	return res, nil
}

// Authenticate resolves a bearer credential (a session token or an API key)
// to an actor. Unknown, expired, ended and revoked credentials, and disabled
// operators, get UNAUTHENTICATED.
func (d *Desk) Authenticate(ctx context.Context, credential string) (*Actor, error) {
	now := d.Now()
	switch {
	case strings.HasPrefix(credential, sessionTokenPrefix):
		s, err := d.client.OperatorSession.Query().
			Where(operatorsession.TokenHash(hashSecret(credential))).
			WithOperator().Only(ctx)
		if ent.IsNotFound(err) {
			return nil, ErrUnauthenticated
		}
		if err != nil {
			return nil, err
		}
		if s.EndedAt != nil || !now.Before(s.ExpiresAt) || s.Edges.Operator.Disabled {
			return nil, ErrUnauthenticated
		}
		if now.Sub(s.LastSeenAt) >= lastSeenResolution {
			// Best effort: a lost update only makes last_seen_at a minute older.
			if err := d.client.OperatorSession.UpdateOneID(s.ID).SetLastSeenAt(now).Exec(ctx); err != nil {
				d.log.Warn("touch session", "err", err)
			}
		}
		op := s.Edges.Operator
		return &Actor{OperatorID: op.ID, Role: op.Role, SessionID: s.ID, SessionExpiresAt: s.ExpiresAt}, nil
	case strings.HasPrefix(credential, apiKeyPrefix):
		k, err := d.client.ApiKey.Query().Where(apikey.KeyHash(hashSecret(credential))).Only(ctx)
		if ent.IsNotFound(err) {
			return nil, ErrUnauthenticated
		}
		if err != nil {
			return nil, err
		}
		if k.RevokedAt != nil || (k.ExpiresAt != nil && !now.Before(*k.ExpiresAt)) {
			return nil, ErrUnauthenticated
		}
		if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) >= lastSeenResolution {
			if err := d.client.ApiKey.UpdateOneID(k.ID).SetLastUsedAt(now).Exec(ctx); err != nil {
				d.log.Warn("touch api key", "err", err)
			}
		}
		return &Actor{APIKeyID: k.ID, APIKeyRole: k.Role}, nil
	}
	return nil, ErrUnauthenticated
}

// Logout ends the caller's session. When it was the operator's last live
// session the status becomes INACTIVE and the previous one is kept for the
// next login (R6).
func (d *Desk) Logout(ctx context.Context) error {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return err
	}
	err = d.inTx(ctx, "logout", func(ctx context.Context, tx *ent.Tx) error {
		return d.endSessions(ctx, tx, a.OperatorID, []int{a.SessionID}, "LOGOUT", enum.ReasonLogout)
	})
	if err == nil {
		d.log.Info("operator logged out", "operator_id", a.OperatorID)
	}
	return err
}

// endSessions ends the given sessions of an operator (all live ones when ids
// is nil) and applies R6 if none is left.
func (d *Desk) endSessions(ctx context.Context, tx *ent.Tx, operatorID int, ids []int, endReason string, reason enum.StatusChangeReason) error {
	now := d.Now()
	live := []predicate.OperatorSession{operatorsession.HasOperatorWith(operator.ID(operatorID)), operatorsession.EndedAtIsNil()}
	if ids != nil {
		live = append(live, operatorsession.IDIn(ids...))
	}
	ended, err := tx.OperatorSession.Query().Where(live...).IDs(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.OperatorSession.Update().Where(operatorsession.IDIn(ended...)).
		SetEndedAt(now).SetEndReason(endReason).Save(ctx); err != nil {
		return err
	}
	// Live subscriptions opened with these sessions end (R32).
	for _, id := range ended {
		if err := d.emit(ctx, tx, event{Type: EventSessionEnded, OperatorID: operatorID,
			Payload: map[string]any{"sessionId": id, "reason": endReason}}); err != nil {
			return err
		}
	}
	stillLive, err := tx.OperatorSession.Query().Where(
		operatorsession.HasOperatorWith(operator.ID(operatorID)),
		operatorsession.EndedAtIsNil(), operatorsession.ExpiresAtGT(now)).Exist(ctx)
	if err != nil || stillLive {
		return err
	}
	locked, err := d.lockOperators(ctx, tx, operator.ID(operatorID))
	if err != nil || len(locked) == 0 {
		return err
	}
	op := locked[0]
	if op.StatusBeforeLogout != nil {
		return nil
	}
	if err := tx.Operator.UpdateOneID(operatorID).SetStatusBeforeLogout(op.Status).Exec(ctx); err != nil {
		return err
	}
	return d.changeStatus(ctx, tx, op, enum.StatusInactive, reason)
}

// changeStatus sets an operator's status and records the change (R6).
func (d *Desk) changeStatus(ctx context.Context, tx *ent.Tx, op *ent.Operator, to enum.OperatorStatus, reason enum.StatusChangeReason) error {
	// Re-read under the row lock: the status may have changed since op was
	// read, and the history must chain (each change's previous is the last
	// change's status).
	locked, err := d.lockOperators(ctx, tx, operator.ID(op.ID))
	if err != nil {
		return err
	}
	if len(locked) == 0 {
		return Fail(CodeNotFound, "operator %d not found", op.ID)
	}
	op = locked[0]
	if op.Status == to {
		return nil
	}
	now := d.Now()
	if err := tx.Operator.UpdateOneID(op.ID).SetStatus(to).SetStatusChangedAt(now).Exec(ctx); err != nil {
		return err
	}
	from := op.Status
	if err := tx.OperatorStatusChange.Create().SetOperatorID(op.ID).
		SetStatus(to).SetPrevious(from).SetReason(reason).SetAt(now).Exec(ctx); err != nil {
		return err
	}
	return d.afterStatusChange(ctx, tx, op, from, to, reason)
}

// ChangePassword changes the caller's password and ends their other sessions.
func (d *Desk) ChangePassword(ctx context.Context, current, next string) error {
	a, err := Require(ctx, AccessOperator)
	if err != nil {
		return err
	}
	if checkPassword(next) != nil {
		return invalid("newPassword", "a password has 8 to 72 bytes")
	}
	hash, err := d.hashPassword(next)
	if err != nil {
		return err
	}
	return d.inTx(ctx, "change password", func(ctx context.Context, tx *ent.Tx) error {
		op, err := tx.Operator.Get(ctx, a.OperatorID)
		if err != nil {
			return err
		}
		if bcrypt.CompareHashAndPassword([]byte(op.PasswordHash), []byte(current)) != nil {
			return invalid("currentPassword", "the current password is wrong")
		}
		if err := tx.Operator.UpdateOneID(op.ID).SetPasswordHash(string(hash)).Exec(ctx); err != nil {
			return err
		}
		_, err = tx.OperatorSession.Update().Where(
			operatorsession.HasOperatorWith(operator.ID(op.ID)),
			operatorsession.EndedAtIsNil(), operatorsession.IDNEQ(a.SessionID)).
			SetEndedAt(d.Now()).SetEndReason("PASSWORD_CHANGED").Save(ctx)
		return err
	})
}

// CreateAPIKeyInput describes a new integrator key.
type CreateAPIKeyInput struct {
	Name      string
	Role      enum.ApiKeyRole
	ExpiresAt *time.Time
}

// CreateAPIKeyPayload carries the key, shown once.
type CreateAPIKeyPayload struct {
	Key    string
	APIKey *ent.ApiKey
}

// CreateAPIKey creates an integrator's API key (R32). Only its hash is kept.
func (d *Desk) CreateAPIKey(ctx context.Context, in CreateAPIKeyInput) (*CreateAPIKeyPayload, error) {
	if in.ExpiresAt != nil && !in.ExpiresAt.After(d.Now()) {
		return nil, invalid("expiresAt", "expiresAt must be in the future")
	}
	key, hash := newSecret(apiKeyPrefix)
	c := d.client.ApiKey.Create().SetName(strings.TrimSpace(in.Name)).SetRole(in.Role).
		SetPrefix(key[:len(apiKeyPrefix)+6]).SetKeyHash(hash).SetNillableExpiresAt(in.ExpiresAt)
	if a := ActorFrom(ctx); a.IsOperator() {
		c.SetCreatedByID(a.OperatorID)
	}
	k, err := c.Save(ctx)
	if err != nil {
		return nil, err
	}
	d.log.Info("api key created", "api_key_id", k.ID, "role", k.Role)
	return &CreateAPIKeyPayload{Key: key, APIKey: k}, nil
}

// RevokeAPIKey revokes a key at once; revoking twice is a no-op.
func (d *Desk) RevokeAPIKey(ctx context.Context, id int) (*ent.ApiKey, error) {
	var k *ent.ApiKey
	err := d.inTx(ctx, "revoke api key", func(ctx context.Context, tx *ent.Tx) error {
		var err error
		if k, err = tx.ApiKey.Get(ctx, id); err != nil {
			return notFound(err, "api key", id)
		}
		if k.RevokedAt != nil {
			return nil
		}
		if k, err = tx.ApiKey.UpdateOneID(id).SetRevokedAt(d.Now()).Save(ctx); err != nil {
			return err
		}
		// Live subscriptions opened with the key end (R32).
		return d.emit(ctx, tx, event{Type: EventAPIKeyRevoked, Payload: map[string]any{"apiKeyId": id}})
	})
	return detach(k, err)
}

// EnsureAdmin creates an administrator with the given email unless an
// operator with that email exists. It is how the first administrator comes
// to be: from environment variables or the create-admin command, never from
// a built-in password.
func (d *Desk) EnsureAdmin(ctx context.Context, email, name, password string) (created bool, err error) {
	email, err = normaliseEmail(email)
	if err != nil {
		return false, err
	}
	exists, err := d.client.Operator.Query().Where(operator.Email(email)).Exist(ctx)
	if err != nil || exists {
		return false, err
	}
	if name == "" {
		name = "Administrator"
	}
	_, err = d.CreateOperator(ctx, CreateOperatorInput{Email: email, Name: name, Password: password, Role: enum.RoleAdmin})
	if err != nil {
		var de *Error
		if (errors.As(err, &de) && de.Code == CodeConflict) || ent.IsConstraintError(err) {
			return false, nil // created meanwhile by another instance
		}
		return false, err
	}
	return true, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// StillAuthenticated reports whether the actor's credential is still valid
// (a live subscription checks it once registered, so that a session ended
// meanwhile cannot keep listening).
func (d *Desk) StillAuthenticated(ctx context.Context, a *Actor) error {
	switch {
	case a == nil:
		return ErrUnauthenticated
	case a.SessionID != 0:
		s, err := d.client.OperatorSession.Get(ctx, a.SessionID)
		if err != nil || s.EndedAt != nil || !d.Now().Before(s.ExpiresAt) {
			return ErrUnauthenticated
		}
	case a.APIKeyID != 0:
		k, err := d.client.ApiKey.Get(ctx, a.APIKeyID)
		if err != nil || k.RevokedAt != nil || (k.ExpiresAt != nil && !d.Now().Before(*k.ExpiresAt)) {
			return ErrUnauthenticated
		}
	}
	return nil
}
