// Package parley is the root of the Parley module. Its only content is the
// code generation pipeline, run with `go generate ./...`: ent (with entgql,
// which writes graph/ent.graphql) first, then gqlgen, which reads it.
package parley

//go:generate go run -mod=mod ./ent/entc.go
//go:generate go run -mod=mod ./graph/generate
