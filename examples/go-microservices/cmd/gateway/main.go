// Command gateway is the public entry point: it forwards /auth/ to the auth
// service and, for callers with a valid token, /users to the users service.
package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"

	"example.com/microservices/pkg/common"
	"example.com/microservices/pkg/models"
)

// upstream parses a service URL from the environment, refusing anything
// that is not an absolute http(s) URL.
func upstream(getenv func(string) string, key, fallback string) (*url.URL, error) {
	raw := common.Getenv(getenv, key, fallback)
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: %q is not an http(s) URL", key, raw)
	}
	return u, nil
}

// requireToken lets a request through only with a valid bearer token, which
// it checks locally with the secret it shares with the auth service.
func requireToken(secret string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		signed, _ := common.BearerToken(r)
		token, err := models.ParseToken(secret, signed, time.Now())
		if err != nil {
			common.WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		r.Header.Set("X-User-ID", token.Subject)
		next.ServeHTTP(w, r)
	})
}

func newHandler(cfg common.Config, getenv func(string) string, log *slog.Logger) (http.Handler, error) {
	auth, err := upstream(getenv, "AUTH_URL", "http://127.0.0.1:8081")
	if err != nil {
		return nil, err
	}
	users, err := upstream(getenv, "USERS_URL", "http://127.0.0.1:8082")
	if err != nil {
		return nil, err
	}
	usersProxy := requireToken(cfg.Secret, httputil.NewSingleHostReverseProxy(users))
	mux := http.NewServeMux()
	mux.Handle("/auth/", http.StripPrefix("/auth", httputil.NewSingleHostReverseProxy(auth)))
	mux.Handle("/users", usersProxy)
	mux.Handle("/users/", usersProxy)
	log.Debug("routes", "auth", auth.String(), "users", users.String())
	return mux, nil
}

func main() {
	service := common.Service{Name: "gateway", DefaultAddr: "127.0.0.1:8080", Handler: newHandler}
	os.Exit(service.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
