package desk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"entgo.io/ent/dialect/sql"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/attachment"
	entcontact "github.com/parleydesk/parley/ent/contact"
	"github.com/parleydesk/parley/ent/contactidentity"
	"github.com/parleydesk/parley/ent/job"
	"github.com/parleydesk/parley/ent/message"
	"github.com/parleydesk/parley/ent/predicate"
	"github.com/parleydesk/parley/ent/schema/enum"
)

// The outbox (R14) and the other jobs that call a provider: sending a
// message, copying an inbound file into storage, filling a new contact from
// the provider's profile. A provider call never runs inside a database
// transaction (it may take seconds; SQLite would be locked meanwhile): the
// job is claimed with a lease longer than the call's timeout, marked "call
// started", the call is made, then one transaction records the outcome and
// marks the job done only if the lease still holds. Transient failures are
// retried with backoff or the provider's retry_after; permanent ones are
// recorded with the provider's reason. Sends are at most once: none of the
// providers takes an idempotency key, so a process that dies between the
// provider's acceptance and recording it leaves the message FAILED with code
// UNCONFIRMED (visible to the operator, who may resend) instead of sending it
// twice; so does a call whose answer is lost after the request was handed
// over (connection reset, timeout) or whose outcome cannot be recorded. Only
// failures the provider answered, or calls that never left (connection
// refused), are retried. Media downloads and profile fetches are idempotent
// and simply run again.

// externalJob reports whether a job kind calls a provider.
func externalJob(kind string) bool {
	return kind == jobSend || kind == jobDownload || kind == jobFetchProfile
}

// maxSendAttempts bounds the retries of transient failures.
const maxSendAttempts = 8

// retryLater is a transient failure of an external job.
type retryLater struct {
	err   error
	after time.Duration
}

func (r *retryLater) Error() string { return r.err.Error() }

// runExternal runs a job that calls a provider.
func (d *Desk) runExternal(ctx context.Context, j *ent.Job) bool {
	var err error
	switch j.Kind {
	case jobSend:
		err = d.send(ctx, j)
	case jobDownload:
		err = d.download(ctx, j)
	case jobFetchProfile:
		err = d.fetchProfile(ctx, j)
	}
	if err == nil {
		return true
	}
	if ctx.Err() != nil {
		return false // shutting down: the lease expires and another run retries it
	}
	if errors.Is(err, errJobLost) {
		d.log.Warn("job claimed elsewhere", "job_id", j.ID, "kind", j.Kind)
		return false
	}
	delay := time.Duration(j.Attempts*j.Attempts) * time.Second
	// Under this claim only: a scheduler whose lease ran out while the
	// provider answered must not touch the new holder's lease or call mark.
	upd := d.client.Job.Update().Where(claimed(j))
	// The provider answered that it did not take the message (or was never
	// reached): the next attempt is a fresh call, not an unconfirmed one.
	// When the call was made but its outcome could not be recorded, the
	// call stays marked: the next claim settles it as UNCONFIRMED.
	var cm *callMade
	if !errors.As(err, &cm) {
		upd.ClearCallStartedAt()
	}
	var rl *retryLater
	if errors.As(err, &rl) && rl.after > 0 {
		delay = rl.after
	}
	d.log.Warn("job will be retried", "job_id", j.ID, "kind", j.Kind, "attempt", j.Attempts, "in", delay, "err", err)
	if j.Attempts >= maxSendAttempts {
		switch gerr := d.giveUp(ctx, j, err); {
		case errors.Is(gerr, errJobLost):
			d.log.Warn("job claimed elsewhere", "job_id", j.ID, "kind", j.Kind)
		case gerr != nil:
			d.log.Error("give up job", "job_id", j.ID, "err", gerr)
		}
		return false
	}
	retry := d.Now().Add(delay)
	d.recordFailure(ctx, j, upd.SetLastError(truncate(err.Error(), 1000)).SetLockedUntil(retry), retry)
	return false
}

// recordFailure runs upd, the failure record of a job under its claim
// (claimed): a claim lost meanwhile is logged, not written over. retry is
// when the job is to run again (zero: never), which the scheduler is told.
func (d *Desk) recordFailure(ctx context.Context, j *ent.Job, upd *ent.JobUpdate, retry time.Time) {
	switch n, err := upd.Save(ctx); {
	case err != nil:
		d.log.Error("record job failure", "job_id", j.ID, "err", err)
	case n == 0:
		d.log.Warn("job claimed elsewhere", "job_id", j.ID, "kind", j.Kind)
	case !retry.IsZero():
		d.dues.note(retry)
	}
}

// finishJob marks a claimed job done in tx, failing if the claim was lost.
func (d *Desk) finishJob(ctx context.Context, tx *ent.Tx, j *ent.Job) error {
	n, err := tx.Job.Update().Where(claimed(j)).
		SetStatus(enum.JobDone).SetDoneAt(d.Now()).Save(ctx)
	if err != nil {
		return err
	}
	if n != 1 {
		return errJobLost
	}
	return nil
}

// markCallStarted records, under the job's lease, that a provider call is
// about to be made.
func (d *Desk) markCallStarted(ctx context.Context, j *ent.Job) error {
	n, err := d.client.Job.Update().Where(claimed(j)).SetCallStartedAt(d.Now()).Save(ctx)
	if err != nil {
		return err
	}
	if n != 1 {
		return errJobLost
	}
	return nil
}

// done finishes a job that had nothing (left) to do.
func (d *Desk) done(ctx context.Context, j *ent.Job) error {
	return d.inTx(ctx, "finish job", func(ctx context.Context, tx *ent.Tx) error { return d.finishJob(ctx, tx, j) })
}

// giveUp ends a job whose transient failures outlasted the retries: a
// message is FAILED, an attachment FAILED; only while j's claim holds
// (errJobLost otherwise, and nothing changes).
func (d *Desk) giveUp(ctx context.Context, j *ent.Job, cause error) error {
	return d.inTx(ctx, "give up job", func(ctx context.Context, tx *ent.Tx) error {
		switch j.Kind {
		case jobSend:
			m, err := tx.Message.Get(ctx, jobRef(j))
			if err == nil {
				if _, err := d.setDeliveryStatus(ctx, tx, m, enum.DeliveryFailed, "RETRIES_EXHAUSTED", cause.Error()); err != nil {
					return err
				}
			}
		case jobDownload:
			if err := tx.Attachment.UpdateOneID(jobRef(j)).SetStatus(enum.AttachmentFailed).Exec(ctx); err != nil && !ent.IsNotFound(err) {
				return err
			}
		}
		n, err := tx.Job.Update().Where(claimed(j)).SetStatus(enum.JobFailed).SetDoneAt(d.Now()).
			SetLastError(truncate(cause.Error(), 1000)).Save(ctx)
		if err == nil && n != 1 {
			err = errJobLost // the new holder decides; nothing above stays
		}
		return err
	})
}

// send delivers one outbound message through its channel's adapter.
func (d *Desk) send(ctx context.Context, j *ent.Job) error {
	m, err := d.client.Message.Query().Where(message.ID(jobRef(j))).
		WithChat(func(q *ent.ChatQuery) { q.WithChannel() }).WithAttachments().Only(ctx)
	if ent.IsNotFound(err) {
		return d.done(ctx, j)
	}
	if err != nil {
		return err
	}
	if m.DeliveryStatus == nil || *m.DeliveryStatus != enum.DeliveryPending {
		return d.done(ctx, j) // sent, failed, or settled by another instance
	}
	c, ch := m.Edges.Chat, m.Edges.Chat.Edges.Channel
	fail := func(code, reason string, unreachable bool) error {
		return d.inTx(ctx, "send failed", func(ctx context.Context, tx *ent.Tx) error {
			if err := d.finishJob(ctx, tx, j); err != nil {
				return err
			}
			if unreachable {
				if err := tx.ContactIdentity.Update().Where(contactidentity.ProviderEQ(ch.Provider),
					contactidentity.HasContactWith(contactIs(c.ContactID))).
					SetUnreachable(true).SetUnreachableReason(clip(reason, 500)).Exec(ctx); err != nil {
					return err
				}
			}
			_, err := d.setDeliveryStatus(ctx, tx, m, enum.DeliveryFailed, code, reason)
			return err
		})
	}
	adapter := d.adapters[ch.Provider]
	if adapter == nil {
		return fail("NO_ADAPTER", fmt.Sprintf("Parley cannot send on %s channels", ch.Provider), false)
	}
	if !ch.Active {
		return fail(string(CodeChannelInactive), "the channel is inactive", false)
	}
	if windowed(ch.Provider) && c.ReplyWindowEndsAt != nil && d.Now().After(*c.ReplyWindowEndsAt) {
		return fail(string(CodeReplyWindowExpired), "the 24-hour reply window has closed", false)
	}
	ident, err := d.client.ContactIdentity.Query().Where(contactidentity.ProviderEQ(ch.Provider),
		contactidentity.HasContactWith(contactIs(c.ContactID))).Order(ent.Desc(contactidentity.FieldID)).First(ctx)
	if ent.IsNotFound(err) {
		return fail(string(CodeNoIdentity), "the contact has no identity on this provider", false)
	}
	if err != nil {
		return err
	}
	out := channels.Outbound{To: ident.ExternalID, Phone: ident.Phone, Text: m.Text}
	for _, a := range m.Edges.Attachments {
		if a.StorageKey == "" {
			continue
		}
		data, err := d.readFile(ctx, a.StorageKey)
		if err != nil {
			return err
		}
		out.File = &channels.OutboundFile{Kind: string(a.Kind), Name: a.FileName, MimeType: a.MimeType, Data: data}
		break
	}
	// At most once: a claim that finds the previous attempt's call still
	// marked in flight knows that process died mid-call, possibly after
	// the provider accepted the message; none of the providers takes an
	// idempotency key, so the message is marked FAILED (unconfirmed)
	// rather than risk sending it twice.
	if j.CallStartedAt != nil {
		return afterCall(fail("UNCONFIRMED", "the server stopped while sending; the message may not have been delivered", false))
	}
	if err := d.markCallStarted(ctx, j); err != nil {
		return err
	}
	callCtx, handedOver := traceHandOver(ctx)
	res, err := adapter.Send(callCtx, d.adapterChannel(ch), out)
	if err != nil {
		se := channels.AsSendError(err)
		if se.Permanent {
			code := se.Code
			if se.WindowClosed {
				code = string(CodeReplyWindowExpired) + ":" + se.Code
			}
			return afterCall(fail(code, se.Reason, se.Unreachable))
		}
		// A transport failure (no answer from the provider) after a whole
		// request was written: the provider may have accepted the message
		// and its answer was lost (connection reset, timeout). Sending again
		// could deliver it twice, so it is unconfirmed, as after a crash. A
		// failure before anything was handed over (connection refused, DNS)
		// is retried.
		if se.Code == codeTransport && handedOver.Load() {
			return afterCall(fail("UNCONFIRMED", "the connection to the provider failed after the message was handed over; it may have been delivered ("+clip(se.Reason, 500)+")", false))
		}
		return &retryLater{err: se, after: se.RetryAfter}
	}
	return afterCall(d.inTx(ctx, "message sent", func(ctx context.Context, tx *ent.Tx) error {
		if err := d.finishJob(ctx, tx, j); err != nil {
			return err
		}
		// A status may have been applied already (it can overtake the
		// answer): keep the furthest one. An answer without an id (Telegram
		// said ok in a shape not understood) leaves it unset: ids are unique
		// per channel.
		if res.MessageID != "" {
			if err := tx.Message.UpdateOneID(m.ID).SetProviderMessageID(res.MessageID).Exec(ctx); err != nil {
				return err
			}
		}
		_, err := d.setDeliveryStatus(ctx, tx, m, enum.DeliverySent, "", "")
		return err
	}))
}

// callMade is a failure to record the outcome of a provider call that was
// made (the provider may have taken the message): the job keeps its call
// marked started, so that the next claim settles the message as
// UNCONFIRMED instead of sending it again.
type callMade struct{ err error }

func (c *callMade) Error() string { return "recording the provider's answer: " + c.err.Error() }
func (c *callMade) Unwrap() error { return c.err }

func afterCall(err error) error {
	if err == nil || errors.Is(err, errJobLost) {
		return err
	}
	return &callMade{err: err}
}

// codeTransport is the SendError code of a failure the provider did not
// answer (channels.AsSendError, the Telegram adapter).
const codeTransport = "TRANSPORT"

// traceHandOver returns a context whose HTTP requests report, through the
// flag, that at least one of them was written whole to a provider.
func traceHandOver(ctx context.Context) (context.Context, *atomic.Bool) {
	var wrote atomic.Bool
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				wrote.Store(true)
			}
		},
	}), &wrote
}

func (d *Desk) readFile(ctx context.Context, key string) ([]byte, error) {
	if d.files == nil {
		return nil, errors.New("no file storage")
	}
	r, err := d.files.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, d.cfg.MaxFileBytes+1))
}

// download copies an inbound attachment into Parley's storage (provider
// URLs expire).
func (d *Desk) download(ctx context.Context, j *ent.Job) error {
	a, err := d.client.Attachment.Query().Where(attachment.ID(jobRef(j))).
		WithMessage(func(q *ent.MessageQuery) { q.WithChat(func(q *ent.ChatQuery) { q.WithChannel() }) }).Only(ctx)
	if ent.IsNotFound(err) {
		return d.done(ctx, j)
	}
	if err != nil {
		return err
	}
	if a.Status != enum.AttachmentPending || a.Edges.Message == nil || d.files == nil {
		return d.done(ctx, j)
	}
	ch := a.Edges.Message.Edges.Chat.Edges.Channel
	adapter := d.adapters[ch.Provider]
	if adapter == nil {
		return d.done(ctx, j)
	}
	f, err := adapter.Download(ctx, d.adapterChannel(ch), a.ProviderFileID)
	if err != nil {
		return &retryLater{err: fmt.Errorf("download attachment %d: %w", a.ID, err)}
	}
	defer f.Body.Close()
	key, size, err := d.files.Put(ctx, "media", f.Body, d.cfg.MaxFileBytes)
	if err != nil {
		return &retryLater{err: fmt.Errorf("store attachment %d: %w", a.ID, err)}
	}
	return d.inTx(ctx, "attachment stored", func(ctx context.Context, tx *ent.Tx) error {
		if err := d.finishJob(ctx, tx, j); err != nil {
			return err
		}
		upd := tx.Attachment.UpdateOneID(a.ID).SetStatus(enum.AttachmentStored).SetStorageKey(key).SetSize(int(size))
		if a.MimeType == "" && f.MimeType != "" {
			upd.SetMimeType(clip(f.MimeType, 200))
		}
		if a.FileName == "" && f.Name != "" {
			upd.SetFileName(clip(f.Name, 500))
		}
		return upd.Exec(ctx)
	})
}

// fetchProfile fills a new contact from the provider's profile: the name
// when the delivery had none, and the photo, copied into storage (R2). The
// job carries what the provider call needs (provider, external id): nothing
// is read before the call but the (cached) channel; the contact is read in
// the transaction that fills it.
func (d *Desk) fetchProfile(ctx context.Context, j *ent.Job) error {
	provider, _ := j.Payload["provider"].(string)
	externalID, _ := j.Payload["externalId"].(string)
	if provider == "" || externalID == "" {
		// A job enqueued before the payload carried them.
		ident, err := d.client.ContactIdentity.Get(ctx, jobRef(j))
		if ent.IsNotFound(err) {
			return d.done(ctx, j)
		}
		if err != nil {
			return err
		}
		provider, externalID = string(ident.Provider), ident.ExternalID
	}
	adapter := d.adapters[enum.Provider(provider)]
	ch, err := d.channel(ctx, nil, PayloadInt(j.Payload, "channel"))
	if adapter == nil || ent.IsNotFound(err) {
		return d.done(ctx, j)
	}
	if err != nil {
		return err
	}
	p, err := adapter.Profile(ctx, d.adapterChannel(ch), externalID)
	if errors.Is(err, channels.ErrUnsupported) {
		return d.done(ctx, j)
	}
	if err != nil {
		return &retryLater{err: fmt.Errorf("profile of identity %d: %w", jobRef(j), err)}
	}
	photoKey := ""
	if p.PhotoRef != "" && d.files != nil {
		f, err := adapter.Download(ctx, d.adapterChannel(ch), p.PhotoRef)
		if err != nil {
			return &retryLater{err: fmt.Errorf("profile photo of identity %d: %w", jobRef(j), err)}
		}
		photoKey, _, err = d.files.Put(ctx, "photos", f.Body, d.cfg.MaxFileBytes)
		f.Body.Close()
		if err != nil {
			return &retryLater{err: err}
		}
	}
	return d.inTx(ctx, "profile fetched", func(ctx context.Context, tx *ent.Tx) error {
		// Only what the contact lacks is filled, compared by the update
		// itself on the row's latest version (an operator's edit meanwhile
		// wins). A contact whose identity went (a merge) is not updated.
		// The fill and the job's end are written with the commit (one
		// round trip), each only while the claim holds (claimHolds): when
		// it was lost meanwhile (its lease ran out and another scheduler
		// took the job over), neither changes anything, and the job's new
		// holder fills the contact.
		upd := d.sql().Update(entcontact.Table).Set(entcontact.FieldUpdatedAt, d.Now())
		for _, f := range []struct {
			column, value string
		}{{entcontact.FieldName, clip(p.Name, maxNameLen)}, {entcontact.FieldUsername, clip(p.Username, maxUsernameLen)},
			{entcontact.FieldPhone, clip(p.Phone, maxPhoneLen)}} {
			if f.value != "" {
				upd.Set(f.column, fillEmpty(f.column, f.value))
			}
		}
		if photoKey != "" {
			upd.Set(entcontact.FieldPhotoKey, photoKey)
		}
		if err := d.atCommit(ctx, tx, upd.Where(sql.And(sql.In(entcontact.FieldID, identityContacts([]predicate.ContactIdentity{
			contactidentity.ID(jobRef(j))})), d.claimHolds(j)))); err != nil {
			return err
		}
		return d.atCommit(ctx, tx, d.sql().Update(job.Table).Set(job.FieldStatus, string(enum.JobDone)).
			Set(job.FieldDoneAt, d.Now()).Where(claimOf(j)))
	})
}

// claimOf matches a claimed job's row while the claim holds: the job still
// pending under the lease the claim set.
func claimOf(j *ent.Job) *sql.Predicate {
	return sql.And(sql.EQ(job.FieldID, j.ID), sql.EQ(job.FieldStatus, string(enum.JobPending)),
		sql.EQ(job.FieldLockedUntil, *j.LockedUntil))
}

// claimed matches j while this claim of it holds (claimOf).
func claimed(j *ent.Job) predicate.Job { return func(s *sql.Selector) { s.Where(claimOf(j)) } }

// claimHolds is a condition, for a write of another table, that j's claim
// still holds.
func (d *Desk) claimHolds(j *ent.Job) *sql.Predicate {
	return sql.Exists(d.sql().Select(job.FieldID).From(sql.Table(job.Table)).Where(claimOf(j)))
}

// fillEmpty is the value of a text column set to value only where it is
// empty or NULL (an UPDATE's SET).
func fillEmpty(column, value string) sql.Querier {
	return sql.ExprFunc(func(b *sql.Builder) {
		b.WriteString("CASE WHEN COALESCE(").Ident(column).WriteString(", '') = '' THEN ").Arg(value).WriteString(" ELSE ").
			Ident(column).WriteString(" END")
	})
}

// storeUpload keeps an operator's file for an outbound message.
func (d *Desk) storeUpload(ctx context.Context, r io.Reader) (string, int64, error) {
	if d.files == nil {
		return "", 0, Fail(CodeValidation, "file storage is not configured")
	}
	key, size, err := d.files.Put(ctx, "uploads", r, d.cfg.MaxFileBytes)
	if err != nil {
		return "", 0, err
	}
	return key, size, nil
}

// StoredFile is a file read back from storage; the caller closes Body.
type StoredFile struct {
	Body     io.ReadCloser
	Name     string
	MimeType string
}

// OpenAttachment returns a stored attachment for a caller allowed to read
// its chat's messages (R24).
func (d *Desk) OpenAttachment(ctx context.Context, id int) (*StoredFile, error) {
	if ActorFrom(ctx) == nil {
		return nil, ErrUnauthenticated
	}
	a, err := d.client.Attachment.Query().Where(attachment.ID(id)).WithMessage(func(q *ent.MessageQuery) { q.WithChat() }).Only(ctx)
	if err != nil {
		return nil, notFound(err, "file", id)
	}
	if a.Edges.Message == nil || a.StorageKey == "" || d.files == nil {
		return nil, Fail(CodeNotFound, "file %d is not stored", id)
	}
	if ok, err := d.CanReadMessages(ctx, a.Edges.Message.Edges.Chat); err != nil {
		return nil, err
	} else if !ok {
		return nil, Fail(CodeNotFound, "file %d not found", id)
	}
	r, err := d.files.Open(ctx, a.StorageKey)
	if err != nil {
		return nil, err
	}
	return &StoredFile{Body: r, Name: a.FileName, MimeType: a.MimeType}, nil
}

// OpenContactPhoto returns a contact's stored photo to any authenticated
// caller.
func (d *Desk) OpenContactPhoto(ctx context.Context, contactID int) (*StoredFile, error) {
	if ActorFrom(ctx) == nil {
		return nil, ErrUnauthenticated
	}
	c, err := d.client.Contact.Get(ctx, contactID)
	if err != nil {
		return nil, notFound(err, "contact", contactID)
	}
	if c.PhotoKey == "" || d.files == nil {
		return nil, Fail(CodeNotFound, "contact %d has no photo", contactID)
	}
	r, err := d.files.Open(ctx, c.PhotoKey)
	if err != nil {
		return nil, err
	}
	return &StoredFile{Body: r, Name: "photo", MimeType: "image/jpeg"}, nil
}
