package graph_test

import (
	"encoding/json"
	"testing"

	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/server/app/apptest"
)

// caller is one kind of credential, with the accesses schema.graphql's
// Access enum documents for it.
type caller struct {
	name  string
	token string
	can   map[string]bool
}

func callers(t *testing.T, s *apptest.Server) []caller {
	return []caller{
		{"operator", s.CreateOperator(t, enum.RoleOperator).Token,
			map[string]bool{"OPERATOR": true}},
		{"supervisor", s.CreateOperator(t, enum.RoleSupervisor).Token,
			map[string]bool{"OPERATOR": true, "SUPERVISOR": true}},
		{"admin", s.AdminToken(t),
			map[string]bool{"OPERATOR": true, "SUPERVISOR": true, "ADMIN": true, "INTEGRATION": true}},
		{"integration key", s.CreateAPIKey(t, enum.ApiKeyIntegration).Key,
			map[string]bool{"INTEGRATION": true}},
		{"admin key", s.CreateAPIKey(t, enum.ApiKeyAdmin).Key,
			map[string]bool{"SUPERVISOR": true, "ADMIN": true, "INTEGRATION": true}},
	}
}

// fieldIsNull reports whether data.<field> is null or data itself is.
func fieldIsNull(t *testing.T, r apptest.Response, field string) bool {
	t.Helper()
	if len(r.Data) == 0 || string(r.Data) == "null" {
		return true
	}
	var data map[string]json.RawMessage
	if err := json.Unmarshal(r.Data, &data); err != nil {
		t.Fatalf("data is not an object: %s", r.Data)
	}
	v, ok := data[field]
	return !ok || string(v) == "null"
}

// TestR32_RequiresRefusesEveryCallerWithoutAccess walks every root field
// that carries @requires(access: X) in the served schema (new fields are
// covered automatically) and calls it with a minimal valid argument set as
// each kind of caller that lacks X, and without credentials: the answer is
// FORBIDDEN, respectively UNAUTHENTICATED, and nothing is written.
func TestR32_RequiresRefusesEveryCallerWithoutAccess(t *testing.T) {
	t.Parallel()
	rec := &apptest.Recorder{}
	s := apptest.New(t, apptest.WithRecorder(rec))
	cs := callers(t, s)
	for _, c := range cs {
		// Authentication's own bookkeeping (an API key's last use) happens
		// on first use; do it before counting writes.
		s.Do(t, c.token, `{ me { __typename } }`, nil).OK(t)
	}
	before := s.RowCounts(t)
	rec.Reset()

	checked := map[string]int{}
	for _, rf := range rootFields() {
		d := rf.def.Directives.ForName("requires")
		if d == nil {
			continue
		}
		access := d.Arguments.ForName("access").Value.Raw
		q, err := rootCall(rf.op, rf.def)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(rf.String(), func(t *testing.T) {
			denied := 0
			for _, c := range cs {
				if c.can[access] {
					continue
				}
				denied++
				r := s.Do(t, c.token, q, nil)
				if r.Code() != "FORBIDDEN" {
					t.Errorf("%s (needs %s) as %s: want FORBIDDEN, got %d %s\nquery: %s", rf, access, c.name, r.Status, r.Body, q)
				}
				if !fieldIsNull(t, r, rf.def.Name) {
					t.Errorf("%s as %s: refused but returned data %s", rf, c.name, r.Data)
				}
			}
			if denied == 0 {
				t.Fatalf("access %s: no test caller lacks it; add one", access)
			}
			r := s.Do(t, "", q, nil)
			if r.Code() != "UNAUTHENTICATED" {
				t.Errorf("%s without credentials: want UNAUTHENTICATED, got %d %s", rf, r.Status, r.Body)
			}
		})
		checked[access]++
	}
	total := 0
	for _, n := range checked {
		total += n
	}
	// The foundation has 25 administrative mutations and logout and
	// changePassword; fewer means the directive went missing from fields.
	if checked["ADMIN"] < 20 || checked["OPERATOR"] < 2 {
		t.Errorf("fields with @requires by access: %v; expected at least 20 ADMIN and 2 OPERATOR", checked)
	}
	s.AssertNoWrites(t, before)
	if w := rec.Writes(); len(w) > 0 {
		t.Errorf("refused calls wrote to the database:\n%v", w)
	}
}

// TestR32_EveryFieldButPublicOnesNeedsCredentials: every root field that is
// not @public refuses a caller without credentials, or with a credential
// that is unknown, malformed or revoked, before its resolver runs.
func TestR32_EveryFieldButPublicOnesNeedsCredentials(t *testing.T) {
	t.Parallel()
	rec := &apptest.Recorder{}
	s := apptest.New(t, apptest.WithRecorder(rec))
	revoked := s.CreateAPIKey(t, enum.ApiKeyAdmin)
	s.Do(t, s.AdminToken(t), `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`,
		map[string]any{"id": gid(revoked.ID)}).OK(t)
	before := s.RowCounts(t)
	rec.Reset()

	bad := []struct{ name, token string }{
		{"none", ""},
		{"unknown session", "pls_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		{"unknown key", "plk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		{"no prefix", "garbage"},
		{"revoked key", revoked.Key},
	}
	n := 0
	for _, rf := range rootFields() {
		if rf.def.Directives.ForName("public") != nil {
			continue
		}
		q, err := rootCall(rf.op, rf.def)
		if err != nil {
			t.Fatal(err)
		}
		n++
		for _, b := range bad {
			r := s.Do(t, b.token, q, nil)
			if r.Code() != "UNAUTHENTICATED" || !fieldIsNull(t, r, rf.def.Name) {
				t.Errorf("%s with credential %q: want UNAUTHENTICATED and no data, got %d %s", rf, b.name, r.Status, r.Body)
			}
		}
	}
	if n < 30 {
		t.Errorf("only %d non-public root fields found", n)
	}
	s.AssertNoWrites(t, before)
	if w := rec.Writes(); len(w) > 0 {
		t.Errorf("unauthenticated calls wrote to the database:\n%v", w)
	}

	// Introspection of the root type name and the @public login stay open.
	r := s.Do(t, "", `{ __typename }`, nil).OK(t)
	var tn struct {
		Typename string `json:"__typename"`
	}
	r.Decode(t, &tn)
	if tn.Typename != "Query" {
		t.Errorf("__typename = %q", tn.Typename)
	}
	if s.Login(t, apptest.AdminEmail, apptest.AdminPassword) == "" {
		t.Error("login (public) failed without credentials")
	}
}

// TestR32_ApiKeysListNeedsAdmin: the list of API keys is configuration.
func TestR32_ApiKeysListNeedsAdmin(t *testing.T) {
	t.Parallel()
	s := apptest.New(t)
	s.CreateAPIKey(t, enum.ApiKeyIntegration)
	q := `{ apiKeys { totalCount edges { node { id name prefix role } } } }`
	for _, tok := range []string{
		s.CreateOperator(t, enum.RoleOperator).Token,
		s.CreateOperator(t, enum.RoleSupervisor).Token,
		s.CreateAPIKey(t, enum.ApiKeyIntegration).Key,
	} {
		s.Do(t, tok, q, nil).Expect(t, "FORBIDDEN")
	}
	var out struct {
		APIKeys struct{ TotalCount int } `json:"apiKeys"`
	}
	s.Do(t, s.AdminToken(t), q, nil).OK(t).Decode(t, &out)
	if out.APIKeys.TotalCount != 2 {
		t.Errorf("admin sees %d keys, want 2", out.APIKeys.TotalCount)
	}
	s.Do(t, s.CreateAPIKey(t, enum.ApiKeyAdmin).Key, q, nil).OK(t)
}
