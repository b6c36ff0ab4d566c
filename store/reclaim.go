package store

import (
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
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
	err := s.flushMemtables()
	if err == nil {
		err = s.db.DB.Flatten(1)
	}
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

// levelTables is how many tables Badger's tree has in level.
func (s *Store) levelTables(level int) int {
	n := 0
	for _, t := range s.db.DB.Tables() {
		if t.Level == level {
			n++
		}
	}
	return n
}

// flushKey is the marker flushMemtables writes and drops.
var flushKey = []byte("/.shoal-store-flush")

// flushMemtables writes Badger's memtables to its tree. Flatten compacts
// only the tree, and the deletes of the prune that called Reclaim are
// still in the memtable then, so without a flush they, and the space
// they free, wait for a memtable's worth of further writes: on a quiet
// peer, until it closes. Badger has no public flush; DropPrefix flushes
// the memtables first (its documented first step) when a key with the
// prefix exists, and then drops that key: the marker written here.
func (s *Store) flushMemtables() error {
	if err := s.db.DB.Update(func(txn *badger.Txn) error { return txn.Set(flushKey, nil) }); err != nil {
		return err
	}
	return s.db.DB.DropPrefix(flushKey)
}
