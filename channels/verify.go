package channels

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/url"
	"strings"
)

// VerifyTelegramSecret compares the X-Telegram-Bot-Api-Secret-Token header
// with the channel's secret in constant time.
func VerifyTelegramSecret(header, secret string) bool {
	if secret == "" || header == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(header), []byte(secret)) == 1
}

// VerifyMetaSignature checks X-Hub-Signature-256 ("sha256=<hex>") as the
// HMAC-SHA256 of the raw body with the app secret.
func VerifyMetaSignature(header string, body []byte, appSecret string) bool {
	if appSecret == "" {
		return false
	}
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(appSecret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// MetaChallenge answers Meta's GET verification: it returns hub.challenge
// when hub.mode is subscribe and hub.verify_token matches (constant time).
func MetaChallenge(q url.Values, verifyToken string) (string, bool) {
	if verifyToken == "" || q.Get("hub.mode") != "subscribe" {
		return "", false
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("hub.verify_token")), []byte(verifyToken)) != 1 {
		return "", false
	}
	return q.Get("hub.challenge"), true
}
