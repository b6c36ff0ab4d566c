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
// data dir of the issue-15 soak stayed 15–30× the live data's. So after
// each prune (Reclaim), the tree is flattened — every level compacted into
// one, dropping deleted and overwritten versions — in the background, one
// at a time. It costs one rewrite of the tree; a fold, and so a prune,
// comes only after at least as many records were written as the peer holds
// keys, so that cost stays proportional to what was written.
//
// Flatten compacts only the tree, and a prune's last deletes are still in
// Badger's memtable when it ends; flattened then, they and what they free
// stay (the soak's log: "tree flattened", 47 MB before and after). Badger
// has no flush that leaves writers alone (DropPrefix flushes, but fails
// every write made meanwhile with ErrBlockedWrites: TestFaultSoak's writes
// did), so the flatten waits until a table of the tree holds Badger's
// version at the time of the Reclaim — the memtable with the deletes was
// flushed — and a flatten still waiting when the store closes runs in
// Close, after a flush, when no writer is left.
type reclaimer struct {
	mu       sync.Mutex
	deleted  int64 // bytes deleted since the last flatten
	running  bool  // a flatten is waiting or under way
	closed   bool
	stop     chan struct{}
	wg       sync.WaitGroup
	flattens int
}

// minReclaim is the least deleted bytes worth a flatten.
const minReclaim = 1 << 20

// flushPoll is how often a waiting flatten looks for the flushed deletes.
const flushPoll = time.Second

// Reclaim notes that about n bytes were deleted in bulk (crdt.Config.Pruned:
// the replica pruned folded history) and flattens the tree once at least
// minReclaim were, since the last flatten, and those deletes reached the
// tree.
func (s *Store) Reclaim(n int64) {
	r := &s.reclaim
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted += n
	if r.running || r.closed || r.deleted < minReclaim {
		return
	}
	r.running, r.deleted = true, 0
	if r.stop == nil {
		r.stop = make(chan struct{})
	}
	r.wg.Add(1)
	go s.flattenOnceFlushed(s.committed(), r.stop)
}

// committed is the version of Badger's newest committed write: a read
// transaction's timestamp (DB.MaxVersion reads the memtable unlocked).
func (s *Store) committed() uint64 {
	txn := s.db.DB.NewTransaction(false)
	defer txn.Discard()
	return txn.ReadTs()
}

// flattenOnceFlushed flattens the tree once a table holds version v, or
// leaves the flatten to Close.
func (s *Store) flattenOnceFlushed(v uint64, stop <-chan struct{}) {
	defer s.reclaim.wg.Done()
	t := time.NewTicker(flushPoll)
	defer t.Stop()
	for !s.inTree(v) {
		select {
		case <-stop:
			return // still running: Close flattens
		case <-t.C:
		}
	}
	s.flatten()
}

// inTree reports whether a table of Badger's tree holds version v or a
// later one: memtables are flushed in order, so everything up to v is in
// the tree.
func (s *Store) inTree(v uint64) bool {
	for _, t := range s.db.DB.Tables() {
		if t.MaxVersion >= v {
			return true
		}
	}
	return false
}

func (s *Store) flatten() {
	r := &s.reclaim
	before := s.treeBytes()
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

// stopReclaim (Close, once every writer is done) stops a flatten waiting
// for its deletes to be flushed and runs it now: the memtables are flushed
// first, which blocks writes while it lasts, and none are left.
func (s *Store) stopReclaim() {
	r := &s.reclaim
	r.mu.Lock()
	r.closed = true
	if r.stop != nil {
		close(r.stop)
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	pending := r.running
	r.mu.Unlock()
	if !pending {
		return
	}
	if err := s.flushMemtables(); err != nil {
		s.log.Warn("store: flushing before the last flatten failed", "err", err)
		return
	}
	s.flatten()
}

// flushKey is the marker flushMemtables writes and drops.
var flushKey = []byte("/.shoal-store-flush")

// flushMemtables writes Badger's memtables to its tree. Badger has no
// public flush; DropPrefix flushes the memtables first (its documented
// first step) when a key with the prefix exists, and then drops that key:
// the marker written here. It fails writes made meanwhile, so only Close
// calls it.
func (s *Store) flushMemtables() error {
	if err := s.db.DB.Update(func(txn *badger.Txn) error { return txn.Set(flushKey, nil) }); err != nil {
		return err
	}
	return s.db.DB.DropPrefix(flushKey)
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
