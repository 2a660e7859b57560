// Package whatsapp is the WhatsApp Business Cloud API adapter
// (reference/channels.md §2): it parses the webhook deliveries of
// whatsapp_business_account, sends text and files through the Graph API,
// and downloads media in the two steps the Cloud API asks for.
//
// The customer's key is the business-scoped user id (BSUID, user_id /
// from_user_id), with wa_id/from only for payloads without one; the phone
// travels as Identity.Phone.
package whatsapp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
)

// Adapter is the WhatsApp Cloud API adapter.
type Adapter struct {
	graph *metagraph.Client
}

var _ channels.Adapter = (*Adapter)(nil)

// New returns an adapter calling the Graph API located by cfg.
func New(cfg channels.Config) *Adapter {
	return &Adapter{graph: metagraph.New(cfg)}
}

// Provider implements channels.Adapter.
func (a *Adapter) Provider() string { return channels.WhatsApp }

// Retry delays for the rate limits; Meta gives none in its answers.
const (
	// PairRateRetry follows 131056: about one message per 6 s is allowed
	// to one customer.
	PairRateRetry = 10 * time.Second
	// ThroughputRetry follows 130429 (the number's messages per second).
	ThroughputRetry = 5 * time.Second
	// AppRateRetry follows 4 (application call limit, hourly window).
	AppRateRetry = time.Minute
	// AccountRateRetry follows 80007 (the WABA's hourly call limit).
	AccountRateRetry = 5 * time.Minute
)

// sendRules classify the Graph errors of a send (reference/channels.md
// §2.6-2.7). What no rule names: 5xx/429 transient, other 4xx permanent.
var sendRules = []metagraph.Rule{
	{Code: 131047, WindowClosed: true},                         // re-engagement: 24 h window closed
	{Code: 131056, Transient: true, RetryAfter: PairRateRetry}, // pair rate limit
	{Code: 130429, Transient: true, RetryAfter: ThroughputRetry},
	{Code: 4, Transient: true, RetryAfter: AppRateRetry},
	{Code: 80007, Transient: true, RetryAfter: AccountRateRetry},
	{Code: 190},                     // access token invalid or expired
	{Code: 131026},                  // message undeliverable
	{Code: 1, Transient: true},      // API unknown
	{Code: 2, Transient: true},      // API service (temporary)
	{Code: 131000, Transient: true}, // something went wrong
}

// isBSUID tells a business-scoped user id ("US.13491208655302741918") from
// a phone number (digits only).
func isBSUID(s string) bool { return strings.Contains(s, ".") }

// Send implements channels.Adapter: POST /{ver}/{phone_number_id}/messages
// with the system-user token as Bearer. A BSUID recipient goes in
// "recipient" (with "to" = the phone when known); otherwise "to" is the
// wa_id. Files are uploaded first (POST /{ver}/{phone_number_id}/media)
// and sent by media id: Parley holds the bytes, not a public URL.
func (a *Adapter) Send(ctx context.Context, ch channels.Channel, out channels.Outbound) (channels.SendResult, error) {
	if ch.ExternalID == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "CONFIG", Reason: "the channel has no phone_number_id"}
	}
	msg := map[string]any{"messaging_product": "whatsapp", "recipient_type": "individual"}
	switch {
	case isBSUID(out.To):
		msg["recipient"] = out.To
		if out.Phone != "" {
			msg["to"] = out.Phone
		}
	case out.To != "":
		msg["to"] = out.To
	case out.Phone != "":
		msg["to"] = out.Phone
	default:
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "NO_RECIPIENT", Reason: "no recipient"}
	}
	if out.File != nil {
		id, err := a.upload(ctx, ch, out.File)
		if err != nil {
			return channels.SendResult{}, err
		}
		typ, obj := mediaObject(out.File, id, out.Text)
		msg["type"], msg[typ] = typ, obj
	} else {
		if out.Text == "" {
			return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "EMPTY", Reason: "nothing to send"}
		}
		msg["type"] = "text"
		msg["text"] = map[string]any{"preview_url": false, "body": out.Text}
	}
	var ans struct {
		Messages []struct {
			ID string `json:"id"`
		} `json:"messages"`
	}
	err := a.graph.Call(ctx, metagraph.Request{
		Method: http.MethodPost,
		Path:   []string{ch.ExternalID, "messages"},
		Token:  ch.Token,
		JSON:   msg,
	}, &ans)
	if err != nil {
		return channels.SendResult{}, metagraph.Classify(err, sendRules)
	}
	if len(ans.Messages) == 0 || ans.Messages[0].ID == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "BAD_ANSWER", Reason: "the answer has no message id"}
	}
	return channels.SendResult{MessageID: ans.Messages[0].ID}, nil
}

// mediaObject is the message's media part. Audio and stickers take no
// caption: with a text they go as a document, so that the text is not lost
// and the send stays one message (one provider id).
func mediaObject(f *channels.OutboundFile, id, text string) (string, map[string]any) {
	typ := "document"
	switch f.Kind {
	case channels.KindPhoto:
		typ = "image"
	case channels.KindVideo:
		typ = "video"
	case channels.KindAudio, channels.KindVoice:
		typ = "audio"
	case channels.KindSticker:
		typ = "sticker"
	}
	if text != "" && (typ == "audio" || typ == "sticker") {
		typ = "document"
	}
	obj := map[string]any{"id": id}
	if text != "" {
		obj["caption"] = text
	}
	if typ == "document" && f.Name != "" {
		obj["filename"] = f.Name
	}
	return typ, obj
}

func (a *Adapter) upload(ctx context.Context, ch channels.Channel, f *channels.OutboundFile) (string, error) {
	mimeType := f.MimeType
	if mimeType == "" {
		mimeType = http.DetectContentType(f.Data)
	}
	body, ct, err := metagraph.Multipart([]metagraph.Field{
		{Name: "messaging_product", Value: "whatsapp"},
		{Name: "type", Value: mimeType},
	}, "file", f.Name, mimeType, f.Data)
	if err != nil {
		return "", &channels.SendError{Permanent: true, Code: "UPLOAD", Reason: err.Error()}
	}
	var ans struct {
		ID string `json:"id"`
	}
	err = a.graph.Call(ctx, metagraph.Request{
		Method:      http.MethodPost,
		Path:        []string{ch.ExternalID, "media"},
		Token:       ch.Token,
		Body:        body,
		ContentType: ct,
	}, &ans)
	if err != nil {
		return "", metagraph.Classify(err, sendRules)
	}
	if ans.ID == "" {
		return "", &channels.SendError{Permanent: true, Code: "BAD_ANSWER", Reason: "the media upload answer has no id"}
	}
	return ans.ID, nil
}

// Profile implements channels.Adapter: WhatsApp has no profile API; the name
// (and username) come with every delivery.
func (a *Adapter) Profile(context.Context, channels.Channel, string) (channels.Profile, error) {
	return channels.Profile{}, channels.ErrUnsupported
}

// SupportsProfiles implements channels.ProfileSupport: no profile API.
func (a *Adapter) SupportsProfiles() bool { return false }

// Download implements channels.Adapter for a media id: GET /{ver}/{media id}
// gives a short-lived URL (about 5 minutes), fetched with the same Bearer
// token and the configured User-Agent.
func (a *Adapter) Download(ctx context.Context, ch channels.Channel, ref string) (channels.File, error) {
	if ref == "" {
		return channels.File{}, errors.New("whatsapp download: empty media id")
	}
	var meta struct {
		URL      string               `json:"url"`
		MimeType string               `json:"mime_type"`
		FileSize metagraph.FlexString `json:"file_size"`
	}
	if err := a.graph.Call(ctx, metagraph.Request{Path: []string{ref}, Token: ch.Token}, &meta); err != nil {
		return channels.File{}, fmt.Errorf("whatsapp media %s: %w", ref, err)
	}
	if meta.URL == "" {
		return channels.File{}, fmt.Errorf("whatsapp media %s: the answer has no url", ref)
	}
	f, err := a.graph.Fetch(ctx, meta.URL, ch.Token)
	if err != nil {
		return channels.File{}, fmt.Errorf("whatsapp media %s download: %w", ref, err)
	}
	if meta.MimeType != "" {
		f.MimeType = meta.MimeType
	}
	if n, err := strconv.ParseInt(meta.FileSize.String(), 10, 64); err == nil && n > 0 {
		f.Size = n
	}
	return f, nil
}

// RegisterWebhook implements channels.Adapter: Meta webhooks are set in the
// App Dashboard.
func (a *Adapter) RegisterWebhook(context.Context, channels.Channel, string) error {
	return channels.ErrUnsupported
}
