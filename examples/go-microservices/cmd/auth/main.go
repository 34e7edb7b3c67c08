// Command auth issues signed bearer tokens for known credentials and
// verifies them.
package main

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"example.com/microservices/pkg/common"
	"example.com/microservices/pkg/models"
)

// tokenTTL is how long an issued token stays valid.
const tokenTTL = time.Hour

type login struct {
	UserID   string `json:"user_id"`
	Password string `json:"password"`
}

type tokenResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// parseCredentials reads "user:password,user:password" (AUTH_CREDENTIALS).
func parseCredentials(spec string) (map[string]string, error) {
	creds := map[string]string{}
	for _, pair := range strings.Split(spec, ",") {
		user, password, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok || user == "" || password == "" {
			return nil, fmt.Errorf("AUTH_CREDENTIALS: %q is not user:password", pair)
		}
		creds[user] = password
	}
	return creds, nil
}

func newHandler(cfg common.Config, getenv func(string) string, log *slog.Logger) (http.Handler, error) {
	creds, err := parseCredentials(common.Getenv(getenv, "AUTH_CREDENTIALS", "ada:lovelace"))
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tokens", func(w http.ResponseWriter, r *http.Request) {
		var req login
		if err := common.DecodeJSON(w, r, &req); err != nil {
			common.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		want, known := creds[req.UserID]
		if !known || subtle.ConstantTimeCompare([]byte(want), []byte(req.Password)) != 1 {
			log.Warn("login refused", "user", req.UserID)
			common.WriteError(w, http.StatusUnauthorized, "unknown user or wrong password")
			return
		}
		token := models.Token{Subject: req.UserID, ExpiresAt: time.Now().Add(tokenTTL).Truncate(time.Second)}
		common.WriteJSON(w, http.StatusCreated, tokenResponse{Token: token.Sign(cfg.Secret), ExpiresAt: token.ExpiresAt})
	})
	mux.HandleFunc("GET /tokens/verify", func(w http.ResponseWriter, r *http.Request) {
		signed, _ := common.BearerToken(r)
		token, err := models.ParseToken(cfg.Secret, signed, time.Now())
		if err != nil {
			common.WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		common.WriteJSON(w, http.StatusOK, token)
	})
	return mux, nil
}

func main() {
	service := common.Service{Name: "auth", DefaultAddr: "127.0.0.1:8081", Handler: newHandler}
	os.Exit(service.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
