package crdt

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	cid "github.com/ipfs/go-cid"
)

// Heartbeat is what every peer announces on the mesh's side topic once per
// HeartbeatInterval: who it is, its clock, and the CRDT heads it has
// processed. Another peer that has processed all of those heads holds
// everything the sender held at that HLC.
type Heartbeat struct {
	V      int      `json:"v"`
	Peer   string   `json:"peer"`
	HLC    HLC      `json:"hlc"`
	Heads  []string `json:"heads"`
	Height uint64   `json:"height"`
	Addrs  []string `json:"addrs,omitempty"`
	// Loaded lists model@version refs the sender has loaded and accepts
	// forwarded inference for (warm-peer routing); empty when it does not.
	Loaded []string `json:"loaded,omitempty"`
	// State is the digest of the sender's state at exactly Heads (see
	// stateDigest), or empty when the sender was mid-merge and could not
	// take a consistent snapshot. Two peers with equal heads and different
	// states have diverged.
	State string `json:"state,omitempty"`
	// Every is the sender's heartbeat interval in milliseconds (0: the
	// default, one second). Heartbeats slow down as a mesh grows
	// (heartbeatEvery), and a receiver gives a peer peerTimeoutBeats of
	// its own interval before calling it unreachable.
	Every int64 `json:"every,omitempty"`
}

// peerTimeoutBeats is how many of a peer's announced heartbeat intervals
// it may stay silent before it counts as unreachable, when that is longer
// than TrackerConfig.PeerTimeout (5 s: five one-second beats).
const peerTimeoutBeats = 5

// maxAnnouncedEvery bounds the interval a heartbeat may announce: a peer
// cannot buy itself more than peerTimeoutBeats × this of silence.
const maxAnnouncedEvery = 30 * time.Second

// Reachable counts the peers heard from within their timeout.
func (t *Tracker) Reachable() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	mono, n := t.now(), 0
	for _, p := range t.peers {
		if mono.Sub(p.lastHeard) <= t.timeoutFor(p) {
			n++
		}
	}
	return n
}

// timeoutFor is how long p may stay silent and still be reachable.
func (t *Tracker) timeoutFor(p *peerView) time.Duration {
	return max(t.peerTimeout, peerTimeoutBeats*p.every)
}

// maxHeartbeatHeads bounds how many heads one heartbeat carries; a peer
// with more heads than this is mid-merge and announces a sample (the rest
// will show up in later heartbeats or broadcasts).
const maxHeartbeatHeads = 64

// maxHeartbeatLoaded bounds the loaded refs one heartbeat carries.
const maxHeartbeatLoaded = 64

// maxHeartbeatAddrs bounds the addresses one heartbeat carries.
const maxHeartbeatAddrs = 16

// maxPending bounds the announcements kept per peer while this peer
// catches up; when it overflows the oldest are dropped, which can only make
// the reported staleness larger (more honest), never smaller.
const maxPending = 256

type announcement struct {
	at    HLC
	heads []cid.Cid
}

type peerView struct {
	id        string
	lastHeard time.Time     // local monotonic reading
	every     time.Duration // the peer's announced heartbeat interval (0: default)
	lastHLC   HLC
	height    uint64
	heads     int
	addrs     []string
	loaded    []string
	fresh     HLC // newest announcement whose heads are all processed here
	pending   []announcement
	// remembered: known from before a restart and not heard since; it
	// counts for rememberFor after the start even if silent.
	remembered bool

	// Anti-entropy: the peer's last announced heads (sorted, joined; ""
	// when the list was truncated) and state digest, compared with this
	// peer's own snapshot (Tracker.SetLocal).
	headsKey string
	headList []string
	state    string
	// agreed is the peer's HLC when the two states were last seen equal
	// at equal heads; disagreeSince is when they were first seen unequal
	// at equal heads (zero while they agree or cannot be compared).
	agreed        HLC
	disagreeSince time.Time
	disagreeHBs   int
}

// Agreement values of PeerStatus.Agreement.
const (
	// AgreementSame: same heads and same state digest.
	AgreementSame = "agree"
	// AgreementDiverged: same heads, different state, for longer than
	// DivergedAfter — one of the two peers holds a wrong state.
	AgreementDiverged = "diverged"
	// AgreementPending: the heads differ (one peer is catching up) or a
	// digest is missing, so the states cannot be compared yet.
	AgreementPending = "pending"
)

// PeerStatus is one remote peer as this peer's staleness tracker sees it.
type PeerStatus struct {
	ID        string    `json:"id"`
	LastHeard time.Time `json:"last_heard"`
	Reachable bool      `json:"reachable"`
	// FreshUpTo is the sender's HLC of the newest heartbeat whose heads this
	// peer has processed: everything that peer held then, this peer holds.
	FreshUpTo time.Time `json:"fresh_up_to"`
	// LagSeconds is this peer's staleness with respect to that peer alone.
	LagSeconds float64 `json:"lag_seconds"`
	Height     uint64  `json:"height"`
	Heads      int     `json:"heads"`
	// Addrs are the multiaddrs the peer announced.
	Addrs []string `json:"addrs,omitempty"`
	// Loaded are the model@version refs the peer announced as loaded and
	// open to forwarded requests.
	Loaded []string `json:"loaded,omitempty"`
	// StateDigest is the peer's announced state digest; Agreement compares
	// it with this peer's (agree, diverged or pending).
	StateDigest string `json:"state_digest,omitempty"`
	Agreement   string `json:"agreement"`
	// HeadCIDs are the heads the peer last announced.
	HeadCIDs []string `json:"head_cids,omitempty"`
	// Missing: the peer announced heads this peer has not merged (or
	// merged only over a hole: a block below them could not be fetched),
	// so it counts in the staleness even while unreachable.
	Missing bool `json:"missing_heads,omitempty"`
}

// Staleness is the freshness of this peer's replicated view.
type Staleness struct {
	// Seconds is how far behind the freshest state this peer can prove it
	// has seen: now − min over reachable peers of FreshUpTo (see Tracker).
	Seconds float64      `json:"staleness_seconds"`
	Peers   []PeerStatus `json:"peers"`
	// StateDigest is this peer's own digest as last announced.
	StateDigest string `json:"state_digest,omitempty"`
	// Diverged lists the reachable peers whose heads equal this peer's
	// while their states differ. A diverged peer is not fresh: its
	// staleness counts from the last moment the states agreed.
	Diverged []string `json:"diverged,omitempty"`
}

// Duration returns Seconds as a time.Duration.
func (s Staleness) Duration() time.Duration { return time.Duration(s.Seconds * float64(time.Second)) }

// Tracker turns heartbeats into a staleness figure.
//
// Peer A's view is fresh up to T with respect to B when A has processed every
// head B announced at time T (B's HLC). A's staleness is now − min over
// counted peers B of that T. Peers not heard from for PeerTimeout are
// unreachable: they stay listed, and stop counting in the minimum once some
// other peer is heard after they timed out (the mesh goes on without them).
// Until then they count, so an isolated peer — whose peers all fall silent —
// grows stale from the oldest view they gave and never reports itself
// fresher than a moment before. Peers silent for ForgetAfter are forgotten. A peer
// that has heard of no other peer is fresh once StartupGrace has passed
// (it is alone), and reports its uptime as staleness before that.
type Tracker struct {
	self         string
	clock        *Clock
	processed    func(context.Context, cid.Cid) (bool, error)
	peerTimeout  time.Duration
	forgetAfter  time.Duration
	startupGrace time.Duration
	started      time.Time
	startHLC     HLC
	now          func() time.Time
	divergeAfter time.Duration

	mu    sync.Mutex
	peers map[string]*peerView
	// rebuilding: the state is being rebuilt from the DAG and holds
	// nothing for certain; the staleness counts from the epoch.
	rebuilding bool
	// local is this peer's own (heads, digest) snapshot.
	localHeads, localState string
}

// TrackerConfig configures a Tracker.
type TrackerConfig struct {
	Self         string
	Clock        *Clock
	Processed    func(context.Context, cid.Cid) (bool, error)
	PeerTimeout  time.Duration
	ForgetAfter  time.Duration
	StartupGrace time.Duration
	// DivergedAfter is how long two states must differ at equal heads
	// (and over at least two of the peer's heartbeats) before the peers
	// count as diverged: snapshots a heartbeat apart can straddle a
	// merge. Default 3s.
	DivergedAfter time.Duration
	// Since is the instant up to which this peer's state was known to be
	// complete when it started: the horizon it last recorded before it
	// stopped (Replica keeps it on disk), or the Unix epoch for a data
	// directory that never had one. Until it catches up with a peer it is
	// no fresher than that — a peer that was down for an hour is an hour
	// stale, not as fresh as its start. Zero: the tracker's creation
	// (for callers without history, such as tests).
	Since HLC
	// Known are peers this peer knew before it restarted: each is listed
	// from the start as heard then and never caught up with, so for a
	// PeerTimeout it counts (with the staleness Since gives) unless it
	// speaks first.
	Known []string
	Now   func() time.Time // defaults to time.Now
}

// NewTracker returns a tracker.
func NewTracker(cfg TrackerConfig) *Tracker {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.DivergedAfter <= 0 {
		cfg.DivergedAfter = 3 * time.Second
	}
	if cfg.Since.IsZero() {
		cfg.Since = cfg.Clock.Peek()
	}
	t := &Tracker{
		self: cfg.Self, clock: cfg.Clock, processed: cfg.Processed, divergeAfter: cfg.DivergedAfter,
		peerTimeout: cfg.PeerTimeout, forgetAfter: cfg.ForgetAfter, startupGrace: cfg.StartupGrace,
		started: now(), startHLC: cfg.Since, now: now,
		peers: make(map[string]*peerView),
	}
	for _, id := range cfg.Known {
		if id != cfg.Self {
			t.peers[id] = &peerView{id: id, lastHeard: t.started, remembered: true}
		}
	}
	return t
}

// Observe records a heartbeat. It returns the announced heads, parsed.
func (t *Tracker) Observe(hb Heartbeat) []cid.Cid {
	heads := make([]cid.Cid, 0, len(hb.Heads))
	for _, s := range hb.Heads {
		if c, err := cid.Decode(s); err == nil {
			heads = append(heads, c)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[hb.Peer]
	if p == nil {
		p = &peerView{id: hb.Peer}
		t.peers[hb.Peer] = p
	}
	if hb.HLC.Compare(p.lastHLC) <= 0 {
		return heads // replayed or reordered heartbeat
	}
	p.lastHeard = t.now()
	p.every = min(time.Duration(max(hb.Every, 0))*time.Millisecond, maxAnnouncedEvery)
	p.lastHLC = hb.HLC
	p.remembered = false
	p.height = hb.Height
	p.heads = len(hb.Heads)
	if len(hb.Loaded) <= maxHeartbeatLoaded {
		p.loaded = hb.Loaded
	}
	if len(hb.Addrs) <= maxHeartbeatAddrs {
		p.addrs = hb.Addrs
	}
	p.headsKey, p.headList, p.state = "", hb.Heads, hb.State
	if len(hb.Heads) < maxHeartbeatHeads {
		p.headsKey = headsKey(hb.Heads)
	}
	t.compare(p)
	p.pending = append(p.pending, announcement{at: hb.HLC, heads: heads})
	if len(p.pending) > maxPending {
		p.pending = append(p.pending[:0:0], p.pending[len(p.pending)-maxPending:]...)
	}
	return heads
}

// Evaluate advances each peer's FreshUpTo over the announcements whose heads
// have all been processed locally. It does datastore reads, outside the lock.
func (t *Tracker) Evaluate(ctx context.Context) {
	t.mu.Lock()
	work := make(map[string][]announcement, len(t.peers))
	for id, p := range t.peers {
		if len(p.pending) > 0 {
			work[id] = append([]announcement(nil), p.pending...)
		}
	}
	t.mu.Unlock()

	// One answer per head per round: while catching up, many pending
	// announcements share heads, and each check may walk a long branch.
	seen := map[cid.Cid]bool{}
	for id, anns := range work {
		// Newest first: the first fully processed announcement settles it.
		best := -1
		for i := len(anns) - 1; i >= 0; i-- {
			if t.allProcessed(ctx, anns[i].heads, seen) {
				best = i
				break
			}
		}
		if best < 0 {
			continue
		}
		t.mu.Lock()
		if p := t.peers[id]; p != nil {
			if anns[best].at.Compare(p.fresh) > 0 {
				p.fresh = anns[best].at
			}
			// Drop what is settled; keep what arrived meanwhile.
			keep := p.pending[:0]
			for _, a := range p.pending {
				if a.at.Compare(p.fresh) > 0 {
					keep = append(keep, a)
				}
			}
			p.pending = keep
		}
		t.mu.Unlock()
	}
}

func (t *Tracker) allProcessed(ctx context.Context, heads []cid.Cid, seen map[cid.Cid]bool) bool {
	for _, c := range heads {
		ok, known := seen[c]
		if !known {
			var err error
			ok, err = t.processed(ctx, c)
			ok = ok && err == nil
			seen[c] = ok
		}
		if !ok {
			return false
		}
	}
	return true
}

// Unprocessed returns the heads of the newest announcement of every
// reachable peer that this peer has not processed yet.
func (t *Tracker) Unprocessed(ctx context.Context) []cid.Cid {
	t.mu.Lock()
	var cand []cid.Cid
	for _, p := range t.peers {
		if len(p.pending) > 0 {
			cand = append(cand, p.pending[len(p.pending)-1].heads...)
		}
	}
	t.mu.Unlock()
	var out []cid.Cid
	seen := make(map[cid.Cid]bool)
	for _, c := range cand {
		if seen[c] {
			continue
		}
		seen[c] = true
		if ok, err := t.processed(ctx, c); err == nil && !ok {
			out = append(out, c)
		}
	}
	return out
}

// Staleness computes the current staleness report.
func (t *Tracker) Staleness() Staleness {
	now := t.clock.Peek()
	mono := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()

	lag := func(fresh HLC) float64 {
		if fresh.IsZero() || fresh.Wall < t.startHLC.Wall {
			// Never caught up with this peer since start: no fresher
			// than the moment this process started.
			fresh = t.startHLC
		}
		d := time.Duration(now.Wall - fresh.Wall).Seconds()
		if d < 0 {
			return 0
		}
		return d
	}

	var out Staleness
	worstReachable := -1.0
	reachable := 0
	for id, p := range t.peers {
		if t.forgetAfter > 0 && mono.Sub(p.lastHeard) > t.forgetAfter {
			delete(t.peers, id)
		}
	}
	// lastAny is when any peer was last heard. A silent peer keeps
	// counting until some other peer is heard after it timed out: when
	// this peer is cut off its peers fall silent a heartbeat apart, and
	// dropping each as it timed out would lower the staleness with no new
	// evidence — back under a bound it had just reported broken.
	var lastAny time.Time
	for _, p := range t.peers {
		if p.lastHeard.After(lastAny) {
			lastAny = p.lastHeard
		}
	}
	for id, p := range t.peers {
		silent := mono.Sub(p.lastHeard)
		ps := PeerStatus{
			ID: id, LastHeard: p.lastHeard, Reachable: silent <= t.timeoutFor(p),
			LagSeconds: lag(p.fresh), Height: p.height, Heads: p.heads, Addrs: p.addrs, Loaded: p.loaded,
			StateDigest: p.state, Agreement: t.agreement(p, mono), HeadCIDs: p.headList,
		}
		if !p.fresh.IsZero() {
			ps.FreshUpTo = p.fresh.Time()
		}
		if ps.Agreement == AgreementDiverged {
			// Everything this peer held since the states last agreed
			// is in doubt: it is no fresher than that.
			ps.LagSeconds = max(ps.LagSeconds, lag(p.agreed))
			if ps.Reachable {
				out.Diverged = append(out.Diverged, id)
			}
		}
		ps.Missing = len(p.pending) > 0
		out.Peers = append(out.Peers, ps)
		if ps.Reachable {
			reachable++
		}
		// A peer that announced heads this peer has not merged (or has
		// merged only over a hole) counts even once it is silent: its
		// writes are known to be missing here, so this peer is not
		// fresh until they arrive, whether their writer can be heard
		// or not (a writer that went offline right after writing).
		recalled := p.remembered && mono.Sub(t.started) < rememberFor
		lastWord := !lastAny.After(p.lastHeard.Add(t.timeoutFor(p)))
		if (ps.Reachable || ps.Missing || recalled || lastWord) && ps.LagSeconds > worstReachable {
			worstReachable = ps.LagSeconds
		}
	}
	sort.Slice(out.Peers, func(i, j int) bool { return out.Peers[i].ID < out.Peers[j].ID })
	sort.Strings(out.Diverged)
	out.StateDigest = t.localState
	if t.rebuilding {
		out.Seconds = float64(now.Wall) / 1e9 // since the epoch: nothing is certain
		return out
	}
	switch {
	case worstReachable >= 0:
		// The largest lag = the oldest FreshUpTo. With any peer listed
		// some peer counts: the one heard last is always the last word.
		out.Seconds = worstReachable
	default:
		if up := mono.Sub(t.started); up < t.startupGrace {
			out.Seconds = up.Seconds()
		}
	}
	return out
}

// headsKey renders a head list order-independently, for comparison.
func headsKey(heads []string) string {
	s := append([]string(nil), heads...)
	sort.Strings(s)
	return strings.Join(s, ",")
}

// SetLocal records this peer's own heads and state digest as of its last
// consistent snapshot (state "" when none could be taken) and compares it
// with every peer's latest announcement.
func (t *Tracker) SetLocal(heads []string, state string) {
	key := ""
	if len(heads) < maxHeartbeatHeads {
		key = headsKey(heads)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.localHeads, t.localState = key, state
	for _, p := range t.peers {
		t.compare(p)
	}
}

// compare updates p's agreement with the local snapshot. Called with t.mu
// held, on every heartbeat of p and every local snapshot.
func (t *Tracker) compare(p *peerView) {
	if p.state == "" || t.localState == "" || p.headsKey == "" || p.headsKey != t.localHeads {
		return // nothing to compare: keep the last verdict until there is
	}
	if p.state == t.localState {
		p.agreed, p.disagreeSince, p.disagreeHBs = p.lastHLC, time.Time{}, 0
		return
	}
	if p.disagreeSince.IsZero() {
		p.disagreeSince = t.now()
	}
	p.disagreeHBs++
}

// agreement says how p's state compares with this peer's.
func (t *Tracker) agreement(p *peerView, now time.Time) string {
	switch {
	case !p.disagreeSince.IsZero() && p.disagreeHBs >= 2 && now.Sub(p.disagreeSince) >= t.divergeAfter:
		return AgreementDiverged
	case p.disagreeSince.IsZero() && p.state != "" && p.state == t.localState && p.headsKey == t.localHeads:
		return AgreementSame
	}
	return AgreementPending
}

// localKey returns this peer's heads as last recorded by SetLocal.
func (t *Tracker) localKey() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.localHeads
}

// rememberFor is how long after a restart the peers known before it count
// while silent: long enough for a peer that is up to reconnect and be
// heard (dialling, joining the gossip mesh), so that the first sibling
// heard cannot vouch for a writer not heard yet.
const rememberFor = 30 * time.Second

func (t *Tracker) setRebuilding(b bool) {
	t.mu.Lock()
	t.rebuilding = b
	t.mu.Unlock()
}

func (t *Tracker) isRebuilding() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rebuilding
}
