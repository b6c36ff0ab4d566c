package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/store"
)

// Trust says whose ops this peer admits (the peer's reloadable trust set).
type Trust interface {
	Trusts(id sign.ID) bool
}

// Config assembles a Service.
type Config struct {
	Mesh string
	// Site is this peer's site ("" when it has none). A site-only
	// session is replicated only among the peers of its site.
	Site   string
	Host   host.Host
	PubSub *pubsub.PubSub
	Signer crdt.Signer
	Trust  Trust
	Clock  *crdt.Clock
	// DB holds the sessions (store.OpenExpiring, in its own directory).
	DB *store.Expiring
	// MaxClockSkew bounds how far ahead of this peer's clock an op may be.
	// Default 30 s.
	MaxClockSkew time.Duration
	// SweepEvery is how often expired sessions are counted out and, once
	// none is live, their files dropped. Default 5 s.
	SweepEvery time.Duration
	// AckTimeout bounds how long a write waits for another peer to hold
	// it before it is acknowledged on this peer's disk alone. Default 2 s.
	AckTimeout time.Duration
	Logger     *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = 30 * time.Second
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = 5 * time.Second
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Service keeps this peer's sessions and replicates their changes.
type Service struct {
	cfg  Config
	log  *slog.Logger
	self string // libp2p id

	// mu guards the database: writes and the sweep's DropAll take it,
	// reads share it. Ops of one session merge under it, so two
	// arriving at once cannot lose each other.
	mu sync.RWMutex
	// dirty: something was written since the files were last dropped.
	dirty bool
	// arrived is closed and replaced whenever an op is merged: waiters
	// for a token check again.
	arrived chan struct{}

	rep *replication
	m   metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New starts the service: it joins the session topics and serves the
// push and fetch protocols.
func New(cfg Config) (*Service, error) {
	cfg.setDefaults()
	// dirty from the start: the database may hold what an earlier run
	// wrote, whose files the first sweep that finds nothing live drops.
	s := &Service{cfg: cfg, log: cfg.Logger, self: cfg.Host.ID().String(), arrived: make(chan struct{}), m: newMetrics(), dirty: true}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	rep, err := startReplication(s)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.rep = rep
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.sweepLoop() }()
	return s, nil
}

// Close stops replication and the sweep; it does not close the database.
func (s *Service) Close() {
	s.cancel()
	s.rep.close()
	s.wg.Wait()
}

// View is a session as readers see it (the API's wire type).
type View = api.Session

func (st *state) view() View {
	v := View{ID: st.ID, SiteOnly: st.Site != "", Site: st.Site, TTL: st.ttl().Seconds(), ExpiresAt: st.expires().UTC(), Turns: make([]Turn, 0, len(st.Turns))}
	if st.Meta != nil {
		v.Metadata = st.Meta.Metadata
	}
	for _, o := range st.Turns {
		v.Turns = append(v.Turns, Turn{Role: o.Role, Text: o.Text, Metadata: o.Metadata, At: o.HLC.Time().UTC(), Writer: string(o.Signer)})
	}
	return v
}

// Put creates or updates a session's TTL and metadata (nil keeps them);
// siteOnly restricts a new session to this peer's site.
func (s *Service) Put(ctx context.Context, id string, ttl time.Duration, metadata json.RawMessage, siteOnly bool) (Token, error) {
	if siteOnly && s.cfg.Site == "" {
		return Token{}, fmt.Errorf("%w: site_only needs the peer to have a site (--site)", ErrBadOp)
	}
	return s.write(ctx, Op{Session: id, Kind: KindMeta, Metadata: metadata}, ttl, siteOnly)
}

// Append adds a turn, creating the session with the default TTL when it
// does not exist.
func (s *Service) Append(ctx context.Context, id, role, text string, metadata json.RawMessage) (Token, error) {
	return s.write(ctx, Op{Session: id, Kind: KindTurn, Role: role, Text: text, Metadata: metadata}, 0, false)
}

// Delete ends a session everywhere.
func (s *Service) Delete(ctx context.Context, id string) (Token, error) {
	st, err := s.load(id)
	if err != nil {
		return Token{}, err
	}
	if st == nil || !st.live() {
		return Token{}, fmt.Errorf("%w: %s", ErrUnknown, id)
	}
	return s.write(ctx, Op{Session: id, Kind: KindDelete}, 0, false)
}

// write signs o as this peer's next change to its session, merges it
// here, and replicates it: it returns once another peer holds it too, or
// after AckTimeout when none answered (the write is then on this peer's
// disk only, and travels on by gossip).
func (s *Service) write(ctx context.Context, o Op, ttl time.Duration, siteOnly bool) (Token, error) {
	if err := CheckID(o.Session); err != nil {
		return Token{}, err
	}
	s.mu.Lock()
	st, err := s.loadLocked(o.Session)
	if err != nil {
		s.mu.Unlock()
		return Token{}, err
	}
	if st == nil {
		st = &state{ID: o.Session}
		if siteOnly {
			st.Site = s.cfg.Site
		}
	}
	if ttl <= 0 {
		ttl = st.ttl()
	}
	o.V, o.Site, o.TTLMs, o.HLC = 1, st.Site, ttl.Milliseconds(), s.cfg.Clock.Now()
	o.Signer = s.cfg.Signer.ID()
	if err := o.checkShape(); err != nil {
		s.mu.Unlock()
		return Token{}, err
	}
	o.Sig = s.cfg.Signer.Sign(o.signingBytes(s.cfg.Mesh))
	st.merge(o)
	err = s.storeLocked(st)
	if err == nil {
		s.notifyLocked()
	}
	s.mu.Unlock()
	if err != nil {
		return Token{}, err
	}
	s.m.ops.WithLabelValues(o.Kind, "local").Inc()
	s.rep.replicate(ctx, o)
	return Token{Session: o.Session, HLC: o.HLC, Peer: s.self}, nil
}

// Get returns a live session. With after, it first waits (within ctx)
// until this peer holds that write, asking the writer's peer for it; an
// unknown session is looked for on the session's peers before it is
// reported unknown.
func (s *Service) Get(ctx context.Context, id string, after *Token) (View, error) {
	if err := CheckID(id); err != nil {
		return View{}, err
	}
	if after != nil {
		if after.Session != id {
			return View{}, fmt.Errorf("%w: the token names session %s", crdt.ErrBadToken, after.Session)
		}
		if err := s.waitFor(ctx, *after); err != nil {
			return View{}, err
		}
	}
	st, err := s.load(id)
	if err == nil && (st == nil || !st.live()) && after == nil {
		s.rep.fetch(ctx, id, "")
		st, err = s.load(id)
	}
	if err != nil {
		return View{}, err
	}
	if st == nil || !st.live() {
		return View{}, fmt.Errorf("%w: %s", ErrUnknown, id)
	}
	return st.view(), nil
}

// Recent returns up to n of a session's last turns (for a request that
// names the session), or ErrUnknown.
func (s *Service) Recent(ctx context.Context, id string, n int) ([]Turn, error) {
	v, err := s.Get(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	if len(v.Turns) > n {
		v.Turns = v.Turns[len(v.Turns)-n:]
	}
	return v.Turns, nil
}

// waitFor returns once the write tok names is held here.
func (s *Service) waitFor(ctx context.Context, tok Token) error {
	asked := false
	for {
		s.mu.RLock()
		st, err := s.loadLocked(tok.Session)
		wake := s.arrived
		s.mu.RUnlock()
		if err != nil {
			return err
		}
		if st != nil && st.has(tok.HLC) {
			return nil
		}
		if !asked {
			asked = true
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.rep.fetch(ctx, tok.Session, tok.Peer) }()
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("%w: this peer does not hold the session write yet: %v", crdt.ErrNotCaughtUp, ctx.Err())
		}
	}
}

// notifyLocked wakes the waiters for a token (waitFor): an op was just
// stored. s.mu must be held for writing.
func (s *Service) notifyLocked() {
	close(s.arrived)
	s.arrived = make(chan struct{})
}

// apply merges a replicated op that passed verify; it reports whether
// the op was new here.
func (s *Service) apply(o Op) (bool, error) {
	s.cfg.Clock.Observe(o.HLC, s.cfg.MaxClockSkew)
	s.mu.Lock()
	st, err := s.loadLocked(o.Session)
	if err != nil {
		s.mu.Unlock()
		return false, err
	}
	if st == nil {
		if s.expiredAfter(o) {
			s.mu.Unlock()
			s.m.rejected.WithLabelValues("stale").Inc()
			return false, nil // an op of a session that ended here since
		}
		st = &state{ID: o.Session, Site: o.Site}
	}
	if st.Site != o.Site {
		s.mu.Unlock()
		// Counted by the caller, as every refusal is (replication.count).
		return false, refuse("site", "op for site %q on a session of site %q", o.Site, st.Site)
	}
	changed := st.merge(o)
	if changed {
		if err = s.storeLocked(st); err == nil {
			s.notifyLocked()
		}
	}
	s.mu.Unlock()
	if changed && err == nil {
		s.m.ops.WithLabelValues(o.Kind, "remote").Inc()
	}
	return changed, err
}

func key(id string) []byte { return []byte("s/" + id) }

func (s *Service) load(id string) (*state, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.loadLocked(id)
}

func (s *Service) loadLocked(id string) (*state, error) {
	b, err := s.cfg.DB.Get(key(id))
	if errors.Is(err, store.ErrExpiringNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	if !st.expires().After(time.Now()) {
		return nil, nil
	}
	return &st, nil
}

// storeLocked writes st with its TTL (a state already expired is
// deleted), and its end marker.
//
// A session ends at its newest op's TTL, which a write may shorten; a
// peer that missed that write (it was down) still holds older ops whose
// own TTLs run longer, and handing them on would bring the session back.
// The end marker — the session's newest HLC — outlives the state only
// until the last of its ops would have expired on its own, and turns away
// any op at or before it once the state is gone. Nothing is kept longer
// than the session's ops themselves could live.
func (s *Service) storeLocked(st *state) error {
	s.dirty = true
	if n := st.newest(); n != nil {
		if until := time.Until(st.longest()); until > 0 {
			mark, _ := json.Marshal(n.HLC)
			if err := s.cfg.DB.Put(markKey(st.ID), mark, until); err != nil {
				return fmt.Errorf("store session %s: %w", st.ID, err)
			}
		}
	}
	ttl := time.Until(st.expires())
	if ttl <= 0 {
		return s.cfg.DB.Delete(key(st.ID))
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := s.cfg.DB.Put(key(st.ID), b, ttl); err != nil {
		return fmt.Errorf("store session %s: %w", st.ID, err)
	}
	return nil
}

func markKey(id string) []byte { return []byte("x/" + id) }

// expiredAfter reports whether o is at or before the newest op of an
// ended session of its id.
func (s *Service) expiredAfter(o Op) bool {
	b, err := s.cfg.DB.Get(markKey(o.Session))
	if err != nil {
		return false
	}
	var newest crdt.HLC
	return json.Unmarshal(b, &newest) == nil && o.HLC.Compare(newest) <= 0
}

// sweepLoop counts live sessions and, when none is left and something was
// written since, drops the database's files: Badger hides expired entries
// at once but frees their space only when it rewrites their files.
func (s *Service) sweepLoop() {
	t := time.NewTicker(s.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.sweep()
		}
	}
}

func (s *Service) sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Badger hides what has expired (at most a second late, see
	// store.Expiring.Put), so counting keys is enough: no state is read.
	// End markers count as held, not as live sessions.
	live, held := 0, 0
	err := s.cfg.DB.ScanKeys(nil, func(k []byte) {
		held++
		if bytes.HasPrefix(k, []byte("s/")) {
			live++
		}
	})
	if err != nil {
		s.log.Warn("session sweep", "err", err)
		return
	}
	s.m.live.Set(float64(live))
	if held > 0 {
		if err := s.cfg.DB.GC(); err != nil {
			s.log.Warn("session value-log GC", "err", err)
		}
		return
	}
	if s.dirty {
		if err := s.cfg.DB.DropAll(); err != nil {
			s.log.Warn("dropping expired sessions' files", "err", err)
			return
		}
		s.dirty = false
		s.m.drops.Inc()
	}
}

// Collectors are the service's metrics.
func (s *Service) Collectors() []prometheus.Collector { return s.m.collectors() }
