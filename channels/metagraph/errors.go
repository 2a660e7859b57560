package metagraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/parleydesk/parley/channels"
)

// Error is a non-2xx Graph answer, decoded from the envelope
// {"error":{"message","type","code","error_subcode","error_data":{"details"},
// "is_transient","fbtrace_id"}}. An answer without the envelope keeps only
// the HTTP status.
type Error struct {
	// Status is the HTTP status.
	Status    int
	Code      int
	Subcode   int
	Type      string
	Message   string
	Details   string
	Transient bool
	FBTraceID string
	// RetryAfter is the answer's Retry-After header, when given in seconds.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "graph HTTP %d", e.Status)
	if e.Code != 0 {
		fmt.Fprintf(&b, " code %s", e.CodeString())
	}
	if r := e.Reason(); r != "" {
		b.WriteString(": ")
		b.WriteString(r)
	}
	if e.FBTraceID != "" {
		fmt.Fprintf(&b, " (fbtrace_id %s)", e.FBTraceID)
	}
	return b.String()
}

// CodeString is "code" or "code/subcode" ("131047", "10/2018278"); the
// HTTP status when the answer had no Graph error.
func (e *Error) CodeString() string {
	switch {
	case e.Code == 0:
		return strconv.Itoa(e.Status)
	case e.Subcode != 0:
		return strconv.Itoa(e.Code) + "/" + strconv.Itoa(e.Subcode)
	default:
		return strconv.Itoa(e.Code)
	}
}

var codePrefix = regexp.MustCompile(`^\(#\d+\)\s*`)

// Reason is the message without its "(#code) " prefix, with the details
// appended: "Re-engagement message: Message failed to send because …".
func (e *Error) Reason() string {
	msg := codePrefix.ReplaceAllString(strings.TrimSpace(e.Message), "")
	if msg == "" && e.Code == 0 {
		msg = http.StatusText(e.Status)
	}
	if e.Details != "" && e.Details != msg {
		if msg == "" {
			return e.Details
		}
		return msg + ": " + e.Details
	}
	return msg
}

type envelope struct {
	Error *struct {
		Message     string          `json:"message"`
		Type        string          `json:"type"`
		Code        int             `json:"code"`
		Subcode     int             `json:"error_subcode"`
		ErrorData   json.RawMessage `json:"error_data"`
		IsTransient bool            `json:"is_transient"`
		FBTraceID   string          `json:"fbtrace_id"`
	} `json:"error"`
}

// decodeError reads a non-2xx answer. The token, should Graph ever echo it,
// is cut out of the texts.
func decodeError(resp *http.Response, body []byte, token string) *Error {
	e := &Error{Status: resp.StatusCode, RetryAfter: retryAfterHeader(resp.Header)}
	var env envelope
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		g := env.Error
		e.Code, e.Subcode, e.Type = g.Code, g.Subcode, g.Type
		e.Message, e.Transient, e.FBTraceID = g.Message, g.IsTransient, g.FBTraceID
		e.Details = errorDetails(g.ErrorData)
	}
	if token != "" {
		e.Message = strings.ReplaceAll(e.Message, token, "[redacted]")
		e.Details = strings.ReplaceAll(e.Details, token, "[redacted]")
	}
	return e
}

// errorDetails reads error_data.details; error_data is an object on the
// WhatsApp Cloud API and sometimes a JSON-encoded string elsewhere.
func errorDetails(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var obj struct {
		Details string `json:"details"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Details
	}
	var s string
	if json.Unmarshal(raw, &s) == nil && json.Unmarshal([]byte(s), &obj) == nil {
		return obj.Details
	}
	return ""
}

// Rule classifies the Graph errors of one code (and subcode; 0 matches any).
type Rule struct {
	Code, Subcode int
	// Transient failures are retried (after RetryAfter when set);
	// otherwise the failure is permanent.
	Transient    bool
	RetryAfter   time.Duration
	WindowClosed bool
	Unreachable  bool
}

// Classify turns an error of Call into a *channels.SendError: the first
// rule matching the Graph code/subcode decides; otherwise 5xx, 429 and
// is_transient answers are transient and any other non-2xx answer is
// permanent. A 2xx answer that could not be decoded is permanent (the
// message may have gone out: retrying could send it twice). Other errors
// (transport, context) are returned as they are: channels.AsSendError
// reads them as transient.
func Classify(err error, rules []Rule) error {
	if err == nil {
		return nil
	}
	var bad *BadAnswerError
	if errors.As(err, &bad) {
		return &channels.SendError{Permanent: true, Code: "BAD_ANSWER", Reason: bad.Error()}
	}
	var ge *Error
	if !errors.As(err, &ge) {
		return err
	}
	se := &channels.SendError{Code: ge.CodeString(), Reason: ge.Reason(), RetryAfter: ge.RetryAfter}
	for _, r := range rules {
		if r.Code != ge.Code || (r.Subcode != 0 && r.Subcode != ge.Subcode) {
			continue
		}
		se.Permanent = !r.Transient
		se.WindowClosed, se.Unreachable = r.WindowClosed, r.Unreachable
		if r.Transient && r.RetryAfter > se.RetryAfter {
			se.RetryAfter = r.RetryAfter
		}
		if se.Permanent {
			se.RetryAfter = 0
		}
		return se
	}
	transient := ge.Status >= 500 || ge.Status == http.StatusTooManyRequests || ge.Transient
	se.Permanent = !transient
	if se.Permanent {
		se.RetryAfter = 0
	}
	return se
}
