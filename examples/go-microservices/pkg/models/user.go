// Package models holds the data the services exchange and the rules that
// make a value valid, checked once here instead of in every handler.
package models

import (
	"fmt"
	"net/mail"
	"regexp"
	"strings"
)

// User is an account as the users service stores and returns it.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

// ValidationError names the field a client must fix.
type ValidationError struct {
	Field   string
	Problem string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%s: %s", e.Field, e.Problem)
}

var userID = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Normalize trims the free-text fields and lower-cases the e-mail address, so
// two spellings of one address are one user.
func (u User) Normalize() User {
	u.Name = strings.TrimSpace(u.Name)
	u.Email = strings.ToLower(strings.TrimSpace(u.Email))
	return u
}

// Validate reports the first field that is missing or malformed.
func (u User) Validate() error {
	if !userID.MatchString(u.ID) {
		return &ValidationError{"id", "must be 1-32 lower-case letters, digits, '-' or '_'"}
	}
	if u.Name == "" || len(u.Name) > 100 {
		return &ValidationError{"name", "must be 1-100 characters"}
	}
	addr, err := mail.ParseAddress(u.Email)
	if err != nil || addr.Address != u.Email {
		return &ValidationError{"email", "must be a plain address such as ada@example.com"}
	}
	return nil
}
