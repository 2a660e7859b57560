package desk

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/parleydesk/parley/ent"
)

// Code is a stable error code that clients switch on (extensions.code in GraphQL).
type Code string

const (
	CodeUnauthenticated Code = "UNAUTHENTICATED"
	CodeForbidden       Code = "FORBIDDEN"
	CodeNotFound        Code = "NOT_FOUND"
	CodeValidation      Code = "VALIDATION"
	CodeConflict        Code = "CONFLICT"
	CodeInternal        Code = "INTERNAL"

	// Codes of the chat lifecycle (R13, R17, R19).
	CodeChatCompleted     Code = "CHAT_COMPLETED"
	CodeChatAlreadyTaken  Code = "CHAT_ALREADY_TAKEN"
	CodeChatNotOffered    Code = "CHAT_NOT_OFFERED"
	CodeNotChatOwner      Code = "NOT_CHAT_OWNER"
	CodeChatNotInProgress Code = "CHAT_NOT_IN_PROGRESS"
	CodeLimitExhausted    Code = "LIMIT_EXHAUSTED"
	CodeChannelInactive   Code = "CHANNEL_INACTIVE"

	// Codes of channels and starting chats (R14, R21).
	CodeReplyWindowExpired Code = "REPLY_WINDOW_EXPIRED"
	CodeNoChannel          Code = "NO_CHANNEL"
	CodeNoIdentity         Code = "NO_IDENTITY"
	CodeNoConversation     Code = "NO_CONVERSATION"
	CodeActiveChatExists   Code = "ACTIVE_CHAT_EXISTS"

	// Codes of live subscriptions.
	CodeEventsExpired Code = "EVENTS_EXPIRED"
	CodeSlowConsumer  Code = "SLOW_CONSUMER"
)

// Error is a refusal by a rule: a code, a message for humans and, for
// validation errors, the input field at fault.
type Error struct {
	Code    Code
	Message string
	Field   string
}

func (e *Error) Error() string { return e.Message }

// Fail returns an *Error.
func Fail(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalid(field, format string, args ...any) *Error {
	return &Error{Code: CodeValidation, Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrUnauthenticated is returned for a missing, unknown, expired or revoked credential.
var ErrUnauthenticated = &Error{Code: CodeUnauthenticated, Message: "authentication required"}

// ErrForbidden is returned when the caller lacks the access a call needs.
var ErrForbidden = &Error{Code: CodeForbidden, Message: "you are not allowed to do this"}

// AsError classifies any error of a use case: a desk *Error as is, ent's
// not-found, constraint and validation errors by kind, and anything else as
// INTERNAL (whose text must not reach a client).
func AsError(err error) *Error {
	var de *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &de):
		return de
	case ent.IsNotFound(err):
		return &Error{Code: CodeNotFound, Message: "not found"}
	case ent.IsConstraintError(err):
		return &Error{Code: CodeConflict, Message: "conflicts with existing data (a duplicate or a missing reference)"}
	case ent.IsValidationError(err):
		var ve *ent.ValidationError
		errors.As(err, &ve)
		name := inputFieldName(ve.Name)
		return &Error{Code: CodeValidation, Field: name, Message: "invalid value for " + name}
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}

// CallerEnded reports whether err is ctx's own end: the caller hung up (or
// the server shut down past its grace period) while the use case waited to
// begin (a transaction slot, a pooled connection) or read. Nothing was
// changed (txFunc), and it is no failure of the server.
func CallerEnded(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, ctx.Err())
}

// inputFieldName turns an ent field name (chat_limit, external_id) into the
// name of the GraphQL input field entgql generates for it (chatLimit,
// externalID), which is what a client knows.
func inputFieldName(name string) string {
	words := strings.Split(name, "_")
	for i := 1; i < len(words); i++ {
		switch w := strings.ToUpper(words[i]); w {
		case "ID", "URL", "API", "HTTP", "JSON", "UUID", "IP":
			words[i] = w
		default:
			if words[i] != "" {
				words[i] = w[:1] + words[i][1:]
			}
		}
	}
	return strings.Join(words, "")
}

// notFound turns ent's not-found into a NOT_FOUND naming what was missing.
func notFound(err error, what string, id int) error {
	if ent.IsNotFound(err) {
		return Fail(CodeNotFound, "%s %d not found", what, id)
	}
	return err
}
