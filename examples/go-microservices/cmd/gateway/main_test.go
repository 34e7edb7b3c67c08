package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"example.com/microservices/pkg/common"
	"example.com/microservices/pkg/models"
)

func TestGatewayForwardsOnlyAuthenticatedUserRequests(t *testing.T) {
	users := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		common.WriteJSON(w, http.StatusOK, map[string]string{"path": r.URL.Path, "user": r.Header.Get("X-User-ID")})
	}))
	defer users.Close()
	env := map[string]string{"USERS_URL": users.URL}
	quiet := common.NewLogger(io.Discard, common.Config{})
	handler, err := newHandler(common.Config{Secret: "s"}, func(k string) string { return env[k] }, quiet)
	if err != nil {
		t.Fatal(err)
	}
	get := func(token string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/users/ada", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec
	}
	if rec := get(""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("no token: status %d", rec.Code)
	}
	token := models.Token{Subject: "ada", ExpiresAt: time.Now().Add(time.Minute)}.Sign("s")
	rec := get(token)
	if want := `{"path":"/users/ada","user":"ada"}` + "\n"; rec.Code != http.StatusOK || rec.Body.String() != want {
		t.Fatalf("with token: status %d, body %q", rec.Code, rec.Body)
	}
}

func TestUpstreamRejectsNonHTTP(t *testing.T) {
	for _, raw := range []string{"127.0.0.1:8082", "ftp://host", "http://"} {
		if _, err := upstream(func(string) string { return raw }, "USERS_URL", ""); err == nil {
			t.Errorf("%q accepted", raw)
		}
	}
}
