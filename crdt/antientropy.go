package crdt

import (
	"context"
	"errors"
	"fmt"
	"time"

	cid "github.com/ipfs/go-cid"
)

// Anti-entropy: every heartbeat carries this peer's heads and the digest
// of its state at exactly those heads. Peers with equal heads have merged
// the same deltas and must hold the same state; when they do not for
// DivergedAfter, both say so (Staleness.Diverged, shoal_state_diverged, a
// staleness that counts from the last agreement) and the peer that agrees
// with none of its peers rebuilds its state from the DAG (rebuildState).

// snapshotDigest returns the state digest if it describes exactly the
// state at heads, or "" when a merge or write may be under way: the
// broadcaster has handed go-ds-crdt heads it has not finished, a local
// write holds the write lock, events are queued but not yet folded into
// the digest, or the DAG is dirty. Heads and the event count are read
// again afterwards; if either moved the snapshot is dropped.
func (r *Replica) snapshotDigest(ctx context.Context, heads []cid.Cid) string {
	if !r.bc.idle() || !r.writeMu.TryLock() {
		return ""
	}
	defer r.writeMu.Unlock()
	if r.ds.IsDirty(ctx) {
		return ""
	}
	seq := r.EventSeq()
	if r.Dispatched() != seq {
		return ""
	}
	d := r.digest.value()
	if r.EventSeq() != seq || !r.bc.idle() || !sameCIDs(heads, r.ds.InternalStats(ctx).Heads) {
		return ""
	}
	return d
}

// finishRebuild repairs until the store is clean, every rebuildRetry (not
// go-ds-crdt's RepairInterval of minutes: the peer reports itself as
// holding nothing for certain until it is done).
func (r *Replica) finishRebuild() {
	defer r.wg.Done()
	for {
		err := r.ds.Repair(r.ctx)
		if r.ctx.Err() != nil || (err == nil && !r.ds.IsDirty(r.ctx)) {
			return
		}
		r.log.Warn("state rebuild not finished; trying again", "err", err, "in", rebuildRetry)
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(rebuildRetry):
		}
	}
}

// rebuildRetry paces finishRebuild.
const rebuildRetry = 5 * time.Second

func sameCIDs(a, b []cid.Cid) bool {
	if len(a) != len(b) {
		return false
	}
	set := make(map[cid.Cid]bool, len(a))
	for _, c := range a {
		set[c] = true
	}
	for _, c := range b {
		if !set[c] {
			return false
		}
	}
	return true
}

// checkDivergence starts a rebuild when this peer's state differs from a
// reachable peer's at equal heads and agrees with no peer's: with three
// peers of which one is wrong, only that one rebuilds; with two, both do
// (rebuilding a correct state yields the same state). A rebuild runs at
// most once per set of heads: if the states still differ after it, the
// divergence stays reported instead of looping.
func (r *Replica) checkDivergence() {
	st := r.tracker.Staleness()
	if len(st.Diverged) == 0 {
		return
	}
	for _, p := range st.Peers {
		if p.Reachable && p.Agreement == AgreementSame {
			return
		}
	}
	key := r.tracker.localKey()
	if key == "" || key == r.rebuilt || !r.rebuilding.CompareAndSwap(false, true) {
		return
	}
	r.rebuilt = key
	r.log.Error("replicated state diverged from peers with the same heads: rebuilding it from the DAG", "peers", st.Diverged)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.rebuilding.Store(false)
		if err := r.rebuildState(r.ctx); err != nil && r.ctx.Err() == nil {
			r.log.Error("state rebuild failed", "err", err)
		}
	}()
}

// rebuildState throws away the merged state and go-ds-crdt's processed
// markers and merges every block reachable from the heads again, as an
// unclean start does. Writes wait meanwhile; readers see the state being
// rebuilt, and the staleness says so: from before the reset until the
// store is clean again the tracker reports this peer as never caught up
// (tracker.rebuilding). Keys that held a value before and none after get a
// delete event, since no hook reports a key that simply is not rebuilt —
// but only once the rebuild is complete: go-ds-crdt's repair returns
// without error when its context ends, so a dirty store afterwards means
// the rest of the state is still to come.
func (r *Replica) rebuildState(ctx context.Context) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.tracker.setRebuilding(true)
	r.complete.forget()
	start := time.Now()
	// No branch walk beside the rebuild (see broadcaster.pause).
	pctx, pcancel := context.WithTimeout(ctx, time.Minute)
	err := r.bc.pause(pctx)
	pcancel()
	defer r.bc.resume()
	if err != nil {
		return fmt.Errorf("a branch walk did not finish before the rebuild: %w", err)
	}
	before := map[string]bool{}
	if err := r.Scan(ctx, "/", func(key string, _ []byte) error {
		before[key] = true
		return nil
	}); err != nil {
		return err
	}
	if _, err := resetState(ctx, r.cfg.Datastore); err != nil {
		return err
	}
	r.complete.forget()
	r.ds.MarkDirty(ctx)
	rctx, cancel := context.WithTimeout(ctx, syncRepairTimeout)
	err = r.ds.Repair(rctx)
	cancel()
	if err == nil && r.ds.IsDirty(ctx) {
		err = errors.New("the rebuild did not finish in time; it goes on in the background")
	}
	if err != nil {
		r.wg.Add(1)
		go r.finishRebuild()
		return err
	}
	if err := r.Scan(ctx, "/", func(key string, _ []byte) error {
		delete(before, key)
		return nil
	}); err != nil {
		return err
	}
	for key := range before {
		r.vanished(key)
	}
	// Start the digest again from the rebuilt state too, in case it was
	// the digest that had drifted; changes still queued fold in after.
	if err := r.digest.load(ctx, r); err != nil {
		return err
	}
	r.tracker.setRebuilding(false)
	r.count(func(c *Counters) { c.StateRebuilds++ })
	r.log.Warn("replicated state rebuilt from the DAG", "seconds", time.Since(start).Seconds(), "vanished_keys", len(before))
	return nil
}
