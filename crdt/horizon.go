package crdt

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// The freshness horizon is the instant up to which this peer's state is
// known to be complete: now − staleness. It is kept on disk so that a
// restarted peer starts from it rather than from the moment it started —
// before, a peer down for an hour claimed to hold everything written
// before its restart, and answered reads for writes made while it was
// down with a staleness of a second (found by the history checker in
// TestFaultWriterOfflineMidBranch).

var horizonKey = ds.NewKey("/crdt-horizon")

// epoch is the horizon of a data directory that never recorded one: the
// peer has no evidence of holding anything until it catches up.
var epoch = HLC{Wall: 1}

// horizonEvery is how often the horizon is written while it advances.
const horizonEvery = 5 * time.Second

// loadHorizon reads the recorded horizon, or epoch.
func loadHorizon(ctx context.Context, d ds.Datastore) HLC {
	b, err := d.Get(ctx, horizonKey)
	if err != nil || len(b) != 8 {
		return epoch
	}
	wall := int64(binary.BigEndian.Uint64(b))
	if wall <= 0 {
		return epoch
	}
	return HLC{Wall: wall}
}

// horizon computes the current horizon from the staleness.
func (r *Replica) horizon() int64 {
	now := r.clock.Peek().Wall
	return now - int64(r.Staleness().Seconds*float64(time.Second))
}

// saveHorizon records the horizon when it has moved forward since the last
// record (it never moves back on disk: a peer that was complete up to T
// stays so).
func (r *Replica) saveHorizon(ctx context.Context) {
	h := r.horizon()
	if h <= r.savedHorizon {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(h))
	if err := r.cfg.Datastore.Put(ctx, horizonKey, b[:]); err != nil {
		if !errors.Is(err, context.Canceled) {
			r.log.Warn("cannot record the freshness horizon", "err", err)
		}
		return
	}
	r.savedHorizon = h
}
