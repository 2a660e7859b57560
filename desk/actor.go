package desk

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/parleydesk/parley/ent/schema/enum"
)

// Actor is the authenticated caller: an operator (through a session) or an
// integrator (through an API key).
type Actor struct {
	OperatorID       int
	Role             enum.Role
	SessionID        int
	SessionExpiresAt time.Time

	APIKeyID   int
	APIKeyRole enum.ApiKeyRole
}

type actorKey struct{}

// WithActor returns ctx carrying the actor.
func WithActor(ctx context.Context, a *Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor of ctx, or nil.
func ActorFrom(ctx context.Context) *Actor {
	a, _ := ctx.Value(actorKey{}).(*Actor)
	return a
}

// IsOperator reports whether the actor is a person.
func (a *Actor) IsOperator() bool { return a != nil && a.OperatorID != 0 }

// Access is a level of access (R32).
type Access string

const (
	// AccessAdmin: an operator with role ADMIN or an API key with role ADMIN.
	AccessAdmin Access = "ADMIN"
	// AccessSupervisor: ADMIN or an operator with role SUPERVISOR.
	AccessSupervisor Access = "SUPERVISOR"
	// AccessOperator: any operator (a person).
	AccessOperator Access = "OPERATOR"
	// AccessIntegration: any API key, or ADMIN.
	AccessIntegration Access = "INTEGRATION"
)

// Can reports whether the actor has the access.
func (a *Actor) Can(access Access) bool {
	if a == nil {
		return false
	}
	admin := a.Role == enum.RoleAdmin || a.APIKeyRole == enum.ApiKeyAdmin
	switch access {
	case AccessAdmin:
		return admin
	case AccessSupervisor:
		return admin || a.Role == enum.RoleSupervisor
	case AccessOperator:
		return a.IsOperator()
	case AccessIntegration:
		return admin || a.APIKeyID != 0
	}
	return false
}

// Require returns the actor of ctx if it has the access, UNAUTHENTICATED
// without an actor and FORBIDDEN without the access.
func Require(ctx context.Context, access Access) (*Actor, error) {
	a := ActorFrom(ctx)
	if a == nil {
		return nil, ErrUnauthenticated
	}
	if !a.Can(access) {
		return nil, ErrForbidden
	}
	return a, nil
}

// MarshalGQL and UnmarshalGQL bind Access to the GraphQL enum of the same name.
func (a Access) MarshalGQL(w io.Writer) { _, _ = io.WriteString(w, strconv.Quote(string(a))) }

func (a *Access) UnmarshalGQL(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("access must be a string")
	}
	switch Access(s) {
	case AccessAdmin, AccessSupervisor, AccessOperator, AccessIntegration:
		*a = Access(s)
		return nil
	}
	return fmt.Errorf("%q is not a valid Access", s)
}
