package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/sessions"
)

// field returns the value of the "name value" line of a command's output.
func field(t *testing.T, out, name string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("no %q line in %q", name, out)
	return ""
}

// TestSessionCommands walks a conversation through the CLI against a
// peer with an API token, which session requests need, reads included.
func TestSessionCommands(t *testing.T) {
	p := startPeer(t, append(loopbackArgs(t.TempDir()), "--api-token", "s3cret", "--demo-rag=false")...)
	on := func(args ...string) []string { return append(args, "--api", p.api, "--api-token", "s3cret") }

	if _, stderr, code := shoal(t, "session", "new", "--api", p.api); code != 1 || !strings.Contains(stderr, "["+api.CodeAuthRequired+"]") {
		t.Errorf("new without the token: %d %s", code, stderr)
	}
	out, stderr, code := shoal(t, on("session", "new", "--ttl", "2m", "--metadata", `{"lang":"en"}`)...)
	if code != 0 {
		t.Fatalf("new: %d %s%s", code, out, stderr)
	}
	id, tok := field(t, out, "session"), field(t, out, "token")
	if err := sessions.CheckID(id); err != nil || !sessions.IsToken(tok) {
		t.Fatalf("new printed id %q (%v), token %q", id, err, tok)
	}
	for _, turn := range [][2]string{{"user", "where is the pump manual?"}, {"assistant", "In the maintenance folder."}} {
		out, stderr, code = shoal(t, on("session", "append", id, "--role", turn[0], "--text", turn[1], "--after", tok)...)
		if code != 0 {
			t.Fatalf("append %s: %d %s%s", turn[0], code, out, stderr)
		}
		tok = field(t, out, "token")
	}
	out, stderr, code = shoal(t, on("session", "get", id, "--after", tok)...)
	if want := "user: where is the pump manual?\nassistant: In the maintenance folder.\n"; code != 0 || out != want {
		t.Errorf("get: %d %q %s, want %q", code, out, stderr, want)
	}
	out, _, code = shoal(t, on("session", "get", id, "--json")...)
	var s struct {
		api.Session
		Metadata map[string]string `json:"metadata"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil || len(s.Turns) != 2 || s.Metadata["lang"] != "en" || s.TTL != 120 {
		t.Errorf("get --json: %d %s", code, out)
	}

	if _, stderr, code := shoal(t, on("session", "get", sessions.NewID())...); code != 1 || !strings.Contains(stderr, "["+api.CodeSessionUnknown+"]") {
		t.Errorf("get of an unknown session: %d %s", code, stderr)
	}
	if _, stderr, code := shoal(t, on("session", "get", "no/such:id")...); code != 2 || !strings.Contains(stderr, "bad session id") {
		t.Errorf("get of a malformed id: %d %s", code, stderr)
	}
	if _, stderr, code := shoal(t, on("session", "put", id, "--metadata", "[1]")...); code != 2 || !strings.Contains(stderr, "JSON object") {
		t.Errorf("put with metadata that is no object: %d %s", code, stderr)
	}
	if _, stderr, code := shoal(t, on("session", "append", id, "--role", "narrator", "--text", "x")...); code != 1 || !strings.Contains(stderr, "["+api.CodeSessionInvalid+"]") {
		t.Errorf("append with an unknown role: %d %s", code, stderr)
	}
	if out, stderr, code := shoal(t, on("session", "rm", id)...); code != 0 || !strings.Contains(out, "deleted session "+id) {
		t.Errorf("rm: %d %s%s", code, out, stderr)
	}
	if _, stderr, code := shoal(t, on("session", "get", id)...); code != 1 || !strings.Contains(stderr, api.CodeSessionUnknown) {
		t.Errorf("get after rm: %d %s", code, stderr)
	}
}
