package common

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func testService() Service {
	return Service{Name: "echo", DefaultAddr: "127.0.0.1:0",
		Handler: func(Config, func(string) string, *slog.Logger) (http.Handler, error) {
			return http.NotFoundHandler(), nil
		}}
}

func TestMainVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if status := testService().Main([]string{"-version"}, envOf(nil), &stdout, &stderr); status != 0 {
		t.Fatalf("status %d, stderr %q", status, stderr.String())
	}
	if stdout.String() != "echo "+Version+"\n" {
		t.Fatalf("stdout %q", stdout.String())
	}
}

func TestMainRejectsBadUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if status := testService().Main([]string{"-no-such-flag"}, envOf(nil), &stdout, &stderr); status != 2 {
		t.Fatalf("unknown flag: status %d", status)
	}
	env := envOf(map[string]string{"ECHO_ADDR": "no-port"})
	if status := testService().Main(nil, env, &stdout, &stderr); status != 1 {
		t.Fatalf("bad address: status %d", status)
	}
	if !strings.Contains(stderr.String(), `address "no-port"`) {
		t.Fatalf("stderr does not name the bad address: %q", stderr.String())
	}
}

func TestLogRequestsRecordsStatus(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, Config{Service: "echo"})
	LogRequests(log, http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(),
		httptest.NewRequest(http.MethodGet, "/missing", nil))
	if !strings.Contains(buf.String(), `"path":"/missing","status":404`) {
		t.Fatalf("access log line: %q", buf.String())
	}
}
