package main

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"example.com/microservices/pkg/common"
)

func TestUsersCreateGetList(t *testing.T) {
	handler, err := newHandler(common.Config{}, nil, common.NewLogger(io.Discard, common.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rec
	}
	steps := []struct {
		method, path, body string
		status             int
		response           string
	}{
		{"POST", "/users", `{"id":"ada","name":" Ada ","email":"ADA@example.com"}`, 201,
			`{"id":"ada","name":"Ada","email":"ada@example.com"}`},
		{"POST", "/users", `{"id":"ada","name":"Ada","email":"ada@example.com"}`, 409, `{"error":"user ada already exists"}`},
		{"POST", "/users", `{"id":"bob","name":"Bob","email":"bob"}`, 422, ""},
		{"GET", "/users/ada", "", 200, `{"id":"ada","name":"Ada","email":"ada@example.com"}`},
		{"GET", "/users/nobody", "", 404, `{"error":"no such user"}`},
		{"GET", "/users", "", 200, `[{"id":"ada","name":"Ada","email":"ada@example.com"}]`},
	}
	for _, s := range steps {
		rec := do(s.method, s.path, s.body)
		if rec.Code != s.status {
			t.Fatalf("%s %s: status %d, want %d (%s)", s.method, s.path, rec.Code, s.status, rec.Body)
		}
		if s.response != "" && strings.TrimSpace(rec.Body.String()) != s.response {
			t.Fatalf("%s %s: body %s, want %s", s.method, s.path, rec.Body, s.response)
		}
	}
}
