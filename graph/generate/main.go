// Command generate runs gqlgen for Parley (`go generate ./...`, see the
// module's generate.go): gqlgen's own generation with one plugin,
// sequentialFields.
package main

import (
	"fmt"
	"os"

	"github.com/99designs/gqlgen/api"
	"github.com/99designs/gqlgen/codegen"
	"github.com/99designs/gqlgen/codegen/config"
)

// sequentialFields makes the generated executor resolve an object's fields
// one after the other, in the goroutine resolving the object, instead of
// one goroutine per field (gqlgen's default for every field whose resolver
// takes a context, mutations aside). Parley's resolvers wait for nothing
// but the database, and a request's nested edges are loaded in bulk
// (entgql's field collection; a live event's chat and message are one
// shared load per commit), so a goroutine per field bought no latency but
// cost CPU on every field of every event sent to every panel: starting the
// goroutines, growing their stacks for gqlgen's deep frames and scheduling
// them (about a third of the server's CPU for panel delivery was that in
// the benchmark's profile; see README, Performance).
type sequentialFields struct{}

func (sequentialFields) Name() string { return "sequentialfields" }

func (sequentialFields) GenerateCode(data *codegen.Data) error {
	for _, o := range data.Objects {
		o.DisableConcurrency = true
	}
	return nil
}

func main() {
	cfg, err := config.LoadConfig("gqlgen.yml")
	if err != nil {
		fmt.Fprintln(os.Stderr, "gqlgen:", err)
		os.Exit(1)
	}
	if err := api.Generate(cfg, api.AddPlugin(sequentialFields{})); err != nil {
		fmt.Fprintln(os.Stderr, "gqlgen:", err)
		os.Exit(1)
	}
}
