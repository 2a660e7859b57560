// Package telegram is Parley's Telegram Bot API adapter: it parses webhook
// updates into channels.Update values and sends, downloads and registers
// through the Bot API.
//
// Outbound calls go through github.com/go-telegram/bot (request building,
// multipart uploads, token handling in URLs). Inbound updates are decoded
// with this package's own narrow structs built from the library's leaf
// models: the library's models.Update fails as a whole on any union variant
// it does not know yet (a new forward_origin or reaction type), and a
// webhook body that fails to parse is answered 400 and eventually dropped
// by Telegram, so a lagging library would silently lose customer messages.
//
// Identities: the customer is the chat. In a private chat chat.id equals
// the user's id; a group the bot was added to is treated as one customer
// keyed by its (negative) chat id, its title as the name, and the member
// who spoke recorded in Content["from"].
//
// The bot token travels in every request path (/bot<token>/method) and in
// file URLs (/file/bot<token>/path); it is scrubbed from every error this
// package returns and never logged.
package telegram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-telegram/bot"

	"github.com/parleydesk/parley/channels"
)

var _ channels.Adapter = (*Adapter)(nil)

// maxEnvelope bounds how much of a Bot API answer is buffered to read its
// envelope; real answers are a few KB (a profile-photo page is the largest).
const maxEnvelope = 4 << 20

// Adapter is the Telegram channels.Adapter. It holds no per-channel state:
// every call takes the bot token from the channels.Channel it is given, so
// one Adapter serves every Telegram channel, a rotated token takes effect
// on the next call, and it is safe for concurrent use.
type Adapter struct {
	baseURL   string
	userAgent string
	timeout   time.Duration
	http      *http.Client
}

// New returns an adapter talking to cfg.TelegramBaseURL (the Bot API and
// its file host share it), each call bounded by cfg.HTTPTimeout.
func New(cfg channels.Config) *Adapter {
	cfg = cfg.WithDefaults()
	return &Adapter{
		baseURL:   strings.TrimRight(cfg.TelegramBaseURL, "/"),
		userAgent: cfg.UserAgent,
		timeout:   cfg.HTTPTimeout,
		http:      &http.Client{Timeout: cfg.HTTPTimeout},
	}
}

// Provider returns channels.Telegram.
func (a *Adapter) Provider() string { return channels.Telegram }

// APIError is a Bot API call that Telegram answered with ok:false (or with
// a non-2xx status and no envelope, e.g. a proxy's 502 page).
type APIError struct {
	// Method is the Bot API method, e.g. "sendMessage".
	Method string
	// Code is the envelope's error_code, or the HTTP status when the answer
	// had no envelope.
	Code int
	// Description is Telegram's text, e.g. "Forbidden: bot was blocked by
	// the user".
	Description string
	// RetryAfter is parameters.retry_after (flood control).
	RetryAfter time.Duration
	// MigrateToChatID is parameters.migrate_to_chat_id: the group became a
	// supergroup with this new id.
	MigrateToChatID int64
}

func (e *APIError) Error() string {
	return fmt.Sprintf("telegram %s: %d %s", e.Method, e.Code, e.Description)
}

// envelope is the Bot API answer shape shared by every method.
type envelope struct {
	OK          bool            `json:"ok"`
	Result      json.RawMessage `json:"result"`
	ErrorCode   int             `json:"error_code"`
	Description string          `json:"description"`
	Parameters  *struct {
		RetryAfter      int   `json:"retry_after"`
		MigrateToChatID int64 `json:"migrate_to_chat_id"`
	} `json:"parameters"`
}

// exchange records the raw answer of one Bot API call. The library folds
// most error codes into a few sentinel errors and loses 5xx codes and
// descriptions, so recordingClient keeps the answer for classify to read
// the envelope itself.
type exchange struct {
	status int
	env    *envelope // nil when the body was not a Bot API envelope
}

type exchangeKey struct{}

// recordingClient is the bot.HttpClient given to the library: it buffers
// each answer, decodes its envelope into the request context's *exchange,
// and hands the library an identical body.
type recordingClient struct {
	inner     *http.Client
	userAgent string
}

func (c recordingClient) Do(req *http.Request) (*http.Response, error) {
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.inner.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxEnvelope))
	if err != nil {
		return nil, err
	}
	if ex, ok := req.Context().Value(exchangeKey{}).(*exchange); ok {
		ex.status = resp.StatusCode
		var env envelope
		if json.Unmarshal(body, &env) == nil && (env.OK || env.ErrorCode != 0) {
			ex.env = &env
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// botFor returns a library client for the channel's token. Building one is
// cheap (WithSkipGetMe: no network), so none is cached and token changes
// need no invalidation.
func (a *Adapter) botFor(ch channels.Channel) (*bot.Bot, error) {
	if strings.TrimSpace(ch.Token) == "" {
		return nil, errors.New("telegram: channel has no bot token")
	}
	return bot.New(ch.Token,
		bot.WithServerURL(a.baseURL),
		bot.WithSkipGetMe(),
		bot.WithHTTPClient(a.timeout, recordingClient{inner: a.http, userAgent: a.userAgent}),
		// The library reports pipe-closing hiccups here after the call's
		// own error has already been returned; they add nothing.
		bot.WithErrorsHandler(func(error) {}),
	)
}

// call runs one library method and turns its outcome into either the raw
// result or an error: *APIError when Telegram answered, otherwise the
// transport error with the token scrubbed. A call that Telegram accepted
// but the library failed to decode still returns the raw result, so that a
// message that was sent is never reported as failed (and resent).
func (a *Adapter) call(ctx context.Context, ch channels.Channel, method string, fn func(context.Context, *bot.Bot) error) (json.RawMessage, error) {
	b, err := a.botFor(ch)
	if err != nil {
		return nil, err
	}
	ex := &exchange{}
	err = fn(context.WithValue(ctx, exchangeKey{}, ex), b)
	switch {
	case ex.env != nil && ex.env.OK:
		return ex.env.Result, nil
	case ex.env != nil:
		apiErr := &APIError{Method: method, Code: ex.env.ErrorCode, Description: ex.env.Description}
		if p := ex.env.Parameters; p != nil {
			apiErr.RetryAfter = time.Duration(p.RetryAfter) * time.Second
			apiErr.MigrateToChatID = p.MigrateToChatID
		}
		return nil, apiErr
	case ex.status != 0 && (ex.status < 200 || ex.status > 299):
		return nil, &APIError{Method: method, Code: ex.status, Description: http.StatusText(ex.status) + " (no Bot API envelope)"}
	case err != nil:
		return nil, redact(fmt.Errorf("telegram %s: %w", method, err), ch.Token)
	default:
		// 2xx without an envelope: not a Bot API server.
		return nil, fmt.Errorf("telegram %s: answer (HTTP %d) is not a Bot API envelope", method, ex.status)
	}
}

// redactedError carries a message with the token removed; Unwrap keeps
// errors.Is working for context.Canceled and DeadlineExceeded.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact removes the token from err's message and from any *url.Error in
// its chain (net/http puts the full request URL, token included, there).
func redact(err error, token string) error {
	if err == nil || token == "" {
		return err
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = strings.ReplaceAll(ue.URL, token, "<token>")
	}
	msg := err.Error()
	if !strings.Contains(msg, token) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(msg, token, "<token>"), err: err}
}
