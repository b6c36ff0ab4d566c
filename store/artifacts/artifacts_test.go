package artifacts

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/ipfs/boxo/ipld/merkledag"
)

// stallingGetter answers its first GetMany with one node and then goes
// quiet until the caller gives up, like a bitswap session whose want was
// lost; later calls answer everything.
type stallingGetter struct {
	nodes map[cid.Cid]ipld.Node
	mu    sync.Mutex
	calls [][]cid.Cid
}

func (g *stallingGetter) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	return g.nodes[c], nil
}

func (g *stallingGetter) GetMany(ctx context.Context, cs []cid.Cid) <-chan *ipld.NodeOption {
	g.mu.Lock()
	first := len(g.calls) == 0
	g.calls = append(g.calls, cs)
	g.mu.Unlock()
	out := make(chan *ipld.NodeOption)
	go func() {
		defer close(out)
		for i, c := range cs {
			if first && i == 1 {
				<-ctx.Done()
				out <- &ipld.NodeOption{Err: ctx.Err()}
				return
			}
			select {
			case out <- &ipld.NodeOption{Node: g.nodes[c]}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// TestStalledBatchIsAskedForAgain: a batch that stops making progress is
// dropped after fetchStall and only its missing blocks are asked for
// again, each node is delivered once, and the stall is counted.
func TestStalledBatchIsAskedForAgain(t *testing.T) {
	defer func(d time.Duration) { fetchStall = d }(fetchStall)
	fetchStall = 50 * time.Millisecond
	g := &stallingGetter{nodes: map[cid.Cid]ipld.Node{}}
	var batch []cid.Cid
	for _, s := range []string{"a", "b", "c"} {
		nd := merkledag.NodeWithData([]byte(s))
		g.nodes[nd.Cid()] = nd
		batch = append(batch, nd.Cid())
	}
	m := &Manager{network: g, log: slog.New(slog.DiscardHandler)}
	seen := map[cid.Cid]int{}
	if err := m.getBatch(context.Background(), "m@v", batch, func(nd ipld.Node) { seen[nd.Cid()]++ }); err != nil {
		t.Fatal(err)
	}
	for _, c := range batch {
		if seen[c] != 1 {
			t.Errorf("%s delivered %d times", c, seen[c])
		}
	}
	if m.Stalls() != 1 || len(g.calls) != 2 || len(g.calls[1]) != 2 {
		t.Errorf("stalls %d, calls %v: want one stall and a second call for the 2 missing blocks", m.Stalls(), g.calls)
	}

	// A caller that gives up ends the fetch, stalled or not.
	g.calls = nil
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	fetchStall = time.Hour
	if err := m.getBatch(ctx, "m@v", batch, func(ipld.Node) {}); err == nil {
		t.Error("a fetch whose context ended returned no error")
	}
}
