package models

import (
	"errors"
	"testing"
)

func TestNormalize(t *testing.T) {
	got := User{ID: "ada", Name: "  Ada Lovelace ", Email: " Ada@Example.COM"}.Normalize()
	want := User{ID: "ada", Name: "Ada Lovelace", Email: "ada@example.com"}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestValidate(t *testing.T) {
	valid := User{ID: "ada", Name: "Ada Lovelace", Email: "ada@example.com"}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid user rejected: %v", err)
	}
	cases := []struct {
		field string
		user  User
	}{
		{"id", User{ID: "Ada!", Name: "Ada", Email: "ada@example.com"}},
		{"id", User{ID: "", Name: "Ada", Email: "ada@example.com"}},
		{"name", User{ID: "ada", Name: "", Email: "ada@example.com"}},
		{"email", User{ID: "ada", Name: "Ada", Email: "not-an-address"}},
		{"email", User{ID: "ada", Name: "Ada", Email: "Ada <ada@example.com>"}},
	}
	for _, c := range cases {
		var verr *ValidationError
		if err := c.user.Validate(); !errors.As(err, &verr) || verr.Field != c.field {
			t.Errorf("%+v: got %v, want an error on %q", c.user, err, c.field)
		}
	}
}
