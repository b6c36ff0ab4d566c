package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// TestSessionFollowsTheUserAcrossProcesses moves a conversation between
// three `shoal run` processes the way a user's requests move between
// gateways: a turn on A, read on B with A's token, a turn on C after B's
// read; all three see one order. B is killed with SIGKILL right after it
// acknowledged a turn, and the turn is not lost. Then the session expires
// everywhere, and each peer's session files return to their size before
// the conversation began — B's too, once restarted.
func TestSessionFollowsTheUserAcrossProcesses(t *testing.T) {
	m := startProcMesh(t, procmesh.Options{Sites: []int{0, 0, 0}, Dir: t.TempDir(), Mesh: "sessions",
		Args: func(int, []*procmesh.Peer) []string { return []string{"--dht=false", "--mdns=false"} }})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b, c := m.Peers[0], m.Peers[1], m.Peers[2]
	base := make([]int64, 3)
	for i, p := range m.Peers {
		base[i] = sessionDisk(t, p)
	}

	var w api.SessionWrite
	r := must(t, http.StatusCreated)(a.Do(ctx, "POST", "/v1/sessions", api.SessionRequest{TTLSeconds: 20, Metadata: []byte(`{"user":"driver-7"}`)}))
	if err := r.JSON(&w); err != nil || len(w.ID) < 22 || w.Token == "" || r.Header.Get(api.HeaderToken) != w.Token {
		t.Fatalf("new session: %v %s", err, r)
	}
	id := "/v1/sessions/" + w.ID
	turn := func(p *procmesh.Peer, after, role, text string) string {
		t.Helper()
		r := must(t, 200)(p.Do(ctx, "POST", id+"/turns", api.TurnRequest{Role: role, Text: text}, api.HeaderAfter, after, api.HeaderTimeout, "30s"))
		var w api.SessionWrite
		if err := r.JSON(&w); err != nil {
			t.Fatal(err)
		}
		return w.Token
	}
	read := func(p *procmesh.Peer, after string) []string {
		t.Helper()
		r := must(t, 200)(p.Do(ctx, "GET", id, nil, api.HeaderAfter, after, api.HeaderTimeout, "30s"))
		var s api.Session
		if err := r.JSON(&s); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, tr := range s.Turns {
			out = append(out, tr.Role+": "+tr.Text)
		}
		return out
	}

	tok := turn(a, w.Token, "user", "where is forklift 3?")
	if got := fmt.Sprint(read(b, tok)); got != "[user: where is forklift 3?]" {
		t.Fatalf("B with A's token reads %s", got)
	}
	tok = turn(b, tok, "assistant", "bay 12")
	tok = turn(c, tok, "user", "and its battery?")

	// B takes a turn and dies at once: the acknowledgement meant another
	// peer held it already.
	tok = turn(b, tok, "assistant", "81 %")
	b.Kill()
	want := "[user: where is forklift 3? assistant: bay 12 user: and its battery? assistant: 81 %]"
	for _, p := range []*procmesh.Peer{a, c} {
		if got := fmt.Sprint(read(p, tok)); got != want {
			t.Errorf("peer %d reads %s\nwant %s", p.Index, got, want)
		}
	}

	// Bad input answers the catalogue's codes.
	must(t, http.StatusNotFound)(a.Do(ctx, "GET", "/v1/sessions/unknown-session-000000000000", nil))
	must(t, http.StatusBadRequest)(a.Do(ctx, "GET", "/v1/sessions/short", nil))
	must(t, http.StatusRequestEntityTooLarge)(a.Do(ctx, "POST", id+"/turns", api.TurnRequest{Role: "user", Text: string(make([]byte, 70<<10))}))

	// The session expires everywhere; B, restarted, drops what it held.
	must(t, 200)(a.Do(ctx, "PUT", id, api.SessionRequest{TTLSeconds: 2}))
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i, p := range m.Peers {
		poll.Until(t, 90*time.Second, fmt.Sprintf("peer %d: the session expired and its files are gone", i), func() error {
			r, err := p.Do(ctx, "GET", id, nil)
			if err != nil {
				return err
			}
			if r.Code != http.StatusNotFound {
				return fmt.Errorf("GET: %s", r)
			}
			if d := sessionDisk(t, p); d > base[i] {
				return fmt.Errorf("session files take %d bytes, %d before the conversation", d, base[i])
			}
			return nil
		})
	}
}

// sessionDisk is the space p's session database takes on disk.
func sessionDisk(t *testing.T, p *procmesh.Peer) int64 {
	t.Helper()
	var total int64
	filepath.Walk(filepath.Join(p.DataDir, "sessions"), func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}
