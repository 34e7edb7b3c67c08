package common

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// MaxBodyBytes bounds every request body a service decodes.
const MaxBodyBytes = 1 << 20

// ErrorBody is the shape of every error response, so clients parse one format.
type ErrorBody struct {
	Error string `json:"error"`
}

// WriteJSON sends v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError sends a JSON error response.
func WriteError(w http.ResponseWriter, status int, message string) {
	WriteJSON(w, status, ErrorBody{Error: message})
}

// DecodeJSON reads one JSON object from the request body into v, rejecting
// unknown fields, trailing data and bodies over MaxBodyBytes.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %v", err)
	}
	if dec.More() {
		return errors.New("invalid JSON body: more than one value")
	}
	return nil
}

// BearerToken returns the credential of an "Authorization: Bearer <token>" header.
func BearerToken(r *http.Request) (string, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", false
	}
	return token, true
}
