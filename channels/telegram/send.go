package telegram

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/go-telegram/bot"
	"github.com/go-telegram/bot/models"

	"github.com/parleydesk/parley/channels"
)

const (
	// MaxTextLength is sendMessage's limit, counted (conservatively) in
	// UTF-16 code units as Telegram counts entity offsets.
	MaxTextLength = 4096
	// MaxCaptionLength is the caption limit of sendPhoto and sendDocument.
	MaxCaptionLength = 1024
	// maxPhotoUpload is sendPhoto's upload limit; larger images go as
	// documents, which Telegram accepts up to 50 MB.
	maxPhotoUpload = 10 << 20
)

// sentMessage is the part of a sent Message the result needs.
type sentMessage struct {
	MessageID int `json:"message_id"`
	Chat      struct {
		ID int64 `json:"id"`
	} `json:"chat"`
}

// Send delivers out to the chat out.To and returns "<chat id>:<message id>"
// of the last Telegram message it produced.
//
// Texts longer than MaxTextLength are split (at a line break, else a
// space, else anywhere between characters) into several sendMessage calls.
// A file goes first by sendPhoto or sendDocument with the text as caption;
// a text too long for a caption follows as message(s) of its own. When a
// part after the first fails, the error is made permanent and says how
// many parts were delivered: a retry of the whole Outbound would repeat
// them to the customer.
func (a *Adapter) Send(ctx context.Context, ch channels.Channel, out channels.Outbound) (channels.SendResult, error) {
	if out.To == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "NO_RECIPIENT", Reason: "outbound has no chat id"}
	}
	if out.File == nil && strings.TrimSpace(out.Text) == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "EMPTY", Reason: "outbound has neither text nor file"}
	}
	if strings.TrimSpace(ch.Token) == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "NO_TOKEN", Reason: "channel has no bot token"}
	}

	var steps []func(context.Context) (json.RawMessage, error)
	text := out.Text
	if out.File != nil {
		caption := ""
		if utf16Len(text) <= MaxCaptionLength {
			caption, text = text, ""
		}
		f := out.File
		steps = append(steps, func(ctx context.Context) (json.RawMessage, error) {
			return a.sendFile(ctx, ch, out.To, f, caption)
		})
	}
	for _, part := range splitText(text, MaxTextLength) {
		steps = append(steps, func(ctx context.Context) (json.RawMessage, error) {
			return a.call(ctx, ch, "sendMessage", func(ctx context.Context, b *bot.Bot) error {
				_, err := b.SendMessage(ctx, &bot.SendMessageParams{ChatID: out.To, Text: part})
				return err
			})
		})
	}

	var last channels.SendResult
	for i, step := range steps {
		raw, err := step(ctx)
		if err == nil {
			last, err = sendResult(raw)
		}
		if err != nil {
			se := sendError(err)
			if i > 0 {
				se.Permanent = true
				se.RetryAfter = 0
				se.Reason = fmt.Sprintf("%s (only %d of %d parts were delivered, last %s)", se.Reason, i, len(steps), last.MessageID)
			}
			return channels.SendResult{}, se
		}
	}
	return last, nil
}

// sendFile uploads f: photos (up to sendPhoto's 10 MB) by sendPhoto so the
// customer sees an image, anything else by sendDocument.
func (a *Adapter) sendFile(ctx context.Context, ch channels.Channel, to string, f *channels.OutboundFile, caption string) (json.RawMessage, error) {
	name := f.Name
	if name == "" {
		name = "file"
	}
	upload := &models.InputFileUpload{Filename: name, Data: bytes.NewReader(f.Data)}
	if f.Kind == channels.KindPhoto && len(f.Data) <= maxPhotoUpload {
		return a.call(ctx, ch, "sendPhoto", func(ctx context.Context, b *bot.Bot) error {
			_, err := b.SendPhoto(ctx, &bot.SendPhotoParams{ChatID: to, Photo: upload, Caption: caption})
			return err
		})
	}
	return a.call(ctx, ch, "sendDocument", func(ctx context.Context, b *bot.Bot) error {
		_, err := b.SendDocument(ctx, &bot.SendDocumentParams{ChatID: to, Document: upload, Caption: caption})
		return err
	})
}

func sendResult(raw json.RawMessage) (channels.SendResult, error) {
	var m sentMessage
	if err := json.Unmarshal(raw, &m); err != nil || m.MessageID == 0 {
		// Telegram said ok; the message exists. Reporting a failure would
		// make the outbox send it again, so answer with what is known.
		return channels.SendResult{}, nil
	}
	return channels.SendResult{MessageID: messageID(m.Chat.ID, m.MessageID)}, nil
}

// sendError classifies a failed call for the outbox.
func sendError(err error) *channels.SendError {
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		// Network failure, timeout, cancellation: try again later.
		return &channels.SendError{Code: "TRANSPORT", Reason: err.Error()}
	}
	se := &channels.SendError{Code: strconv.Itoa(apiErr.Code), Reason: apiErr.Description}
	switch c := apiErr.Code; {
	case c == http.StatusTooManyRequests:
		// Flood control: retry after Telegram's delay.
		se.RetryAfter = apiErr.RetryAfter
	case c == http.StatusForbidden:
		// "bot was blocked by the user", "bot can't initiate conversation
		// with a user", "user is deactivated", "bot was kicked from the
		// group chat": this chat cannot be written to until it writes to us.
		se.Permanent = true
		se.Unreachable = true
	case c == http.StatusBadRequest && apiErr.MigrateToChatID != 0:
		se.Permanent = true
		se.Reason = fmt.Sprintf("%s (group moved to chat %d)", apiErr.Description, apiErr.MigrateToChatID)
	case c >= 400 && c < 500:
		// 400 "chat not found" and other bad requests, 401 invalid token,
		// 404 malformed token: the same request will fail again.
		se.Permanent = true
	}
	// 5xx and anything unknown stay transient.
	return se
}

// splitText cuts s into parts of at most limit UTF-16 code units, breaking
// at the last line break, else the last space, of each window (the break
// itself is dropped), else between two runes. Blank parts are left out.
func splitText(s string, limit int) []string {
	var parts []string
	for utf16Len(s) > limit {
		end, units := 0, 0
		for i, r := range s {
			n := utf16.RuneLen(r)
			if n < 0 {
				n = 1
			}
			if units+n > limit {
				end = i
				break
			}
			units += n
		}
		cut, skip := end, 0
		if j := strings.LastIndexByte(s[:end], '\n'); j > 0 {
			cut, skip = j, 1
		} else if j := strings.LastIndexByte(s[:end], ' '); j > 0 {
			cut, skip = j, 1
		}
		parts = append(parts, s[:cut])
		s = s[cut+skip:]
	}
	parts = append(parts, s)
	kept := parts[:0]
	for _, p := range parts {
		if strings.TrimSpace(p) != "" {
			kept = append(kept, p)
		}
	}
	return kept
}

func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		if l := utf16.RuneLen(r); l > 0 {
			n += l
		} else {
			n++
		}
	}
	return n
}
