package crdt

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store"
)

// offlineDAG stands between a replica and the block exchange and makes
// chosen blocks unreachable, as if their writer had gone offline: a fetch
// fails at once (fail) or hangs until its context ends (hang).
type offlineDAG struct {
	ipld.DAGService
	mu   sync.Mutex
	fail map[cid.Cid]bool
	hang map[cid.Cid]bool
	// hung is closed when a fetch first hangs.
	hung     chan struct{}
	hungOnce sync.Once
}

func newOfflineDAG(inner ipld.DAGService) *offlineDAG {
	return &offlineDAG{DAGService: inner, fail: map[cid.Cid]bool{}, hang: map[cid.Cid]bool{}, hung: make(chan struct{})}
}

func (d *offlineDAG) set(c cid.Cid, fail, hang bool) {
	d.mu.Lock()
	d.fail[c], d.hang[c] = fail, hang
	d.mu.Unlock()
}

// back brings every block back.
func (d *offlineDAG) back() {
	d.mu.Lock()
	d.fail, d.hang = map[cid.Cid]bool{}, map[cid.Cid]bool{}
	d.mu.Unlock()
}

func (d *offlineDAG) refuse(ctx context.Context, c cid.Cid) error {
	d.mu.Lock()
	fail, hang := d.fail[c], d.hang[c]
	d.mu.Unlock()
	if hang {
		d.hungOnce.Do(func() { close(d.hung) })
		<-ctx.Done()
		return ctx.Err()
	}
	if fail {
		return fmt.Errorf("writer offline: %w", ipld.ErrNotFound{Cid: c})
	}
	return nil
}

func (d *offlineDAG) Get(ctx context.Context, c cid.Cid) (ipld.Node, error) {
	if err := d.refuse(ctx, c); err != nil {
		return nil, err
	}
	return d.DAGService.Get(ctx, c)
}

func (d *offlineDAG) GetMany(ctx context.Context, cids []cid.Cid) <-chan *ipld.NodeOption {
	out := make(chan *ipld.NodeOption, len(cids))
	go func() {
		defer close(out)
		for _, c := range cids {
			n, err := d.Get(ctx, c)
			out <- &ipld.NodeOption{Node: n, Err: err}
		}
	}()
	return out
}

func connect(t *testing.T, ctx context.Context, a, b *testNode) {
	t.Helper()
	if err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func peerStatus(r *Replica, id peer.ID) (PeerStatus, bool) {
	for _, p := range r.Staleness().Peers {
		if p.ID == id.String() {
			return p, true
		}
	}
	return PeerStatus{}, false
}

// sameState waits until every replica holds the same state hash.
func sameState(t *testing.T, ctx context.Context, what string, rs ...*Replica) {
	t.Helper()
	poll.Until(t, 60*time.Second, what, func() error {
		var first string
		for i, r := range rs {
			h, err := r.StateHash(ctx)
			if err != nil {
				return err
			}
			if i == 0 {
				first = h
			} else if h != first {
				return fmt.Errorf("replica %d state %s, replica 0 %s", i, h[:12], first[:12])
			}
		}
		return nil
	})
}

// TestHoledBranchIsNotFreshUntilHealed is the writer-goes-offline-mid-
// branch hole (issue 15): b learns a's newest head, merges it, and cannot
// fetch its parent because a is gone. go-ds-crdt has marked the tip
// processed, so with freshness measured on processed marks b claimed to
// hold everything a held, and since the tip never became a head no repair
// ever walked to the parent. b must say it is not fresh, and merge the
// parent once the writer is back.
// writerAndReader opens a writer a and a reader b whose block fetches go
// through an offlineDAG, and gives b a write of its own: a branch of a's
// is then not made a head up front, as go-ds-crdt does for a replica with
// no heads at all. b's DAG walks give up on a block after dagTimeout.
func writerAndReader(t *testing.T, ctx context.Context, dagTimeout time.Duration) (a, b *testNode, off *offlineDAG) {
	t.Helper()
	a = openNode(t, ctx, t.TempDir(), nodeOpts{})
	t.Cleanup(a.close)
	b = openNode(t, ctx, t.TempDir(), nodeOpts{
		wrapDAG: func(d ipld.DAGService) ipld.DAGService { off = newOfflineDAG(d); return off },
		config:  func(c *Config) { c.DAGTimeout = dagTimeout },
	})
	t.Cleanup(b.close)
	if _, err := b.r.Put(ctx, "/unit/b", "unit.kv", "b"); err != nil {
		t.Fatal(err)
	}
	return a, b, off
}

func TestHoledBranchIsNotFreshUntilHealed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b, off := writerAndReader(t, ctx, 2*time.Second)
	w1, err := a.r.Put(ctx, "/unit/a1", "unit.kv", "a1")
	if err != nil {
		t.Fatal(err)
	}
	off.set(w1.Heads[0], true, false) // a is "offline" for this block
	if _, err := a.r.Put(ctx, "/unit/a2", "unit.kv", "a2"); err != nil {
		t.Fatal(err)
	}
	connect(t, ctx, a, b)

	poll.Until(t, 30*time.Second, "b merged a's newest write", func() error {
		_, err := b.r.Get(ctx, "/unit/a2")
		return err
	})
	// From here on, and for several of a's heartbeats, b must not claim
	// to hold what a held: it lacks /unit/a1.
	seen := b.r.Counters().HeartbeatsIn
	poll.Until(t, 30*time.Second, "three more heartbeats from a", poll.True(
		func() bool { return b.r.Counters().HeartbeatsIn >= seen+3 },
		func() string { return fmt.Sprintf("%d heartbeats", b.r.Counters().HeartbeatsIn-seen) }))
	if _, err := b.r.Get(ctx, "/unit/a1"); err == nil {
		t.Fatal("b has /unit/a1 although its block was unreachable")
	}
	ps, ok := peerStatus(b.r, a.h.ID())
	if !ok {
		t.Fatal("b has not heard of a")
	}
	if !ps.FreshUpTo.IsZero() {
		t.Errorf("b lacks /unit/a1 but claims to hold everything a held at %v (lag %.2fs)", ps.FreshUpTo, ps.LagSeconds)
	}
	if st := b.r.Staleness(); st.Seconds < 0.5 {
		t.Errorf("b lacks /unit/a1 but reports staleness %.3fs", st.Seconds)
	}

	off.back() // the writer returns
	poll.Until(t, 60*time.Second, "b merged /unit/a1 and is fresh with respect to a", func() error {
		if _, err := b.r.Get(ctx, "/unit/a1"); err != nil {
			return err
		}
		if ps, _ := peerStatus(b.r, a.h.ID()); ps.FreshUpTo.IsZero() {
			return fmt.Errorf("not fresh with respect to a yet: %+v", ps)
		}
		return nil
	})
	sameState(t, ctx, "a and b converge to one state", a.r, b.r)
	if c := b.r.Counters(); c.HealedBranches == 0 {
		t.Errorf("no branch was walked again: %+v", c)
	}
}

// TestCloseMidWalkIsHealedAfterRestart: a clean Close while a branch is
// being walked leaves the same half-processed branch, now on disk. After
// the restart the replica must not be fresh until the branch is merged.
func TestCloseMidWalkIsHealedAfterRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{})
	defer a.close()
	dirB := t.TempDir()
	var off *offlineDAG
	b := openNode(t, ctx, dirB, nodeOpts{
		wrapDAG: func(d ipld.DAGService) ipld.DAGService { off = newOfflineDAG(d); return off },
	})
	if _, err := b.r.Put(ctx, "/unit/b", "unit.kv", "b"); err != nil {
		t.Fatal(err)
	}
	const n = 12
	var mid cid.Cid
	for i := 0; i < n; i++ {
		w, err := a.r.Put(ctx, fmt.Sprintf("/unit/a%02d", i), "unit.kv", i)
		if err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			mid = w.Heads[0]
		}
	}
	off.set(mid, false, true) // the walk stops here until b closes
	connect(t, ctx, a, b)
	select {
	case <-off.hung:
	case <-time.After(60 * time.Second):
		t.Fatal("b never started walking a's branch")
	}
	b.close()

	b = openNode(t, ctx, dirB, nodeOpts{})
	defer b.close()
	connect(t, ctx, a, b)
	seen := b.r.Counters().HeartbeatsIn
	poll.Until(t, 30*time.Second, "b hears a after its restart", poll.True(
		func() bool { return b.r.Counters().HeartbeatsIn >= seen+2 },
		func() string { return "no heartbeat yet" }))
	poll.Until(t, 60*time.Second, "b holds all of a's writes and is fresh with respect to a", func() error {
		ps, _ := peerStatus(b.r, a.h.ID())
		var missing []string
		for i := 0; i < n; i++ {
			if _, err := b.r.Get(ctx, fmt.Sprintf("/unit/a%02d", i)); err != nil {
				missing = append(missing, fmt.Sprint(i))
			}
		}
		switch {
		case len(missing) > 0 && !ps.FreshUpTo.IsZero():
			t.Fatalf("b lacks writes %v of a but claims to be fresh with respect to a up to %v", missing, ps.FreshUpTo)
		case len(missing) > 0:
			return fmt.Errorf("missing %v", missing)
		case ps.FreshUpTo.IsZero():
			return fmt.Errorf("all writes here, not fresh yet")
		}
		return nil
	})
	sameState(t, ctx, "a and b converge to one state", a.r, b.r)
}

// TestDivergedStateIsReportedAndRebuilt: two replicas with the same heads
// and different states (a value in b's state that no DAG block carries —
// what a lost write or a damaged store leaves) see it through the digests
// in their heartbeats, report it, and b's state is rebuilt from the DAG.
func TestDivergedStateIsReportedAndRebuilt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fast := func(c *Config) { c.HeartbeatInterval = 200 * time.Millisecond; c.DivergedAfter = time.Second }
	a := openNode(t, ctx, t.TempDir(), nodeOpts{config: fast})
	defer a.close()
	dirB := t.TempDir()
	b := openNode(t, ctx, dirB, nodeOpts{config: fast})
	connect(t, ctx, a, b)
	for _, k := range []string{"/t/a", "/t/b", "/t/c"} {
		if _, err := a.r.Put(ctx, k, "test", k); err != nil {
			t.Fatal(err)
		}
	}
	agree := func(x, y *testNode) error {
		ps, ok := peerStatus(x.r, y.h.ID())
		if !ok || ps.Agreement != AgreementSame {
			return fmt.Errorf("%s sees %s as %q", x.h.ID().ShortString(), y.h.ID().ShortString(), ps.Agreement)
		}
		return nil
	}
	poll.Until(t, 30*time.Second, "a and b agree", func() error {
		if err := agree(a, b); err != nil {
			return err
		}
		return agree(b, a)
	})
	b.close()

	// Plant a value in b's state that no block carries.
	st, err := store.Open(store.Config{Dir: dirB, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{V: RecordVersion, Kind: "test", HLC: a.r.Clock().Now(), Writer: "planted", Body: []byte(`"orphan"`)}
	val := signedValue(t, testKey, "/t/orphan", rec)
	for _, kv := range []struct{ k, v string }{{"/crdt/s/k/t/orphan/v", string(val)}, {"/crdt/s/s/t/orphan/bafyorphan", ""}} {
		if err := st.Datastore().Put(ctx, ds.NewKey(kv.k), []byte(kv.v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	b = openNode(t, ctx, dirB, nodeOpts{config: fast})
	defer b.close()
	connect(t, ctx, a, b)
	if _, err := b.r.Get(ctx, "/t/orphan"); err != nil {
		t.Fatalf("the planted value is not in b's state: %v", err)
	}
	var reported bool
	poll.Until(t, 60*time.Second, "b reports the divergence, rebuilds, and agrees with a again", func() error {
		if st := b.r.Staleness(); len(st.Diverged) > 0 {
			reported = true
			if st.Seconds < 1 {
				t.Errorf("b is diverged but reports staleness %.3fs", st.Seconds)
			}
		}
		if b.r.Counters().StateRebuilds == 0 {
			return fmt.Errorf("not rebuilt yet (diverged reported: %v)", reported)
		}
		if _, err := b.r.Get(ctx, "/t/orphan"); err == nil {
			return fmt.Errorf("the orphan is still there")
		}
		if err := agree(b, a); err != nil {
			return err
		}
		return agree(a, b)
	})
	if !reported {
		// The rebuild needs DivergedAfter of disagreement, which the
		// poll above samples far more often than that.
		t.Error("b rebuilt without ever reporting the divergence")
	}
	// With two peers neither can tell which state is wrong, so both
	// rebuild; rebuilding a's right state must leave it as it was.
	for _, k := range []string{"/t/a", "/t/b", "/t/c"} {
		if _, err := a.r.Get(ctx, k); err != nil {
			t.Errorf("a lost %s: %v", k, err)
		}
	}
	sameState(t, ctx, "one state", a.r, b.r)
}

// TestRebuildIsNeverFresh: while the state is rebuilt from the DAG it holds
// nothing for certain, and a rebuild that cannot finish (a block it cannot
// read; or its deadline, at which go-ds-crdt's repair returns without
// error) is not taken for done: no delete events for keys not rebuilt
// yet, and the staleness stays at "never caught up" until the repair,
// retried in the background, has finished.
func TestRebuildIsNeverFresh(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var off *offlineDAG
	n := openNode(t, ctx, t.TempDir(), nodeOpts{
		wrapDAG: func(d ipld.DAGService) ipld.DAGService { off = newOfflineDAG(d); return off },
	})
	defer n.close()
	var first cid.Cid
	for i := 0; i < 5; i++ {
		w, err := n.r.Put(ctx, fmt.Sprintf("/r/%d", i), "unit.kv", i)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = w.Heads[0]
		}
	}
	if s := n.r.Staleness().Seconds; s > 1 {
		t.Fatalf("a lone replica past its grace period reports %.1fs", s)
	}
	sub := n.r.Subscribe("/r/", 64)
	defer sub.Close()
	off.set(first, true, false) // the rebuild cannot read the oldest block
	if err := n.r.rebuildState(ctx); err == nil {
		t.Fatal("a rebuild cut short by its deadline reported success")
	}
	if s := n.r.Staleness().Seconds; s < 1e9 {
		t.Errorf("mid-rebuild staleness %.3fs; the state holds nothing for certain", s)
	}
	select {
	case ev := <-sub.C():
		if ev.Type == EventDelete {
			t.Errorf("a delete event for %s while the rebuild is unfinished", ev.Key)
		}
	default:
	}
	off.back()
	poll.Until(t, 30*time.Second, "the background repair finishes and the replica is fresh again", func() error {
		if s := n.r.Staleness().Seconds; s > 1 {
			return fmt.Errorf("staleness %.1fs", s)
		}
		return nil
	})
	for i := 0; i < 5; i++ {
		if _, err := n.r.Get(ctx, fmt.Sprintf("/r/%d", i)); err != nil {
			t.Errorf("/r/%d after the rebuild: %v", i, err)
		}
	}
}

// TestNoHorizonWithoutPeers: a replica that has heard no one records no
// horizon (its staleness then is its uptime, or 0 once alone), so a
// restart does not take its first start for the instant it held
// everything.
func TestNoHorizonWithoutPeers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, closeAll := openReplicaAt(t, ctx, dir, false)
	r.saveHorizon(ctx)
	closeAll()
	st, err := store.Open(store.Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if h, _ := loadHorizon(ctx, st.Datastore()); h != epoch {
		t.Errorf("a replica that heard no one recorded the horizon %v", h.Time())
	}
}

// TestRebuildWaitsForABranchWalk: a state rebuild does not run beside a
// branch walk (whose blocks above its frontier it would leave with their
// state wiped and no processed mark): it waits for the walk, and gives up
// without touching the state if the walk does not end in time.
func TestRebuildWaitsForABranchWalk(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b, off := writerAndReader(t, ctx, 3*time.Second)
	var mid cid.Cid
	for i := 0; i < 6; i++ {
		w, err := a.r.Put(ctx, fmt.Sprintf("/unit/a%d", i), "unit.kv", i)
		if err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			mid = w.Heads[0]
		}
	}
	off.set(mid, false, true) // b's walk of a's branch stops here
	connect(t, ctx, a, b)
	select {
	case <-off.hung:
	case <-time.After(60 * time.Second):
		t.Fatal("b never started walking a's branch")
	}
	rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer rcancel()
	if err := b.r.rebuildState(rctx); err == nil {
		t.Fatal("a rebuild ran beside a branch walk")
	}
	if _, err := b.r.Get(ctx, "/unit/b"); err != nil {
		t.Errorf("the rebuild that gave up touched the state: /unit/b %v", err)
	}
	off.back()
	sameState(t, ctx, "a and b converge once the walk can finish", a.r, b.r)
}
