package models

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/internal/crdttest"
	"github.com/shoal-mesh/shoal/internal/poll"
)

func (c *stateCache) counts() (hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// TestStateCacheServesRepeatsAndNeverHidesAWrite: a model's state read
// twice with nothing changed in between is evaluated once; a local write
// (an activation, a publication) shows in the very next read; a caller
// modifying what it got does not change what the next caller gets; a new
// trust set is evaluated afresh.
func TestStateCacheServesRepeatsAndNeverHidesAWrite(t *testing.T) {
	g := newTestRegistry(t, crdttest.OpenReplica(t, "statecache"))
	ctx := context.Background()
	publish := func(v string) {
		t.Helper()
		m := Manifest{Model: "m", Version: v, CID: "cid-" + v, SHA256: "sha-" + v, Size: 1, MediaType: MediaTypeONNX}
		if _, _, err := g.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	current := func() string {
		t.Helper()
		st, err := g.State(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		if st.Current == nil {
			return ""
		}
		return st.Current.Version
	}
	// A hit once the write's event has been dispatched.
	cachedNow := func(what string) {
		t.Helper()
		poll.Until(t, 10*time.Second, what, func() error {
			current()
			h0, _ := g.cache.counts()
			current()
			if h1, _ := g.cache.counts(); h1 == h0 {
				return fmt.Errorf("a repeated read was evaluated again")
			}
			return nil
		})
	}

	publish("v1")
	if _, _, err := g.Activate(ctx, "m", "v1"); err != nil {
		t.Fatal(err)
	}
	if got := current(); got != "v1" {
		t.Fatalf("current after activating v1 = %q", got)
	}
	cachedNow("repeated reads served from the cache")

	// What a caller does to its copy stays with it.
	st, _ := g.State(ctx, "m")
	st.Current.Version = "scribbled"
	st.Versions[0].Manifest.Version = "scribbled"
	if st2, _ := g.State(ctx, "m"); st2.Current.Version != "v1" || st2.Versions[0].Manifest.Version != "v1" {
		t.Fatalf("a caller's change reached the cache: %+v", st2)
	}

	// Read-your-writes on this peer: each write shows in the next read,
	// however warm the cache was.
	for i := 2; i <= 5; i++ {
		v := fmt.Sprintf("v%d", i)
		publish(v)
		if _, _, err := g.Activate(ctx, "m", v); err != nil {
			t.Fatal(err)
		}
		if got := current(); got != v {
			t.Fatalf("current right after activating %s = %q", v, got)
		}
		cachedNow("cached again after " + v)
	}
	all, err := g.Models(ctx)
	if err != nil || len(all) != 1 || len(all[0].Versions) != 5 {
		t.Fatalf("Models = %+v, %v", all, err)
	}

	// A new trust set is evaluated afresh.
	_, m0 := g.cache.counts()
	g.SetTrusted(nil)
	current()
	if _, m1 := g.cache.counts(); m1 != m0+1 {
		t.Fatalf("read after SetTrusted: misses %d → %d, want one more", m0, m1)
	}
}
