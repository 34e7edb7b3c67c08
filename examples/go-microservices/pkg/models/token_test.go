package models

import (
	"testing"
	"time"
)

var now = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func TestTokenRoundTrip(t *testing.T) {
	signed := Token{Subject: "ada", ExpiresAt: now.Add(time.Hour)}.Sign("secret")
	token, err := ParseToken("secret", signed, now)
	if err != nil {
		t.Fatal(err)
	}
	if token.Subject != "ada" || !token.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("round trip changed the token: %+v", token)
	}
}

func TestParseTokenRejects(t *testing.T) {
	signed := Token{Subject: "ada", ExpiresAt: now.Add(time.Hour)}.Sign("secret")
	forged := Token{Subject: "root", ExpiresAt: now.Add(time.Hour)}.Sign("guess")
	cases := []struct {
		name, secret, token string
		at                  time.Time
	}{
		{"wrong secret", "other", signed, now},
		{"expired", "secret", signed, now.Add(2 * time.Hour)},
		{"forged", "secret", forged, now},
		{"truncated", "secret", signed[:len(signed)-4], now},
		{"garbage", "secret", "a.b", now},
	}
	for _, c := range cases {
		if _, err := ParseToken(c.secret, c.token, c.at); err != ErrInvalidToken {
			t.Errorf("%s: got %v, want ErrInvalidToken", c.name, err)
		}
	}
}
