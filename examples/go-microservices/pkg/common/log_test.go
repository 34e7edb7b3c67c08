package common

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
)

func TestNewLoggerTagsServiceAndFiltersLevel(t *testing.T) {
	var buf bytes.Buffer
	logger := NewLogger(&buf, Config{Service: "gateway", LogLevel: slog.LevelWarn})
	logger.Info("dropped")
	logger.Warn("kept", "path", "/users/1")

	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("want exactly one JSON line, got %q: %v", buf.String(), err)
	}
	if line["service"] != "gateway" || line["msg"] != "kept" || line["path"] != "/users/1" {
		t.Fatalf("unexpected log line: %v", line)
	}
}
