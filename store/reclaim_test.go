package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// TestReclaimGivesTheSpaceBack: keys deleted in bulk keep their space in
// Badger's tree until a compaction reaches the last level; Reclaim
// flattens the tree once enough was deleted, and the tree shrinks.
func TestReclaimGivesTheSpaceBack(t *testing.T) {
	s := smallStore(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	d := s.Datastore()
	value := make([]byte, 1<<10)
	const n = 40 << 10 // 40 MiB of 1 KiB values
	key := func(i int) ds.Key { return ds.NewKey(fmt.Sprintf("/bulk/%06d", i)) }
	for i := range n {
		value[0], value[1] = byte(i), byte(i>>8)
		if err := d.Put(ctx, key(i), value); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Put(ctx, ds.NewKey("/kept"), []byte("live")); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := d.Delete(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Push the deletes out of the memtables, as later writes would.
	if err := s.db.DB.Sync(); err != nil {
		t.Fatal(err)
	}
	for i := range 4 << 10 {
		if err := d.Put(ctx, ds.NewKey(fmt.Sprintf("/later/%06d", i)), value); err != nil {
			t.Fatal(err)
		}
	}
	before := s.treeBytes()
	s.Reclaim(minReclaim / 2) // too little to be worth it
	if s.Flattens() != 0 {
		t.Fatalf("a flatten after %d bytes of deletes", minReclaim/2)
	}
	s.Reclaim(n << 10)
	poll.Until(t, 60*time.Second, "a flatten", func() error {
		if s.Flattens() == 0 {
			return fmt.Errorf("no flatten yet")
		}
		return nil
	})
	after := s.treeBytes()
	t.Logf("tree %d bytes before the flatten, %d after", before, after)
	if after > before/2 {
		t.Errorf("tree %d bytes after reclaiming, %d before", after, before)
	}
	if v, err := d.Get(ctx, ds.NewKey("/kept")); err != nil || string(v) != "live" {
		t.Errorf("live key after the flatten: %q, %v", v, err)
	}
}

// TestReclaimReachesLevelZero: overwritten and deleted versions leave the
// disk only when a compaction carries them below level 0; Badger's Flatten
// leaves a tree all in one level alone, and a prune's last deletes are
// still in the memtable when it ends. After the single-peer soak's prune,
// Reclaim "flattened" 47 MB of level-0 tables in microseconds, 15× the
// live data, and the peer stopped with all of it. Badger now compacts
// level 0 when the store closes: it reopens within 1.5× its live data.
func TestReclaimReachesLevelZero(t *testing.T) {
	dir := t.TempDir()
	s := smallStore(t, dir)
	ctx := context.Background()
	d := s.Datastore()
	value := make([]byte, 1<<10)
	key := func(i int) ds.Key { return ds.NewKey(fmt.Sprintf("/doc/%06d", i)) }
	const docs = 512       // 512 KiB, then half of it, live
	for round := range 6 { // each round overwrites every document
		for i := range docs {
			value[0], value[1] = byte(round), byte(i)
			if err := d.Put(ctx, key(i), value); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The prune: half the documents are deleted, and nothing is written
	// after it.
	for i := range docs / 2 {
		if err := d.Delete(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	before := s.treeBytes()
	s.Reclaim(minReclaim * 4)
	poll.Until(t, 60*time.Second, "a flatten", func() error {
		if s.Flattens() == 0 {
			return fmt.Errorf("no flatten yet")
		}
		return nil
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = smallStore(t, dir)
	defer s.Close()
	d = s.Datastore()
	after := s.treeBytes()
	live := int64(docs / 2 * (1 << 10))
	t.Logf("tree %d bytes before reclaiming, %d after; %d live", before, after, live)
	if after > live*3/2 {
		t.Errorf("tree %d bytes after reclaiming, %d live (%d before)", after, live, before)
	}
	if v, err := d.Get(ctx, key(docs-1)); err != nil || v[0] != 5 {
		t.Errorf("the newest version of a live document after reclaiming: %v, %v", v, err)
	}
	if ok, err := d.Has(ctx, key(0)); err != nil || ok {
		t.Errorf("a deleted document after reclaiming: %v, %v", ok, err)
	}
}

// TestReclaimLeavesWritersAlone: a flatten must not fail a write made
// meanwhile. Flushing the memtables through DropPrefix first did (Badger
// fails writes with ErrBlockedWrites while it flushes): TestFaultSoak's
// writes got 500s.
func TestReclaimLeavesWritersAlone(t *testing.T) {
	s := smallStore(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	d := s.Datastore()
	done := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		value := make([]byte, 512)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			k := ds.NewKey(fmt.Sprintf("/w/%04d", i%2048))
			if err := d.Put(ctx, k, value); err != nil {
				errs <- err
				return
			}
			if i%4 == 0 {
				if err := d.Delete(ctx, k); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	for want := 1; want <= 3; want++ {
		s.Reclaim(minReclaim)
		poll.Until(t, 60*time.Second, "a flatten", func() error {
			if s.Flattens() < want {
				return fmt.Errorf("%d flattens", s.Flattens())
			}
			return nil
		})
	}
	close(done)
	if err := <-errs; err != nil {
		t.Fatalf("a write during reclaiming: %v", err)
	}
}

// smallStore opens a store in dir whose memtables are 1 MiB, so a few MiB
// of writes fill several.
func smallStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir, NoSync: true, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
