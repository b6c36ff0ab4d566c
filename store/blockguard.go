package store

import (
	"context"
	"fmt"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
)

// guardedBlockstore refuses to store blocks that would cut into the disk
// reserve. Blocks arrive from other peers unasked-for in size and number
// (bitswap deliveries, head blocks attached to broadcasts), so the reserve
// the API's own writes respect has to hold here too: past it the peer
// stops taking blocks — the CRDT then cannot merge what it lacks and says
// so through its staleness — instead of filling the disk until Badger's
// mmap'd memtable flush faults.
type guardedBlockstore struct {
	blockstore.Blockstore
	s *Store
}

func (g guardedBlockstore) Put(ctx context.Context, b blocks.Block) error {
	if err := g.s.CheckSpace(int64(len(b.RawData()))); err != nil {
		return fmt.Errorf("store block %s: %w", b.Cid(), err)
	}
	return g.Blockstore.Put(ctx, b)
}

func (g guardedBlockstore) PutMany(ctx context.Context, bs []blocks.Block) error {
	var n int64
	for _, b := range bs {
		n += int64(len(b.RawData()))
	}
	if err := g.s.CheckSpace(n); err != nil {
		return fmt.Errorf("store %d blocks: %w", len(bs), err)
	}
	return g.Blockstore.PutMany(ctx, bs)
}
