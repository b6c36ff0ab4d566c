package rag

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/internal/crdttest"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// TestManagerRecoversFromASlowSubscription: when the manager falls so
// far behind that the replica ends its subscription (ErrSlowSubscriber),
// the changes it missed — puts, a delete, a new collection — and every
// later one still reach its indexes.
func TestManagerRecoversFromASlowSubscription(t *testing.T) {
	r := crdttest.OpenReplica(t, "rag-unit")
	// Room for the first writes (11 events) whatever the manager's pace,
	// not for those made while it is stalled (37).
	r.SetSubscriberLimits(crdt.SubscriberLimits{Events: 16})
	ctx, cancel := context.WithCancel(context.Background())
	m := NewManager(r, slog.New(slog.DiscardHandler))
	sub := m.Subscribe()
	ran := make(chan struct{})
	go func() { defer close(ran); m.Run(ctx, sub) }()
	t.Cleanup(func() { cancel(); <-ran })

	docs := m.Store()
	create := func(name string) {
		t.Helper()
		if _, _, err := docs.CreateCollection(ctx, collections.Spec{Name: name, Embedder: "client@1", Dimension: 4}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(c, prefix string, from, to int) {
		t.Helper()
		var ds []collections.Doc
		for i := from; i < to; i++ {
			v := collections.EncodeVector([]float32{1, float32(i), 0, 1})
			ds = append(ds, collections.Doc{ID: fmt.Sprintf("%s%03d", prefix, i), Text: "t", Vector: v, Embedder: "client"})
		}
		if _, err := docs.PutDocs(ctx, c, ds); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(prefix string, from, to int, except ...string) []string {
		var out []string
		for i := from; i < to; i++ {
			if id := fmt.Sprintf("%s%03d", prefix, i); !slices.Contains(except, id) {
				out = append(out, id)
			}
		}
		return out
	}
	// indexed waits until a query of c returns exactly want.
	indexed := func(c string, want []string) {
		t.Helper()
		poll.Until(t, 20*time.Second, "collection "+c+" indexes exactly its documents", func() error {
			if err := m.CaughtUp(ctx); err != nil {
				return err
			}
			res, _, err := m.Query(ctx, c, []float32{1, 1, 0, 1}, 1000, nil)
			if err != nil {
				return err
			}
			var got []string
			for _, h := range res {
				got = append(got, h.ID)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("indexed %v, want %v", got, want)
			}
			// Query leaves out hits no longer stored: the index itself
			// must have dropped them too.
			if info, _ := m.Collection(c); info.Freshness.Documents != len(want) {
				return fmt.Errorf("%d documents in the index, want %d", info.Freshness.Documents, len(want))
			}
			return nil
		})
	}

	create("c")
	put("c", "d", 0, 10)
	indexed("c", ids("d", 0, 10))

	// Stall the manager: the next document it applies to c waits for
	// c's lock, so it stops reading and the replica ends its
	// subscription after 16 events. Its next subscription gets the
	// default limits.
	ci := m.index("c")
	ci.mu.Lock()
	var unlock sync.Once
	resume := func() { unlock.Do(ci.mu.Unlock) }
	t.Cleanup(resume) // before Run is waited for, should the test fail stalled
	put("c", "d", 10, 40)
	if _, err := docs.DeleteDoc(ctx, "c", "d000"); err != nil {
		t.Fatal(err)
	}
	create("c2")
	put("c2", "e", 0, 5)
	poll.Until(t, 10*time.Second, "the stalled manager's subscription ended", func() error {
		if n := r.Counters().SlowSubscribers; n != 1 {
			return fmt.Errorf("SlowSubscribers %d", n)
		}
		return nil
	})
	r.SetSubscriberLimits(crdt.SubscriberLimits{})
	resume()

	put("c", "d", 40, 41) // a write after the overflow
	indexed("c", ids("d", 0, 41, "d000"))
	indexed("c2", ids("e", 0, 5))
	if n := r.Counters().SlowSubscribers; n != 1 {
		t.Errorf("SlowSubscribers %d after recovering, want 1", n)
	}
	if n := m.Stats().Resyncs; n != 1 {
		t.Errorf("Resyncs %d, want 1", n)
	}
}
