// Package artifacts stores model artifacts as UnixFS DAGs in the peer's
// blockstore, fetches them from every peer that has them (bitswap), and
// verifies them before anyone may use them. It knows artifacts only by
// reference (model@version), CID, sha256 and size: what a version *is* is
// the registry's business.
//
// The verification state of each artifact is local (not replicated): a
// peer records "verified" or "bad" with the reason under /local/artifacts,
// so a restart does not fetch or hash verified versions again.
package artifacts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/blockservice"
	chunker "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs/importer/balanced"
	h "github.com/ipfs/boxo/ipld/unixfs/importer/helpers"
	uio "github.com/ipfs/boxo/ipld/unixfs/io"
	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/host"
	mh "github.com/multiformats/go-multihash"

	"github.com/shoal-mesh/shoal/store"
)

// ChunkSize is the UnixFS leaf size: well under bitswap's 2 MiB block
// limit, large enough to keep the DAG shallow.
const ChunkSize = 256 << 10

// States of an artifact on this peer.
const (
	StateFetching = "fetching"
	StateVerified = "verified"
	StateBad      = "bad"
	StateFailed   = "failed" // fetch did not complete; retried on the next demand
)

// Sentinel errors.
var (
	ErrBad        = errors.New("artifact failed verification")
	ErrNotLocal   = errors.New("artifact not verified on this peer")
	ErrIncomplete = errors.New("artifact fetch incomplete")
)

// Spec names exact artifact bytes.
type Spec struct {
	Ref    string // model@version, for humans and the state key
	CID    cid.Cid
	SHA256 string
	Size   int64
}

// Status is the local state of one artifact.
type Status struct {
	Ref        string    `json:"ref"`
	CID        string    `json:"cid"`
	State      string    `json:"state"`
	Reason     string    `json:"reason,omitempty"`
	Size       int64     `json:"size"`
	Fetched    int64     `json:"fetched_bytes"`
	UpdatedAt  time.Time `json:"updated_at"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
}

// Config configures a Manager.
type Config struct {
	Datastore ds.Datastore
	Blocks    *store.Blocks
	// Space, when set, is asked before a fetch whether the artifact fits
	// on disk (store.Store.CheckSpace); a fetch it refuses fails with its
	// error and is retried later like any failed fetch.
	Space  func(need int64) error
	Logger *slog.Logger
	// Host and Mesh, when both set, let fetches use the mesh's artifact
	// swarm (swarm.go) before bitswap, and let this peer serve it. Without
	// them every fetch is a bitswap fetch.
	Host host.Host
	Mesh string
}

// Manager imports, fetches, verifies and garbage-collects artifacts.
type Manager struct {
	ds      ds.Datastore
	blocks  *store.Blocks
	space   func(need int64) error
	offline ipld.DAGService
	network ipld.NodeGetter // bitswap-backed; fetches go through sessions of it
	sw      *swarm          // nil without a host
	log     *slog.Logger
	ctx     context.Context // ends at Close
	cancel  context.CancelFunc

	mu       sync.Mutex
	inflight map[string]*flight
	live     map[string]*Status // statuses of fetches in progress

	bytesIn      atomic.Uint64
	fetches      atomic.Uint64
	stalls       atomic.Uint64
	fetchSeconds func(float64)
}

type flight struct {
	done chan struct{}
	st   Status
	err  error
}

var statePrefix = ds.NewKey("/local/artifacts")

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Manager{
		ds: cfg.Datastore, blocks: cfg.Blocks, space: cfg.Space, log: cfg.Logger.With("component", "artifacts"),
		offline:  merkledag.NewDAGService(blockservice.New(cfg.Blocks.Local(), nil)),
		network:  cfg.Blocks.DAG(),
		inflight: map[string]*flight{}, live: map[string]*Status{},
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if cfg.Host != nil && cfg.Mesh != "" {
		m.sw = &swarm{host: cfg.Host, proto: SwarmProtocol(cfg.Mesh), fetching: map[cid.Cid]*swarmFetch{}, seeded: map[cid.Cid]bool{}}
		cfg.Host.SetStreamHandler(m.sw.proto, m.serve)
	}
	return m
}

// OnFetch registers a callback receiving each completed fetch's duration.
func (m *Manager) OnFetch(f func(seconds float64)) { m.fetchSeconds = f }

// BytesFetched returns artifact bytes received from other peers.
func (m *Manager) BytesFetched() uint64 { return m.bytesIn.Load() }

// Import chunks r into a UnixFS DAG in the blockstore and returns its CID,
// sha256 and size. The blocks are announced to bitswap as they are added.
func (m *Manager) Import(ctx context.Context, r io.Reader) (cid.Cid, string, int64, error) {
	hash := sha256.New()
	cr := &countReader{r: io.TeeReader(r, hash)}
	params := h.DagBuilderParams{
		Dagserv:    m.blocks.DAG(),
		Maxlinks:   h.DefaultLinksPerBlock,
		RawLeaves:  true,
		CidBuilder: cid.V1Builder{Codec: cid.DagProtobuf, MhType: mh.SHA2_256},
	}
	db, err := params.New(chunker.NewSizeSplitter(cr, ChunkSize))
	if err != nil {
		return cid.Undef, "", 0, err
	}
	nd, err := balanced.Layout(db)
	if err != nil {
		return cid.Undef, "", 0, fmt.Errorf("import artifact: %w", err)
	}
	return nd.Cid(), hex.EncodeToString(hash.Sum(nil)), cr.n, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// MarkVerified records an artifact this peer imported itself.
func (m *Manager) MarkVerified(ctx context.Context, s Spec) error {
	now := time.Now().UTC()
	return m.put(ctx, Status{Ref: s.Ref, CID: s.CID.String(), State: StateVerified, Size: s.Size, Fetched: s.Size, UpdatedAt: now, VerifiedAt: now})
}

// Status returns the local state of ref.
func (m *Manager) Status(ctx context.Context, ref string) (Status, bool) {
	m.mu.Lock()
	if st, ok := m.live[ref]; ok {
		s := *st
		m.mu.Unlock()
		return s, true
	}
	m.mu.Unlock()
	b, err := m.ds.Get(ctx, statePrefix.ChildString(ref))
	if err != nil {
		return Status{}, false
	}
	var st Status
	if json.Unmarshal(b, &st) != nil {
		return Status{}, false
	}
	return st, true
}

// All returns the local state of every artifact, by ref.
func (m *Manager) All(ctx context.Context) ([]Status, error) {
	res, err := m.ds.Query(ctx, query.Query{Prefix: statePrefix.String()})
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out []Status
	for e := range res.Next() {
		if e.Error != nil {
			return nil, e.Error
		}
		var st Status
		if json.Unmarshal(e.Value, &st) == nil {
			out = append(out, st)
		}
	}
	m.mu.Lock()
	for _, st := range m.live {
		out = append(out, *st)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out, nil
}

func (m *Manager) put(ctx context.Context, st Status) error {
	b, _ := json.Marshal(st)
	if err := m.ds.Put(ctx, statePrefix.ChildString(st.Ref), b); err != nil {
		return err
	}
	if c, err := cid.Decode(st.CID); err == nil && m.sw != nil {
		m.sw.seedChanged(c, st.State == StateVerified)
	}
	return nil
}

// Ensure makes s verified on this peer: fetched from whichever peers have
// its blocks, then checked (CID by construction, size, sha256). Concurrent
// calls for one ref share one fetch. A verified artifact returns at once;
// a bad one returns ErrBad with the reason, without fetching again.
func (m *Manager) Ensure(ctx context.Context, s Spec) (Status, error) {
	if st, ok := m.Status(ctx, s.Ref); ok && st.CID == s.CID.String() {
		switch st.State {
		case StateVerified:
			return st, nil
		case StateBad:
			return st, fmt.Errorf("%w: %s: %s", ErrBad, s.Ref, st.Reason)
		}
	}
	m.mu.Lock()
	f, ok := m.inflight[s.Ref]
	if !ok {
		f = &flight{done: make(chan struct{})}
		m.inflight[s.Ref] = f
		m.live[s.Ref] = &Status{Ref: s.Ref, CID: s.CID.String(), State: StateFetching, Size: s.Size, UpdatedAt: time.Now().UTC()}
		go m.fetch(s, f)
	}
	m.mu.Unlock()
	select {
	case <-f.done:
		return f.st, f.err
	case <-ctx.Done():
		st, _ := m.Status(context.Background(), s.Ref)
		return st, fmt.Errorf("%w: %s: %v", ErrIncomplete, s.Ref, ctx.Err())
	}
}

// fetchBatch is how many blocks one bitswap session asks for.
const fetchBatch = 8

// fetchTimeout bounds one artifact fetch that nobody waits for any more.
const fetchTimeout = 30 * time.Minute

// fetchStall is how long a batch may go without a block arriving before
// its bitswap session is dropped and the blocks still missing are asked
// for again through a fresh one. A session can stall on a want that was
// lost (a peer that reconnected, a message dropped under load) and only
// rebroadcasts after backing off; a fresh session asks every connected
// peer at once.
var fetchStall = 15 * time.Second

// getBatch fetches the blocks of batch through bitswap, calling each for
// every node as it arrives, and retries the ones still missing through a
// fresh session whenever fetchStall passes without progress, until ctx
// ends.
func (m *Manager) getBatch(ctx context.Context, ref string, batch []cid.Cid, each func(ipld.Node)) error {
	pending := batch
	for stalls := 1; ; stalls++ {
		sctx, cancel := context.WithCancel(ctx)
		var stalled atomic.Bool
		watchdog := time.AfterFunc(fetchStall, func() { stalled.Store(true); cancel() })
		arrived := make(map[cid.Cid]bool, len(pending))
		var err error
		for opt := range merkledag.NewSession(sctx, m.network).GetMany(sctx, pending) {
			if opt.Err != nil {
				err = opt.Err
				continue // drain: GetMany closes its channel once sctx ends
			}
			watchdog.Reset(fetchStall)
			if !arrived[opt.Node.Cid()] {
				arrived[opt.Node.Cid()] = true
				each(opt.Node)
			}
		}
		watchdog.Stop()
		cancel()
		var rest []cid.Cid
		for _, c := range pending {
			if !arrived[c] {
				rest = append(rest, c)
			}
		}
		switch {
		case len(rest) == 0:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !stalled.Load():
			if err == nil {
				err = fmt.Errorf("%d of %d blocks arrived", len(pending)-len(rest), len(pending))
			}
			return err
		}
		m.stalls.Add(1)
		if stalls&(stalls-1) == 0 { // 1st, 2nd, 4th, 8th…: an absent origin is not a log flood
			m.log.Warn("artifact fetch stalled; asking again through a fresh session", "ref", ref, "missing_blocks", len(rest), "stalls", stalls, "after", fetchStall)
		}
		pending = rest
	}
}

// Stalls counts the fetch batches that stalled and were asked for again.
func (m *Manager) Stalls() uint64 { return m.stalls.Load() }

func (m *Manager) fetch(s Spec, f *flight) {
	ctx, cancel := context.WithTimeout(m.ctx, fetchTimeout) // Close ends it
	defer cancel()
	start := time.Now()
	st, err := m.fetchAndVerify(ctx, s)
	st.UpdatedAt = time.Now().UTC()
	if perr := m.put(context.Background(), st); perr != nil && err == nil {
		err = perr
	}
	if st.State == StateVerified && m.fetchSeconds != nil {
		m.fetchSeconds(time.Since(start).Seconds())
	}
	m.mu.Lock()
	delete(m.inflight, s.Ref)
	delete(m.live, s.Ref)
	m.mu.Unlock()
	f.st, f.err = st, err
	close(f.done)
}

// resetProgress starts ref's fetched count again (a bitswap fetch counts
// every block, also those the swarm brought).
func (m *Manager) resetProgress(ref string) {
	m.mu.Lock()
	if st, ok := m.live[ref]; ok {
		st.Fetched = 0
	}
	m.mu.Unlock()
}

func (m *Manager) progress(ref string, n int64) {
	m.mu.Lock()
	if st, ok := m.live[ref]; ok {
		st.Fetched += n
		st.UpdatedAt = time.Now().UTC()
	}
	m.mu.Unlock()
}

func (m *Manager) fetchAndVerify(ctx context.Context, s Spec) (Status, error) {
	st := Status{Ref: s.Ref, CID: s.CID.String(), Size: s.Size}
	if m.space != nil {
		if err := m.space(s.Size); err != nil {
			st.State, st.Reason = StateFailed, err.Error()
			m.log.Warn("artifact does not fit on disk", "ref", s.Ref, "err", err)
			return st, err
		}
	}
	m.log.Info("fetching artifact", "ref", s.Ref, "cid", s.CID.String(), "size", s.Size)
	// A one-block artifact has nothing to stripe: bitswap's broadcast want,
	// over streams already open, costs each peer less than the swarm's
	// round of HAVEs to every peer (at 25 processes, 21 against 9 ms of
	// CPU per activation of a 1 KiB version).
	if m.sw != nil && s.Size > ChunkSize {
		err := m.fetchFromPeers(ctx, s)
		if err == nil {
			return m.verify(ctx, s, st)
		}
		if !errors.Is(err, errNoHolders) {
			m.log.Warn("artifact swarm fetch incomplete; bitswap fetches the rest", "ref", s.Ref, "err", err)
		}
		m.resetProgress(s.Ref)
	}
	if err := m.fetchByBitswap(ctx, s); err != nil {
		st.State, st.Reason = StateFailed, err.Error()
		return st, fmt.Errorf("%w: %s: %v", ErrIncomplete, s.Ref, err)
	}
	return m.verify(ctx, s, st)
}

// fetchByBitswap fetches every block of s that is not local over bitswap.
func (m *Manager) fetchByBitswap(ctx context.Context, s Spec) error {
	// Fetch the DAG breadth-first in small batches, each through a fresh
	// bitswap session, in an order of this peer's own choosing. A new
	// session asks every connected peer who has its first blocks, so peers
	// fetching the same artifact at the same time, each having fetched
	// different blocks first, serve each other instead of all draining the
	// origin. Every block's hash is checked by the block service.
	local := m.blocks.Local()
	visited := cid.NewSet()
	visited.Add(s.CID)
	queue := []cid.Cid{s.CID}
	var lastLog time.Time
	for len(queue) > 0 {
		take := min(fetchBatch, len(queue))
		batch := queue[:take]
		queue = queue[take:]
		var fresh []cid.Cid
		for _, c := range batch {
			if had, _ := local.Has(ctx, c); !had {
				fresh = append(fresh, c)
			}
		}
		got := 0
		err := m.getBatch(ctx, s.Ref, batch, func(nd ipld.Node) {
			got++
			m.progress(s.Ref, int64(len(nd.RawData())))
			var links []cid.Cid
			for _, l := range nd.Links() {
				if visited.Visit(l.Cid) {
					links = append(links, l.Cid)
				}
			}
			rand.Shuffle(len(links), func(i, j int) { links[i], links[j] = links[j], links[i] })
			queue = append(queue, links...)
		})
		if err != nil {
			return err
		}
		if got != len(batch) {
			return fmt.Errorf("%d of %d blocks arrived", got, len(batch))
		}
		for _, c := range fresh {
			if blk, err := local.GetSize(ctx, c); err == nil {
				m.bytesIn.Add(uint64(blk))
			}
		}
		if time.Since(lastLog) > 2*time.Second {
			lastLog = time.Now()
			if cur, ok := m.Status(ctx, s.Ref); ok {
				m.log.Info("fetching artifact", "ref", s.Ref, "fetched", cur.Fetched, "size", s.Size)
			}
		}
	}
	return nil
}

// verify hashes the artifact, every block of which is local, as UnixFS
// reads it, and checks its size and sha256 against s.
func (m *Manager) verify(ctx context.Context, s Spec, st Status) (Status, error) {
	bad := func(format string, args ...any) (Status, error) {
		st.State, st.Reason = StateBad, fmt.Sprintf(format, args...)
		m.log.Error("artifact is bad", "ref", s.Ref, "cid", s.CID.String(), "reason", st.Reason)
		return st, fmt.Errorf("%w: %s: %s", ErrBad, s.Ref, st.Reason)
	}
	root, err := m.offline.Get(ctx, s.CID)
	if err != nil {
		return bad("root block unreadable: %v", err)
	}
	r, err := uio.NewDagReader(ctx, root, m.offline)
	if err != nil {
		return bad("not a UnixFS file: %v", err)
	}
	hash := sha256.New()
	n, err := io.Copy(hash, r)
	if err != nil {
		return bad("reading the DAG: %v", err)
	}
	if n != s.Size {
		return bad("size %d, manifest says %d", n, s.Size)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != s.SHA256 {
		return bad("sha256 %s, manifest says %s", got, s.SHA256)
	}
	now := time.Now().UTC()
	st.State, st.Fetched, st.VerifiedAt = StateVerified, s.Size, now
	m.fetches.Add(1)
	m.log.Info("artifact verified", "ref", s.Ref, "cid", s.CID.String(), "size", s.Size)
	return st, nil
}

// Open returns a reader of a verified artifact's bytes.
func (m *Manager) Open(ctx context.Context, s Spec) (uio.DagReader, error) {
	st, ok := m.Status(ctx, s.Ref)
	if !ok || st.State != StateVerified || st.CID != s.CID.String() {
		return nil, fmt.Errorf("%w: %s", ErrNotLocal, s.Ref)
	}
	root, err := m.offline.Get(ctx, s.CID)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotLocal, s.Ref, err)
	}
	return uio.NewDagReader(ctx, root, m.offline)
}

// Remove forgets the artifacts in drop and deletes their blocks, except
// blocks also reachable from the keep roots (artifacts share identical
// chunks) — CRDT blocks are never reachable from an artifact, so they are
// untouched.
func (m *Manager) Remove(ctx context.Context, drop []Spec, keep []cid.Cid) (int, error) {
	keepSet := cid.NewSet()
	for _, c := range keep {
		if err := m.walkLocal(ctx, c, keepSet.Visit); err != nil {
			return 0, fmt.Errorf("mark %s: %w", c, err)
		}
	}
	removed := 0
	for _, s := range drop {
		var victims []cid.Cid
		err := m.walkLocal(ctx, s.CID, func(c cid.Cid) bool {
			if keepSet.Has(c) {
				return false
			}
			victims = append(victims, c)
			return true
		})
		if err != nil {
			m.log.Warn("artifact DAG incomplete during GC", "ref", s.Ref, "err", err)
		}
		for _, c := range victims {
			if err := m.blocks.Local().DeleteBlock(ctx, c); err == nil {
				removed++
			}
		}
		if err := m.ds.Delete(ctx, statePrefix.ChildString(s.Ref)); err != nil {
			return removed, err
		}
		if m.sw != nil {
			m.sw.seedChanged(s.CID, false)
		}
		m.log.Info("artifact garbage-collected", "ref", s.Ref, "blocks", len(victims))
	}
	return removed, nil
}

func (m *Manager) walkLocal(ctx context.Context, root cid.Cid, visit func(cid.Cid) bool) error {
	return merkledag.Walk(ctx, merkledag.GetLinksWithDAG(m.offline), root, visit)
}
