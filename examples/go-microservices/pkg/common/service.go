package common

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Service is what a main package supplies; Main does the rest the same way
// for every service (flags, configuration, logging, health, shutdown).
type Service struct {
	Name        string
	DefaultAddr string
	// Handler builds the service's routes; getenv gives it its own settings.
	Handler func(cfg Config, getenv func(string) string, log *slog.Logger) (http.Handler, error)
}

// Main runs the service until SIGINT or SIGTERM and returns the exit status:
// 0 after a clean shutdown or -version, 1 if serving failed, 2 for bad usage.
func (s Service) Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet(s.Name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	version := flags.Bool("version", false, "print the service name and version, then exit")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintln(stdout, VersionLine(s.Name))
		return 0
	}
	cfg, err := LoadConfig(s.Name, s.DefaultAddr, getenv)
	if err == nil {
		err = s.serve(cfg, getenv, NewLogger(stderr, cfg))
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

func (s Service) serve(cfg Config, getenv func(string) string, log *slog.Logger) error {
	routes, err := s.Handler(cfg, getenv, log)
	if err != nil {
		return fmt.Errorf("%s: %v", s.Name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"service": s.Name, "version": Version})
	})
	mux.Handle("/", routes)
	server := &http.Server{Addr: cfg.Addr, Handler: LogRequests(log, mux), ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := make(chan error, 1)
	go func() { failed <- server.ListenAndServe() }()
	log.Info("listening", "addr", cfg.Addr, "version", Version)
	select {
	case err := <-failed:
		return fmt.Errorf("%s: %v", s.Name, err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := server.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: shutdown: %v", s.Name, err)
	}
	log.Info("stopped")
	return nil
}

// statusRecorder remembers the status a handler wrote, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// LogRequests logs one line per request with its status and duration.
func LogRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", time.Since(start).String())
	})
}
