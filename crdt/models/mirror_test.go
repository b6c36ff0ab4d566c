package models

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/internal/crdttest"
)

// TestRunFollowsChangesWithoutReading: Run evaluates a change from its
// mirror of the records, not by reading the model's history from the
// store, and leaves that state in the cache, so the next activation's own
// read of the model does not read the store either; what Run ends with is
// what a read of the store finds.
func TestRunFollowsChangesWithoutReading(t *testing.T) {
	g := newTestRegistry(t, crdttest.OpenReplica(t, "mirror"))
	changes := g.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })
	await := func(typ ChangeType, version string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case c := <-changes:
				if c.Type == typ && c.Model == "m" && c.Version == version {
					return
				}
			case <-deadline:
				t.Fatalf("no change %v m@%s", typ, version)
			}
		}
	}
	versions := []string{"v1", "v2", "v3", "v4"}
	for _, v := range versions {
		m := Manifest{Model: "m", Version: v, CID: "cid-" + v, SHA256: "sha-" + v, Size: 1, MediaType: MediaTypeONNX}
		if _, _, err := g.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		await(VersionAdded, v)
	}
	if _, _, err := g.Activate(ctx, "m", "v1"); err != nil {
		t.Fatal(err)
	}
	await(CurrentChanged, "v1")

	before := g.reads.Load()
	for _, v := range []string{"v2", "v3", "v4", "v1"} {
		if _, _, err := g.Activate(ctx, "m", v); err != nil {
			t.Fatal(err)
		}
		await(CurrentChanged, v)
	}
	if n := g.reads.Load() - before; n != 0 {
		t.Errorf("4 activations, each followed by Run, read the store %d times", n)
	}

	read, err := g.readState(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	followed := g.last["m"]
	g.mu.Unlock()
	if got, want := fmt.Sprint(followed.Current, followed.Activations, followed.Versions), fmt.Sprint(read.Current, read.Activations, read.Versions); got != want {
		t.Errorf("Run followed the changes to\n%s\nthe store reads\n%s", got, want)
	}
}
