// Package graph is Parley's GraphQL layer (gqlgen). Resolvers authenticate,
// translate and call desk/; they never decide a rule.
package graph

import (
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
)

// Resolver is the root resolver.
type Resolver struct {
	client *ent.Client
	desk   *desk.Desk
	hub    *live.Hub
	// publicURL is where providers reach this server (PARLEY_PUBLIC_URL).
	publicURL string
	// live shares the loads of a live event between its subscribers.
	live *LiveLoads
	// pages holds the messages preloaded for a page of chats.
	pages messagePages
}

// deref returns the value of an optional argument, or its zero value.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
