package crdt

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store"
)

// openReplica starts a single replica on a real host and a real Badger.
func openReplica(t *testing.T) *Replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r, closeAll := openReplicaAt(t, ctx, t.TempDir(), false)
	t.Cleanup(closeAll)
	return r
}

// openReplicaAt opens a replica over the store in dir; the returned
// function closes it, checking every close.
func openReplicaAt(t *testing.T, ctx context.Context, dir string, unclean bool) (*Replica, func()) {
	t.Helper()
	n := openNode(t, ctx, dir, nodeOpts{unclean: unclean})
	return n.r, n.close
}

// nodeOpts shape a test node: wrapDAG wraps the DAG service the replica
// fetches blocks through (fault injection), config edits its Config.
type nodeOpts struct {
	unclean bool
	wrapDAG func(ipld.DAGService) ipld.DAGService
	config  func(*Config)
	pubsub  []pubsub.Option
}

// testNode is a replica on a real libp2p host on loopback and a real
// Badger in dir.
type testNode struct {
	r     *Replica
	h     host.Host
	close func()
}

// openNode is the one helper every replica test starts from.
func openNode(t testing.TB, ctx context.Context, dir string, o nodeOpts) *testNode {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.NewGossipSub(ctx, h, o.pubsub...)
	if err != nil {
		t.Fatal(err)
	}
	blocks := store.NewBlocks(ctx, h, st.Blockstore(), store.BlocksConfig{})
	dag := blocks.DAG()
	if o.wrapDAG != nil {
		dag = o.wrapDAG(dag)
	}
	cfg := Config{
		Mesh: "unit", Self: h.ID(), PubSub: ps, Datastore: st.Datastore(),
		DAG: dag, Local: blocks.Local(), Adder: blocks.Service(),
		StartupGrace: time.Millisecond, Unclean: o.unclean,
		Signer: testKey, Trust: testTrust,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	r, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testNode{r: r, h: h, close: func() {
		if err := r.Close(); err != nil {
			t.Errorf("close replica: %v", err)
		}
		blocks.Close()
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		h.Close()
	}}
}

// TestProcessedLayout guards the one place that reads go-ds-crdt's internal
// key layout: a head this replica wrote is processed, a foreign CID is not.
func TestProcessedLayout(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	w, err := r.Put(ctx, "/unit/a", "unit.kv", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Heads) != 1 {
		t.Fatalf("heads after one write = %v", w.Heads)
	}
	ok, err := r.Processed(ctx, w.Heads[0])
	if err != nil || !ok {
		t.Fatalf("own head processed = %v, %v; go-ds-crdt's processed-block layout changed?", ok, err)
	}
	ok, err = r.Processed(ctx, testCID(t, "never written"))
	if err != nil || ok {
		t.Fatalf("foreign cid processed = %v, %v", ok, err)
	}
}

func TestReplicaWritesAndErrors(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	if _, err := r.Delete(ctx, "/unit/never"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of an unseen key: err = %v, want ErrNotFound", err)
	}
	if _, err := r.Get(ctx, "/unit/never"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get of an unseen key: err = %v, want ErrNotFound", err)
	}
	for _, k := range []string{"", "relative", "/a//b"} {
		if _, err := r.Put(ctx, k, "unit.kv", 1); !errors.Is(err, ErrBadRecord) {
			t.Errorf("Put(%q): err = %v, want ErrBadRecord", k, err)
		}
	}
	h0, _ := r.StateHash(ctx)
	w1, err := r.Put(ctx, "/unit/x", "unit.kv", "one")
	if err != nil {
		t.Fatal(err)
	}
	h1, _ := r.StateHash(ctx)
	if h1 == h0 {
		t.Error("state hash unchanged by a write")
	}
	w2, err := r.Put(ctx, "/unit/x", "unit.kv", "two")
	if err != nil {
		t.Fatal(err)
	}
	if w2.HLC.Compare(w1.HLC) <= 0 {
		t.Errorf("second write's HLC %v not after first %v", w2.HLC, w1.HLC)
	}
	rec, err := r.Get(ctx, "/unit/x")
	if err != nil {
		t.Fatal(err)
	}
	var s string
	if err := rec.DecodeBody(&s); err != nil || s != "two" {
		t.Errorf("value = %q, %v", s, err)
	}
	h2, _ := r.StateHash(ctx)
	if _, err := r.Delete(ctx, "/unit/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "/unit/x"); !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrDeleted) {
		t.Errorf("get of a deleted key: err = %v, want ErrNotFound wrapping ErrDeleted", err)
	}
	// The state holds the key's tombstone, a record like any other.
	if h, _ := r.StateHash(ctx); h == h2 || h == h0 {
		t.Errorf("state hash after the delete = %s: unchanged, or the empty state's", h)
	}
	if _, err := r.Delete(ctx, "/unit/x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of a deleted key: err = %v, want ErrNotFound", err)
	}
	if st := r.Staleness(); st.Seconds != 0 || len(st.Peers) != 0 {
		t.Errorf("a lone replica past its grace period: %+v", st)
	}
}

// TestHostileRecordsAreCountedByReason feeds raw values through the same
// path a remote delta takes: an oversized record and an undecodable one
// are counted apart and never reach List.
func TestHostileRecordsAreCountedByReason(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	huge := make([]byte, MaxRecordSize+1)
	for i := range huge {
		huge[i] = 'a'
	}
	if err := r.ds.Put(ctx, ds.NewKey("/hostile/huge"), huge); err != nil {
		t.Fatal(err)
	}
	if err := r.ds.Put(ctx, ds.NewKey("/hostile/garbage"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "one oversize and one bad record counted", func() error {
		if c := r.Counters(); c.OversizeRecords != 1 || c.BadRecords != 1 {
			return fmt.Errorf("counters %+v", c)
		}
		return nil
	})
	entries, err := r.List(ctx, "/hostile/")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("hostile records listed: %+v", entries)
	}
}

// TestResetState: after an unclean shutdown the state is rebuilt from the
// DAG. A value that is in the state but in no DAG block (what a kill
// between go-ds-crdt's state merge and its head update leaves) is gone;
// every value the DAG holds is back.
func TestResetState(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	open := func(unclean bool) (*Replica, func()) { return openReplicaAt(t, ctx, dir, unclean) }
	r, closeAll := open(false)
	for _, k := range []string{"/t/a", "/t/b", "/t/c"} {
		if _, err := r.Put(ctx, k, "test", map[string]string{"k": k}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Delete(ctx, "/t/b"); err != nil {
		t.Fatal(err)
	}
	// An orphan: a value in the state that no DAG block carries.
	rec := Record{V: RecordVersion, Kind: "test", HLC: r.Clock().Now(), Writer: r.Self().String(), Body: []byte(`{"k":"orphan"}`)}
	val := signedValue(t, testKey, "/t/orphan", rec)
	for _, kv := range []struct{ k, v string }{{"/crdt/s/k/t/orphan/v", string(val)}, {"/crdt/s/s/t/orphan/bafyorphan", ""}} {
		if err := r.cfg.Datastore.Put(ctx, ds.NewKey(kv.k), []byte(kv.v)); err != nil {
			t.Fatal(err)
		}
	}
	before, err := r.List(ctx, "/t/")
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 3 {
		t.Fatalf("the planted orphan is not in the state: %d entries", len(before))
	}
	closeAll()

	r, closeAll = open(true)
	defer closeAll()
	poll.Until(t, 10*time.Second, "the state rebuilt from the DAG", func() error {
		entries, err := r.List(ctx, "/t/")
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, e := range entries {
			keys = append(keys, e.Key)
		}
		if len(keys) == 2 && keys[0] == "/t/a" && keys[1] == "/t/c" {
			return nil
		}
		return fmt.Errorf("after the rebuild: %v (before it: %d entries with the orphan)", keys, len(before))
	})
	if _, err := r.Get(ctx, "/t/orphan"); err == nil {
		t.Error("the orphan value survived the rebuild")
	}
}
