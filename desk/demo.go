package desk

import (
	"context"
	"crypto/rand"
	"encoding/base64"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// DemoCredential is a login printed by demo mode.
type DemoCredential struct {
	Email, Password string
	Role            enum.Role
}

var demoOperators = []struct {
	email, name string
	role        enum.Role
}{
	{"admin@demo.parley", "Ada Admin", enum.RoleAdmin},
	{"olga@demo.parley", "Olga Operator", enum.RoleOperator},
	{"oscar@demo.parley", "Oscar Operator", enum.RoleOperator},
}

// SeedDemo fills an empty desk so that a newcomer can try the API at once:
// an administrator and two operators (with fresh random passwords on every
// start, returned to be printed), two queues with an API channel each, and
// sample contacts. It is idempotent.
func (d *Desk) SeedDemo(ctx context.Context) ([]DemoCredential, error) {
	var creds []DemoCredential
	var opIDs []int
	for _, o := range demoOperators {
		pw := randomPassword()
		op, err := d.client.Operator.Query().Where(operator.Email(o.email)).Only(ctx)
		switch {
		case ent.IsNotFound(err):
			op, err = d.CreateOperator(ctx, CreateOperatorInput{Email: o.email, Name: o.name, Password: pw, Role: o.role})
		case err == nil:
			_, err = d.UpdateOperator(ctx, op.ID, UpdateOperatorInput{Password: &pw})
		}
		if err != nil {
			return nil, err
		}
		creds = append(creds, DemoCredential{Email: o.email, Password: pw, Role: o.role})
		if o.role == enum.RoleOperator {
			opIDs = append(opIDs, op.ID)
		}
	}
	queues := []struct {
		name string
		rule enum.RoutingRule
	}{{"Sales", enum.RuleToAll}, {"Support", enum.RuleToAvailable}}
	for _, q := range queues {
		exists, err := d.client.Queue.Query().Where(queue.Name(q.name)).Exist(ctx)
		if err != nil {
			return nil, err
		}
		if exists {
			continue
		}
		rule := q.rule
		created, err := d.CreateQueue(ctx, ent.CreateQueueInput{Name: q.name, RoutingRule: &rule, MemberIDs: opIDs})
		if err != nil {
			return nil, err
		}
		if _, err := d.CreateChannel(ctx, ent.CreateChannelInput{
			Provider: enum.ProviderAPI, Name: q.name + " (API channel)", QueueID: created.ID,
		}); err != nil {
			return nil, err
		}
	}
	if n, err := d.client.Contact.Query().Where(contact.MergedIntoIDIsNil()).Count(ctx); err != nil || n > 0 {
		return creds, err
	}
	acme, err := d.CreateAccount(ctx, ent.CreateAccountInput{Name: "Acme Ltd", Website: ptr("https://acme.example")})
	if err != nil {
		return nil, err
	}
	for _, c := range []ent.CreateContactInput{
		{Name: ptr("Ivan Petrov"), Phone: ptr("+79990001122"), Email: ptr("ivan@acme.example"), AccountID: &acme.ID},
		{Name: ptr("Maria Garcia"), Phone: ptr("+34600111222")},
		{Name: ptr("John Smith"), Email: ptr("john@example.com")},
	} {
		if _, err := d.CreateContact(ctx, c); err != nil {
			return nil, err
		}
	}
	return creds, nil
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func ptr[T any](v T) *T { return &v }
