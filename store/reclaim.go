package store

import (
	"sync"
	"time"
)

// reclaimer turns bulk deletes back into free disk. Badger frees the space
// of a deleted or overwritten key only when a compaction carries it down
// to the last level of its tree, which a store that is no longer growing
// may not do for a long time: after the replica pruned folded history, the
// data dir of the issue-15 soak stayed 15–30× the live data's, in level-0
// tables Badger had no reason to compact. So after each prune (Reclaim),
// the tree is flattened — every level compacted into one, dropping
// deleted and overwritten versions — in the background, one at a time.
// It costs one rewrite of the tree; a fold, and so a prune, comes only
// after at least as many records were written as the peer holds keys, so
// that cost stays proportional to what was written.
//
// That flatten reaches only what is in the tree: a prune's last deletes
// are still in Badger's memtable when it ends, and a tree all in level 0
// (a store of a few memtables, a gateway's) is one Flatten leaves alone —
// after the single-peer soak's prune the log said "tree flattened", 47 MB
// before and after, and the peer stopped with all of it. Badger's only
// flush at run time (DropPrefix) fails every write made meanwhile with
// ErrBlockedWrites (TestReclaimLeavesWritersAlone), so the rest waits
// for Badger's own compactions or for the close, where Badger flushes its
// memtables and compacts level 0 (CompactL0OnClose). That is not enough
// yet: the 100,000-write soak still keeps 17× its live data
// (docs/benchmarks.md, "Bounded history").
type reclaimer struct {
	mu       sync.Mutex
	deleted  int64 // bytes deleted since the last flatten
	running  bool
	closed   bool
	wg       sync.WaitGroup
	flattens int
}

// minReclaim is the least deleted bytes worth a flatten.
const minReclaim = 1 << 20

// Reclaim notes that about n bytes were deleted in bulk (crdt.Config.Pruned:
// the replica pruned folded history) and flattens the tree once at least
// minReclaim were, since the last flatten.
func (s *Store) Reclaim(n int64) {
	r := &s.reclaim
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted += n
	if r.running || r.closed {
		return
	}
	if r.deleted < minReclaim {
		return
	}
	lsm := s.treeBytes()
	r.running, r.deleted = true, 0
	r.wg.Add(1)
	go s.flatten(lsm)
}

func (s *Store) flatten(before int64) {
	r := &s.reclaim
	defer r.wg.Done()
	start := time.Now()
	err := s.db.DB.Flatten(1)
	after := s.treeBytes()
	r.mu.Lock()
	r.running = false
	if err == nil {
		r.flattens++
	}
	r.mu.Unlock()
	if err != nil {
		s.log.Warn("store: flattening after bulk deletes failed; Badger's own compactions reclaim the space later", "err", err)
		return
	}
	s.log.Info("store: tree flattened after bulk deletes", "lsm_bytes_before", before, "lsm_bytes_after", after, "seconds", time.Since(start).Seconds())
}

// Flattens reports how many flattens Reclaim ran.
func (s *Store) Flattens() int {
	s.reclaim.mu.Lock()
	defer s.reclaim.mu.Unlock()
	return s.reclaim.flattens
}

// stopReclaim waits for a flatten under way and starts no other (Close).
func (s *Store) stopReclaim() {
	s.reclaim.mu.Lock()
	s.reclaim.closed = true
	s.reclaim.mu.Unlock()
	s.reclaim.wg.Wait()
}

// treeBytes is the size of Badger's tree on disk now (DB.Size is only
// refreshed once a minute).
func (s *Store) treeBytes() int64 {
	var n int64
	for _, t := range s.db.DB.Tables() {
		n += int64(t.OnDiskSize)
	}
	return n
}
