// Command users stores user accounts (in memory) and serves them as JSON.
package main

import (
	"errors"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"sync"

	"example.com/microservices/pkg/common"
	"example.com/microservices/pkg/models"
)

// store is the service's state; a mutex suffices for an in-memory map.
type store struct {
	mu    sync.RWMutex
	users map[string]models.User
}

func (s *store) create(w http.ResponseWriter, r *http.Request) {
	var user models.User
	if err := common.DecodeJSON(w, r, &user); err != nil {
		common.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	user = user.Normalize()
	var invalid *models.ValidationError
	if err := user.Validate(); errors.As(err, &invalid) {
		common.WriteError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, exists := s.users[user.ID]; exists {
		common.WriteError(w, http.StatusConflict, "user "+user.ID+" already exists")
		return
	}
	s.users[user.ID] = user
	common.WriteJSON(w, http.StatusCreated, user)
}

func (s *store) get(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	user, ok := s.users[r.PathValue("id")]
	s.mu.RUnlock()
	if !ok {
		common.WriteError(w, http.StatusNotFound, "no such user")
		return
	}
	common.WriteJSON(w, http.StatusOK, user)
}

func (s *store) list(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	users := make([]models.User, 0, len(s.users))
	for _, user := range s.users {
		users = append(users, user)
	}
	s.mu.RUnlock()
	sort.Slice(users, func(i, j int) bool { return users[i].ID < users[j].ID })
	common.WriteJSON(w, http.StatusOK, users)
}

func newHandler(common.Config, func(string) string, *slog.Logger) (http.Handler, error) {
	s := &store{users: map[string]models.User{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /users", s.create)
	mux.HandleFunc("GET /users", s.list)
	mux.HandleFunc("GET /users/{id}", s.get)
	return mux, nil
}

func main() {
	service := common.Service{Name: "users", DefaultAddr: "127.0.0.1:8082", Handler: newHandler}
	os.Exit(service.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
