package store

import (
	"context"
	"time"

	"github.com/ipfs/boxo/bitswap"
	bsnet "github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	"github.com/ipfs/boxo/ipld/merkledag"
	cid "github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/host"
)

// BlocksConfig configures the block exchange.
type BlocksConfig struct {
	// FetchTimeout bounds every single block fetch through the DAG
	// service, so one unreachable block cannot stall a CRDT worker
	// (go-ds-crdt #342). Default 30s.
	FetchTimeout time.Duration
}

// Blocks moves content-addressed blocks between peers: a bitswap exchange
// over the libp2p host in front of the local blockstore, and a DAG service
// on top. Bitswap asks every connected peer, so a block held by several
// peers is fetched from several of them at once.
type Blocks struct {
	bswap *bitswap.Bitswap
	bserv blockservice.BlockService
	dag   ipld.DAGService
	local blockstore.Blockstore
}

// NewBlocks starts bitswap on h. ctx bounds bitswap's lifetime; call Close
// as well.
func NewBlocks(ctx context.Context, h host.Host, bs blockstore.Blockstore, cfg BlocksConfig) *Blocks {
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	// No content routing: peers of a mesh are connected to each other, and
	// bitswap's broadcast wants reach all of them.
	bswap := bitswap.New(ctx, bsnet.NewFromIpfsHost(h), nil, bs)
	bserv := blockservice.New(bs, bswap)
	return &Blocks{
		bswap: bswap,
		bserv: bserv,
		dag:   &timeoutDAG{DAGService: merkledag.NewDAGService(bserv), timeout: cfg.FetchTimeout},
		local: bs,
	}
}

// DAG returns a DAG service whose reads time out after FetchTimeout.
func (b *Blocks) DAG() ipld.DAGService { return b.dag }

// Service returns the block service (local store + exchange).
func (b *Blocks) Service() blockservice.BlockService { return b.bserv }

// Local returns the local blockstore.
func (b *Blocks) Local() blockstore.Blockstore { return b.local }

// ExchangeStats are bitswap's counters.
type ExchangeStats struct {
	BlocksReceived, BytesReceived, DupBlocksReceived uint64
	BlocksSent, BytesSent                            uint64
	Wantlist                                         int
}

// Stats returns bitswap's counters.
func (b *Blocks) Stats() ExchangeStats {
	st, err := b.bswap.Stat()
	if err != nil {
		return ExchangeStats{}
	}
	return ExchangeStats{
		BlocksReceived: st.BlocksReceived, BytesReceived: st.DataReceived, DupBlocksReceived: st.DupBlksReceived,
		BlocksSent: st.BlocksSent, BytesSent: st.DataSent, Wantlist: len(st.Wantlist),
	}
}

// Close stops the exchange.
func (b *Blocks) Close() error { return b.bserv.Close() }

// timeoutDAG gives every read its own deadline.
type timeoutDAG struct {
	ipld.DAGService
	timeout time.Duration
}

func (t *timeoutDAG) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	return t.DAGService.Get(ctx, c)
}

func (t *timeoutDAG) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	in := t.DAGService.GetMany(ctx, cs)
	out := make(chan *ipld.NodeOption, len(cs))
	go func() {
		defer cancel()
		defer close(out)
		for o := range in {
			out <- o
		}
	}()
	return out
}

// Session keeps the session optimisation of the underlying DAG service
// (go-ds-crdt uses it to walk a branch) with the same per-read deadline.
func (t *timeoutDAG) Session(ctx context.Context) ipld.NodeGetter {
	var ng ipld.NodeGetter = t.DAGService
	if s, ok := t.DAGService.(interface {
		Session(context.Context) ipld.NodeGetter
	}); ok {
		ng = s.Session(ctx)
	}
	return &timeoutGetter{ng: ng, timeout: t.timeout}
}

type timeoutGetter struct {
	ng      ipld.NodeGetter
	timeout time.Duration
}

func (t *timeoutGetter) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	return t.ng.Get(ctx, c)
}

func (t *timeoutGetter) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	in := t.ng.GetMany(ctx, cs)
	out := make(chan *ipld.NodeOption, len(cs))
	go func() {
		defer cancel()
		defer close(out)
		for o := range in {
			out <- o
		}
	}()
	return out
}
