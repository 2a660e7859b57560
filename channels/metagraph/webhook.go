package metagraph

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/parleydesk/parley/channels"
)

// BodyKey is the dedup key of a whole Meta webhook body: the hex SHA-256 of
// its raw bytes (Meta redelivers the same bytes; per-message ids
// deduplicate the rest).
func BodyKey(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// Envelope is the outer shape shared by Meta webhooks; Entry is left raw
// for the product's own types.
type Envelope struct {
	Object string            `json:"object"`
	Entry  []json.RawMessage `json:"entry"`
}

// DecodeEnvelope decodes a webhook body and checks its object; any failure
// wraps channels.ErrMalformed.
func DecodeEnvelope(body []byte, object string) (Envelope, error) {
	var env Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", channels.ErrMalformed, err)
	}
	if env.Object != object {
		return Envelope{}, fmt.Errorf("%w: object %q, want %q", channels.ErrMalformed, env.Object, object)
	}
	return env, nil
}

// FlexString decodes a JSON string or number (Meta sends app ids and
// timestamps as either) into its decimal text; null leaves it empty.
type FlexString string

// UnmarshalJSON implements json.Unmarshaler.
func (f *FlexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || string(b) == "null":
		*f = ""
		return nil
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = FlexString(s)
		return nil
	default:
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("metagraph: %s is neither a string nor a number", b)
		}
		*f = FlexString(n.String())
		return nil
	}
}

// String returns the text.
func (f FlexString) String() string { return string(f) }

// UnixSeconds reads a Unix-seconds timestamp (WhatsApp); zero time when empty
// or unreadable.
func UnixSeconds(s FlexString) time.Time {
	n, err := strconv.ParseInt(string(s), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.Unix(n, 0).UTC()
}

// UnixMillis reads a Unix-milliseconds timestamp (Messenger); zero time when
// empty or unreadable.
func UnixMillis(s FlexString) time.Time {
	n, err := strconv.ParseInt(string(s), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}
