package graph_test

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/vektah/gqlparser/v2/ast"

	"github.com/parleydesk/parley/graph"
	"github.com/parleydesk/parley/server/app/apptest"
)

// schema is the executable schema the server serves (schema.graphql and the
// generated graph/ent.graphql), so that generic tests cover new fields and
// types without being edited.
var schema = graph.NewExecutableSchema(graph.Config{}).Schema()

var bg = context.Background()

// leafSelection selects every field of the named type that needs no
// argument: scalars and enums as they are, objects (depth levels down)
// through their own leaves, interfaces and unions by __typename. It is how
// tests ask for "everything" without introspection.
func leafSelection(typeName string, depth int) string {
	def := schema.Types[typeName]
	if def == nil {
		panic("unknown type " + typeName)
	}
	switch def.Kind {
	case ast.Scalar, ast.Enum:
		return ""
	case ast.Interface, ast.Union:
		return "{ __typename }"
	}
	var parts []string
	for _, f := range def.Fields {
		if strings.HasPrefix(f.Name, "__") || hasRequiredArgs(f) {
			continue
		}
		inner := schema.Types[f.Type.Name()]
		switch inner.Kind {
		case ast.Scalar, ast.Enum:
			parts = append(parts, f.Name)
		default:
			if depth > 0 {
				parts = append(parts, f.Name+" "+leafSelection(inner.Name, depth-1))
			}
		}
	}
	parts = append(parts, "__typename")
	return "{ " + strings.Join(parts, " ") + " }"
}

func hasRequiredArgs(f *ast.FieldDefinition) bool {
	for _, a := range f.Arguments {
		if a.Type.NonNull && a.DefaultValue == nil {
			return true
		}
	}
	return false
}

// dummyValue is a syntactically valid literal of type t: required fields of
// input objects are filled, enums take their first value. The values are
// meaningless; they only get a call past argument coercion.
func dummyValue(t *ast.Type) (string, error) {
	if t.Elem != nil {
		v, err := dummyValue(t.Elem)
		return "[" + v + "]", err
	}
	def := schema.Types[t.NamedType]
	switch def.Kind {
	case ast.Enum:
		return def.EnumValues[0].Name, nil
	case ast.InputObject:
		var fields []string
		for _, f := range def.Fields {
			if f.Type.NonNull && f.DefaultValue == nil {
				v, err := dummyValue(f.Type)
				if err != nil {
					return "", err
				}
				fields = append(fields, f.Name+": "+v)
			}
		}
		return "{" + strings.Join(fields, ", ") + "}", nil
	case ast.Scalar:
		switch def.Name {
		case "ID":
			return `"1"`, nil
		case "String":
			return `"x"`, nil
		case "Int":
			return "1", nil
		case "Float":
			return "1.5", nil
		case "Boolean":
			return "true", nil
		case "Time":
			return `"2030-01-01T00:00:00Z"`, nil
		case "Map":
			return "{}", nil
		}
	}
	return "", fmt.Errorf("no dummy value for type %s: teach dummyValue about it", def.Name)
}

// rootCall builds a minimal valid operation calling one root field.
func rootCall(op ast.Operation, f *ast.FieldDefinition) (string, error) {
	var args []string
	for _, a := range f.Arguments {
		if a.Type.NonNull && a.DefaultValue == nil {
			v, err := dummyValue(a.Type)
			if err != nil {
				return "", fmt.Errorf("%s(%s): %w", f.Name, a.Name, err)
			}
			args = append(args, a.Name+": "+v)
		}
	}
	call := f.Name
	if len(args) > 0 {
		call += "(" + strings.Join(args, ", ") + ")"
	}
	switch schema.Types[f.Type.Name()].Kind {
	case ast.Object, ast.Interface, ast.Union:
		call += " { __typename }"
	}
	return string(op) + " { " + call + " }", nil
}

// rootField is a field of Query or Mutation.
type rootField struct {
	op  ast.Operation
	def *ast.FieldDefinition
}

func (r rootField) String() string { return string(r.op) + "." + r.def.Name }

// rootFields lists the fields of Query and Mutation (subscriptions run over
// websockets and are covered by their own suite).
func rootFields() []rootField {
	var out []rootField
	for _, root := range []struct {
		op  ast.Operation
		def *ast.Definition
	}{{ast.Query, schema.Query}, {ast.Mutation, schema.Mutation}} {
		if root.def == nil {
			continue
		}
		for _, f := range root.def.Fields {
			if !strings.HasPrefix(f.Name, "__") {
				out = append(out, rootField{root.op, f})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// leakPatterns are signs of database or driver text reaching a client.
var leakPatterns = regexp.MustCompile(`(?i)\bsql\b|sqlite|pq:|postgres|\bSELECT\b|\bINSERT\b|\bUPDATE\s+"|\bDELETE\s+FROM\b|violates|constraint failed|UNIQUE constraint|ent: |\bdriver\b|database is|syntax error at|relation "`)

// assertNoLeak fails if an error message of r carries database text.
func assertNoLeak(t testing.TB, r apptest.Response) {
	t.Helper()
	for _, e := range r.Errors {
		if leakPatterns.MatchString(e.Message) {
			t.Errorf("error message leaks database text: %q", e.Message)
		}
	}
}

// gid turns an ent id into a GraphQL ID.
func gid(id int) string { return apptest.ID(id) }
