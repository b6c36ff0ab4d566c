package crdt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLocalWritesAreSyncedBeforeTheyReturn: Put, PutBatch and Delete each
// return only after Config.Sync ran once the write was in the datastore.
func TestLocalWritesAreSyncedBeforeTheyReturn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var syncs atomic.Int64
	n := openNode(t, ctx, t.TempDir(), nodeOpts{config: func(c *Config) {
		c.Sync = func(context.Context) error { syncs.Add(1); return nil }
	}})
	defer n.close()
	r := n.r
	for i, write := range []func() error{
		func() error { _, err := r.Put(ctx, "/d/a", "doc", map[string]int{"v": 1}); return err },
		func() error {
			_, err := r.PutBatch(ctx, []Op{{Key: "/d/b", Kind: "doc", Body: 1}, {Key: "/d/c", Kind: "doc", Body: 2}})
			return err
		},
		func() error { _, err := r.Delete(ctx, "/d/a"); return err },
	} {
		before := syncs.Load()
		if err := write(); err != nil {
			t.Fatal(err)
		}
		if got := syncs.Load(); got != before+1 {
			t.Errorf("write %d: %d syncs before it returned, want 1", i, got-before)
		}
	}
	// A sync that fails fails the write's acknowledgement.
	failing := errors.New("disk gone")
	r.durability.sync = func(context.Context) error { return failing }
	if _, err := r.Put(ctx, "/d/e", "doc", 3); !errors.Is(err, failing) {
		t.Fatalf("Put with a failing sync: %v", err)
	}
}

// TestGroupSyncShares: writers finishing while a sync runs share the
// next one, and none returns before a sync that started after its write.
func TestGroupSyncShares(t *testing.T) {
	var syncs atomic.Int64
	g := &groupSync{}
	g.sync = func(context.Context) error {
		syncs.Add(1)
		time.Sleep(5 * time.Millisecond) // a slow disk: what makes writers pile up
		return nil
	}
	const writers = 64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// This write is at least the next one counted.
			mine := g.written.Load() + 1
			if err := g.durable(context.Background()); err != nil {
				errs <- err
				return
			}
			g.mu.Lock()
			covered := g.synced
			g.mu.Unlock()
			if covered < mine {
				errs <- fmt.Errorf("returned with writes up to %d synced, its own is at least %d", covered, mine)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := syncs.Load(); n >= writers || n < 1 {
		t.Fatalf("%d syncs for %d concurrent writers: want at least 1 and fewer than one each", n, writers)
	}
	if g.synced != writers {
		t.Fatalf("synced %d of %d writes", g.synced, writers)
	}
	// A write after everything was synced gets a sync of its own.
	before := syncs.Load()
	if err := g.durable(context.Background()); err != nil || syncs.Load() != before+1 {
		t.Fatalf("a lone write: err %v, %d syncs", err, syncs.Load()-before)
	}
}
