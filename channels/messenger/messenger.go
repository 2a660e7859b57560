// Package messenger is the Facebook Messenger Platform adapter
// (reference/channels.md §3): it parses the "page" webhook deliveries
// (messaging and standby events), sends through the Send API with the page
// access token, reads the User Profile API and downloads CDN attachments.
//
// The customer's key is the page-scoped id (PSID).
package messenger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/parleydesk/parley/channels"
	"github.com/parleydesk/parley/channels/metagraph"
)

// EchoMetadata is the message.metadata Send puts on every message; Meta
// returns it in the echo, which tells our own echoes apart when the
// channel knows no app id.
const EchoMetadata = "parley"

// Adapter is the Messenger adapter.
type Adapter struct {
	graph *metagraph.Client
}

var _ channels.Adapter = (*Adapter)(nil)

// New returns an adapter calling the Graph API located by cfg.
func New(cfg channels.Config) *Adapter {
	return &Adapter{graph: metagraph.New(cfg)}
}

// Provider implements channels.Adapter.
func (a *Adapter) Provider() string { return channels.Messenger }

// Retry delays; Meta gives none in its answers.
const (
	// RestrictedRetry follows 10/1893063: the page is temporarily
	// restricted from sending.
	RestrictedRetry = time.Hour
	// RateRetry follows the rate limits 4 (app), 32 (page) and 613.
	RateRetry = time.Minute
)

// sendRules classify the Graph errors of a send (reference/channels.md
// §3.4). What no rule names: 5xx/429 transient, other 4xx permanent.
var sendRules = []metagraph.Rule{
	{Code: 10, Subcode: 2018278, WindowClosed: true},                           // outside the messaging window
	{Code: 10, Subcode: 1893063, Transient: true, RetryAfter: RestrictedRetry}, // page temporarily restricted
	{Code: 551, Unreachable: true},                                             // 1545041: this person isn't available
	{Code: 100, Subcode: 2018001, Unreachable: true},                           // no matching user found
	{Code: 190}, // invalid token
	{Code: 613, Transient: true, RetryAfter: RateRetry},
	{Code: 4, Transient: true, RetryAfter: RateRetry},
	{Code: 32, Transient: true, RetryAfter: RateRetry},
	{Code: 1, Transient: true}, // unknown error
	{Code: 2, Transient: true}, // temporary
}

type sendAnswer struct {
	MessageID string `json:"message_id"`
}

// Send implements channels.Adapter: POST /{ver}/{page id}/messages with the
// page token (as Bearer, so it never sits in a URL), messaging_type
// RESPONSE, or MESSAGE_TAG + HUMAN_AGENT when asked. A file is uploaded in
// the same call (multipart "filedata"); Messenger attachments carry no
// caption, so a text with a file is sent as a second message right after
// it, and SendResult is the text's mid.
func (a *Adapter) Send(ctx context.Context, ch channels.Channel, out channels.Outbound) (channels.SendResult, error) {
	if ch.ExternalID == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "CONFIG", Reason: "the channel has no page id"}
	}
	if out.To == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "NO_RECIPIENT", Reason: "no recipient"}
	}
	if out.File == nil && out.Text == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "EMPTY", Reason: "nothing to send"}
	}
	var res channels.SendResult
	if out.File != nil {
		mid, err := a.sendFile(ctx, ch, out)
		if err != nil {
			return channels.SendResult{}, err
		}
		res.MessageID = mid
	}
	if out.Text != "" {
		req := envelope(out)
		req["message"] = map[string]any{"text": out.Text, "metadata": EchoMetadata}
		var ans sendAnswer
		err := a.graph.Call(ctx, metagraph.Request{
			Method: http.MethodPost,
			Path:   []string{ch.ExternalID, "messages"},
			Token:  ch.Token,
			JSON:   req,
		}, &ans)
		if err != nil {
			se := channels.AsSendError(metagraph.Classify(err, sendRules))
			if out.File != nil && !se.Permanent {
				// The file went out already: retrying would send it twice.
				se.Permanent = true
				se.Reason = "the file was sent but its text was not: " + se.Reason
			}
			return channels.SendResult{}, se
		}
		res.MessageID = ans.MessageID
	}
	if res.MessageID == "" {
		return channels.SendResult{}, &channels.SendError{Permanent: true, Code: "BAD_ANSWER", Reason: "the answer has no message_id"}
	}
	return res, nil
}

// envelope is the recipient and messaging type of a send.
func envelope(out channels.Outbound) map[string]any {
	req := map[string]any{"recipient": map[string]any{"id": out.To}, "messaging_type": "RESPONSE"}
	if out.HumanAgentTag {
		req["messaging_type"], req["tag"] = "MESSAGE_TAG", "HUMAN_AGENT"
	}
	return req
}

func attachmentType(kind string) string {
	switch kind {
	case channels.KindPhoto, channels.KindSticker:
		return "image"
	case channels.KindVideo:
		return "video"
	case channels.KindAudio, channels.KindVoice:
		return "audio"
	default:
		return "file"
	}
}

// sendFile uploads and sends the file in one multipart call.
func (a *Adapter) sendFile(ctx context.Context, ch channels.Channel, out channels.Outbound) (string, error) {
	env := envelope(out)
	recipient, _ := json.Marshal(env["recipient"])
	message, _ := json.Marshal(map[string]any{
		"attachment": map[string]any{"type": attachmentType(out.File.Kind), "payload": map[string]any{"is_reusable": false}},
		"metadata":   EchoMetadata,
	})
	fields := []metagraph.Field{
		{Name: "recipient", Value: string(recipient)},
		{Name: "messaging_type", Value: env["messaging_type"].(string)},
	}
	if tag, ok := env["tag"].(string); ok {
		fields = append(fields, metagraph.Field{Name: "tag", Value: tag})
	}
	fields = append(fields, metagraph.Field{Name: "message", Value: string(message)})
	body, ct, err := metagraph.Multipart(fields, "filedata", out.File.Name, out.File.MimeType, out.File.Data)
	if err != nil {
		return "", &channels.SendError{Permanent: true, Code: "UPLOAD", Reason: err.Error()}
	}
	var ans sendAnswer
	err = a.graph.Call(ctx, metagraph.Request{
		Method:      http.MethodPost,
		Path:        []string{ch.ExternalID, "messages"},
		Token:       ch.Token,
		Body:        body,
		ContentType: ct,
	}, &ans)
	if err != nil {
		return "", metagraph.Classify(err, sendRules)
	}
	if ans.MessageID == "" {
		return "", &channels.SendError{Permanent: true, Code: "BAD_ANSWER", Reason: "the upload answer has no message_id"}
	}
	return ans.MessageID, nil
}

// Profile implements channels.Adapter with the User Profile API:
// GET /{ver}/{psid}?fields=first_name,last_name,profile_pic. PhotoRef is the
// signed, expiring profile_pic URL: download it soon.
func (a *Adapter) Profile(ctx context.Context, ch channels.Channel, psid string) (channels.Profile, error) {
	if psid == "" {
		return channels.Profile{}, errors.New("messenger profile: empty psid")
	}
	var ans struct {
		FirstName  string `json:"first_name"`
		LastName   string `json:"last_name"`
		ProfilePic string `json:"profile_pic"`
	}
	err := a.graph.Call(ctx, metagraph.Request{
		Path:  []string{psid},
		Query: url.Values{"fields": {"first_name,last_name,profile_pic"}},
		Token: ch.Token,
	}, &ans)
	if err != nil {
		return channels.Profile{}, fmt.Errorf("messenger profile %s: %w", psid, err)
	}
	return channels.Profile{
		Name:     strings.TrimSpace(ans.FirstName + " " + ans.LastName),
		PhotoRef: ans.ProfilePic,
	}, nil
}

// Download implements channels.Adapter for a CDN URL (an attachment's
// payload.url, a profile_pic): the URL is signed, so no token is sent.
func (a *Adapter) Download(ctx context.Context, _ channels.Channel, ref string) (channels.File, error) {
	f, err := a.graph.Fetch(ctx, ref, "")
	if err != nil {
		return channels.File{}, fmt.Errorf("messenger download: %w", err)
	}
	if f.Name == "" {
		f.Name = fileName(ref)
	}
	return f, nil
}

// RegisterWebhook implements channels.Adapter: Meta webhooks are set in the
// App Dashboard.
func (a *Adapter) RegisterWebhook(context.Context, channels.Channel, string) error {
	return channels.ErrUnsupported
}
