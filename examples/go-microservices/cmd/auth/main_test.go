package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"example.com/microservices/pkg/common"
)

func TestLoginAndVerify(t *testing.T) {
	env := map[string]string{"AUTH_CREDENTIALS": "ada:lovelace, grace:hopper"}
	quiet := common.NewLogger(io.Discard, common.Config{})
	handler, err := newHandler(common.Config{Secret: "s"}, func(k string) string { return env[k] }, quiet)
	if err != nil {
		t.Fatal(err)
	}
	login := func(body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/tokens", strings.NewReader(body)))
		return rec
	}
	if rec := login(`{"user_id":"grace","password":"wrong"}`); rec.Code != http.StatusUnauthorized {
		t.Fatalf("wrong password: status %d", rec.Code)
	}
	rec := login(`{"user_id":"grace","password":"hopper"}`)
	var issued tokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &issued); rec.Code != http.StatusCreated || err != nil {
		t.Fatalf("login: status %d, body %s", rec.Code, rec.Body)
	}

	verify := httptest.NewRequest(http.MethodGet, "/tokens/verify", nil)
	verify.Header.Set("Authorization", "Bearer "+issued.Token)
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, verify)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"subject":"grace"`) {
		t.Fatalf("verify: status %d, body %s", rec.Code, rec.Body)
	}
}

func TestParseCredentialsRejectsMalformed(t *testing.T) {
	for _, spec := range []string{"ada", "ada:", ":pw", "ada:pw,"} {
		if _, err := parseCredentials(spec); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
}
