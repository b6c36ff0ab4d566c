package crdt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// The freshness horizon is the instant up to which this peer's state is
// known to be complete: now − staleness. It is kept on disk so that a
// restarted peer starts from it rather than from the moment it started —
// before, a peer down for an hour claimed to hold everything written
// before its restart, and answered reads for writes made while it was
// down with a staleness of a second (found by the history checker in
// TestFaultWriterOfflineMidBranch). The peers it knew are kept with it:
// after a restart each counts, as never caught up with, for rememberFor
// (30 s) unless it is heard first — a peer that restarts and hears
// one sibling before the writer must not take that sibling's word for
// everything (TestFaultCloseMidWalk).

var horizonKey = ds.NewKey("/crdt-horizon")

// epoch is the horizon of a data directory that never recorded one: the
// peer has no evidence of holding anything until it catches up.
var epoch = HLC{Wall: 1}

// horizonEvery is how often the horizon is written while it advances.
const horizonEvery = 5 * time.Second

// savedHorizonRecord is what horizonKey holds.
type savedHorizonRecord struct {
	Wall  int64    `json:"wall"`
	Peers []string `json:"peers,omitempty"`
}

// maxRememberedPeers bounds the peers kept with the horizon.
const maxRememberedPeers = 256

// loadHorizon reads the recorded horizon (epoch when there is none) and
// the peers known when it was recorded.
func loadHorizon(ctx context.Context, d ds.Datastore) (HLC, []string) {
	b, err := d.Get(ctx, horizonKey)
	if err != nil {
		return epoch, nil
	}
	var rec savedHorizonRecord
	if json.Unmarshal(b, &rec) != nil || rec.Wall <= 0 {
		return epoch, nil
	}
	return HLC{Wall: rec.Wall}, rec.Peers
}

// saveHorizon records the horizon when it has moved forward since the last
// record (it never moves back on disk: a peer that was complete up to T
// stays so).
func (r *Replica) saveHorizon(ctx context.Context) {
	// A horizon means something only when measured against peers: a peer
	// that has heard no one yet (its staleness is its uptime, or 0 once
	// alone) must not record its start as the instant it held everything,
	// and a state being rebuilt holds nothing for certain.
	st := r.Staleness()
	if len(st.Peers) == 0 || r.tracker.isRebuilding() {
		return
	}
	h := r.clock.Peek().Wall - int64(st.Seconds*float64(time.Second))
	var peers []string
	for _, p := range st.Peers {
		peers = append(peers, p.ID)
	}
	sort.Strings(peers)
	peers = peers[:min(len(peers), maxRememberedPeers)]
	key := fmt.Sprint(peers)
	if h <= r.savedHorizon && key == r.savedPeers {
		return
	}
	b, _ := json.Marshal(savedHorizonRecord{Wall: max(h, r.savedHorizon), Peers: peers})
	if err := r.cfg.Datastore.Put(ctx, horizonKey, b); err != nil {
		if !errors.Is(err, context.Canceled) {
			r.log.Warn("cannot record the freshness horizon", "err", err)
		}
		return
	}
	r.savedHorizon, r.savedPeers = max(h, r.savedHorizon), key
}
