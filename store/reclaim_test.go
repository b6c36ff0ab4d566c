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
	s, err := Open(Config{Dir: t.TempDir(), NoSync: true, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
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
