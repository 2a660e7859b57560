package desk_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/desktest"
	"github.com/parleydesk/parley/desk/store/storetest"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/chataction"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/schema/enum"
)

func TestR5_CreateOperatorNormalisesAndStartsInactive(t *testing.T) {
	w := desktest.New(t)
	ctx := w.AsAdmin()
	op, err := w.Desk.CreateOperator(ctx, desk.CreateOperatorInput{Email: "  Ada@Example.COM ", Name: "  Ada  ", Password: "password-1"})
	w.Must(err)
	if op.Email != "ada@example.com" || op.Name != "Ada" || op.Role != enum.RoleOperator || op.Status != enum.StatusInactive ||
		!op.CreatedAt.Equal(w.Desk.Now()) {
		t.Errorf("operator = %+v", op)
	}
	// The email is unique whatever its case.
	_, err = w.Desk.CreateOperator(ctx, desk.CreateOperatorInput{Email: "ADA@example.com", Name: "Other", Password: "password-1"})
	w.WantCode(err, desk.CodeConflict)
	// A refused input writes nothing, even when it fails half-way.
	q := w.Queue(enum.RuleToAll, nil)
	_, err = w.Desk.CreateOperator(ctx, desk.CreateOperatorInput{Email: "bob@example.com", Name: "Bob", Password: "password-1", QueueIDs: []int{q.ID, 987654}})
	w.WantCode(err, desk.CodeNotFound)
	for _, in := range []desk.CreateOperatorInput{
		{Email: "bob@example.com", Name: "", Password: "password-1"},
		{Email: "bob@example.com", Name: "Bob", Password: "1234567"},
		{Email: "bob@example.com", Name: "Bob", Password: string(make([]byte, 73))},
		{Email: "Bob <bob@example.com>", Name: "Bob", Password: "password-1"},
		{Email: "bob@example.com", Name: "Bob", Password: "password-1", ChatLimit: refOf(-1)},
	} {
		_, err := w.Desk.CreateOperator(ctx, in)
		w.WantCode(err, desk.CodeValidation)
	}
	if n, err := w.Client().Operator.Query().Where(operator.Email("bob@example.com")).Count(context.Background()); err != nil || n != 0 {
		t.Errorf("refused creations left %d operators (%v)", n, err)
	}
}

func TestR32_ChannelSecretsAndProviderRules(t *testing.T) {
	w := desktest.New(t)
	ctx := w.AsAdmin()
	q := w.Queue(enum.RuleToAll, nil)
	tg1, err := w.Desk.CreateChannel(ctx, ent.CreateChannelInput{Provider: enum.ProviderTelegram, Name: "a", Token: refOf("t1"), QueueID: q.ID})
	w.Must(err)
	tg2, err := w.Desk.CreateChannel(ctx, ent.CreateChannelInput{Provider: enum.ProviderTelegram, Name: "b", Token: refOf("t2"), QueueID: q.ID})
	w.Must(err)
	// Telegram gets a random webhook secret of its own unless one is given.
	if len(tg1.WebhookSecret) < 32 || tg1.WebhookSecret == tg2.WebhookSecret {
		t.Errorf("generated webhook secrets %q and %q", tg1.WebhookSecret, tg2.WebhookSecret)
	}
	given, err := w.Desk.CreateChannel(ctx, ent.CreateChannelInput{Provider: enum.ProviderTelegram, Name: "c", Token: refOf("t3"), WebhookSecret: refOf("mine"), QueueID: q.ID})
	w.Must(err)
	if given.WebhookSecret != "mine" {
		t.Errorf("given webhook secret replaced by %q", given.WebhookSecret)
	}
	// Updating keeps secrets not mentioned, replaces or clears the others.
	up, err := w.Desk.UpdateChannel(ctx, tg1.ID, ent.UpdateChannelInput{Name: refOf(" renamed ")})
	w.Must(err)
	if up.Token != "t1" || up.WebhookSecret != tg1.WebhookSecret || up.Name != "renamed" {
		t.Errorf("update touched secrets: %+v", up)
	}
	up, err = w.Desk.UpdateChannel(ctx, tg1.ID, ent.UpdateChannelInput{Token: refOf("t1b"), ClearWebhookSecret: true})
	w.Must(err)
	if up.Token != "t1b" || up.WebhookSecret != "" {
		t.Errorf("replace and clear: %+v", up)
	}
	_, err = w.Desk.UpdateChannel(ctx, tg1.ID, ent.UpdateChannelInput{ClearToken: true})
	w.WantCode(err, desk.CodeValidation)
	// A channel belongs to an existing queue.
	_, err = w.Desk.CreateChannel(ctx, ent.CreateChannelInput{Provider: enum.ProviderAPI, Name: "x", QueueID: 424242})
	w.WantCode(err, desk.CodeNotFound)
	_, err = w.Desk.UpdateChannel(ctx, tg1.ID, ent.UpdateChannelInput{QueueID: refOf(424242)})
	w.WantCode(err, desk.CodeNotFound)
	_, err = w.Desk.SetChannelActive(ctx, 424242, false)
	w.WantCode(err, desk.CodeNotFound)
}

func TestR15_QuickReplySearchKeyFoldsCaseInAnyLanguage(t *testing.T) {
	w := desktest.New(t)
	ctx := w.AsAdmin()
	qr, err := w.Desk.CreateQuickReply(ctx, ent.CreateQuickReplyInput{Name: " ПРИВЕТСТВИЕ ", Text: "Добрый ДЕНЬ! Größe"})
	w.Must(err)
	got, err := w.Client().QuickReply.Get(context.Background(), qr.ID)
	w.Must(err)
	if got.Name != "ПРИВЕТСТВИЕ" || got.SearchKey != "приветствие\nдобрый день! größe" {
		t.Errorf("quick reply = %q / search key %q", got.Name, got.SearchKey)
	}
	_, err = w.Desk.UpdateQuickReply(ctx, qr.ID, ent.UpdateQuickReplyInput{Text: refOf("Hello THERE")})
	w.Must(err)
	got, err = w.Client().QuickReply.Get(context.Background(), qr.ID)
	w.Must(err)
	if got.SearchKey != "приветствие\nhello there" {
		t.Errorf("search key after a text update = %q", got.SearchKey)
	}
}

func TestAdmin_DeleteQueueRemovesItsActionsAndRefusesWithChannels(t *testing.T) {
	w := desktest.New(t)
	ctx := w.AsAdmin()
	bg := context.Background()
	op := w.Operator(enum.StatusActive)
	q := w.Queue(enum.RuleToAll, []*ent.Operator{op})
	_, err := w.Desk.CreateChatAction(ctx, ent.CreateChatActionInput{Caption: "Case", Kind: enum.ActionCreateCase, QueueID: q.ID})
	w.Must(err)
	ch := w.Channel(q, enum.ProviderAPI)
	w.WantCode(w.Desk.DeleteQueue(ctx, q.ID), desk.CodeConflict)
	w.Must(w.Desk.DeleteChannel(ctx, ch.ID))
	w.Must(w.Desk.DeleteQueue(ctx, q.ID))
	if n, err := w.Client().ChatAction.Query().Where(chataction.HasQueue()).Count(bg); err != nil || n != 0 {
		t.Errorf("%d chat actions left (%v)", n, err)
	}
	if n, err := w.Client().ChatAction.Query().Count(bg); err != nil || n != 0 {
		t.Errorf("%d orphan chat actions (%v)", n, err)
	}
	// The members stay.
	w.OperatorNow(op.ID)
	w.WantCode(w.Desk.DeleteQueue(ctx, q.ID), desk.CodeNotFound)
}

// TestR7_SettingsRowIsCreatedOnceUnderConcurrency: instances starting
// together all read the same single settings row with SPEC.md's defaults.
func TestR7_SettingsRowIsCreatedOnceUnderConcurrency(t *testing.T) {
	db := storetest.Open(t)
	d := desk.New(db.Client, desk.WithDialect(db.Dialect))
	var wg sync.WaitGroup
	ids := make([]int, 8)
	errs := make([]error, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := d.Settings(context.Background())
			errs[i] = err
			if err == nil {
				ids[i] = s.ID
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Settings #%d: %v", i, err)
		}
		if ids[i] != ids[0] {
			t.Errorf("Settings #%d returned row %d, #0 row %d", i, ids[i], ids[0])
		}
	}
	s, err := d.Settings(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.ConcurrentChats != 5 || s.AcceptTimeoutSeconds != 300 || s.WaitingOrder != enum.OldestFirst || s.BotCompletionMinutes != 60 {
		t.Errorf("defaults = %+v", s)
	}
	if n, err := db.Client.Setting.Query().Count(context.Background()); err != nil || n != 1 {
		t.Errorf("%d settings rows (%v), want 1", n, err)
	}
}

// TestR32_AsErrorClassifiesWithoutLeaking: what reaches a client is a code,
// a human message and the GraphQL name of the input field, never the
// database's text.
func TestR32_AsErrorClassifiesWithoutLeaking(t *testing.T) {
	w := desktest.New(t)
	ctx := w.AsAdmin()
	bg := context.Background()
	q := w.Queue(enum.RuleToAll, nil)

	// ent validation errors name the GraphQL input field.
	for _, c := range []struct {
		err   error
		field string
	}{
		{second(w.Desk.CreateQueue(ctx, ent.CreateQueueInput{Name: "x", ChatLimit: refOf(-1)})), "chatLimit"},
		{second(w.Desk.CreateQueue(ctx, ent.CreateQueueInput{Name: "y", AcceptTimeoutSeconds: refOf(1)})), "acceptTimeoutSeconds"},
		{second(w.Desk.UpdateChannel(ctx, w.Channel(q, enum.ProviderAPI).ID, ent.UpdateChannelInput{ExternalID: refOf(string(make([]byte, 101)))})), "externalID"},
		{second(w.Desk.CreateChatAction(ctx, ent.CreateChatActionInput{Caption: "c", Kind: enum.ActionWebhook, URL: refOf("https://x.example/" + string(make([]byte, 2000))), QueueID: q.ID})), "url"},
	} {
		de := desk.AsError(c.err)
		if de == nil || de.Code != desk.CodeValidation || de.Field != c.field {
			t.Errorf("%v: classified as %+v, want VALIDATION on %s", c.err, de, c.field)
		}
	}

	// A raw constraint violation (bypassing the use cases' checks).
	_, err := w.Client().Queue.Create().SetName(q.Name).Save(bg)
	de := desk.AsError(err)
	if de.Code != desk.CodeConflict || leaks(de.Message) {
		t.Errorf("constraint error classified as %+v", de)
	}
	_, err = w.Client().Queue.Get(bg, 424242)
	if de := desk.AsError(err); de.Code != desk.CodeNotFound || leaks(de.Message) {
		t.Errorf("not found classified as %+v", de)
	}
	if de := desk.AsError(fmt.Errorf("wrapped: %w", errors.New(`pq: relation "x" does not exist`))); de.Code != desk.CodeInternal || leaks(de.Message) {
		t.Errorf("driver error classified as %+v", de)
	}
	if desk.AsError(nil) != nil {
		t.Error("AsError(nil) is not nil")
	}
	// A desk error keeps its own code through wrapping.
	if de := desk.AsError(fmt.Errorf("ctx: %w", desk.ErrForbidden)); de.Code != desk.CodeForbidden {
		t.Errorf("wrapped desk error classified as %+v", de)
	}
}

func second[T any](_ T, err error) error { return err }

func leaks(msg string) bool {
	msg = strings.ToLower(msg)
	for _, s := range []string{"sql", "pq:", "sqlite", "constraint failed", "violates", "relation", "ent:", "unique"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
