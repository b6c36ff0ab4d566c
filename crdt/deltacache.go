package crdt

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	cid "github.com/ipfs/go-cid"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
)

// deltaCacheBlocks bounds the decoded delta blocks a replica keeps. A
// block holds at most maxBatchBytes of values plus one record, so the
// cache holds at most about 8 MiB.
const deltaCacheBlocks = 16

// deltaCache keeps the deltas of the blocks read last, decoded. Reading
// one key's records reads and decodes its element's whole block, and a
// batch block holds hundreds of documents: a fold, which reads every key
// in order, and the dispatcher, which resolves each key a fold or a
// batch touched, decoded the same block once per key (a fold of 2,000
// keys written 100 to a block spent most of its time in proto.Unmarshal).
//
// A block is content-addressed, so an entry never goes stale while the
// block exists; only a prune deletes blocks, and it calls forget after
// each deletion. gen makes a read that began before a forget unable to
// cache what it read: such a read may have found a block the prune has
// deleted since. Callers must not change a cached delta.
//
// mu guards gen and the LRU together (a thread-safe LRU would add a
// second lock to every lookup and still need mu for gen).
type deltaCache struct {
	mu  sync.Mutex
	gen uint64
	lru *simplelru.LRU[cid.Cid, *crdtpb.Delta]
}

func newDeltaCache() *deltaCache {
	c, err := simplelru.NewLRU[cid.Cid, *crdtpb.Delta](deltaCacheBlocks, nil)
	if err != nil {
		panic(err) // only for a size ≤ 0
	}
	return &deltaCache{lru: c}
}

// get returns c's delta if cached, and the generation a read of the
// block that misses must hand to add.
func (dc *deltaCache) get(c cid.Cid) (*crdtpb.Delta, uint64, bool) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	d, ok := dc.lru.Get(c)
	return d, dc.gen, ok
}

// add caches d as c's delta, unless a prune forgot the cache since the
// read began (gen).
func (dc *deltaCache) add(gen uint64, c cid.Cid, d *crdtpb.Delta) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if gen == dc.gen {
		dc.lru.Add(c, d)
	}
}

// forget empties the cache; a prune calls it once blocks are deleted.
func (dc *deltaCache) forget() {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	dc.gen++
	dc.lru.Purge()
}
