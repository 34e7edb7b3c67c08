package common

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWriteError(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(rec, http.StatusNotFound, "no such user")
	if rec.Code != http.StatusNotFound {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if body := rec.Body.String(); body != "{\"error\":\"no such user\"}\n" {
		t.Fatalf("body %q", body)
	}
}

func TestDecodeJSON(t *testing.T) {
	type payload struct {
		Name string `json:"name"`
	}
	cases := map[string]bool{
		`{"name":"ada"}`:              true,
		`{"name":"ada","admin":true}`: false,
		`{"name":"ada"} {}`:           false,
		`{"name":`:                    false,
	}
	for body, ok := range cases {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		var p payload
		err := DecodeJSON(httptest.NewRecorder(), req, &p)
		if (err == nil) != ok {
			t.Errorf("%s: err=%v, want ok=%v", body, err, ok)
		}
		if ok && p.Name != "ada" {
			t.Errorf("%s: decoded %+v", body, p)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for header, want := range map[string]string{"Bearer abc": "abc", "Bearer ": "", "Basic abc": "", "": ""} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		got, ok := BearerToken(req)
		if got != want || ok != (want != "") {
			t.Errorf("%q: got (%q, %v)", header, got, ok)
		}
	}
}
