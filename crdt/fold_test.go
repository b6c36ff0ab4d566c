package crdt

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore/query"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// noAutoFold leaves folding to the test, and prunes as soon as a fold is
// merged.
func noAutoFold(c *Config) { c.FoldAfter, c.FoldPruneDelay = -1, time.Millisecond }

// pruned waits until r has pruned under n folds.
func prunedFolds(t *testing.T, r *Replica, n uint64) {
	t.Helper()
	poll.Until(t, 30*time.Second, fmt.Sprintf("%d folds pruned", n), func() error {
		if c := r.Counters(); c.FoldsPruned < n {
			return fmt.Errorf("%d folds pruned", c.FoldsPruned)
		}
		return nil
	})
}

// merged waits until r holds every ancestor of its heads (a walk may still
// be fetching one after the state hashes agree).
func merged(t *testing.T, r *Replica) {
	t.Helper()
	poll.Until(t, 30*time.Second, "heads merged", func() error {
		for _, h := range r.ds.InternalStats(context.Background()).Heads {
			if ok, err := r.Merged(context.Background(), h); err != nil || !ok {
				return fmt.Errorf("head %s merged = %v, %v", h, ok, err)
			}
		}
		return nil
	})
}

// settled waits until r has dispatched every event queued so far.
func settled(t testing.TB, r *Replica) {
	t.Helper()
	poll.Until(t, 10*time.Second, "events dispatched", func() error {
		if d, s := r.Dispatched(), r.EventSeq(); d != s {
			return fmt.Errorf("dispatched %d of %d", d, s)
		}
		return nil
	})
}

// rewrite writes rounds versions of each of keys under /unit/, one batch
// per round, and deletes /unit/gone after writing it; it returns what
// the keys must show.
func rewrite(t *testing.T, r *Replica, keys, rounds int) map[string]string {
	t.Helper()
	ctx := context.Background()
	want := map[string]string{}
	if _, err := r.Put(ctx, "/unit/gone", "unit.kv", "soon deleted"); err != nil {
		t.Fatal(err)
	}
	for round := range rounds {
		var ops []Op
		for k := range keys {
			key := fmt.Sprintf("/unit/k%02d", k)
			body := fmt.Sprintf("v%d of %d", round, k)
			ops = append(ops, Op{Key: key, Kind: "unit.kv", Body: body})
			want[key] = body
		}
		if _, err := r.PutBatch(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Delete(ctx, "/unit/gone"); err != nil {
		t.Fatal(err)
	}
	return want
}

// syncedPair opens a and b with config, has a rewrite keys keys rounds
// times (rewrite), and waits until b merged all of it; it returns what
// the keys must show.
func syncedPair(t *testing.T, ctx context.Context, config func(*Config), keys, rounds int) (a, b *testNode, want map[string]string) {
	t.Helper()
	a = openNode(t, ctx, t.TempDir(), nodeOpts{config: config})
	t.Cleanup(a.close)
	b = openNode(t, ctx, t.TempDir(), nodeOpts{config: config})
	t.Cleanup(b.close)
	connect(t, ctx, a, b)
	want = rewrite(t, a.r, keys, rounds)
	sameState(t, ctx, "b merges a's writes", a.r, b.r)
	merged(t, b.r)
	return a, b, want
}

// countKeys counts the datastore keys under prefix.
func countKeys(t *testing.T, r *Replica, prefix string) int {
	t.Helper()
	res, err := r.cfg.Datastore.Query(context.Background(), query.Query{Prefix: prefix, KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	n := 0
	for e := range res.Next() {
		if e.Error != nil {
			t.Fatal(e.Error)
		}
		n++
	}
	return n
}

// localBlocks counts the delta blocks reachable from r's heads that are
// stored here (what pruning removes).
func localBlocks(t *testing.T, r *Replica) int {
	t.Helper()
	ctx := context.Background()
	seen := cid.NewSet()
	stack := r.ds.InternalStats(ctx).Heads
	n := 0
	for len(stack) > 0 {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !seen.Visit(c) {
			continue
		}
		blk, err := r.cfg.Local.Get(ctx, c)
		if err != nil {
			continue
		}
		node, _, err := decodeDelta(blk)
		if err != nil {
			t.Fatal(err)
		}
		n++
		for _, l := range node.Links() {
			stack = append(stack, l.Cid)
		}
	}
	return n
}

// TestFoldKeepsTheStateAndPrunesTheHistory: a fold rewrites the live state
// as fold records and prunes what lies below: every key shows what it
// showed (the deleted one stays deleted), subscribers hear nothing of the
// fold, the blocks, elements and tombstones of the history are gone, and
// the next write still wins.
func TestFoldKeepsTheStateAndPrunesTheHistory(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{config: noAutoFold})
	defer a.close()
	want := rewrite(t, a.r, 8, 30)
	if got := shownBodies(t, a.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("before the fold: %v, want %v", got, want)
	}
	blocksBefore, elemsBefore := localBlocks(t, a.r), countKeys(t, a.r, elemsNamespace.String())
	settled(t, a.r)
	sub := a.r.Subscribe("/unit/", 64)
	defer sub.Close()

	rep, err := a.r.Fold(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Keys != 9 || rep.Records != 9 {
		t.Errorf("fold report %+v; want 9 keys and 9 records", rep)
	}
	prunedFolds(t, a.r, 1)
	if got := shownBodies(t, a.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the fold: %v, want %v", got, want)
	}
	if _, err := a.r.Get(ctx, "/unit/gone"); !errors.Is(err, ErrDeleted) {
		t.Errorf("deleted key after the fold: err = %v, want ErrDeleted", err)
	}
	blocksAfter, elemsAfter := localBlocks(t, a.r), countKeys(t, a.r, elemsNamespace.String())
	if blocksAfter != rep.Blocks || elemsAfter != 9 {
		t.Errorf("after the fold %d blocks and %d elements (before %d and %d); want the fold's %d blocks and 9 elements",
			blocksAfter, elemsAfter, blocksBefore, elemsBefore, rep.Blocks)
	}
	if n := countKeys(t, a.r, tombsNamespace.String()); n != 0 {
		t.Errorf("%d tombstone keys left", n)
	}
	if _, err := a.r.Put(ctx, "/unit/k03", "unit.kv", "after the fold"); err != nil {
		t.Fatal(err)
	}
	if got := bodyOf(t, a.r, "/unit/k03"); got != "after the fold" {
		t.Errorf("a write after the fold shows %q", got)
	}
	if ev := next(t, sub); ev.Key != "/unit/k03" || ev.Type != EventPut {
		t.Errorf("first event after the fold: %v %s, want the put of /unit/k03 (the fold changes nothing)", ev.Type, ev.Key)
	}
	if c := a.r.Counters(); c.Folds != 1 || c.FoldsPruned != 1 || c.PrunedBlocks != uint64(blocksBefore) || c.Rejected != (Rejections{}) {
		t.Errorf("counters %+v", c)
	}
}

// TestReplayAcrossAFoldIsRefused: the replay rule used the elements of a
// record's first publication, which a fold prunes. A copy of an old
// record published after the fold must still be refused, by the newer
// record of the same signer the fold carries.
func TestReplayAcrossAFoldIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{config: noAutoFold})
	defer a.close()
	if _, err := a.r.Put(ctx, "/unit/doc", "unit.kv", "old"); err != nil {
		t.Fatal(err)
	}
	old := rawValue(t, a.r, "/unit/doc")
	if _, err := a.r.Put(ctx, "/unit/doc", "unit.kv", "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.r.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	prunedFolds(t, a.r, 1)
	publish(t, a.r, "/unit/doc", old)
	if got := bodyOf(t, a.r, "/unit/doc"); got != "new" {
		t.Errorf("after replaying the old record over the fold: %q, want new", got)
	}
	rejected(t, a.r, Rejections{Replayed: 1})
}

// TestFoldReachesEveryPeer: a peer that held the history prunes it when
// the fold arrives; a peer that joins afterwards, when no one holds the
// history any more, takes the state from the fold, reports its heads
// complete, and all three agree; a write made concurrently with the fold
// on a peer that had not seen it survives.
func TestFoldReachesEveryPeer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b, want := syncedPair(t, ctx, noAutoFold, 6, 20)
	bBlocks := localBlocks(t, b.r)
	if _, err := a.r.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.r.Put(ctx, "/unit/k01", "unit.kv", "b's, concurrent with the fold"); err != nil {
		t.Fatal(err)
	}
	want["/unit/k01"] = "b's, concurrent with the fold"
	prunedFolds(t, a.r, 1)
	prunedFolds(t, b.r, 1)
	if n := localBlocks(t, b.r); n >= bBlocks {
		t.Errorf("b holds %d blocks after pruning, %d before", n, bBlocks)
	}
	c := openNode(t, ctx, t.TempDir(), nodeOpts{config: noAutoFold})
	defer c.close()
	connect(t, ctx, c, a)
	connect(t, ctx, c, b)
	sameState(t, ctx, "a, b and a newcomer agree", a.r, b.r, c.r)
	for name, r := range map[string]*Replica{"a": a.r, "b": b.r, "c": c.r} {
		if got := shownBodies(t, r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s shows %v, want %v", name, got, want)
		}
		merged(t, r)
	}
	if _, err := c.r.Get(ctx, "/unit/gone"); !errors.Is(err, ErrDeleted) {
		t.Errorf("the newcomer reads the deleted key: err = %v", err)
	}
}

// TestUncleanStartAfterFold: the unclean-start rebuild re-merges the DAG
// from the heads; below a fold there is nothing left to merge, and the
// state must come back whole from the fold and what came after it.
func TestUncleanStartAfterFold(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	a := openNode(t, ctx, dir, nodeOpts{config: noAutoFold})
	want := rewrite(t, a.r, 5, 10)
	if _, err := a.r.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	prunedFolds(t, a.r, 1)
	if _, err := a.r.Put(ctx, "/unit/k02", "unit.kv", "after"); err != nil {
		t.Fatal(err)
	}
	want["/unit/k02"] = "after"
	hash, err := a.r.StateHash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.close()
	a = openNode(t, ctx, dir, nodeOpts{unclean: true, config: noAutoFold})
	defer a.close()
	if got := shownBodies(t, a.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the rebuild: %v, want %v", got, want)
	}
	if h, err := a.r.StateHash(ctx); err != nil || h != hash {
		t.Errorf("state hash after the rebuild %s (%v), before %s", h, err, hash)
	}
	if a.r.ds.IsDirty(ctx) {
		t.Error("the rebuild left the DAG dirty")
	}
}

// TestFoldsFollowFoldAfter: with FoldAfter set, a peer folds by itself
// once the DAG grew that many heights past the newest fold.
func TestFoldsFollowFoldAfter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{config: func(c *Config) {
		c.FoldAfter, c.FoldJitter, c.FoldPruneDelay = 20, time.Millisecond, time.Millisecond
	}})
	defer a.close()
	want := rewrite(t, a.r, 4, 30)
	prunedFolds(t, a.r, 1)
	if got := shownBodies(t, a.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after folding: %v, want %v", got, want)
	}
	if n := localBlocks(t, a.r); n > 25 {
		t.Errorf("%d blocks stay after folding 32 heights with FoldAfter 20", n)
	}
}

// TestStrayBranchIsFoldedAgain: a peer cut off from the folder writes on
// top of history the fold then covers and prunes. Once the branch arrives
// no one holds its parents, so a peer that joins later could not merge it
// and would never be fresh; the folder sees the stray branch and folds
// again, and the newcomer holds every write and reports its heads merged.
func TestStrayBranchIsFoldedAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	eager := func(c *Config) {
		c.FoldAfter, c.FoldJitter, c.FoldPruneDelay = 1<<30, time.Millisecond, time.Millisecond
	}
	a, b, want := syncedPair(t, ctx, eager, 3, 5)

	// Cut b off; each writes on its own; a folds what it has and prunes.
	if err := a.h.Network().ClosePeer(b.h.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.r.Put(ctx, "/unit/k00", "unit.kv", "a's, alone"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.r.Put(ctx, "/unit/k01", "unit.kv", "b's, alone"); err != nil {
		t.Fatal(err)
	}
	want["/unit/k00"], want["/unit/k01"] = "a's, alone", "b's, alone"
	if _, err := a.r.Fold(ctx); err != nil {
		t.Fatal(err)
	}
	prunedFolds(t, a.r, 1)
	connect(t, ctx, a, b)
	sameState(t, ctx, "a and b merge each other's writes", a.r, b.r)
	poll.Until(t, 30*time.Second, "the stray branch folded again", func() error {
		if n := a.r.Counters().Folds + b.r.Counters().Folds; n < 2 {
			return fmt.Errorf("%d folds", n)
		}
		return nil
	})
	prunedFolds(t, a.r, 2)
	prunedFolds(t, b.r, 2)

	c := openNode(t, ctx, t.TempDir(), nodeOpts{config: eager})
	defer c.close()
	connect(t, ctx, c, a)
	connect(t, ctx, c, b)
	sameState(t, ctx, "the newcomer agrees", a.r, b.r, c.r)
	merged(t, c.r)
	if got := shownBodies(t, c.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the newcomer shows %v, want %v", got, want)
	}
}

// TestNewKeysDoNotFold: records that give keys their first value are the
// live state, which a fold writes again and prunes nothing of; only
// records that replace or delete a value make a fold due. (Counting every
// record made a bulk ingest of 100,000 documents fold twice, 22 s and
// 88 s on two cores, rewriting records written once.)
func TestNewKeysDoNotFold(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{config: func(c *Config) {
		c.FoldAfter, c.FoldJitter, c.FoldPruneDelay = 20, time.Nanosecond, time.Hour
	}})
	defer a.close()
	poll.Until(t, 10*time.Second, "the digest has read the state", func() error {
		if a.r.digest.value() == "" {
			return errors.New("not loaded")
		}
		return nil
	})
	write := func(round int) {
		for first := 0; first < 100; first += 20 {
			var ops []Op
			for k := first; k < first+20; k++ {
				ops = append(ops, Op{Key: fmt.Sprintf("/unit/n%03d", k), Kind: "unit.kv", Body: fmt.Sprintf("v%d", round)})
			}
			if _, err := a.r.PutBatch(ctx, ops); err != nil {
				t.Fatal(err)
			}
		}
		settled(t, a.r)
		a.r.maybeFold(ctx) // sets the due time, a nanosecond away
		a.r.maybeFold(ctx)
	}
	write(0)
	if c := a.r.Counters(); c.Folds != 0 || a.r.digest.addedKeys() != 100 {
		t.Errorf("after 100 records of new keys (FoldAfter 20): %d folds, %d keys counted added; want none and 100", c.Folds, a.r.digest.addedKeys())
	}
	if u, s := a.r.UnfoldedRecords(), a.r.SupersededRecords(); u != 100 || s != 0 {
		t.Errorf("after 100 records of new keys: %d unfolded, %d superseded; want 100 and 0", u, s)
	}
	write(1)
	if c := a.r.Counters(); c.Folds != 1 {
		t.Errorf("after 100 records replacing values of 100 keys (FoldAfter 20): %d folds, want 1", c.Folds)
	}
}
