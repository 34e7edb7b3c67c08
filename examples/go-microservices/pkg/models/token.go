package models

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Token is a bearer credential: the auth service signs it, and the gateway
// checks it with the shared secret without a round trip to auth.
type Token struct {
	Subject   string    `json:"subject"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ErrInvalidToken covers every malformed, forged or expired token, so a
// caller cannot probe which check failed.
var ErrInvalidToken = errors.New("invalid or expired token")

var encoding = base64.RawURLEncoding

// Sign encodes the token as "<subject>.<expiry>.<mac>", all base64url.
func (t Token) Sign(secret string) string {
	payload := encoding.EncodeToString([]byte(t.Subject)) + "." +
		encoding.EncodeToString([]byte(strconv.FormatInt(t.ExpiresAt.Unix(), 10)))
	return payload + "." + encoding.EncodeToString(mac(secret, payload))
}

// ParseToken checks the signature and expiry of a signed token.
func ParseToken(secret, signed string, now time.Time) (Token, error) {
	parts := strings.Split(signed, ".")
	if len(parts) != 3 {
		return Token{}, ErrInvalidToken
	}
	sig, err := encoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac(secret, parts[0]+"."+parts[1])) {
		return Token{}, ErrInvalidToken
	}
	subject, err1 := encoding.DecodeString(parts[0])
	expiry, err2 := encoding.DecodeString(parts[1])
	seconds, err3 := strconv.ParseInt(string(expiry), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Token{}, ErrInvalidToken
	}
	token := Token{Subject: string(subject), ExpiresAt: time.Unix(seconds, 0).UTC()}
	if !now.Before(token.ExpiresAt) {
		return Token{}, ErrInvalidToken
	}
	return token, nil
}

func mac(secret, payload string) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(payload))
	return h.Sum(nil)
}
