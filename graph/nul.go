package graph

import (
	"context"
	"strconv"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/parleydesk/parley/desk"
)

// noNUL refuses an operation that passes U+0000 in any string (a variable
// or a literal argument, at any depth): PostgreSQL stores no NUL in text,
// so such a value would fail as an internal error there (and be stored on
// SQLite). The refusal is VALIDATION, names where the value was, and
// happens before any resolver runs, so nothing changes. (Provider webhooks
// strip NUL instead; see desk.withoutNUL.)
type noNUL struct{}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = noNUL{}

func (noNUL) ExtensionName() string                   { return "NoNUL" }
func (noNUL) Validate(graphql.ExecutableSchema) error { return nil }
func (noNUL) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	for name, v := range oc.Variables {
		if where, ok := nulIn(v, "$"+name); ok {
			return nulError(where)
		}
	}
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	if where, ok := nulInSelection(op.SelectionSet, map[string]bool{}); ok {
		return nulError(where)
	}
	return nil
}

func nulError(where string) *gqlerror.Error {
	return &gqlerror.Error{
		Message:    where + " contains a NUL character (U+0000), which cannot be stored",
		Extensions: map[string]any{"code": string(desk.CodeValidation), "field": where},
	}
}

// nulIn looks for U+0000 in a variable's value (as coerced: strings, lists,
// input objects, uploads' file names) and reports where.
func nulIn(v any, where string) (string, bool) {
	switch v := v.(type) {
	case string:
		return where, strings.ContainsRune(v, 0)
	case []any:
		for i, x := range v {
			if w, ok := nulIn(x, where+"["+strconv.Itoa(i)+"]"); ok {
				return w, true
			}
		}
	case map[string]any:
		for k, x := range v {
			if strings.ContainsRune(k, 0) {
				return where, true
			}
			if w, ok := nulIn(x, where+"."+k); ok {
				return w, true
			}
		}
	case graphql.Upload:
		return where + ".filename", strings.ContainsRune(v.Filename, 0)
	case *graphql.Upload:
		if v != nil {
			return where + ".filename", strings.ContainsRune(v.Filename, 0)
		}
	}
	return "", false
}

// nulInSelection looks for U+0000 in the literal arguments of a selection
// set (fields, directives, fragments, each fragment once).
func nulInSelection(set ast.SelectionSet, seen map[string]bool) (string, bool) {
	for _, s := range set {
		switch s := s.(type) {
		case *ast.Field:
			if w, ok := nulInArguments(s.Name, s.Arguments, s.Directives); ok {
				return w, true
			}
			if w, ok := nulInSelection(s.SelectionSet, seen); ok {
				return w, true
			}
		case *ast.InlineFragment:
			if w, ok := nulInArguments("", nil, s.Directives); ok {
				return w, true
			}
			if w, ok := nulInSelection(s.SelectionSet, seen); ok {
				return w, true
			}
		case *ast.FragmentSpread:
			if w, ok := nulInArguments("", nil, s.Directives); ok {
				return w, true
			}
			if s.Definition != nil && !seen[s.Name] {
				seen[s.Name] = true
				if w, ok := nulInSelection(s.Definition.SelectionSet, seen); ok {
					return w, true
				}
			}
		}
	}
	return "", false
}

func nulInArguments(field string, args ast.ArgumentList, dirs ast.DirectiveList) (string, bool) {
	for _, a := range args {
		if w, ok := nulInValue(a.Value, field+"."+a.Name); ok {
			return strings.TrimPrefix(w, "."), true
		}
	}
	for _, d := range dirs {
		if w, ok := nulInArguments("@"+d.Name, d.Arguments, nil); ok {
			return w, true
		}
	}
	return "", false
}

// nulInValue looks into a literal (variables are checked as values).
func nulInValue(v *ast.Value, where string) (string, bool) {
	if v == nil {
		return "", false
	}
	switch v.Kind {
	case ast.StringValue, ast.BlockValue:
		return where, strings.ContainsRune(v.Raw, 0)
	case ast.ListValue, ast.ObjectValue:
		for i, c := range v.Children {
			w := where + "[" + strconv.Itoa(i) + "]"
			if v.Kind == ast.ObjectValue {
				w = where + "." + c.Name
			}
			if w, ok := nulInValue(c.Value, w); ok {
				return w, true
			}
		}
	}
	return "", false
}
