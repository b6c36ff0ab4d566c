package models

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/internal/crdttest"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// newTestRegistry is a registry over r with a publisher key of its own.
func newTestRegistry(t testing.TB, r *crdt.Replica) *Registry {
	t.Helper()
	pub, err := NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Replica: r, Publisher: pub, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestRegistryRecoversFromASlowSubscription: when Run falls so far behind
// that the replica ends its subscription (ErrSlowSubscriber), the versions
// published meanwhile and every later one are still announced.
func TestRegistryRecoversFromASlowSubscription(t *testing.T) {
	r := crdttest.OpenReplica(t, "models-unit")
	// Room for the first version's events, not for those published while
	// Run is stalled.
	r.SetSubscriberLimits(crdt.SubscriberLimits{Events: 8})
	g := newTestRegistry(t, r)
	changes := g.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })

	var mu sync.Mutex
	added := map[string]bool{} // model@version
	go func() {
		for {
			select {
			case c := <-changes:
				if c.Type == VersionAdded {
					mu.Lock()
					added[c.Model+"@"+c.Version] = true
					mu.Unlock()
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	publish := func(model, v string) {
		t.Helper()
		m := Manifest{Model: model, Version: v, CID: "cid-" + v, SHA256: "sha-" + v, Size: 1, MediaType: MediaTypeONNX}
		if _, _, err := g.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	announced := func(versions ...string) {
		t.Helper()
		poll.Until(t, 10*time.Second, fmt.Sprintf("versions %v announced", versions), func() error {
			mu.Lock()
			defer mu.Unlock()
			var missing []string
			for _, v := range versions {
				if !added[v] {
					missing = append(missing, v)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("not announced: %v", missing)
			}
			return nil
		})
	}

	publish("m", "v0")
	announced("m@v0")

	// Stall Run: the change it computes next waits for g.mu (diff), so it
	// stops reading and the replica ends its subscription after eight
	// events. Publish itself never takes g.mu for valid records.
	g.mu.Lock()
	var unlock sync.Once
	resume := func() { unlock.Do(g.mu.Unlock) }
	t.Cleanup(resume) // before Run is waited for, should the test fail stalled
	var stalled []string
	for i := 1; i <= 20; i++ {
		v := fmt.Sprintf("v%d", i)
		publish("m", v)
		stalled = append(stalled, "m@"+v)
	}
	poll.Until(t, 10*time.Second, "the stalled registry's subscription ended", func() error {
		if n := r.Counters().SlowSubscribers; n != 1 {
			return fmt.Errorf("SlowSubscribers %d", n)
		}
		return nil
	})
	r.SetSubscriberLimits(crdt.SubscriberLimits{})
	resume()

	announced(stalled...)
	// Another model: the events Run still had in hand when its
	// subscription ended are all m's, and re-reading m does not show it.
	publish("m2", "later")
	announced("m2@later")
}
