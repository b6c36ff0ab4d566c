package crdt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
	ipld "github.com/ipfs/go-ipld-format"
	"google.golang.org/protobuf/proto"
)

// Folding bounds the history. go-ds-crdt keeps every delta block, an
// element key per write and a processed marker per block forever, and
// admission reads a key's elements on every read; a gateway whose
// documents are rewritten all day would grow without end and take ever
// longer to rebuild its state after a crash.
//
// A fold writes the live state again as ordinary go-ds-crdt puts, one
// fold record per record still in play: for every key, the newest
// record of each signer (the only one admission can ever show), wrapped
// with the height at which it was first published, signed by the folding
// peer. The fold's blocks are written on top of the folding peer's heads,
// which it first checks are complete (every ancestor merged), so they
// cover everything below those heads; the last fold record written names
// them (Covers). Everything below the covered heads can then be pruned:
// its blocks, its element keys and its tombstones go, and only each
// block's processed marker stays, marked as pruned.
//
// Every peer that merges a trusted fold's last record prunes the same
// history (receivers reclaim what the folder reclaimed), and a peer that
// never had that history — it joined later, or was behind — takes the
// covered heads as merged when it fetches that block, before go-ds-crdt
// would walk below it: the fold already holds their state. A fold is
// coordination-free: any peer may fold at any time, concurrent folds and
// writes merge like any other writes, and the state every peer shows is
// the one the unpruned DAG would show (admission, admit.go, reads a fold
// record as the record it carries at the height it carries, and never
// shows a record older than another of the same signer under the same
// key — which, with a writer's records causally chained, is the replay
// rule carried across pruned history).
//
// go-ds-crdt itself does not know history can be pruned. Its walks stop
// at processed blocks, so pruned blocks stay marked processed (a marker of
// ~100 bytes per pruned block remains), and its repair walk, which reads
// every block from the heads down, is handed an empty stand-in for a
// pruned one (pushedDAG.standIn): a leaf that ends the walk there.

// foldBody is the body of a fold record.
type foldBody struct {
	// Record is the record carried, as it was written and signed.
	Record json.RawMessage `json:"record"`
	// Height is the DAG height at which Record was first published.
	Height uint64 `json:"height"`
	// Covers, on the last fold record a fold writes, lists the heads
	// under which the fold pruned the history.
	Covers []string `json:"covers,omitempty"`
}

// decodeFold reads the body of a fold record.
func decodeFold(rec Record) (foldBody, error) {
	var b foldBody
	if err := rec.DecodeBody(&b); err != nil {
		return b, err
	}
	if len(b.Record) == 0 || b.Height == 0 {
		return b, fmt.Errorf("%w: a fold without a record or height", ErrBadRecord)
	}
	return b, nil
}

// foldMarker is the bytes of a fold record's kind field as Record.Encode
// writes it; a value without them is no fold (a fast test for the
// dispatcher and the DAG getter, which see every value and block).
var foldMarker = []byte(`"kind":"` + KindFold + `"`)

// mayBeFold reports whether b (an encoded record or a block holding
// one) may be or hold a fold record; false means it certainly is not.
func mayBeFold(b []byte) bool { return bytes.Contains(b, foldMarker) }

// prunedMark is the value of go-ds-crdt's processed marker of a pruned
// block (go-ds-crdt writes none and only asks whether the marker exists).
// pruningMark marks a head a fold covers that this peer took as merged
// when it fetched the fold, before merging the fold itself: go-ds-crdt
// must not walk below it, but until the fold is merged (and the prune
// under it has run) it is not complete — a peer must not claim the
// state of a head it only knows a fold of.
var (
	prunedMark  = []byte("pruned")
	pruningMark = []byte("pruning")
)

// ErrNotFoldable says why a fold was not written now: the state is being
// rebuilt or repaired, or a head's branch is not all merged here. Folding
// then would cover history this peer does not hold.
var ErrNotFoldable = errors.New("the state cannot be folded now")

// FoldReport says what one fold wrote and pruned.
type FoldReport struct {
	Keys, Records, Blocks int       // keys folded, fold records and blocks written
	Covers                []cid.Cid // the heads the fold covers
	Took                  time.Duration
}

// Fold writes the live state as fold records on top of the current heads
// and schedules the pruning of the history below them FoldPruneDelay
// later (see above). Local writes wait for it; branch walks are paused
// while it runs.
func (r *Replica) Fold(ctx context.Context) (FoldReport, error) {
	start := time.Now()
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := r.bc.pause(pctx)
	cancel()
	defer r.bc.resume()
	if err != nil {
		return FoldReport{}, fmt.Errorf("%w: a branch walk did not finish: %v", ErrNotFoldable, err)
	}
	heads, err := r.foldableHeads(ctx)
	if err != nil || len(heads) == 0 {
		return FoldReport{}, err
	}
	rep := FoldReport{Covers: heads}
	w := foldWriter{r: r}
	if err := w.begin(ctx); err != nil {
		return rep, err
	}
	els, err := r.elementsUnder(ctx, "/")
	if err != nil {
		return rep, err
	}
	for _, key := range slices.Sorted(maps.Keys(els)) {
		cands, err := r.candidates(ctx, key, els[key], nil, r.verified)
		if err != nil {
			return rep, err
		}
		if len(cands) > 0 {
			rep.Keys++
		}
		for _, c := range sortedCandidates(cands) {
			if err := w.add(ctx, key, foldBody{Record: c.value, Height: c.prio}); err != nil {
				return rep, err
			}
		}
	}
	if w.held == nil {
		return rep, nil // nothing to carry: leave the history as it is
	}
	for _, h := range heads {
		w.held.body.Covers = append(w.held.body.Covers, h.String())
	}
	if err := w.finish(ctx); err != nil {
		return rep, err
	}
	rep.Records, rep.Blocks = w.records, w.blocks
	if err := r.durability.durable(ctx); err != nil {
		return rep, err
	}
	r.count(func(c *Counters) { c.Folds++ })
	r.folds.saw(r.digest.addedKeys())
	for _, top := range r.ds.InternalStats(ctx).Heads {
		r.folds.schedule(ctx, r.cfg.Datastore, top, heads, r.cfg.FoldPruneDelay)
	}
	rep.Took = time.Since(start)
	r.log.Info("state folded", "keys", rep.Keys, "records", rep.Records, "blocks", rep.Blocks, "seconds", rep.Took.Seconds(), "prune_in", r.cfg.FoldPruneDelay)
	return rep, nil
}

// foldableHeads returns the heads a fold may cover now, or
// ErrNotFoldable.
func (r *Replica) foldableHeads(ctx context.Context) ([]cid.Cid, error) {
	if r.ds.IsDirty(ctx) || r.tracker.isRebuilding() {
		return nil, fmt.Errorf("%w: the state is being repaired", ErrNotFoldable)
	}
	heads := r.ds.InternalStats(ctx).Heads
	for _, h := range heads {
		holes, err := r.complete.check(ctx, h)
		if err != nil {
			return nil, err
		}
		if len(holes) > 0 {
			return nil, fmt.Errorf("%w: head %s has unmerged ancestors", ErrNotFoldable, h)
		}
	}
	return heads, nil
}

// sortedCandidates orders a key's candidates by height, then bytes, so
// every fold of the same state writes the same records in the same order.
func sortedCandidates(cands map[identity]*candidate) []*candidate {
	out := slices.Collect(maps.Values(cands))
	slices.SortFunc(out, func(a, b *candidate) int {
		if a.prio != b.prio {
			if a.prio < b.prio {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.value, b.value)
	})
	return out
}

// foldWriter writes fold records as go-ds-crdt batches of at most
// maxBatchBytes, one delta block each. It holds the last record back so
// that Fold can name the covered heads in it: the record that says the
// history below may go is written only after every other one.
type foldWriter struct {
	r               *Replica
	b               ds.Batch
	size            int
	held            *foldItem
	records, blocks int
}

type foldItem struct {
	key  string
	body foldBody
}

func (w *foldWriter) begin(ctx context.Context) (err error) {
	w.b, err = w.r.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("crdt batch: %w", err)
	}
	return nil
}

func (w *foldWriter) add(ctx context.Context, key string, body foldBody) error {
	if w.held != nil {
		if err := w.put(ctx, *w.held); err != nil {
			return err
		}
	}
	w.held = &foldItem{key, body}
	return nil
}

func (w *foldWriter) put(ctx context.Context, it foldItem) error {
	raw, err := json.Marshal(it.body)
	if err != nil {
		return fmt.Errorf("encode fold of %s: %w", it.key, err)
	}
	val, err := w.r.signed(it.key, Record{V: FoldVersion, Kind: KindFold, HLC: w.r.clock.Now(), Writer: w.r.cfg.Self.String(), Body: raw})
	if err != nil {
		return fmt.Errorf("fold of %s: %w", it.key, err)
	}
	if err := w.b.Put(ctx, ds.NewKey(it.key), val); err != nil {
		return fmt.Errorf("crdt put fold of %s: %w", it.key, err)
	}
	w.records++
	if w.size += len(it.key) + len(val); w.size >= maxBatchBytes {
		return w.commit(ctx, true)
	}
	return nil
}

func (w *foldWriter) commit(ctx context.Context, again bool) error {
	if err := w.b.Commit(ctx); err != nil {
		return fmt.Errorf("crdt commit: %w", err)
	}
	w.blocks++
	w.size = 0
	if again {
		return w.begin(ctx)
	}
	return nil
}

// finish writes the held record and commits the last batch.
func (w *foldWriter) finish(ctx context.Context) error {
	if err := w.put(ctx, *w.held); err != nil {
		return err
	}
	if w.size == 0 {
		return nil // put committed it
	}
	return w.commit(ctx, false)
}

// blockDeleter removes blocks from the local blockstore; a boxo
// Blockstore is one. A Local without it prunes nothing.
type blockDeleter interface {
	DeleteBlock(ctx context.Context, c cid.Cid) error
}

// pruneBatch bounds the blocks whose keys one datastore batch deletes.
const pruneBatch = 256

// prune deletes the history below covers from this peer: every block
// reachable from them that is stored here, the element and tombstone keys
// each one added, and marks each processed-and-pruned. A covered head
// that was never stored here is marked too, so go-ds-crdt takes it as
// merged (the fold holds its state). It returns the blocks deleted.
func (r *Replica) prune(ctx context.Context, covers []cid.Cid) (int, error) {
	del, ok := r.cfg.Local.(blockDeleter)
	if !ok {
		return 0, nil
	}
	seen := cid.NewSet()
	stack := slices.Clone(covers)
	var batchBlocks []cid.Cid
	var b ds.Batch // open while a block's keys are being deleted
	n, freed := 0, int64(0)
	flush := func() error {
		if err := b.Commit(ctx); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		// Markers and keys first, blocks after: a reader that lists an
		// element whose block is gone finds it marked pruned.
		for _, c := range batchBlocks {
			if err := del.DeleteBlock(ctx, c); err != nil {
				return fmt.Errorf("prune block %s: %w", c, err)
			}
		}
		r.deltas.forget()
		n += len(batchBlocks)
		batchBlocks = batchBlocks[:0]
		b = nil
		return nil
	}
	next := func() (err error) {
		if b == nil {
			b, err = r.cfg.Datastore.Batch(ctx)
		}
		return err
	}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !seen.Visit(c) {
			continue
		}
		if err := next(); err != nil {
			return n, err
		}
		blk, err := r.cfg.Local.Get(ctx, c)
		if ipld.IsNotFound(err) {
			if err := b.Put(ctx, r.processedKey(c), prunedMark); err != nil {
				return n, err
			}
			continue
		}
		if err != nil {
			return n, fmt.Errorf("prune: read block %s: %w", c, err)
		}
		node, d, err := decodeDelta(blk)
		if err != nil {
			return n, err
		}
		// The block's own elements, and any tombstone of them (a
		// tombstone is kept under the id of the block it tombstones).
		id := dshelp.MultihashToDsKey(c.Hash())
		for _, e := range d.GetElements() {
			for _, ns := range []ds.Key{elemsNamespace, tombsNamespace} {
				k := ns.ChildString(e.GetKey()).Child(id)
				if err := b.Delete(ctx, k); err != nil {
					return n, err
				}
				freed += int64(len(k.String()))
			}
		}
		freed += int64(len(blk.RawData()))
		if err := b.Put(ctx, r.processedKey(c), prunedMark); err != nil {
			return n, err
		}
		batchBlocks = append(batchBlocks, c)
		for _, l := range node.Links() {
			stack = append(stack, l.Cid)
		}
		if len(batchBlocks) >= pruneBatch {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if b != nil {
		if err := flush(); err != nil {
			return n, err
		}
	}
	r.count(func(c *Counters) { c.PrunedBlocks += uint64(n) })
	if r.cfg.Pruned != nil && n > 0 {
		r.cfg.Pruned(freed)
	}
	return n, nil
}

// decodeDelta reads a delta block.
func decodeDelta(blk blocks.Block) (*merkledag.ProtoNode, *crdtpb.Delta, error) {
	n, err := merkledag.DecodeProtobufBlock(blk)
	if err != nil {
		return nil, nil, fmt.Errorf("decode block %s: %w", blk.Cid(), err)
	}
	return nodeDelta(n)
}

// nodeDelta reads the delta of a decoded DAG node.
func nodeDelta(n ipld.Node) (*merkledag.ProtoNode, *crdtpb.Delta, error) {
	pn, ok := n.(*merkledag.ProtoNode)
	if !ok {
		return nil, nil, fmt.Errorf("block %s is not a delta", n.Cid())
	}
	var d crdtpb.Delta
	if err := proto.Unmarshal(pn.Data(), &d); err != nil {
		return nil, nil, fmt.Errorf("decode delta %s: %w", n.Cid(), err)
	}
	return pn, &d, nil
}

// pruned reports whether c's history was pruned here, or is being (a
// covered head taken as merged: see pruningMark).
func (r *Replica) pruned(ctx context.Context, c cid.Cid) bool {
	v, err := r.cfg.Datastore.Get(ctx, r.processedKey(c))
	return err == nil && (bytes.Equal(v, prunedMark) || bytes.Equal(v, pruningMark))
}

// prunedComplete reports whether c's history was pruned here under a fold
// this peer has merged, which holds its state: c counts as complete.
func (r *Replica) prunedComplete(ctx context.Context, c cid.Cid) bool {
	v, err := r.cfg.Datastore.Get(ctx, r.processedKey(c))
	return err == nil && bytes.Equal(v, prunedMark)
}

// folds is a replica's view of the folds it has written or seen: how much
// was written since the newest (when the next is due) and those whose
// covered history is still to be pruned here.
type folds struct {
	// since counts the records merged here since the newest fold was
	// written or seen (put hooks, fold records left out).
	since atomic.Int64
	// addedAt is the digest's count of added keys then (addedKeys): the
	// records of keys added since are live state, which no fold saves
	// anything on.
	addedAt atomic.Int64
	// urgent asks for a fold now: a branch was found over pruned
	// history (strays).
	urgent  atomic.Bool
	mu      sync.Mutex
	pending []pendingFold
	// covers are those of the newest fold pruned under here, and
	// strayCheck when strays last looked above them.
	covers     []cid.Cid
	strayCheck time.Time
	strayCount int64     // since, at the last look
	due        time.Time // when this peer folds, once it is due
	wake       chan struct{}
}

func newFolds() folds { return folds{wake: make(chan struct{}, 1)} }

// saw records that a fold was written or seen when the digest had
// counted added keys: the count starts again, and a wait for this peer's
// own fold is called off.
func (f *folds) saw(added int64) {
	f.since.Store(0)
	f.addedAt.Store(added)
	f.urgent.Store(false)
	f.mu.Lock()
	f.due = time.Time{}
	f.mu.Unlock()
}

// counted is put hook's share: one more record merged, unless value is a
// fold record.
func (f *folds) counted(value []byte) {
	if !mayBeFold(value) {
		f.since.Add(1)
	}
}

// superseded estimates how many of the records merged since the newest
// fold replaced or deleted a value: all of them but those that gave a key
// its first value (added: the digest's count now). The digest counts at
// dispatch, after the put hook counted the record, so while events queue
// the estimate runs high: a fold comes sooner, never later.
func (f *folds) superseded(added int64) int64 {
	return f.since.Load() - (added - f.addedAt.Load())
}

// UnfoldedRecords returns how many records were merged here since the
// newest fold this peer wrote or saw (fold records left out).
func (r *Replica) UnfoldedRecords() int64 { return r.folds.since.Load() }

// SupersededRecords returns the part of UnfoldedRecords that replaced or
// deleted a value (see folds.superseded): what maybeFold compares with
// FoldAfter and the number of keys held.
func (r *Replica) SupersededRecords() int64 {
	return r.folds.superseded(r.digest.addedKeys())
}

// pendingFold is a fold written here or seen in a fetched block, to be
// pruned under once that block is merged and notBefore has passed.
type pendingFold struct {
	block     cid.Cid
	covers    []cid.Cid
	notBefore time.Time
}

// pendingNamespace keeps the folds whose prune has not run, so that a
// restart prunes them too (a covered head marked pruningMark would
// otherwise stay incomplete for good). Outside go-ds-crdt's namespace:
// a rebuild keeps it.
var pendingNamespace = ds.NewKey("/crdt-fold/pending")

// schedule queues the pruning under a fold whose last record is in block,
// and records it in d.
func (f *folds) schedule(ctx context.Context, d ds.Datastore, block cid.Cid, covers []cid.Cid, delay time.Duration) {
	f.mu.Lock()
	for _, p := range f.pending {
		if p.block == block {
			f.mu.Unlock()
			return // go-ds-crdt fetched the block twice (its priority, then its delta)
		}
	}
	f.pending = append(f.pending, pendingFold{block: block, covers: covers, notBefore: time.Now().Add(delay)})
	f.mu.Unlock()
	if b, err := json.Marshal(covers); err == nil {
		_ = d.Put(ctx, pendingNamespace.ChildString(block.String()), b) // lost: pruned at the next fold
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// load queues the folds recorded in d whose prune had not run.
func (f *folds) load(ctx context.Context, d ds.Datastore) error {
	res, err := d.Query(ctx, query.Query{Prefix: pendingNamespace.String()})
	if err != nil {
		return err
	}
	defer res.Close()
	for e := range res.Next() {
		if e.Error != nil {
			return e.Error
		}
		block, err := cid.Decode(ds.RawKey(e.Key).BaseNamespace())
		var covers []cid.Cid
		if err == nil {
			err = json.Unmarshal(e.Value, &covers)
		}
		if err != nil {
			return fmt.Errorf("pending fold %s: %w", e.Key, err)
		}
		f.pending = append(f.pending, pendingFold{block: block, covers: covers})
	}
	return nil
}

// foldSeen notes a block that go-ds-crdt fetched and is about to merge.
// When it holds a trusted fold's last record, the heads it covers are
// marked merged-and-pruned at once, before go-ds-crdt would walk below
// them (the fold holds their state), and the history under them is
// pruned here once the block is merged. Runs on go-ds-crdt's fetch path:
// it only reads the block and writes markers.
func (r *Replica) foldSeen(ctx context.Context, n ipld.Node) {
	if !mayBeFold(n.RawData()) {
		return
	}
	_, d, err := nodeDelta(n)
	if err != nil {
		return
	}
	for _, el := range d.GetElements() {
		rec, err := r.check(el.GetKey(), el.GetValue())
		if err != nil || rec.Kind != KindFold {
			continue
		}
		b, err := decodeFold(rec)
		if err != nil || len(b.Covers) == 0 {
			continue
		}
		covers, err := parseCIDs(b.Covers)
		if err != nil {
			r.log.Warn("fold names a malformed head", "key", el.GetKey(), "err", err)
			continue
		}
		for _, c := range covers {
			if done, err := r.Processed(ctx, c); err == nil && !done {
				if err := r.cfg.Datastore.Put(ctx, r.processedKey(c), pruningMark); err != nil {
					r.log.Warn("fold: cannot mark a covered head", "head", c, "err", err)
				}
			}
		}
		r.folds.saw(r.digest.addedKeys())
		r.folds.schedule(ctx, r.cfg.Datastore, n.Cid(), covers, r.cfg.FoldPruneDelay)
		return
	}
}

// parseCIDs decodes CIDs in their string form (fold covers, write
// tokens), naming the first that does not decode.
func parseCIDs(ss []string) ([]cid.Cid, error) {
	out := make([]cid.Cid, 0, len(ss))
	for _, s := range ss {
		c, err := cid.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// foldEvery is how often the fold loop looks for work.
const foldEvery = 5 * time.Second

// foldLoop prunes under the folds this peer has written or seen merged,
// and folds when one is due (maybeFold).
func (r *Replica) foldLoop() {
	defer r.wg.Done()
	t := time.NewTicker(min(foldEvery, max(r.cfg.FoldPruneDelay, 10*time.Millisecond)))
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.folds.wake:
		}
		r.prunePending(r.ctx)
		r.checkStrays(r.ctx)
		r.maybeFold(r.ctx)
	}
}

// prunePending prunes under each seen fold whose block is merged with
// everything below it.
func (r *Replica) prunePending(ctx context.Context) {
	r.folds.mu.Lock()
	pending := r.folds.pending
	r.folds.pending = nil
	r.folds.mu.Unlock()
	var later []pendingFold
	for _, p := range pending {
		if time.Now().Before(p.notBefore) {
			later = append(later, p)
			continue
		}
		if ready, err := r.foldMerged(ctx, p); err != nil || !ready {
			later = append(later, p)
			continue
		}
		n, err := r.pruneSeen(ctx, p.covers)
		if errors.Is(err, errNotYet) {
			r.log.Debug("fold: pruning postponed", "err", err)
			later = append(later, p)
			continue
		}
		if err != nil {
			r.log.Warn("fold: pruning the covered history failed; it stays until the next fold", "err", err)
			continue
		}
		_ = r.cfg.Datastore.Delete(ctx, pendingNamespace.ChildString(p.block.String()))
		r.count(func(c *Counters) { c.FoldsPruned++ })
		r.folds.mu.Lock()
		r.folds.covers, r.folds.strayCheck = p.covers, time.Time{}
		r.folds.mu.Unlock()
		r.log.Info("history pruned under a fold", "fold_block", p.block, "pruned_blocks", n)
	}
	if len(later) > 0 {
		r.folds.mu.Lock()
		r.folds.pending = append(r.folds.pending, later...)
		r.folds.mu.Unlock()
	}
}

// foldMerged reports whether the fold whose last record is in p.block is
// merged here with everything it needs: the only holes below it are the
// heads it covers, marked as taken from the fold (pruningMark).
func (r *Replica) foldMerged(ctx context.Context, p pendingFold) (bool, error) {
	holes, err := r.complete.check(ctx, p.block)
	if err != nil {
		return false, err
	}
	for _, h := range holes {
		if !slices.Contains(p.covers, h.block) || !r.pruned(ctx, h.block) {
			return false, nil
		}
	}
	return true, nil
}

// checkStrays asks for a fold when a stray branch stands on history
// pruned under the newest fold (strays) and nothing else was merged since
// it last looked, which it does at most every foldEvery.
func (r *Replica) checkStrays(ctx context.Context) {
	f := &r.folds
	f.mu.Lock()
	covers, last := f.covers, f.strayCheck
	due := covers != nil && time.Since(last) >= foldEvery && !f.urgent.Load()
	// Only once the mesh is quiet (nothing merged since the last look):
	// while writes go on, the next fold comes anyway and covers the
	// stray, and folding again at every stray — each fold made while
	// others write leaves some — would fold without end.
	since := f.since.Load()
	quiet := since == f.strayCount
	f.strayCount = since
	if due {
		f.strayCheck = time.Now()
	}
	f.mu.Unlock()
	if due && quiet && r.strays(ctx, covers) {
		r.log.Info("a branch stands on pruned history: folding again soon so that peers without that history can merge it")
		f.urgent.Store(true)
	}
}

// strays reports whether a block above the history pruned under covers
// links to a pruned block that is not one of covers: a branch written
// concurrently with the fold on top of history the fold covers, by a peer
// that had not merged all of it. This peer merged the branch before it
// pruned; a peer that never held that history (one that joins later)
// cannot fetch the branch's parents from anyone and would show a hole
// until a fold covers the branch, so this peer asks for one soon.
func (r *Replica) strays(ctx context.Context, covers []cid.Cid) bool {
	seen := cid.NewSet()
	stack := r.ds.InternalStats(ctx).Heads
	for len(stack) > 0 {
		b := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !seen.Visit(b) || slices.Contains(covers, b) {
			continue
		}
		if r.pruned(ctx, b) {
			return true
		}
		links, err := r.complete.links(ctx, b)
		if err != nil {
			continue // not merged yet: completeness's business
		}
		for _, l := range links {
			stack = append(stack, l.Cid)
		}
	}
	return false
}

// pruneSeen prunes with local writes and branch walks held off (a walk
// still merging a covered block would write back keys the prune just
// deleted) and once every event queued so far is dispatched (the
// dispatcher tells a fold that changes nothing by the elements it would
// otherwise show, which the prune deletes).
func (r *Replica) pruneSeen(ctx context.Context, covers []cid.Cid) (int, error) {
	// Paused before writeMu is taken: a walk can take long, local writes
	// must not wait for it.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := r.bc.pause(pctx)
	defer r.bc.resume()
	if err != nil {
		return 0, fmt.Errorf("%w: a branch walk did not finish: %v", errNotYet, err)
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	for seq := r.EventSeq(); r.Dispatched() < seq; {
		select {
		case <-pctx.Done():
			return 0, fmt.Errorf("%w: events still being dispatched", errNotYet)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return r.prune(ctx, covers)
}

// errNotYet: a prune had to wait for the replica; it is tried again.
var errNotYet = errors.New("not yet")

// maybeFold folds once at least FoldAfter records that replaced or
// deleted a value — and at least as many as the keys this peer holds, so
// that a fold never costs more than the writes it follows — were merged
// since the newest fold (or a stray branch asks for one), and a random
// part of FoldJitter has passed since (so that the peers of a mesh do not
// all fold at once; one peer's fold, once seen, resets the others').
//
// Records of new keys do not count: they are the live state, which a fold
// writes again and prunes nothing of. Counting them made a bulk ingest of
// 100,000 documents fold at 22,000 and 64,000 keys (22 s and 88 s on two
// cores), rewriting records that were written once.
func (r *Replica) maybeFold(ctx context.Context) {
	if r.cfg.FoldAfter <= 0 {
		return
	}
	f := &r.folds
	if r.SupersededRecords() < int64(max(r.cfg.FoldAfter, r.digest.keys())) && !f.urgent.Load() {
		return
	}
	f.mu.Lock()
	now := time.Now()
	if f.due.IsZero() {
		f.due = now.Add(time.Duration(rand.Int64N(int64(r.cfg.FoldJitter) + 1)))
	}
	due := f.due
	f.mu.Unlock()
	if now.Before(due) {
		return
	}
	rep, err := r.Fold(ctx)
	switch {
	case errors.Is(err, ErrNotFoldable):
		r.log.Debug("fold postponed", "err", err)
	case err != nil:
		r.log.Warn("fold failed", "err", err)
	case rep.Records == 0:
		r.folds.saw(r.digest.addedKeys()) // nothing live to carry: wait as long again
	}
}
