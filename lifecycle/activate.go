package lifecycle

import (
	"context"
	"errors"
	"strings"
	"time"

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// activate brings the activated version into service on this peer. A
// version that fails verification or does not load is left marked bad,
// and the last good version keeps serving.
func (l *Manager) activate(ctx context.Context, a models.Activation) {
	m, err := l.cfg.Registry.Manifest(ctx, a.Model, a.Version)
	if err != nil {
		l.log.Warn("activation names an unknown version", "model", a.Model, "version", a.Version, "err", err)
		return
	}
	if !l.fetchActivated(ctx, a, m) {
		return
	}
	// A pinned session can be evicted between its load and the switch;
	// then it is loaded again (rarely more than once).
	for ctx.Err() == nil {
		sess, ok := l.loadActivated(ctx, m)
		if !ok {
			return
		}
		switch l.commit(ctx, a, m, sess) {
		case committed:
			l.gcSoon()
			return
		case superseded:
			return
		case evicted:
		}
	}
}

// fetchActivated makes the activated version's artifact local and
// verified, retrying while the activation is still the effective one
// (nobody may have had the blocks yet). It reports success.
func (l *Manager) fetchActivated(ctx context.Context, a models.Activation, m models.Manifest) bool {
	spec, err := ArtifactSpec(m)
	if err != nil {
		l.log.Error("cannot activate", "ref", m.Ref(), "err", err)
		return false
	}
	for attempt := 1; ; attempt++ {
		_, err = l.cfg.Artifacts.Ensure(ctx, spec)
		if err == nil {
			return true
		}
		if errors.Is(err, artifacts.ErrBad) || ctx.Err() != nil {
			break
		}
		l.log.Warn("artifact fetch incomplete, retrying", "ref", m.Ref(), "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(time.Duration(attempt)*2*time.Second, 30*time.Second)):
		}
		if st, serr := l.cfg.Registry.State(ctx, a.Model); serr != nil || st.Current == nil || st.Current.HLC != a.HLC {
			return false
		}
	}
	if ctx.Err() == nil {
		prev, _ := l.Serving(a.Model)
		l.log.Error("activated version not served", "ref", m.Ref(), "err", err, "still_serving", prev.Version)
	}
	return false
}

// loadActivated loads an ONNX version's session unless it is already
// current or loaded as pinned (sess nil then). An ONNX model goes live
// only as a warmed-up session (design §3). ok is false when it does not
// load: it is marked bad and the previous version keeps serving.
func (l *Manager) loadActivated(ctx context.Context, m models.Manifest) (sess *inference.Session, ok bool) {
	if !l.loadable(m) {
		return nil, true
	}
	pool := l.cfg.Pool
	if ref, cur := pool.Current(m.Model); (cur && ref.Version == m.Version) || pool.Has(m.Model, m.Version) {
		return nil, true
	}
	sess, err := l.Load(ctx, m)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, ErrLoadFailed) {
			l.log.Error("activated version not loaded", "ref", m.Ref(), "err", err)
		}
		return nil, false
	}
	return sess, true
}

func (l *Manager) loadable(m models.Manifest) bool { return m.IsONNX() && l.cfg.Engine != nil }

type commitResult int

const (
	committed  commitResult = iota
	superseded              // a newer activation won meanwhile
	evicted                 // the pinned session went away: load again
)

// commit switches to the version if it is still the effective current
// one: a newer activation may have won while this one was fetching. The
// check and the switch happen under l.mu, so of two activations finishing
// together the one that reads the newer state decides last.
func (l *Manager) commit(ctx context.Context, a models.Activation, m models.Manifest, sess *inference.Session) commitResult {
	l.mu.Lock()
	st, err := l.cfg.Registry.State(ctx, a.Model)
	if err != nil || st.Current == nil || st.Current.Version != a.Version {
		l.mu.Unlock()
		if sess != nil {
			sess.Retire()
		}
		return superseded
	}
	if l.loadable(m) {
		pool := l.cfg.Pool
		switch {
		case sess != nil:
			pool.Swap(sess)
		case pool.Promote(a.Model, a.Version):
		default:
			if ref, ok := pool.Current(a.Model); !ok || ref.Version != a.Version {
				l.mu.Unlock()
				return evicted
			}
		}
	}
	lag := 0.0
	if l.cfg.Now != nil {
		lag = max(time.Duration(l.cfg.Now()-st.Current.HLC.Wall).Seconds(), 0)
	}
	prev := l.serving[a.Model]
	if prev.Version != a.Version {
		l.serving[a.Model] = Serving{Version: a.Version, CID: m.CID, Since: time.Now(), LagSecond: lag}
	}
	l.mu.Unlock()
	if prev.Version != a.Version {
		// After the unlock: see watch.go for the lock order.
		l.notify()
		l.log.Info("serving model version", "model", a.Model, "version", a.Version, "previous", prev.Version, "lag_seconds", lag)
	}
	return committed
}

// gc deletes verified versions this peer no longer needs. Per model it
// keeps the version it serves, the effective current version, every
// version published after the served one (candidates for the next switch,
// and possibly the mesh's only copy), and the Keep-1 newest versions
// published before it (rollback targets). Versions are ordered by their
// manifests' HLC, so every peer keeps the same ones.
func (l *Manager) gc(ctx context.Context) error {
	all, err := l.cfg.Artifacts.All(ctx)
	if err != nil {
		return err
	}
	local := map[string]artifacts.Status{}
	for _, st := range all {
		if st.State == artifacts.StateVerified {
			local[st.Ref] = st
		}
	}
	states, err := l.cfg.Registry.Models(ctx)
	if err != nil {
		return err
	}
	servingNow := l.All()
	var keep []cid.Cid
	var drop []artifacts.Spec
	for _, st := range states {
		k, d := l.sortVersions(st, local, servingNow[st.Name].Version)
		keep, drop = append(keep, k...), append(drop, d...)
	}
	if len(drop) == 0 {
		return nil
	}
	for _, d := range drop {
		if model, version, ok := strings.Cut(d.Ref, "@"); ok {
			l.cfg.Pool.Drop(model, version)
			if l.cfg.Cache != nil {
				l.cfg.Cache.DropVersion(model, version)
			}
		}
	}
	_, err = l.cfg.Artifacts.Remove(ctx, drop, keep)
	return err
}

// sortVersions splits one model's local versions into those gc keeps and
// those it drops (see gc).
func (l *Manager) sortVersions(st models.ModelState, local map[string]artifacts.Status, served string) (keep []cid.Cid, drop []artifacts.Spec) {
	servedAt := -1
	for i, vs := range st.Versions { // oldest first
		if vs.Manifest.Version == served {
			servedAt = i
		}
	}
	older := 0
	for i := len(st.Versions) - 1; i >= 0; i-- {
		m := st.Versions[i].Manifest
		ls, ok := local[m.Ref()]
		if !ok || ls.CID != m.CID {
			continue
		}
		c, err := cid.Decode(m.CID)
		if err != nil {
			continue
		}
		isCurrent := st.Current != nil && st.Current.Version == m.Version
		switch {
		case servedAt < 0 || i >= servedAt || isCurrent:
			keep = append(keep, c)
		case older < l.cfg.Keep-1:
			older++
			keep = append(keep, c)
		default:
			drop = append(drop, artifacts.Spec{Ref: m.Ref(), CID: c})
		}
	}
	return keep, drop
}
