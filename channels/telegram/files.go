package telegram

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-telegram/bot"
	"github.com/go-telegram/bot/models"

	"github.com/parleydesk/parley/channels"
)

// MaxDownloadSize is the Bot API's getFile limit (20 MB).
const MaxDownloadSize = 20 << 20

// ErrFileTooBig is returned by Download for files over MaxDownloadSize,
// which the Bot API does not serve to bots.
var ErrFileTooBig = errors.New("telegram: file is larger than the Bot API's 20 MB download limit")

// AllowedUpdates are the update types RegisterWebhook subscribes to: what
// Parse acts on. callback_query is left out because Parley sends no inline
// keyboards; Parse still acknowledges one as ignored.
var AllowedUpdates = []string{
	models.AllowedUpdateMessage,
	models.AllowedUpdateEditedMessage,
	models.AllowedUpdateMyChatMember,
}

// webhookMaxConnections is Telegram's default, stated so that a value set
// by hand on the bot is reset.
const webhookMaxConnections = 40

// secretTokenRE is setWebhook's rule for secret_token.
var secretTokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,256}$`)

// extMime covers the extensions of Telegram's file paths (photos/*.jpg,
// voice/*.oga, stickers/*.webp|tgs|webm, …) without depending on the host's
// MIME tables; mime.TypeByExtension handles the rest.
var extMime = map[string]string{
	".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
	".gif": "image/gif", ".oga": "audio/ogg", ".ogg": "audio/ogg", ".opus": "audio/ogg",
	".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".mp4": "video/mp4", ".mov": "video/quicktime",
	".webm": "video/webm", ".tgs": "application/x-tgsticker", ".pdf": "application/pdf",
}

// Profile fetches the customer's current profile photo as a PhotoRef (the
// largest size of the newest photo); Telegram has no name lookup for bots
// beyond what updates carry, so only PhotoRef is filled. Groups (negative
// chat ids) have no user profile photos: an empty Profile.
func (a *Adapter) Profile(ctx context.Context, ch channels.Channel, externalID string) (channels.Profile, error) {
	userID, err := strconv.ParseInt(externalID, 10, 64)
	if err != nil {
		return channels.Profile{}, fmt.Errorf("telegram profile: chat id %q is not a number", externalID)
	}
	if userID < 0 {
		return channels.Profile{}, nil
	}
	raw, err := a.call(ctx, ch, "getUserProfilePhotos", func(ctx context.Context, b *bot.Bot) error {
		_, err := b.GetUserProfilePhotos(ctx, &bot.GetUserProfilePhotosParams{UserID: userID, Limit: 1})
		return err
	})
	if err != nil {
		return channels.Profile{}, err
	}
	var photos models.UserProfilePhotos
	if err := json.Unmarshal(raw, &photos); err != nil {
		return channels.Profile{}, fmt.Errorf("telegram getUserProfilePhotos: %w", err)
	}
	var p channels.Profile
	if len(photos.Photos) > 0 && len(photos.Photos[0]) > 0 {
		p.PhotoRef = largest(photos.Photos[0]).FileID
	}
	return p, nil
}

// Download resolves a file_id with getFile and streams the file from
// {base}/file/bot<token>/<file_path>. That URL embeds the token: it never
// leaves this function, and errors are scrubbed of it. getFile does not
// keep file names or MIME types, so Name is the path's base name and
// MimeType is guessed from its extension; callers prefer the values saved
// from the inbound message.
func (a *Adapter) Download(ctx context.Context, ch channels.Channel, ref string) (channels.File, error) {
	if ref == "" {
		return channels.File{}, errors.New("telegram download: empty file_id")
	}
	raw, err := a.call(ctx, ch, "getFile", func(ctx context.Context, b *bot.Bot) error {
		_, err := b.GetFile(ctx, &bot.GetFileParams{FileID: ref})
		return err
	})
	if err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.Code == http.StatusBadRequest && strings.Contains(strings.ToLower(apiErr.Description), "file is too big") {
			return channels.File{}, fmt.Errorf("%w (%s)", ErrFileTooBig, apiErr.Description)
		}
		return channels.File{}, err
	}
	var f models.File
	if err := json.Unmarshal(raw, &f); err != nil {
		return channels.File{}, fmt.Errorf("telegram getFile: %w", err)
	}
	if f.FileSize > MaxDownloadSize {
		return channels.File{}, fmt.Errorf("%w (%d bytes)", ErrFileTooBig, f.FileSize)
	}
	if f.FilePath == "" {
		return channels.File{}, errors.New("telegram getFile: no file_path in the answer (file unavailable)")
	}

	b, err := a.botFor(ch)
	if err != nil {
		return channels.File{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.FileDownloadLink(&f), nil)
	if err != nil {
		return channels.File{}, redact(fmt.Errorf("telegram download: %w", err), ch.Token)
	}
	req.Header.Set("User-Agent", a.userAgent)
	resp, err := a.http.Do(req)
	if err != nil {
		return channels.File{}, redact(fmt.Errorf("telegram download: %w", err), ch.Token)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return channels.File{}, fmt.Errorf("telegram download %s: HTTP %d", f.FilePath, resp.StatusCode)
	}
	if resp.ContentLength > MaxDownloadSize {
		resp.Body.Close()
		return channels.File{}, fmt.Errorf("%w (%d bytes)", ErrFileTooBig, resp.ContentLength)
	}

	size := f.FileSize
	if size == 0 && resp.ContentLength > 0 {
		size = resp.ContentLength
	}
	return channels.File{
		Body:     &cappedBody{r: resp.Body, limit: MaxDownloadSize},
		MimeType: guessMime(f.FilePath, resp.Header.Get("Content-Type")),
		Name:     path.Base(f.FilePath),
		Size:     size,
	}, nil
}

// cappedBody fails a body that runs past limit bytes, so that a server not
// declaring its length cannot stream without end.
type cappedBody struct {
	r     io.ReadCloser
	limit int64
	read  int64
}

func (c *cappedBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read > c.limit {
		return n, ErrFileTooBig
	}
	return n, err
}

func (c *cappedBody) Close() error { return c.r.Close() }

// guessMime prefers the file path's extension; the file host's own
// Content-Type is used only when it says more than octet-stream.
func guessMime(filePath, contentType string) string {
	ext := strings.ToLower(path.Ext(filePath))
	if m, ok := extMime[ext]; ok {
		return m
	}
	if m := mime.TypeByExtension(ext); m != "" {
		return m
	}
	if ct, _, err := mime.ParseMediaType(contentType); err == nil && ct != "application/octet-stream" {
		return ct
	}
	return "application/octet-stream"
}

// RegisterWebhook points the bot at url with the channel's secret (sent
// back as X-Telegram-Bot-Api-Secret-Token) and the AllowedUpdates list.
// A channel without a valid secret is refused: its deliveries could not be
// told from forged ones, and channels.VerifyTelegramSecret rejects them all.
func (a *Adapter) RegisterWebhook(ctx context.Context, ch channels.Channel, url string) error {
	if url == "" {
		return errors.New("telegram setWebhook: empty url")
	}
	if !secretTokenRE.MatchString(ch.WebhookSecret) {
		return errors.New("telegram setWebhook: channel webhook secret must be 1-256 characters of A-Z a-z 0-9 _ -")
	}
	raw, err := a.call(ctx, ch, "setWebhook", func(ctx context.Context, b *bot.Bot) error {
		_, err := b.SetWebhook(ctx, &bot.SetWebhookParams{
			URL:            url,
			SecretToken:    ch.WebhookSecret,
			AllowedUpdates: AllowedUpdates,
			MaxConnections: webhookMaxConnections,
			// DropPendingUpdates stays false: updates queued while the
			// webhook was down are customer messages.
		})
		return err
	})
	if err != nil {
		return err
	}
	var ok bool
	if err := json.Unmarshal(raw, &ok); err != nil || !ok {
		return fmt.Errorf("telegram setWebhook: unexpected result %s", raw)
	}
	return nil
}
