// Package common holds what every service shares: configuration, logging,
// JSON responses and the version banner.
package common

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
)

// Version is the release every service reports with -version.
const Version = "1.0.0"

// Config is the part of a service's configuration that comes from the
// environment, so the same binary runs unchanged in every deployment.
type Config struct {
	Service  string
	Addr     string
	Secret   string
	LogLevel slog.Level
}

// LoadConfig reads <SERVICE>_ADDR, AUTH_SECRET and LOG_LEVEL through getenv
// (os.Getenv in production, a map in tests) and checks them, so a typo fails
// at start-up instead of at the first request.
func LoadConfig(service, defaultAddr string, getenv func(string) string) (Config, error) {
	cfg := Config{
		Service: service,
		Addr:    Getenv(getenv, strings.ToUpper(service)+"_ADDR", defaultAddr),
		Secret:  Getenv(getenv, "AUTH_SECRET", "dev-secret"),
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return Config{}, fmt.Errorf("%s: address %q: %v", service, cfg.Addr, err)
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(Getenv(getenv, "LOG_LEVEL", "info"))); err != nil {
		return Config{}, fmt.Errorf("%s: LOG_LEVEL: %v", service, err)
	}
	return cfg, nil
}

// Getenv returns the value of key, or fallback when it is unset or empty.
func Getenv(getenv func(string) string, key, fallback string) string {
	if value := getenv(key); value != "" {
		return value
	}
	return fallback
}

// VersionLine is what -version prints: the service name and the release.
func VersionLine(service string) string {
	return fmt.Sprintf("%s %s", service, Version)
}
