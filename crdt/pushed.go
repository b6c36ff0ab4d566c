package crdt

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	cid "github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
)

// Head blocks arrive inside broadcasts so that a receiver need not ask for
// them (design §9), but anyone on the topic can attach any block that
// matches its CID. Writing those straight into the blockstore let a peer
// fill every other peer's disk with blocks no DAG refers to. Now they wait
// in memory (pushedBlocks: bounded in bytes, each kept for pushedTTL) and
// are stored only when go-ds-crdt fetches them through pushedDAG — that
// is, when they are part of a branch being merged — and then through the
// blockstore, which keeps the disk reserve (store.guardedBlockstore).

const (
	// maxPushedBytes bounds the inline blocks held waiting to be asked for.
	maxPushedBytes = 32 << 20
	// pushedTTL is how long an inline block waits; go-ds-crdt asks for a
	// broadcast head within moments of receiving it.
	pushedTTL = 2 * time.Minute
)

type pushedEntry struct {
	blk blocks.Block
	at  time.Time
}

// pushedBlocks is a FIFO of inline blocks bounded in bytes and age.
type pushedBlocks struct {
	max int
	ttl time.Duration

	mu    sync.Mutex
	order *list.List // of *pushedEntry, oldest first
	byCID map[cid.Cid]*list.Element
	bytes int
}

func newPushedBlocks(max int, ttl time.Duration) *pushedBlocks {
	return &pushedBlocks{max: max, ttl: ttl, order: list.New(), byCID: map[cid.Cid]*list.Element{}}
}

func (p *pushedBlocks) put(b blocks.Block) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.byCID[b.Cid()]; ok || len(b.RawData()) > p.max {
		return
	}
	p.byCID[b.Cid()] = p.order.PushBack(&pushedEntry{blk: b, at: time.Now()})
	p.bytes += len(b.RawData())
	for p.bytes > p.max {
		p.removeLocked(p.order.Front())
	}
}

// take returns and forgets a waiting block.
func (p *pushedBlocks) take(c cid.Cid) (blocks.Block, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for e := p.order.Front(); e != nil && now.Sub(e.Value.(*pushedEntry).at) > p.ttl; e = p.order.Front() {
		p.removeLocked(e)
	}
	e, ok := p.byCID[c]
	if !ok {
		return nil, false
	}
	b := e.Value.(*pushedEntry).blk
	p.removeLocked(e)
	return b, true
}

func (p *pushedBlocks) removeLocked(e *list.Element) {
	ent := p.order.Remove(e).(*pushedEntry)
	delete(p.byCID, ent.blk.Cid())
	p.bytes -= len(ent.blk.RawData())
}

// size reports the blocks and bytes waiting.
func (p *pushedBlocks) size() (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.order.Len(), p.bytes
}

// pushedDAG is the DAG service go-ds-crdt reads through: a block pushed
// inline is stored (and announced to bitswap, so others can fetch it from
// here) when it is first asked for; a pruned block is answered with an
// empty stand-in; anything else goes to the network. Every block fetched
// is shown to fetched before go-ds-crdt merges it (folds, fold.go).
type pushedDAG struct {
	ipld.DAGService
	pushed  *pushedBlocks
	adder   BlockAdder
	pruned  func(context.Context, cid.Cid) bool
	fetched func(context.Context, ipld.Node)
}

func (d *pushedDAG) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	return d.get(ctx, c, d.DAGService)
}

func (d *pushedDAG) get(ctx context.Context, c cid.Cid, inner ipld.NodeGetter) (ipld.Node, error) {
	if blk, ok := d.pushed.take(c); ok {
		return d.seen(ctx)(d.store(ctx, blk))
	}
	if n, ok := d.standIn(ctx, c); ok {
		return n, nil
	}
	return d.seen(ctx)(inner.Get(ctx, c))
}

// seen shows a fetched node to fetched on its way to go-ds-crdt.
func (d *pushedDAG) seen(ctx context.Context) func(ipld.Node, error) (ipld.Node, error) {
	return func(n ipld.Node, err error) (ipld.Node, error) {
		if err == nil && d.fetched != nil {
			d.fetched(ctx, n)
		}
		return n, err
	}
}

// emptyDelta is the encoding of a delta node without data or links.
var emptyDelta = merkledag.NodeWithData(nil).RawData()

// standIn answers for a block pruned here: an empty leaf under its CID.
// go-ds-crdt only asks for one when its repair walks the DAG from the
// heads through processed blocks (it never merges a processed block
// again), and a leaf ends that walk where the pruned history begins. It is
// never stored or served to anyone.
func (d *pushedDAG) standIn(ctx context.Context, c cid.Cid) (ipld.Node, bool) {
	if d.pruned == nil || !d.pruned(ctx, c) {
		return nil, false
	}
	blk, err := blocks.NewBlockWithCid(emptyDelta, c)
	if err != nil {
		return nil, false
	}
	n, err := merkledag.DecodeProtobufBlock(blk)
	if err != nil {
		return nil, false
	}
	return n, true
}

func (d *pushedDAG) store(ctx context.Context, blk blocks.Block) (ipld.Node, error) {
	n, err := merkledag.DecodeProtobufBlock(blk)
	if err != nil {
		return nil, fmt.Errorf("decode pushed block %s: %w", blk.Cid(), err)
	}
	if err := d.adder.AddBlock(ctx, blk); err != nil {
		return nil, fmt.Errorf("store pushed block %s: %w", blk.Cid(), err)
	}
	return n, nil
}

// Session keeps the bitswap session go-ds-crdt uses to walk a branch
// (through the wrapped DAG service's own Session, when it has one), with
// pushed blocks still taken first.
func (d *pushedDAG) Session(ctx context.Context) ipld.NodeGetter {
	var inner ipld.NodeGetter = d.DAGService
	if s, ok := d.DAGService.(interface {
		Session(context.Context) ipld.NodeGetter
	}); ok {
		inner = s.Session(ctx)
	}
	return &pushedGetter{inner: inner, d: d}
}

// pushedGetter is a session's NodeGetter in front of the pushed blocks.
type pushedGetter struct {
	inner ipld.NodeGetter
	d     *pushedDAG
}

func (g *pushedGetter) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	return g.d.get(ctx, c, g.inner)
}

func (g *pushedGetter) GetMany(ctx context.Context, cids []cid.Cid) <-chan *ipld.NodeOption {
	return g.d.getMany(ctx, cids, g.inner)
}

func (d *pushedDAG) GetMany(ctx context.Context, cids []cid.Cid) <-chan *ipld.NodeOption {
	return d.getMany(ctx, cids, d.DAGService)
}

func (d *pushedDAG) getMany(ctx context.Context, cids []cid.Cid, inner ipld.NodeGetter) <-chan *ipld.NodeOption {
	var rest []cid.Cid
	var found []*ipld.NodeOption
	for _, c := range cids {
		if blk, ok := d.pushed.take(c); ok {
			n, err := d.seen(ctx)(d.store(ctx, blk))
			found = append(found, &ipld.NodeOption{Node: n, Err: err})
		} else if n, ok := d.standIn(ctx, c); ok {
			found = append(found, &ipld.NodeOption{Node: n})
		} else {
			rest = append(rest, c)
		}
	}
	out := make(chan *ipld.NodeOption, len(cids))
	go func() {
		defer close(out)
		for _, o := range found {
			select {
			case out <- o:
			case <-ctx.Done():
				return
			}
		}
		if len(rest) == 0 {
			return
		}
		for o := range inner.GetMany(ctx, rest) {
			if o.Err == nil && d.fetched != nil {
				d.fetched(ctx, o.Node)
			}
			select {
			case out <- o:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}
