package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPushBatchingFlags: --max-batch and --max-queue-delay become the
// push's max_batch_size and max_queue_delay_us (microseconds); a delay
// finer than a microsecond is refused before anything is sent.
func TestPushBatchingFlags(t *testing.T) {
	var got url.Values
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Query()
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"manifest":{"model":"cls","version":"v1"},"token":"t"}`)
	}))
	defer srv.Close()
	artifact := filepath.Join(t.TempDir(), "cls.onnx")
	if err := os.WriteFile(artifact, []byte("onnx"), 0o600); err != nil {
		t.Fatal(err)
	}
	push := func(extra ...string) error {
		args := append([]string{artifact, "--name", "cls", "--version", "v1", "--api", srv.URL}, extra...)
		return cmdModelPush(args, io.Discard, io.Discard)
	}
	if err := push("--max-batch", "32", "--max-queue-delay", "1.5ms"); err != nil {
		t.Fatal(err)
	}
	if got.Get("max_batch_size") != "32" || got.Get("max_queue_delay_us") != "1500" {
		t.Errorf("query %v", got)
	}
	if err := push(); err != nil {
		t.Fatal(err)
	}
	if got.Has("max_batch_size") || got.Has("max_queue_delay_us") {
		t.Errorf("defaults sent batching settings: %v", got)
	}
	got = nil
	var exit *exitError
	if err := push("--max-batch", "8", "--max-queue-delay", "1500ns"); !errors.As(err, &exit) || !strings.Contains(err.Error(), "microseconds") || got != nil {
		t.Errorf("sub-microsecond delay: %v (sent: %v)", err, got != nil)
	}
}
