package crdt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	ipld "github.com/ipfs/go-ipld-format"
)

// go-ds-crdt merges a branch from its tip down and marks each block
// processed as soon as its own delta is merged. When an ancestor cannot be
// fetched (its writer went offline seconds after broadcasting), or the
// walk is cut by Close, the tip stays processed but never becomes a head:
// rebroadcasts skip it as known, the periodic repair walks only from the
// heads and never reaches it, and the ancestors are never merged
// (go-ds-crdt #279/#350). "Processed" therefore says nothing about the
// branch below a block. completeness answers the question freshness needs
// — has this block *and everything it descends from* been merged here? —
// by walking the DAG in the local blockstore, and says where the holes are
// so the replica can walk the branch again.

// completeNamespace holds one marker per head found complete, so the walk
// after a restart stops at the heads of the previous run instead of
// reading the whole DAG. resetState clears it with go-ds-crdt's processed
// markers: a block is complete only relative to them.
var completeNamespace = ds.NewKey("/crdt-complete")

// hole is an ancestor that is not merged, with the processed blocks on the
// way to it from the head that was checked (head first).
type hole struct {
	block cid.Cid
	path  []cid.Cid
}

// completeness caches which blocks are known complete. A complete block
// stays complete (its ancestors never change), so the cache only grows;
// it is dropped as a whole when the state is rebuilt.
type completeness struct {
	local     LocalBlocks
	processed func(context.Context, cid.Cid) (bool, error)
	// pruned says a block's history was pruned under a fold (fold.go):
	// the fold above it holds its state, so it counts as complete.
	pruned func(context.Context, cid.Cid) bool
	store  ds.Datastore

	mu    sync.Mutex
	known *cid.Set
	// gen counts forgets: a check that began before one must not record
	// what it found, which was read against the markers since deleted.
	gen uint64
}

func newCompleteness(local LocalBlocks, processed func(context.Context, cid.Cid) (bool, error), pruned func(context.Context, cid.Cid) bool, store ds.Datastore) *completeness {
	return &completeness{local: local, processed: processed, pruned: pruned, store: store, known: cid.NewSet()}
}

func (c *completeness) isKnown(ctx context.Context, b cid.Cid) bool {
	c.mu.Lock()
	ok := c.known.Has(b)
	c.mu.Unlock()
	if ok {
		return true
	}
	if has, err := c.store.Has(ctx, completeNamespace.ChildString(b.String())); err == nil && has {
		c.mu.Lock()
		c.known.Add(b)
		c.mu.Unlock()
		return true
	}
	return false
}

// forget drops the cached markers (the state is being rebuilt from the
// DAG; resetState deletes the persisted ones) and voids checks under way.
func (c *completeness) forget() {
	c.mu.Lock()
	c.known = cid.NewSet()
	c.gen++
	c.mu.Unlock()
}

// errStateReset: the state was reset while a check read it; what it read
// says nothing now.
var errStateReset = errors.New("state reset during the completeness check")

// maxHoles bounds how many holes one check reports; healing the first ones
// uncovers the rest.
const maxHoles = 16

// check walks down from head through local blocks. It returns nil when the
// head and all its ancestors are merged here (and remembers that), or the
// holes it found: unprocessed blocks, or processed ones whose block is not
// in the local store. Reads are local only: nothing is fetched.
func (c *completeness) check(ctx context.Context, head cid.Cid) ([]hole, error) {
	if c.isKnown(ctx, head) {
		return nil, nil
	}
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	parent := map[cid.Cid]cid.Cid{}
	visited := cid.NewSet()
	stack := []cid.Cid{head}
	visited.Add(head)
	var holes []hole
	for len(stack) > 0 && len(holes) < maxHoles {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if b != head && c.isKnown(ctx, b) {
			continue
		}
		ok, err := c.processed(ctx, b)
		if err != nil {
			return nil, err
		}
		var links []*ipld.Link
		if ok && c.pruned != nil && c.pruned(ctx, b) {
			continue // a fold holds what lay below
		}
		if ok {
			links, err = c.links(ctx, b)
			if ipld.IsNotFound(err) {
				ok = false
			} else if err != nil {
				return nil, err
			}
		}
		if !ok {
			holes = append(holes, hole{block: b, path: pathTo(parent, head, b)})
			continue
		}
		for _, l := range links {
			if visited.Visit(l.Cid) {
				parent[l.Cid] = b
				stack = append(stack, l.Cid)
			}
		}
	}
	if len(holes) > 0 {
		return holes, nil
	}
	c.mu.Lock()
	stale := c.gen != gen
	if !stale {
		for _, b := range visited.Keys() {
			c.known.Add(b)
		}
	}
	c.mu.Unlock()
	if stale {
		return nil, errStateReset
	}
	if err := c.store.Put(ctx, completeNamespace.ChildString(head.String()), nil); err != nil {
		return nil, fmt.Errorf("record complete head %s: %w", head, err)
	}
	return nil, nil
}

func (c *completeness) links(ctx context.Context, b cid.Cid) ([]*ipld.Link, error) {
	blk, err := c.local.Get(ctx, b)
	if err != nil {
		if ipld.IsNotFound(err) {
			return nil, ipld.ErrNotFound{Cid: b}
		}
		return nil, fmt.Errorf("read block %s: %w", b, err)
	}
	n, err := merkledag.DecodeProtobufBlock(blk)
	if err != nil {
		return nil, fmt.Errorf("decode block %s: %w", b, err)
	}
	return n.Links(), nil
}

// pathTo lists the blocks from head down to the parent of b.
func pathTo(parent map[cid.Cid]cid.Cid, head, b cid.Cid) []cid.Cid {
	var rev []cid.Cid
	for cur := b; cur != head; {
		p, ok := parent[cur]
		if !ok {
			break
		}
		rev = append(rev, p)
		cur = p
	}
	out := make([]cid.Cid, len(rev))
	for i, x := range rev {
		out[len(rev)-1-i] = x
	}
	return out
}

// Merged reports whether c and every block it descends from have been
// merged into this replica's state. Freshness is measured with it, never
// with Processed alone: a tip merged over a hole is not fresh.
func (r *Replica) Merged(ctx context.Context, c cid.Cid) (bool, error) {
	holes, err := r.complete.check(ctx, c)
	return err == nil && len(holes) == 0, err
}

// healBranches looks for heads (this replica's own and those peers
// announced) that are processed over a hole, and walks each such branch
// again: the processed markers from the head down to each hole are
// removed and the head is handed back to go-ds-crdt, which merges the
// branch from its tip again (re-merging a delta changes nothing) and this
// time reaches the hole — fetching it if its writer is back — and makes
// the tip a head. A branch whose hole still cannot be fetched comes back
// here after healRetry.
//
// Candidates are taken in order, and a candidate that lies on the path of
// an earlier one to its hole is left to that walk: re-walking a block that
// sits below another head would make it a head of its own (go-ds-crdt adds
// a walk's root as a head when the walk ends), so this replica's own heads
// come first. (A local write made between reopening a head and the end of
// its walk can still leave the walked head beside the new one: heads then
// include an ancestor until the next write, and digests are not compared
// meanwhile.)
func (r *Replica) healBranches(ctx context.Context, candidates []cid.Cid) {
	now := time.Now()
	var heads []cid.Cid
	covered := cid.NewSet()
	for _, c := range candidates {
		if !covered.Visit(c) {
			continue
		}
		ok, err := r.Processed(ctx, c)
		if err != nil || !ok {
			continue // not merged at all: injectMissing's case
		}
		holes, err := r.complete.check(ctx, c)
		if err != nil {
			continue
		}
		// A head a fold covers, taken as merged from the fold (fold.go),
		// is a hole only until the prune under that fold runs: walking
		// below it would ask for history no one holds any more.
		holes = slices.DeleteFunc(holes, func(h hole) bool { return r.pruned(ctx, h.block) })
		if len(holes) == 0 {
			continue
		}
		r.cntMu.Lock()
		prev, tried := r.healed[c]
		retry := !tried || now.Sub(prev.at) >= prev.wait()
		if retry {
			r.healed[c] = healAttempt{at: now, n: prev.n + 1}
		}
		r.cntMu.Unlock()
		if !retry {
			continue
		}
		for _, h := range holes {
			for _, b := range h.path {
				covered.Add(b)
			}
			// The hole itself too: a block marked processed whose bytes
			// are not here is a hole no walk above it would refill.
			for _, b := range append([]cid.Cid{c, h.block}, h.path...) {
				if err := r.cfg.Datastore.Delete(ctx, r.processedKey(b)); err != nil {
					r.log.Warn("cannot reopen branch", "block", b.String(), "err", err)
				}
			}
		}
		r.log.Warn("walking a branch again: it was merged over a hole", "head", c.String(), "holes", len(holes), "first_hole", holes[0].block.String())
		heads = append(heads, c)
	}
	if len(heads) > 0 && r.bc.Inject(heads) {
		r.count(func(c *Counters) { c.HealedBranches += uint64(len(heads)) })
	}
}

// healAttempt records the walks of one holed branch: each retry waits
// twice as long as the one before (healRetry up to maxHealRetry), since a
// walk that cannot fetch its hole holds go-ds-crdt's broadcast handling
// for a fetch timeout and marks the store dirty.
type healAttempt struct {
	at time.Time
	n  int
}

func (h healAttempt) wait() time.Duration {
	return min(healRetry<<min(h.n-1, 10), maxHealRetry)
}

const (
	healRetry    = 10 * time.Second
	maxHealRetry = 5 * time.Minute
)
