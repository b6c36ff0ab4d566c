package store

import (
	"context"
	"fmt"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
)

// guardedBlockstore refuses to store blocks that would cut into the lower
// half of the disk reserve. Blocks arrive from other peers in sizes and
// numbers this peer does not choose (bitswap deliveries, head blocks of
// broadcasts), so past that floor the peer stops taking any — the CRDT then
// cannot merge what it lacks and says so through its staleness — instead
// of filling the disk until Badger's mmap'd memtable flush faults. The
// upper half of the reserve, where the API's own writes and artifact pulls
// are already refused (CheckSpace), stays open to blocks: replicated
// records must keep arriving (an activation of a version too large to
// fetch is how this peer learns that it is too large).
type guardedBlockstore struct {
	blockstore.Blockstore
	s *Store
}

func (g guardedBlockstore) Put(ctx context.Context, b blocks.Block) error {
	if err := g.s.checkFloor(int64(len(b.RawData()))); err != nil {
		return fmt.Errorf("store block %s: %w", b.Cid(), err)
	}
	return g.Blockstore.Put(ctx, b)
}

func (g guardedBlockstore) PutMany(ctx context.Context, bs []blocks.Block) error {
	var n int64
	for _, b := range bs {
		n += int64(len(b.RawData()))
	}
	if err := g.s.checkFloor(n); err != nil {
		return fmt.Errorf("store %d blocks: %w", len(bs), err)
	}
	return g.Blockstore.PutMany(ctx, bs)
}

// checkFloor is CheckSpace against half the reserve.
func (s *Store) checkFloor(need int64) error {
	floor := s.minFree / 2
	short, free, err := s.short(need, floor)
	if err != nil {
		return err
	}
	if short {
		return fmt.Errorf("%w: %s has %d MiB free, a block of %d KiB would cut into the last %d MiB (half the reserve)", ErrDiskFull,
			s.dir, free>>20, (max(need, 0)+1023)>>10, floor>>20)
	}
	return nil
}
