// Package metagraph is the small Graph API client shared by the WhatsApp
// Cloud API and Messenger adapters (reference/channels.md §4): base URL and
// version from channels.Config, token authentication, the Graph error
// envelope, multipart uploads and media downloads with a configurable
// User-Agent. It uses net/http only.
//
// Tokens travel in the Authorization header (Graph accepts "Bearer <token>"
// for system-user and page access tokens alike), never in URLs, so that no
// URL that ends up in an error message, a proxy log or an access log carries
// one. Errors never contain the token.
package metagraph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/parleydesk/parley/channels"
)

// maxAnswer bounds the JSON answers the client reads (files are streamed).
const maxAnswer = 4 << 20

// Client calls one Graph API host and version.
type Client struct {
	base      string
	version   string
	userAgent string
	http      *http.Client
}

// New returns a client for cfg (defaults applied).
func New(cfg channels.Config) *Client {
	cfg = cfg.WithDefaults()
	return &Client{
		base:      strings.TrimRight(cfg.GraphBaseURL, "/"),
		version:   strings.Trim(cfg.GraphVersion, "/"),
		userAgent: cfg.UserAgent,
		http:      &http.Client{Timeout: cfg.HTTPTimeout},
	}
}

// Endpoint returns {base}/{version}/{segments…}, each segment path-escaped.
// A segment that is empty, "." or ".." is refused: ids come from webhooks
// and callers, and must not walk the path.
func (c *Client) Endpoint(segments ...string) (string, error) {
	var b strings.Builder
	b.WriteString(c.base)
	b.WriteByte('/')
	b.WriteString(c.version)
	for _, s := range segments {
		if s == "" || s == "." || s == ".." {
			return "", fmt.Errorf("metagraph: invalid path segment %q", s)
		}
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String(), nil
}

// Request is one Graph call.
type Request struct {
	Method string
	// Path is the segments after the version, e.g. {phone_number_id, "messages"}.
	Path  []string
	Query url.Values
	// Token is sent as "Authorization: Bearer <token>" when not empty.
	Token string
	// JSON, when not nil, is marshalled as the body (application/json).
	JSON any
	// Body and ContentType are a raw body (multipart uploads).
	Body        io.Reader
	ContentType string
}

// Call performs req and decodes a 2xx JSON answer into out (when not nil).
// A non-2xx answer is an *Error; transport failures are returned as they
// are, with any URL query stripped.
func (c *Client) Call(ctx context.Context, req Request, out any) error {
	endpoint, err := c.Endpoint(req.Path...)
	if err != nil {
		return err
	}
	if len(req.Query) > 0 {
		endpoint += "?" + req.Query.Encode()
	}
	body, contentType := req.Body, req.ContentType
	if req.JSON != nil {
		data, err := json.Marshal(req.JSON)
		if err != nil {
			return fmt.Errorf("metagraph: encoding request: %w", err)
		}
		body, contentType = bytes.NewReader(data), "application/json"
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	hreq, err := http.NewRequestWithContext(ctx, method, endpoint, body)
	if err != nil {
		return fmt.Errorf("metagraph: %w", redact(err))
	}
	if contentType != "" {
		hreq.Header.Set("Content-Type", contentType)
	}
	hreq.Header.Set("Accept", "application/json")
	c.authorize(hreq, req.Token)
	resp, err := c.http.Do(hreq)
	if err != nil {
		return redact(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return redact(err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp, data, req.Token)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &BadAnswerError{Status: resp.StatusCode, Err: err}
	}
	return nil
}

// BadAnswerError is a 2xx answer whose body could not be decoded.
type BadAnswerError struct {
	Status int
	Err    error
}

func (e *BadAnswerError) Error() string {
	return fmt.Sprintf("metagraph: undecodable HTTP %d answer: %v", e.Status, e.Err)
}

func (e *BadAnswerError) Unwrap() error { return e.Err }

// Fetch downloads an absolute http(s) URL (a media URL Graph handed out, a
// CDN URL from a webhook) with the configured User-Agent, and with the
// Bearer token when token is not empty. The caller closes File.Body. A
// non-2xx answer is an *Error (the body is drained and closed).
func (c *Client) Fetch(ctx context.Context, rawURL, token string) (channels.File, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return channels.File{}, errors.New("metagraph: not an absolute http(s) URL")
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return channels.File{}, fmt.Errorf("metagraph: %w", redact(err))
	}
	c.authorize(hreq, token)
	resp, err := c.http.Do(hreq)
	if err != nil {
		return channels.File{}, redact(err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		return channels.File{}, decodeError(resp, data, token)
	}
	f := channels.File{Body: resp.Body, Size: resp.ContentLength}
	if f.Size < 0 {
		f.Size = 0
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		f.MimeType = ct
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != "" {
		if _, params, err := mime.ParseMediaType(cd); err == nil {
			f.Name = params["filename"]
		}
	}
	return f, nil
}

func (c *Client) authorize(r *http.Request, token string) {
	if c.userAgent != "" {
		r.Header.Set("User-Agent", c.userAgent)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
}

// redact strips the query (signed media URLs, any parameter) from the URL
// that net/http puts in its errors.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery, u.Fragment, u.User = "", "", nil
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
		return &url.Error{Op: ue.Op, URL: "(url)", Err: ue.Err}
	}
	return err
}

var quoteEscaper = strings.NewReplacer("\\", "\\\\", `"`, "\\\"", "\r", "", "\n", "")

// Field is one text field of a multipart form.
type Field struct{ Name, Value string }

// Multipart builds a multipart/form-data body: the text fields in order,
// then the file part (with its own Content-Type, which Graph checks).
func Multipart(fields []Field, fileField, fileName, mimeType string, data []byte) (io.Reader, string, error) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := w.WriteField(f.Name, f.Value); err != nil {
			return nil, "", err
		}
	}
	if fileName == "" {
		fileName = "file"
	}
	if mimeType == "" {
		mimeType = http.DetectContentType(data)
	}
	h := make(textproto.MIMEHeader)
	// As browsers and curl write it (and mime/multipart.CreateFormFile).
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="%s"; filename="%s"`, quoteEscaper.Replace(fileField), quoteEscaper.Replace(fileName)))
	h.Set("Content-Type", mimeType)
	part, err := w.CreatePart(h)
	if err != nil {
		return nil, "", err
	}
	if _, err := part.Write(data); err != nil {
		return nil, "", err
	}
	if err := w.Close(); err != nil {
		return nil, "", err
	}
	return &buf, w.FormDataContentType(), nil
}

// retryAfterHeader parses a Retry-After header given in seconds.
func retryAfterHeader(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 0
}
