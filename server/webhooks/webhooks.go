// Package webhooks receives provider deliveries: POST /webhooks/telegram/{id},
// GET|POST /webhooks/whatsapp/{id} and GET|POST /webhooks/messenger/{id}.
// A handler only translates and authorises: it finds the channel, verifies
// the delivery on the raw bytes (Telegram's secret header in constant time,
// Meta's X-Hub-Signature-256), has the adapter parse it, and hands it to the
// desk, which stores and applies it in one transaction before the 2xx (R3).
// Every refusal is logged with its reason and changes nothing.
package webhooks

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/ent/schema/enum"
	"github.com/parleydesk/parley/graph"
)

// Codes of refusals that are not use-case errors: those of the GraphQL
// endpoint where they mean the same, and one of the webhooks' own.
const (
	codeBadRequest            = graph.CodeBadRequest
	codeTooLarge              = graph.CodeRequestTooLarge
	codeUnavailable desk.Code = "UNAVAILABLE"
)

// DefaultMaxBody bounds a delivery (Meta sends up to 3 MB).
const DefaultMaxBody = 4 << 20

// Register mounts the webhook endpoints on mux.
func Register(mux *http.ServeMux, d *desk.Desk, log *slog.Logger, maxBody int64) {
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	h := &handler{desk: d, log: log, maxBody: maxBody}
	mux.HandleFunc("POST /webhooks/telegram/{id}", h.deliver(enum.ProviderTelegram, telegramVerify))
	mux.HandleFunc("GET /webhooks/whatsapp/{id}", h.handshake(enum.ProviderWhatsApp))
	mux.HandleFunc("POST /webhooks/whatsapp/{id}", h.deliver(enum.ProviderWhatsApp, metaVerify))
	mux.HandleFunc("GET /webhooks/messenger/{id}", h.handshake(enum.ProviderMessenger))
	mux.HandleFunc("POST /webhooks/messenger/{id}", h.deliver(enum.ProviderMessenger, metaVerify))
}

type handler struct {
	desk    *desk.Desk
	log     *slog.Logger
	maxBody int64
}

type verifier func(r *http.Request, body []byte, ch channels.Channel) bool

func telegramVerify(r *http.Request, _ []byte, ch channels.Channel) bool {
	return channels.VerifyTelegramSecret(r.Header.Get("X-Telegram-Bot-Api-Secret-Token"), ch.WebhookSecret)
}

func metaVerify(r *http.Request, body []byte, ch channels.Channel) bool {
	return channels.VerifyMetaSignature(r.Header.Get("X-Hub-Signature-256"), body, ch.AppSecret)
}

// refuse answers an error status with a stable code and a short reason, in
// the error shape of the rest of the API, and logs it.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, status int, code desk.Code, reason string, args ...any) {
	h.log.Warn("webhook refused", append([]any{"path", r.URL.Path, "status", status, "code", code, "reason", reason}, args...)...)
	graph.WriteError(w, status, code, reason)
}

// unavailable answers 503 to a delivery that could not be taken now (the
// provider delivers it again) and logs why: as an error of the server,
// unless the request itself ended first (the provider hung up, a shutdown
// past its grace), which changed nothing (desk.txFunc).
func (h *handler) unavailable(w http.ResponseWriter, r *http.Request, what string, err error, args ...any) {
	args = append(args, "err", err)
	if desk.CallerEnded(r.Context(), err) {
		h.log.Info(what+": the request ended first", args...)
	} else {
		h.log.Error(what, args...)
	}
	graph.WriteError(w, http.StatusServiceUnavailable, codeUnavailable, "temporarily unavailable")
}

// channel finds the active channel of the URL, or answers the refusal.
func (h *handler) channel(w http.ResponseWriter, r *http.Request, p enum.Provider) (channels.Channel, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		h.refuse(w, r, http.StatusNotFound, desk.CodeNotFound, "unknown channel")
		return channels.Channel{}, false
	}
	ch, err := h.desk.WebhookChannel(r.Context(), id, p)
	var de *desk.Error
	switch {
	case err == nil:
		return ch, true
	case errors.As(err, &de) && de.Code == desk.CodeNotFound:
		h.refuse(w, r, http.StatusNotFound, desk.CodeNotFound, "unknown channel")
	case errors.As(err, &de) && de.Code == desk.CodeChannelInactive:
		h.refuse(w, r, http.StatusForbidden, desk.CodeChannelInactive, "channel inactive")
	default:
		h.unavailable(w, r, "webhook: channel lookup", err)
	}
	return channels.Channel{}, false
}

// handshake answers Meta's GET verification with the challenge.
func (h *handler) handshake(p enum.Provider) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ch, ok := h.channel(w, r, p)
		if !ok {
			return
		}
		challenge, ok := channels.MetaChallenge(r.URL.Query(), ch.VerifyToken)
		if !ok {
			h.refuse(w, r, http.StatusForbidden, desk.CodeForbidden, "verification failed", "channel_id", ch.ID)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, challenge)
	}
}

// deliver verifies, parses and applies a delivery.
func (h *handler) deliver(p enum.Provider, verify verifier) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ch, ok := h.channel(w, r, p)
		if !ok {
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.refuse(w, r, http.StatusRequestEntityTooLarge, codeTooLarge, "delivery too large", "channel_id", ch.ID, "limit", h.maxBody)
			return
		}
		if err != nil {
			h.refuse(w, r, http.StatusBadRequest, codeBadRequest, "unreadable body", "channel_id", ch.ID, "err", err)
			return
		}
		if !verify(r, body, ch) {
			h.refuse(w, r, http.StatusUnauthorized, desk.CodeUnauthenticated, "bad signature", "channel_id", ch.ID)
			return
		}
		adapter := h.desk.Adapter(p)
		if adapter == nil {
			h.refuse(w, r, http.StatusServiceUnavailable, codeUnavailable, "provider not configured", "channel_id", ch.ID)
			return
		}
		del, err := adapter.Parse(ch, body)
		if err != nil {
			h.refuse(w, r, http.StatusBadRequest, codeBadRequest, "malformed delivery", "channel_id", ch.ID, "err", err)
			return
		}
		res, err := h.desk.ApplyDelivery(r.Context(), ch, del, body)
		if err != nil {
			// Not acknowledged: the provider delivers it again.
			h.unavailable(w, r, "webhook: apply delivery", err, "channel_id", ch.ID, "key", del.Key)
			return
		}
		h.log.Debug("webhook delivered", "channel_id", ch.ID, "key", del.Key, "duplicate", res.Duplicate,
			"applied", res.Applied, "ignored", res.Ignored)
		w.WriteHeader(http.StatusOK)
	}
}
