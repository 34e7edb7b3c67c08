package common

import (
	"io"
	"log/slog"
)

// NewLogger returns a JSON logger tagged with the service name, so the lines
// of several services interleaved in one stream stay attributable.
func NewLogger(w io.Writer, cfg Config) *slog.Logger {
	handler := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: cfg.LogLevel})
	return slog.New(handler).With("service", cfg.Service)
}
