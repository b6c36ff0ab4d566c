package crdt

import (
	"context"
	"encoding/json"
	"time"

	cid "github.com/ipfs/go-cid"
)

// reinjectAfter is how long a head learned from a heartbeat may stay
// unprocessed before it is handed to the CRDT again.
const reinjectAfter = 10 * time.Second

func (r *Replica) heartbeatLoop() {
	defer r.wg.Done()
	// A ticker, reset when the interval changes: waiting a fresh interval
	// after each send would add the send's own time to every period, and
	// under load the cadence would drift past what receivers allow.
	every := heartbeatEvery(r.cfg.HeartbeatInterval, r.tracker.Reachable())
	t := time.NewTicker(every)
	defer t.Stop()
	r.sendHeartbeat(every)
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		if next := heartbeatEvery(r.cfg.HeartbeatInterval, r.tracker.Reachable()); next != every {
			every = next
			t.Reset(every)
		}
		r.sendHeartbeat(every)
	}
}

// heartbeatScaleAt is the mesh size up to which every peer heartbeats at
// Config.HeartbeatInterval. Gossipsub relays every heartbeat to every
// peer, several times over, so at a fixed rate each peer's heartbeat
// traffic grows with the mesh: 56 KB/s per peer at 10 processes, 377 KB/s
// at 50, where the idle load of all peers alone exceeded two cores
// (docs/benchmarks.md). Past this size the interval grows with the mesh,
// so a peer hears about heartbeatScaleAt heartbeats per interval
// whatever the size; each peer's timeout grows with the interval it
// announces (Heartbeat.Every).
const heartbeatScaleAt = 16

// maxHeartbeatScale bounds that growth: staleness is measured from
// heartbeats, so a slower beat makes every peer's bound coarser.
const maxHeartbeatScale = 8

// heartbeatEvery is the heartbeat interval of a peer that has reachable
// other peers: base up to heartbeatScaleAt peers in the mesh, then base
// per started heartbeatScaleAt, up to maxHeartbeatScale × base.
func heartbeatEvery(base time.Duration, reachable int) time.Duration {
	mesh := reachable + 1
	scale := (mesh + heartbeatScaleAt - 1) / heartbeatScaleAt
	return base * time.Duration(min(max(scale, 1), maxHeartbeatScale))
}

// maintain evaluates freshness, fetches what peers announced and this
// replica lacks, heals holed branches and checks for divergence. It runs
// apart from heartbeatLoop because the first completeness check after a
// start may read much of the DAG, and heartbeats must keep going
// meanwhile (a silent peer looks unreachable).
func (r *Replica) maintain() {
	defer r.wg.Done()
	// Evaluating freshness more often than heartbeats arrive keeps the
	// reported staleness close to the truth between heartbeats.
	eval := time.NewTicker(r.cfg.HeartbeatInterval / 4)
	defer eval.Stop()
	horizon := time.NewTicker(horizonEvery)
	defer horizon.Stop()
	for {
		select {
		case <-r.ctx.Done():
			// The last horizon, on the way out (the datastore is still
			// open: its owner closes it after the replica).
			r.saveHorizon(context.Background())
			return
		case <-horizon.C:
			r.saveHorizon(r.ctx)
			continue
		case <-eval.C:
		case <-r.heard:
		}
		if r.tracker.isRebuilding() && !r.rebuilding.Load() && !r.ds.IsDirty(r.ctx) {
			r.tracker.setRebuilding(false) // a rebuild's background repair is done
		}
		r.tracker.Evaluate(r.ctx)
		r.injectMissing()
		r.checkDivergence()
	}
}

func (r *Replica) sendHeartbeat(every time.Duration) {
	st := r.ds.InternalStats(r.ctx)
	hb := Heartbeat{V: 1, Peer: r.cfg.Self.String(), HLC: r.clock.Now(), Height: st.MaxHeight}
	if every != time.Second {
		hb.Every = every.Milliseconds()
	}
	if r.cfg.Addrs != nil {
		hb.Addrs = r.cfg.Addrs()
		if len(hb.Addrs) > maxHeartbeatAddrs {
			hb.Addrs = hb.Addrs[:maxHeartbeatAddrs]
		}
	}
	if r.cfg.Loaded != nil {
		hb.Loaded = r.cfg.Loaded()
		if len(hb.Loaded) > maxHeartbeatLoaded {
			hb.Loaded = hb.Loaded[:maxHeartbeatLoaded]
		}
	}
	for i, c := range st.Heads {
		if i == maxHeartbeatHeads {
			break
		}
		hb.Heads = append(hb.Heads, c.String())
	}
	hb.State = r.snapshotDigest(r.ctx, st.Heads)
	if len(st.Heads) >= maxHeartbeatHeads {
		hb.State = "" // a sample of the heads cannot be compared
	}
	r.tracker.SetLocal(hb.Heads, hb.State)
	b, err := json.Marshal(hb)
	if err != nil {
		return
	}
	if err := r.hbTopic.Publish(r.ctx, b); err != nil {
		if r.ctx.Err() == nil {
			r.log.Debug("heartbeat publish failed", "err", err)
		}
		return
	}
	r.count(func(c *Counters) { c.HeartbeatsOut++ })
}

// maxHeartbeatSize bounds a heartbeat message we are willing to parse.
const maxHeartbeatSize = 16 << 10

func (r *Replica) receiveHeartbeats() {
	defer r.wg.Done()
	for {
		msg, err := r.hbSub.Next(r.ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == r.cfg.Self {
			continue
		}
		// The topic validator has decoded and checked it (size, schema,
		// author); decode here only if it did not run.
		hb, ok := msg.ValidatorData.(*Heartbeat)
		if !ok {
			if hb, err = decodeHeartbeat(msg.Data, msg.GetFrom()); err != nil {
				continue
			}
		}
		r.clock.Observe(hb.HLC, r.cfg.MaxClockSkew)
		r.tracker.Observe(*hb)
		r.count(func(c *Counters) { c.HeartbeatsIn++ })
		select {
		case r.heard <- struct{}{}:
		default: // maintain is already due to run
		}
	}
}

// injectMissing hands the CRDT the heads that peers announced and this
// replica has not merged, so a missed broadcast is repaired within a
// heartbeat rather than at the next rebroadcast. Heads that are processed
// but sit on a hole (and this replica's own heads, which a walk cut short
// can leave the same way) have their branch walked again (healBranches).
func (r *Replica) injectMissing() {
	unmerged := r.tracker.Unprocessed(r.ctx)
	var missing, holed []cid.Cid
	for _, c := range unmerged {
		if ok, err := r.Processed(r.ctx, c); err == nil && ok {
			holed = append(holed, c)
		} else {
			missing = append(missing, c)
		}
	}
	// Only while go-ds-crdt walks nothing: a branch it is still walking
	// looks exactly like a holed one (tip processed, blocks below not yet).
	if r.bc.idle() {
		// Own heads first: a peer's head below one of them is healed by
		// walking from the own head (see healBranches).
		r.healBranches(r.ctx, append(r.ds.InternalStats(r.ctx).Heads, holed...))
	}
	if len(missing) == 0 {
		return
	}
	now := time.Now()
	var fresh []cid.Cid
	r.cntMu.Lock()
	for c, at := range r.injected {
		if now.Sub(at) > time.Minute {
			delete(r.injected, c)
		}
	}
	for c, h := range r.healed {
		if now.Sub(h.at) > 2*maxHealRetry {
			delete(r.healed, c)
		}
	}
	for _, c := range missing {
		if at, ok := r.injected[c]; ok && now.Sub(at) < reinjectAfter {
			continue
		}
		r.injected[c] = now
		fresh = append(fresh, c)
	}
	r.cntMu.Unlock()
	if len(fresh) > 0 && r.bc.Inject(fresh) {
		r.count(func(c *Counters) { c.InjectedHeads += uint64(len(fresh)) })
	}
}
