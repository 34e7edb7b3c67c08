package common

import (
	"log/slog"
	"testing"
)

func envOf(values map[string]string) func(string) string {
	return func(key string) string { return values[key] }
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig("users", "127.0.0.1:8082", envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Service: "users", Addr: "127.0.0.1:8082", Secret: "dev-secret", LogLevel: slog.LevelInfo}
	if cfg != want {
		t.Fatalf("got %+v, want %+v", cfg, want)
	}
}

func TestLoadConfigFromEnvironment(t *testing.T) {
	env := envOf(map[string]string{"AUTH_ADDR": ":9000", "AUTH_SECRET": "s3cret", "LOG_LEVEL": "debug"})
	cfg, err := LoadConfig("auth", "127.0.0.1:8081", env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != ":9000" || cfg.Secret != "s3cret" || cfg.LogLevel != slog.LevelDebug {
		t.Fatalf("environment not applied: %+v", cfg)
	}
}

func TestLoadConfigRejectsBadValues(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"address without port": {"GATEWAY_ADDR": "localhost"},
		"unknown log level":    {"LOG_LEVEL": "loud"},
	} {
		if _, err := LoadConfig("gateway", "127.0.0.1:8080", envOf(env)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVersionLine(t *testing.T) {
	if got := VersionLine("auth"); got != "auth "+Version {
		t.Fatalf("got %q", got)
	}
}
