package desk

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"strings"

	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/channel"
	"github.com/parleydesk/parley/ent/chat"
	"github.com/parleydesk/parley/ent/chataction"
	"github.com/parleydesk/parley/ent/chatoffer"
	"github.com/parleydesk/parley/ent/operator"
	"github.com/parleydesk/parley/ent/queue"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/ent/setting"
)

// CreateOperatorInput describes a new operator (R5: they start INACTIVE).
type CreateOperatorInput struct {
	Email     string
	Name      string
	Password  string
	Role      enum.Role
	ChatLimit *int
	QueueIDs  []int
}

// UpdateOperatorInput changes an operator; nil fields stay as they are.
type UpdateOperatorInput struct {
	Email          *string
	Name           *string
	Password       *string
	Role           *enum.Role
	ChatLimit      *int
	ClearChatLimit *bool
	Disabled       *bool
	AddQueueIDs    []int
	RemoveQueueIDs []int
}

// CreateOperator creates an operator with a hashed password.
func (d *Desk) CreateOperator(ctx context.Context, in CreateOperatorInput) (*ent.Operator, error) {
	email, err := normaliseEmail(in.Email)
	if err != nil {
		return nil, err
	}
	hash, err := d.hashPassword(in.Password)
	if err != nil {
		return nil, err
	}
	if in.Role == "" {
		in.Role = enum.RoleOperator
	}
	var op *ent.Operator
	err = d.inTx(ctx, "create operator", func(ctx context.Context, tx *ent.Tx) error {
		if taken, err := tx.Operator.Query().Where(operator.Email(email)).Exist(ctx); err != nil {
			return err
		} else if taken {
			return &Error{Code: CodeConflict, Field: "email", Message: "an operator with this email exists"}
		}
		if err := requireQueues(ctx, tx, in.QueueIDs); err != nil {
			return err
		}
		now := d.Now()
		op, err = tx.Operator.Create().
			SetEmail(email).SetName(strings.TrimSpace(in.Name)).SetPasswordHash(string(hash)).
			SetRole(in.Role).SetNillableChatLimit(in.ChatLimit).AddQueueIDs(in.QueueIDs...).
			SetStatus(enum.StatusInactive).SetCreatedAt(now).SetUpdatedAt(now).
			Save(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("operator created", "operator_id", op.ID, "role", op.Role)
	return op.Unwrap(), nil
}

// UpdateOperator changes an operator. A new password or disabling the
// operator ends all their sessions.
func (d *Desk) UpdateOperator(ctx context.Context, id int, in UpdateOperatorInput) (*ent.Operator, error) {
	var op *ent.Operator
	err := d.inTx(ctx, "update operator", func(ctx context.Context, tx *ent.Tx) error {
		old, err := tx.Operator.Get(ctx, id)
		if err != nil {
			return notFound(err, "operator", id)
		}
		u := tx.Operator.UpdateOneID(id).SetUpdatedAt(d.Now())
		if in.Email != nil {
			email, err := normaliseEmail(*in.Email)
			if err != nil {
				return err
			}
			if email != old.Email {
				if taken, err := tx.Operator.Query().Where(operator.Email(email)).Exist(ctx); err != nil {
					return err
				} else if taken {
					return &Error{Code: CodeConflict, Field: "email", Message: "an operator with this email exists"}
				}
			}
			u.SetEmail(email)
		}
		if in.Name != nil {
			u.SetName(strings.TrimSpace(*in.Name))
		}
		endSessions := false
		if in.Password != nil {
			hash, err := d.hashPassword(*in.Password)
			if err != nil {
				return err
			}
			u.SetPasswordHash(string(hash))
			endSessions = true
		}
		if in.Role != nil {
			u.SetRole(*in.Role)
		}
		if in.ClearChatLimit != nil && *in.ClearChatLimit {
			u.ClearChatLimit()
		}
		if in.ChatLimit != nil {
			u.SetChatLimit(*in.ChatLimit)
		}
		if in.Disabled != nil {
			u.SetDisabled(*in.Disabled)
			endSessions = endSessions || *in.Disabled
		}
		if err := requireQueues(ctx, tx, append(in.AddQueueIDs, in.RemoveQueueIDs...)); err != nil {
			return err
		}
		u.AddQueueIDs(in.AddQueueIDs...).RemoveQueueIDs(in.RemoveQueueIDs...)
		if op, err = u.Save(ctx); err != nil {
			return err
		}
		if endSessions {
			if err := d.endSessions(ctx, tx, id, nil, "ADMIN", enum.ReasonAdmin); err != nil {
				return err
			}
			if op, err = tx.Operator.Get(ctx, id); err != nil {
				return err
			}
		}
		if op.Disabled {
			return d.withdrawOffers(ctx, tx, chatoffer.OperatorID(id))
		}
		// A higher limit or a new queue may let waiting chats through (R9).
		return d.releaseCapacity(ctx, tx, id)
	})
	return detach(op, err)
}

func requireQueues(ctx context.Context, tx *ent.Tx, ids []int) error {
	for _, id := range ids {
		if ok, err := tx.Queue.Query().Where(queue.ID(id)).Exist(ctx); err != nil {
			return err
		} else if !ok {
			return Fail(CodeNotFound, "queue %d not found", id)
		}
	}
	return nil
}

// CreateQueue creates a queue.
func (d *Desk) CreateQueue(ctx context.Context, in ent.CreateQueueInput) (*ent.Queue, error) {
	in.Name = strings.TrimSpace(in.Name)
	now := d.Now()
	var q *ent.Queue
	err := d.inTx(ctx, "create queue", func(ctx context.Context, tx *ent.Tx) error {
		if err := uniqueQueueName(ctx, tx, in.Name, 0); err != nil {
			return err
		}
		if err := requireOperators(ctx, tx, in.MemberIDs); err != nil {
			return err
		}
		var err error
		q, err = tx.Queue.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
		return err
	})
	return detach(q, err)
}

// UpdateQueue changes a queue's settings and members.
func (d *Desk) UpdateQueue(ctx context.Context, id int, in ent.UpdateQueueInput) (*ent.Queue, error) {
	var q *ent.Queue
	err := d.inTx(ctx, "update queue", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := tx.Queue.Get(ctx, id); err != nil {
			return notFound(err, "queue", id)
		}
		if in.Name != nil {
			name := strings.TrimSpace(*in.Name)
			in.Name = &name
			if err := uniqueQueueName(ctx, tx, name, id); err != nil {
				return err
			}
		}
		if err := requireOperators(ctx, tx, append(in.AddMemberIDs, in.RemoveMemberIDs...)); err != nil {
			return err
		}
		var err error
		if q, err = tx.Queue.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx); err != nil {
			return err
		}
		// New members, a higher limit or another rule may let waiting chats
		// through (R9).
		return d.releaseQueueLater(ctx, tx, id)
	})
	return detach(q, err)
}

// DeleteQueue deletes a queue that has no chats and no channels.
func (d *Desk) DeleteQueue(ctx context.Context, id int) error {
	return d.inTx(ctx, "delete queue", func(ctx context.Context, tx *ent.Tx) error {
		q, err := tx.Queue.Get(ctx, id)
		if err != nil {
			return notFound(err, "queue", id)
		}
		if n, err := q.QueryChannels().Count(ctx); err != nil {
			return err
		} else if n > 0 {
			return Fail(CodeConflict, "the queue has %d channel(s); move them to another queue first", n)
		}
		if has, err := q.QueryChats().Exist(ctx); err != nil {
			return err
		} else if has {
			return Fail(CodeConflict, "the queue has chats and cannot be deleted")
		}
		if _, err := tx.ChatAction.Delete().Where(chataction.HasQueueWith(queue.ID(id))).Exec(ctx); err != nil {
			return err
		}
		return tx.Queue.DeleteOneID(id).Exec(ctx)
	})
}

func uniqueQueueName(ctx context.Context, tx *ent.Tx, name string, except int) error {
	taken, err := tx.Queue.Query().Where(queue.Name(name), queue.IDNEQ(except)).Exist(ctx)
	if err != nil {
		return err
	}
	if taken {
		return &Error{Code: CodeConflict, Field: "name", Message: "a queue with this name exists"}
	}
	return nil
}

func requireOperators(ctx context.Context, tx *ent.Tx, ids []int) error {
	for _, id := range ids {
		if ok, err := tx.Operator.Query().Where(operator.ID(id)).Exist(ctx); err != nil {
			return err
		} else if !ok {
			return Fail(CodeNotFound, "operator %d not found", id)
		}
	}
	return nil
}

// channelFields is what CreateChannelInput and UpdateChannelInput share, as
// the channel will be once the change is applied.
type channelFields struct {
	provider                                            enum.Provider
	externalID, token, appSecret, verifyToken, botAppID string
	botMode                                             enum.BotMode
}

// check enforces what each provider needs to work (reference/channels.md).
func (c channelFields) check() error {
	need := func(field, v string) error {
		if strings.TrimSpace(v) == "" {
			return invalid(field, "%s channels need %s", c.provider, field)
		}
		return nil
	}
	var errs []error
	switch c.provider {
	case enum.ProviderTelegram:
		errs = append(errs, need("token", c.token))
	case enum.ProviderWhatsApp, enum.ProviderMessenger:
		errs = append(errs, need("externalID", c.externalID), need("token", c.token),
			need("appSecret", c.appSecret), need("verifyToken", c.verifyToken))
	}
	if c.botMode != "" && c.botMode != enum.BotNone {
		if c.provider != enum.ProviderMessenger {
			errs = append(errs, invalid("botMode", "chat bots work only on Messenger channels (R27)"))
		} else {
			errs = append(errs, need("botAppID", c.botAppID))
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// CreateChannel connects a provider account to a queue. A Telegram channel
// gets a generated webhook secret unless one is given.
func (d *Desk) CreateChannel(ctx context.Context, in ent.CreateChannelInput) (*ent.Channel, error) {
	in.Name = strings.TrimSpace(in.Name)
	f := channelFields{provider: in.Provider, externalID: deref(in.ExternalID), token: deref(in.Token),
		appSecret: deref(in.AppSecret), verifyToken: deref(in.VerifyToken), botAppID: deref(in.BotAppID)}
	if in.BotMode != nil {
		f.botMode = *in.BotMode
	}
	if err := f.check(); err != nil {
		return nil, err
	}
	if in.Provider == enum.ProviderTelegram && deref(in.WebhookSecret) == "" {
		secret, _ := newSecret("")
		in.WebhookSecret = &secret
	}
	now := d.Now()
	var ch *ent.Channel
	err := d.inTx(ctx, "create channel", func(ctx context.Context, tx *ent.Tx) error {
		if err := requireQueues(ctx, tx, []int{in.QueueID}); err != nil {
			return err
		}
		var err error
		ch, err = tx.Channel.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
		return err
	})
	if err == nil {
		d.log.Info("channel created", "channel_id", ch.ID, "provider", ch.Provider)
	}
	return detach(ch, err)
}

// UpdateChannel changes a channel; secrets can be replaced, never read.
func (d *Desk) UpdateChannel(ctx context.Context, id int, in ent.UpdateChannelInput) (*ent.Channel, error) {
	defer d.forgetChannel(id)
	var ch *ent.Channel
	err := d.inTx(ctx, "update channel", func(ctx context.Context, tx *ent.Tx) error {
		old, err := tx.Channel.Get(ctx, id)
		if err != nil {
			return notFound(err, "channel", id)
		}
		f := channelFields{provider: old.Provider, externalID: old.ExternalID, token: old.Token,
			appSecret: old.AppSecret, verifyToken: old.VerifyToken, botAppID: old.BotAppID, botMode: old.BotMode}
		apply(&f.externalID, in.ExternalID, in.ClearExternalID)
		apply(&f.token, in.Token, in.ClearToken)
		apply(&f.appSecret, in.AppSecret, in.ClearAppSecret)
		apply(&f.verifyToken, in.VerifyToken, in.ClearVerifyToken)
		apply(&f.botAppID, in.BotAppID, in.ClearBotAppID)
		if in.BotMode != nil {
			f.botMode = *in.BotMode
		}
		if err := f.check(); err != nil {
			return err
		}
		if in.Name != nil {
			name := strings.TrimSpace(*in.Name)
			in.Name = &name
		}
		if in.QueueID != nil {
			if err := requireQueues(ctx, tx, []int{*in.QueueID}); err != nil {
				return err
			}
		}
		ch, err = tx.Channel.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx)
		return err
	})
	return detach(ch, err)
}

func apply(dst *string, v *string, clear bool) {
	if clear {
		*dst = ""
	}
	if v != nil {
		*dst = *v
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// SetChannelActive activates or deactivates a channel. An inactive channel
// refuses deliveries and cannot start chats (R21).
func (d *Desk) SetChannelActive(ctx context.Context, id int, active bool) (*ent.Channel, error) {
	defer d.forgetChannel(id)
	ch, err := d.client.Channel.UpdateOneID(id).SetActive(active).SetUpdatedAt(d.Now()).Save(ctx)
	if err != nil {
		return nil, notFound(err, "channel", id)
	}
	d.log.Info("channel activation changed", "channel_id", id, "active", active)
	return ch, nil
}

// DeleteChannel deletes a channel that never had chats. A channel with chats
// is kept for history: deactivate it instead.
func (d *Desk) DeleteChannel(ctx context.Context, id int) error {
	defer d.forgetChannel(id)
	return d.inTx(ctx, "delete channel", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := tx.Channel.Get(ctx, id); err != nil {
			return notFound(err, "channel", id)
		}
		has, err := tx.Chat.Query().Where(chat.HasChannelWith(channel.ID(id))).Exist(ctx)
		if err != nil {
			return err
		}
		if has {
			return Fail(CodeConflict, "the channel has chats and cannot be deleted; deactivate it instead")
		}
		return tx.Channel.DeleteOneID(id).Exec(ctx)
	})
}

// CreateQuickReply creates a reply template (R15).
func (d *Desk) CreateQuickReply(ctx context.Context, in ent.CreateQuickReplyInput) (*ent.QuickReply, error) {
	now := d.Now()
	in.Name = strings.TrimSpace(in.Name)
	return d.client.QuickReply.Create().SetInput(in).
		SetSearchKey(quickReplyKey(in.Name, in.Text)).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
}

// UpdateQuickReply changes a reply template.
func (d *Desk) UpdateQuickReply(ctx context.Context, id int, in ent.UpdateQuickReplyInput) (*ent.QuickReply, error) {
	var qr *ent.QuickReply
	err := d.inTx(ctx, "update quick reply", func(ctx context.Context, tx *ent.Tx) error {
		old, err := tx.QuickReply.Get(ctx, id)
		if err != nil {
			return notFound(err, "quick reply", id)
		}
		name, text := old.Name, old.Text
		if in.Name != nil {
			name = strings.TrimSpace(*in.Name)
			in.Name = &name
		}
		if in.Text != nil {
			text = *in.Text
		}
		qr, err = tx.QuickReply.UpdateOneID(id).SetInput(in).
			SetSearchKey(quickReplyKey(name, text)).SetUpdatedAt(d.Now()).Save(ctx)
		return err
	})
	return detach(qr, err)
}

// quickReplyKey is what "//" searches: name and text, lower-cased with full
// Unicode case folding so that it works in any language (R15).
func quickReplyKey(name, text string) string {
	return strings.ToLower(name + "\n" + text)
}

// DeleteQuickReply deletes a reply template.
func (d *Desk) DeleteQuickReply(ctx context.Context, id int) error {
	return notFound(d.client.QuickReply.DeleteOneID(id).Exec(ctx), "quick reply", id)
}

// CreateDuplicateRule creates a duplicate rule (R22).
func (d *Desk) CreateDuplicateRule(ctx context.Context, in ent.CreateDuplicateRuleInput) (*ent.DuplicateRule, error) {
	now := d.Now()
	return d.client.DuplicateRule.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
}

// UpdateDuplicateRule changes a duplicate rule.
func (d *Desk) UpdateDuplicateRule(ctx context.Context, id int, in ent.UpdateDuplicateRuleInput) (*ent.DuplicateRule, error) {
	r, err := d.client.DuplicateRule.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx)
	return r, notFound(err, "duplicate rule", id)
}

// DeleteDuplicateRule deletes a duplicate rule.
func (d *Desk) DeleteDuplicateRule(ctx context.Context, id int) error {
	return notFound(d.client.DuplicateRule.DeleteOneID(id).Exec(ctx), "duplicate rule", id)
}

func checkChatAction(kind enum.ChatActionKind, rawURL string) error {
	if kind != enum.ActionWebhook {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalid("url", "a WEBHOOK action needs an http(s) url")
	}
	return nil
}

// CreateChatAction adds an action to a queue's chats (R25).
func (d *Desk) CreateChatAction(ctx context.Context, in ent.CreateChatActionInput) (*ent.ChatAction, error) {
	if err := checkChatAction(in.Kind, deref(in.URL)); err != nil {
		return nil, err
	}
	now := d.Now()
	var a *ent.ChatAction
	err := d.inTx(ctx, "create chat action", func(ctx context.Context, tx *ent.Tx) error {
		if err := requireQueues(ctx, tx, []int{in.QueueID}); err != nil {
			return err
		}
		var err error
		a, err = tx.ChatAction.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
		return err
	})
	return detach(a, err)
}

// UpdateChatAction changes a chat action.
func (d *Desk) UpdateChatAction(ctx context.Context, id int, in ent.UpdateChatActionInput) (*ent.ChatAction, error) {
	var a *ent.ChatAction
	err := d.inTx(ctx, "update chat action", func(ctx context.Context, tx *ent.Tx) error {
		old, err := tx.ChatAction.Get(ctx, id)
		if err != nil {
			return notFound(err, "chat action", id)
		}
		kind, u := old.Kind, old.URL
		if in.Kind != nil {
			kind = *in.Kind
		}
		apply(&u, in.URL, in.ClearURL)
		if err := checkChatAction(kind, u); err != nil {
			return err
		}
		if in.QueueID != nil {
			if err := requireQueues(ctx, tx, []int{*in.QueueID}); err != nil {
				return err
			}
		}
		a, err = tx.ChatAction.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx)
		return err
	})
	return detach(a, err)
}

// DeleteChatAction deletes a chat action.
func (d *Desk) DeleteChatAction(ctx context.Context, id int) error {
	return notFound(d.client.ChatAction.DeleteOneID(id).Exec(ctx), "chat action", id)
}

// CreateAccount creates an account (a company).
func (d *Desk) CreateAccount(ctx context.Context, in ent.CreateAccountInput) (*ent.Account, error) {
	now := d.Now()
	var a *ent.Account
	err := d.inTx(ctx, "create account", func(ctx context.Context, tx *ent.Tx) error {
		if err := requireContacts(ctx, tx, in.ContactIDs); err != nil {
			return err
		}
		var err error
		a, err = tx.Account.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
		return err
	})
	return detach(a, err)
}

// UpdateAccount changes an account.
func (d *Desk) UpdateAccount(ctx context.Context, id int, in ent.UpdateAccountInput) (*ent.Account, error) {
	var a *ent.Account
	err := d.inTx(ctx, "update account", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := tx.Account.Get(ctx, id); err != nil {
			return notFound(err, "account", id)
		}
		if err := requireContacts(ctx, tx, append(in.AddContactIDs, in.RemoveContactIDs...)); err != nil {
			return err
		}
		var err error
		a, err = tx.Account.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx)
		return err
	})
	return detach(a, err)
}

func requireContacts(ctx context.Context, tx *ent.Tx, ids []int) error {
	for _, id := range ids {
		if _, err := tx.Contact.Get(ctx, id); err != nil {
			return notFound(err, "contact", id)
		}
	}
	return nil
}

func checkContact(email *string) error {
	if email != nil && *email != "" {
		if _, err := normaliseEmail(*email); err != nil {
			return err
		}
	}
	return nil
}

// CreateContact creates a contact by hand (most come from provider messages, R2).
func (d *Desk) CreateContact(ctx context.Context, in ent.CreateContactInput) (*ent.Contact, error) {
	if err := checkContact(in.Email); err != nil {
		return nil, err
	}
	now := d.Now()
	var c *ent.Contact
	err := d.inTx(ctx, "create contact", func(ctx context.Context, tx *ent.Tx) error {
		if in.AccountID != nil {
			if _, err := tx.Account.Get(ctx, *in.AccountID); err != nil {
				return notFound(err, "account", *in.AccountID)
			}
		}
		var err error
		c, err = tx.Contact.Create().SetInput(in).SetCreatedAt(now).SetUpdatedAt(now).Save(ctx)
		return err
	})
	return detach(c, err)
}

// UpdateContact changes a contact.
func (d *Desk) UpdateContact(ctx context.Context, id int, in ent.UpdateContactInput) (*ent.Contact, error) {
	if err := checkContact(in.Email); err != nil {
		return nil, err
	}
	var c *ent.Contact
	err := d.inTx(ctx, "update contact", func(ctx context.Context, tx *ent.Tx) error {
		if _, err := tx.Contact.Get(ctx, id); err != nil {
			return notFound(err, "contact", id)
		}
		if in.AccountID != nil {
			if _, err := tx.Account.Get(ctx, *in.AccountID); err != nil {
				return notFound(err, "account", *in.AccountID)
			}
		}
		var err error
		c, err = tx.Contact.UpdateOneID(id).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx)
		return err
	})
	return detach(c, err)
}

// Settings returns the system settings, creating the row with the defaults
// of SPEC.md on first use.
func (d *Desk) Settings(ctx context.Context) (*ent.Setting, error) {
	s, err := d.client.Setting.Query().Where(setting.Scope(settingsScope)).Only(ctx)
	if ent.IsNotFound(err) {
		err = d.client.Setting.Create().SetScope(settingsScope).SetUpdatedAt(d.Now()).
			OnConflictColumns(setting.FieldScope).DoNothing().Exec(ctx)
		if err != nil && !isNoRows(err) {
			return nil, err
		}
		s, err = d.client.Setting.Query().Where(setting.Scope(settingsScope)).Only(ctx)
	}
	return s, err
}

const settingsScope = "system"

// UpdateSettings changes the system settings.
func (d *Desk) UpdateSettings(ctx context.Context, in ent.UpdateSettingInput) (*ent.Setting, error) {
	s, err := d.Settings(ctx)
	if err != nil {
		return nil, err
	}
	err = d.inTx(ctx, "update settings", func(ctx context.Context, tx *ent.Tx) error {
		if s, err = tx.Setting.UpdateOneID(s.ID).SetInput(in).SetUpdatedAt(d.Now()).Save(ctx); err != nil {
			return err
		}
		// A higher concurrent-chats limit may let waiting chats through (R9).
		ids, err := tx.Queue.Query().IDs(ctx)
		for _, id := range ids {
			if err := d.releaseQueueLater(ctx, tx, id); err != nil {
				return err
			}
		}
		return err
	})
	return detach(s, err)
}

// detach rebinds an entity read or written in a use case's transaction to
// the desk's client: without it, a caller loading the entity's edges after
// the commit (a resolver answering createQueue { members { id } }) fails with
// "transaction has already been committed".
func detach[T interface{ Unwrap() T }](v T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, err
	}
	return v.Unwrap(), nil
}

func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
