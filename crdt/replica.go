// Package crdt is Shoal's replicated state: a typed record layer over a
// go-ds-crdt Merkle-CRDT datastore that gossips over go-libp2p-pubsub.
//
// go-ds-crdt resolves concurrent writes by DAG height, which is
// deterministic but not "latest", and its hooks fire under the merge lock
// before the batch is written. So this package keeps the CRDT at arm's
// length: every value is a versioned Record carrying a hybrid logical clock
// (HLC), its writer and the writer's signature, the hooks only enqueue,
// and subscribers receive typed Events from one dispatcher goroutine after
// the write has landed. Every read path admits a record only if it is
// signed by a trusted key for its key and mesh, not future-dated and not a
// replay (admit.go); deciding which admitted record is *effective*
// (largest HLC, first publication) is left to the packages that own each
// key space. Gossip is checked by topic validators before anything is
// relayed (validate.go).
//
// Besides the data topic, each replica announces a heartbeat {peer, HLC,
// heads, height, state digest} on a side topic every second; the Tracker
// turns those into the staleness bound that the rest of Shoal promises
// callers, counting a head only once its whole branch is merged
// (complete.go) and a peer whose state differs at equal heads as diverged
// (antientropy.go).
package crdt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dscrdt "github.com/ipfs/go-ds-crdt"
	ipld "github.com/ipfs/go-ipld-format"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/crdt/sign"
)

// Namespace is where the CRDT keeps its own bookkeeping inside the peer's
// datastore (heads, set, processed blocks, dirty bit).
var Namespace = ds.NewKey("/crdt")

// Config configures a Replica. Zero values take the documented defaults.
type Config struct {
	// Mesh names the replication group; peers of different meshes never
	// exchange records. Topics are derived from it. Required.
	Mesh string
	// Self is this peer's libp2p id. Required.
	Self peer.ID
	// PubSub is the gossipsub router of the peer's host. Required.
	PubSub *pubsub.PubSub
	// Datastore is the peer's persistent datastore (Badger). Required.
	Datastore ds.Batching
	// DAG fetches and stores delta blocks (bitswap-backed). Required; it
	// should apply per-call timeouts of its own (see store.Blocks).
	DAG ipld.DAGService
	// Local reads blocks from the local blockstore only; Adder stores and
	// announces blocks. Both required (store.Blocks provides them).
	Local LocalBlocks
	Adder BlockAdder
	// Logger; defaults to slog.Default().
	Logger *slog.Logger

	// RebroadcastInterval is how often unchanged heads are announced again.
	// Default 10s (go-ds-crdt: 1 min, too slow for an edge mesh; heartbeats
	// also carry heads, so this is a second line of defence).
	RebroadcastInterval time.Duration
	// RepairInterval is how often a dirty DAG is walked again. Default 10m.
	RepairInterval time.Duration
	// Workers walking DAG branches. Default 16.
	Workers int
	// DAGTimeout bounds one branch walk step waiting for a block (go-ds-crdt's
	// DAGSyncerTimeout; 0 there fails every fetch). Default 2m, as
	// ipfs-cluster uses.
	DAGTimeout time.Duration
	// MaxInlineBlock is the largest head block attached to a broadcast.
	// Default 512 KiB.
	MaxInlineBlock int
	// Unclean says the previous run did not shut down cleanly. The state
	// is then rebuilt from the DAG: a kill between go-ds-crdt merging a
	// local write into the state and recording the new head leaves the
	// write in this peer's state but in no DAG any other peer can reach
	// (found by the kill -9 fault test: one peer's state hash differed
	// forever while every peer had the same head). Rebuilding drops such a
	// write — it was never acknowledged — and repairs half-processed
	// branches (go-ds-crdt #279) on the way.
	Unclean bool

	// HeartbeatInterval between heartbeats. Default 1s.
	HeartbeatInterval time.Duration
	// PeerTimeout after which a silent peer is unreachable. Default 5s.
	PeerTimeout time.Duration
	// ForgetAfter after which a silent peer is no longer listed. Default 1h.
	ForgetAfter time.Duration
	// StartupGrace during which a peer that has heard of no other peer
	// reports its uptime as staleness. Default 10s.
	StartupGrace time.Duration
	// Addrs, when set, returns the multiaddrs this peer announces in its
	// heartbeats, so mesh peers can dial each other directly.
	Addrs func() []string
	// Loaded, when set, returns the model@version refs this peer announces
	// in its heartbeats as loaded and open to forwarded inference.
	Loaded func() []string
	// Signer signs every record this replica writes: the peer's publisher
	// key. Default: a key made up for this run, which no other peer trusts.
	Signer Signer
	// Trust says whose signed records this replica admits besides its own
	// Signer's; anyone else's are invisible (admit.go). Default: no one's.
	Trust Trust
	// MaxClockSkew bounds how far ahead of the local clock a remote HLC may
	// be and still advance the local clock. Default 1m.
	MaxClockSkew time.Duration
	// Sync makes the datastore's writes so far durable. The replica calls
	// it after each of its own writes, before acknowledging the write
	// (groupSync), so the datastore itself need not sync every write:
	// peer passes the store's Sync and runs Badger without SyncWrites. A
	// power cut then loses no acknowledged write, only merges of other
	// peers' writes, which are fetched again. nil: writes are as durable
	// as the datastore makes them.
	Sync func(context.Context) error
	// DivergedAfter is how long this peer's state may differ from a
	// peer's with equal heads before both count as diverged (not fresh,
	// shoal_state_diverged) and the state is rebuilt. Default 3s: three
	// heartbeats, so one snapshot taken across a merge is not enough.
	DivergedAfter time.Duration
	// FoldAfter is how many records that replaced or deleted a value
	// must have been merged here since the newest fold — and at least as
	// many as the keys this peer holds — before this peer folds: writes
	// the live state again as fold records and prunes the history below
	// (fold.go; first values of new keys do not count, see maybeFold).
	// Default 10,000: history stays within about FoldAfter records or the
	// live state, whichever is more, besides the live records, and a fold
	// never rewrites more than was superseded since the last. Lower
	// bounds disk and rebuild time tighter for a small live state; higher
	// folds less often. Negative: this peer never folds (it still prunes under
	// the folds of peers it trusts).
	FoldAfter int
	// FoldJitter spreads the peers' folds: each waits a random part of it
	// once a fold is due, and a fold seen meanwhile resets the wait.
	// Default 10s.
	FoldJitter time.Duration
	// FoldPruneDelay is how long the history under a fold stays after
	// the fold is written or seen, so that peers still walking it (they
	// were behind) can finish; one that needs it later takes the fold's
	// state instead, after its fetch of the pruned block times out.
	// Default 1m.
	FoldPruneDelay time.Duration
	// Pruned, when set, is told about how many bytes each prune deleted,
	// so the datastore can give the space back (peer passes
	// store.Store.Reclaim: Badger frees deleted keys only at compaction).
	Pruned func(bytes int64)
}

func (c *Config) setDefaults() error {
	switch {
	case c.Mesh == "":
		return errors.New("crdt: Config.Mesh is required")
	case c.Self == "":
		return errors.New("crdt: Config.Self is required")
	case c.PubSub == nil || c.Datastore == nil || c.DAG == nil || c.Local == nil || c.Adder == nil:
		return errors.New("crdt: Config.PubSub, Datastore, DAG, Local and Adder are required")
	}
	c.defaultSigning()
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RebroadcastInterval, 10*time.Second)
	def(&c.RepairInterval, 10*time.Minute)
	def(&c.DAGTimeout, 2*time.Minute)
	def(&c.HeartbeatInterval, time.Second)
	def(&c.PeerTimeout, 5*time.Second)
	def(&c.ForgetAfter, time.Hour)
	def(&c.StartupGrace, 10*time.Second)
	def(&c.MaxClockSkew, time.Minute)
	def(&c.FoldJitter, 10*time.Second)
	def(&c.FoldPruneDelay, time.Minute)
	if c.FoldAfter == 0 {
		c.FoldAfter = 10000
	}
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.MaxInlineBlock <= 0 {
		c.MaxInlineBlock = 512 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// DataTopic and HeartbeatTopic name the gossipsub topics of a mesh.
func DataTopic(mesh string) string      { return "/shoal/" + mesh + "/crdt/v1" }
func HeartbeatTopic(mesh string) string { return "/shoal/" + mesh + "/heartbeat/v1" }

// EventType says what happened to a key.
type EventType int

const (
	// EventPut: the key has a new effective value (local or remote write).
	EventPut EventType = iota + 1
	// EventDelete: the key has no value any more.
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is a change to the replicated state, delivered after it landed.
type Event struct {
	Type   EventType
	Key    string
	Record Record // zero for EventDelete
	// Value is the record's bytes as stored (nil for EventDelete), for a
	// subscriber that hashes what it has applied. It may share memory
	// with a cached block (deltacache.go) and other events: read it,
	// never change it.
	Value []byte
	// Seq numbers the replica's state changes in the order they were
	// applied (see EventSeq, Dispatched).
	Seq uint64
}

// Write describes an acknowledged local write: the HLC it was stamped with,
// its writer and the heads of this replica right after it. It is the
// material of a read-your-writes token.
type Write struct {
	HLC   HLC
	Peer  string
	Heads []cid.Cid
}

// Entry is one key and its current record.
type Entry struct {
	Key    string
	Record Record
}

// Stats are the CRDT's internal figures.
type Stats struct {
	Heads      []cid.Cid
	Height     uint64
	QueuedJobs int
}

// Counters are monotonically increasing event counts, for metrics.
type Counters struct {
	// BadRecords could not be decoded; OversizeRecords exceeded
	// MaxRecordSize. Neither reaches the state's readers.
	BadRecords, OversizeRecords                                                             uint64
	Rejected                                                                                Rejections
	Puts, Deletes, HeartbeatsIn, HeartbeatsOut, InjectedHeads, InlineBlocks, InlineRejected uint64
	// HealedBranches counts branches walked again because they had been
	// merged over a hole; StateRebuilds counts rebuilds of a diverged
	// state from the DAG.
	HealedBranches, StateRebuilds uint64
	// RejectedMessages counts pubsub messages the topic validators
	// refused, by "topic/reason" (see the Msg* reasons).
	RejectedMessages map[string]uint64
	// SlowSubscribers counts subscriptions ended because they fell
	// behind (ErrSlowSubscriber).
	SlowSubscribers uint64
	// Folds counts the folds this peer wrote, FoldsPruned the folds
	// (its own or others') whose covered history it pruned, and
	// PrunedBlocks the delta blocks pruned (fold.go).
	Folds, FoldsPruned, PrunedBlocks uint64
}

// Replica is one peer's copy of the mesh's replicated state.
type Replica struct {
	cfg     Config
	log     *slog.Logger
	ds      *dscrdt.Datastore
	bc      *broadcaster
	clock   *Clock
	tracker *Tracker
	hbTopic *pubsub.Topic
	hbSub   *pubsub.Subscription
	dataTop *pubsub.Topic

	writeMu sync.Mutex // one writer: go-ds-crdt batches share one delta
	// durability syncs local writes before they are acknowledged, outside
	// writeMu.
	durability groupSync

	subMu sync.Mutex
	subs  map[*Subscription]struct{}
	queue *eventQueue
	// dispatched is the Seq of the last event fully dispatched.
	dispatched atomic.Uint64
	delivery   delivery // subscriber limits, batch commits (events.go)

	cntMu    sync.Mutex
	counters Counters
	adm      admission  // refused records already counted (admit.go)
	rawDel   rawDeletes // keys with go-ds-crdt tombstones (deletes.go)
	self     sign.ID    // cfg.Signer's id (computing it encodes the key)
	injected map[cid.Cid]time.Time
	healed   map[cid.Cid]healAttempt // branches walked again (healBranches)

	complete *completeness
	digest   *stateDigest
	folds    folds       // folds written and seen (fold.go)
	deltas   *deltaCache // decoded blocks read last (deltacache.go)
	// rebuilt is the heads key at which the state was last rebuilt
	// because it diverged (rebuildState), so a second disagreement at the
	// same heads is reported, not rebuilt in a loop.
	rebuilt    string
	rebuilding atomic.Bool
	validators bool          // topic validators registered (teardown removes them)
	heard      chan struct{} // a heartbeat arrived: maintain runs now
	// savedHorizon and savedPeers are what was last written of the
	// freshness horizon (maintain only).
	savedHorizon int64
	savedPeers   string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open starts a replica: it joins the mesh's topics, opens the CRDT over
// the datastore and starts heartbeats.
func Open(ctx context.Context, cfg Config) (*Replica, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	r := &Replica{
		cfg: cfg, log: cfg.Logger.With("component", "crdt"), durability: groupSync{sync: cfg.Sync},
		clock:    NewClock(cfg.Self.String(), nil),
		subs:     make(map[*Subscription]struct{}),
		queue:    newEventQueue(),
		injected: make(map[cid.Cid]time.Time),
		healed:   make(map[cid.Cid]healAttempt),
		heard:    make(chan struct{}, 1),
		digest:   newStateDigest(),
		self:     cfg.Signer.ID(),
		ctx:      rctx, cancel: cancel,
	}
	fail := func(err error) (*Replica, error) {
		r.teardown()
		return nil, err
	}

	if err := r.registerValidators(); err != nil {
		return fail(err)
	}
	var err error
	if r.dataTop, err = cfg.PubSub.Join(DataTopic(cfg.Mesh)); err != nil {
		return fail(fmt.Errorf("join data topic: %w", err))
	}
	if r.bc, err = newBroadcaster(rctx, cfg.Self, r.dataTop, cfg.Local, cfg.Adder, cfg.MaxInlineBlock, r.log); err != nil {
		return fail(err)
	}
	if r.hbTopic, err = cfg.PubSub.Join(HeartbeatTopic(cfg.Mesh)); err != nil {
		return fail(fmt.Errorf("join heartbeat topic: %w", err))
	}
	if r.hbSub, err = r.hbTopic.Subscribe(pubsub.WithBufferSize(subscriptionBuffer)); err != nil {
		return fail(fmt.Errorf("subscribe heartbeat topic: %w", err))
	}

	if cfg.Unclean {
		n, err := resetState(ctx, cfg.Datastore)
		if err != nil {
			return fail(fmt.Errorf("reset state after an unclean shutdown: %w", err))
		}
		r.log.Warn("previous shutdown was unclean: rebuilding the replicated state from the DAG", "dropped_keys", n)
	}
	if err := r.rawDel.load(ctx, cfg.Datastore); err != nil {
		return fail(err)
	}
	r.folds = newFolds()
	r.deltas = newDeltaCache()
	if err := r.folds.load(ctx, cfg.Datastore); err != nil {
		return fail(err)
	}
	opts := dscrdt.DefaultOptions()
	opts.Logger = slogAdapter{r.log}
	opts.RebroadcastInterval = cfg.RebroadcastInterval
	opts.RepairInterval = cfg.RepairInterval
	opts.NumWorkers = cfg.Workers
	opts.DAGSyncerTimeout = cfg.DAGTimeout
	opts.PutHook = r.putHook
	opts.DeleteHook = r.deleteHook
	// go-ds-crdt reads blocks through pushedDAG: inline head blocks are
	// stored only when a merge asks for them (see pushedBlocks).
	dag := &pushedDAG{DAGService: cfg.DAG, pushed: r.bc.pushed, adder: cfg.Adder, pruned: r.pruned, fetched: r.foldSeen}
	if r.ds, err = dscrdt.New(r.delivery.commits.wrap(cfg.Datastore), Namespace, dag, r.bc, opts); err != nil {
		return fail(fmt.Errorf("open crdt datastore: %w", err))
	}
	if cfg.Unclean {
		r.ds.MarkDirty(ctx)
		// Rebuild before the peer serves anything: reads must not see a
		// state that lacks acknowledged writes. Blocks are local, so this
		// is bounded by the DAG's size; if some are not (a branch that was
		// still being fetched), the rest of the repair goes on in the
		// background and staleness stays high until it is done.
		start := time.Now()
		sctx, scancel := context.WithTimeout(rctx, syncRepairTimeout)
		err := r.ds.Repair(sctx)
		scancel()
		if err == nil && !r.ds.IsDirty(ctx) {
			r.log.Info("replicated state rebuilt from the DAG", "seconds", time.Since(start).Seconds())
		} else {
			r.log.Warn("state rebuild continues in the background", "err", err)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				if err := r.ds.Repair(rctx); err != nil && rctx.Err() == nil {
					r.log.Error("dag repair failed", "err", err)
				}
			}()
		}
	}

	if err := r.migrateDeletes(ctx); err != nil {
		return fail(err)
	}

	// Freshness counts a head only once its whole branch is merged here
	// (see completeness), never on go-ds-crdt's processed mark alone.
	r.complete = newCompleteness(cfg.Local, r.Processed, r.prunedComplete, cfg.Datastore)
	since, known := loadHorizon(ctx, cfg.Datastore)
	r.tracker = NewTracker(TrackerConfig{
		Self: cfg.Self.String(), Clock: r.clock, Processed: r.Merged,
		PeerTimeout: cfg.PeerTimeout, ForgetAfter: cfg.ForgetAfter, StartupGrace: cfg.StartupGrace,
		DivergedAfter: cfg.DivergedAfter, Since: since, Known: known,
	})
	r.wg.Add(5)
	go r.maintain()
	go r.foldLoop()
	go func() {
		// The digest starts from one read of the state before the first
		// event is dispatched; events queued meanwhile are folded in
		// after it, in order (folding a change twice is harmless).
		if err := r.digest.load(rctx, r); err != nil && rctx.Err() == nil {
			r.log.Error("state digest: initial read failed; heartbeats carry no digest", "err", err)
		}
		r.dispatch()
	}()
	go r.heartbeatLoop()
	go r.receiveHeartbeats()
	return r, nil
}

// Clock returns the replica's hybrid logical clock.
func (r *Replica) Clock() *Clock { return r.clock }

// Self returns the replica's peer id.
func (r *Replica) Self() peer.ID { return r.cfg.Self }

// Put writes body as a record of the given kind under key.
func (r *Replica) Put(ctx context.Context, key, kind string, body any) (Write, error) {
	h, err := r.put(ctx, key, kind, body)
	if err != nil {
		return Write{}, err
	}
	return r.acknowledge(ctx, h)
}

// put is Put's write, under writeMu; it returns the write's HLC.
func (r *Replica) put(ctx context.Context, key, kind string, body any) (HLC, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return HLC{}, fmt.Errorf("encode %s body: %w", kind, err)
	}
	if err := checkKey(key); err != nil {
		return HLC{}, err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	rec := Record{V: RecordVersion, Kind: kind, HLC: r.clock.Now(), Writer: r.cfg.Self.String(), Body: raw}
	val, err := r.signed(key, rec)
	if err != nil {
		return HLC{}, err
	}
	if err := r.ds.Put(ctx, ds.NewKey(key), val); err != nil {
		return HLC{}, fmt.Errorf("crdt put %s: %w", key, err)
	}
	return rec.HLC, nil
}

// Op is one write of a PutBatch: a record of Kind with Body under Key, or
// a delete of Key when Delete is set.
type Op struct {
	Key    string
	Kind   string
	Body   any
	Delete bool
}

// maxBatchBytes keeps one batch's delta well under go-ds-crdt's 1 MiB
// MaxBatchDeltaSize (which it checks only after the fact) and bitswap's
// 2 MiB block limit.
const maxBatchBytes = 512 << 10

// PutBatch applies ops as few deltas as their size allows (one Merkle-DAG
// node per ~512 KiB instead of one per record): bulk ingest replicates in
// a handful of broadcasts. Deletes of keys this replica has never seen are
// skipped, as in Delete. The returned Write covers every op.
func (r *Replica) PutBatch(ctx context.Context, ops []Op) (Write, error) {
	h, err := r.putBatch(ctx, ops)
	if err != nil {
		return Write{}, err
	}
	return r.acknowledge(ctx, h)
}

// putBatch is PutBatch's write, under writeMu; it returns the write's HLC.
func (r *Replica) putBatch(ctx context.Context, ops []Op) (HLC, error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	var last HLC
	b, err := r.ds.Batch(ctx)
	if err != nil {
		return HLC{}, fmt.Errorf("crdt batch: %w", err)
	}
	size := 0
	for _, op := range ops {
		if err := checkKey(op.Key); err != nil {
			return HLC{}, err
		}
		if op.Delete {
			ok, err := r.shows(ctx, op.Key)
			if err != nil {
				return HLC{}, err
			}
			if !ok {
				continue
			}
			last = r.clock.Now()
			val, err := r.tombstone(op.Key, last)
			if err != nil {
				return HLC{}, err
			}
			if err := b.Put(ctx, ds.NewKey(op.Key), val); err != nil {
				return HLC{}, fmt.Errorf("crdt delete %s: %w", op.Key, err)
			}
			size += len(op.Key) + len(val)
		} else {
			raw, err := json.Marshal(op.Body)
			if err != nil {
				return HLC{}, fmt.Errorf("encode %s body: %w", op.Kind, err)
			}
			rec := Record{V: RecordVersion, Kind: op.Kind, HLC: r.clock.Now(), Writer: r.cfg.Self.String(), Body: raw}
			last = rec.HLC
			val, err := r.signed(op.Key, rec)
			if err != nil {
				return HLC{}, err
			}
			if err := b.Put(ctx, ds.NewKey(op.Key), val); err != nil {
				return HLC{}, fmt.Errorf("crdt put %s: %w", op.Key, err)
			}
			size += len(op.Key) + len(val)
		}
		if size >= maxBatchBytes {
			if err := b.Commit(ctx); err != nil {
				return HLC{}, fmt.Errorf("crdt commit: %w", err)
			}
			if b, err = r.ds.Batch(ctx); err != nil {
				return HLC{}, fmt.Errorf("crdt batch: %w", err)
			}
			size = 0
		}
	}
	if err := b.Commit(ctx); err != nil {
		return HLC{}, fmt.Errorf("crdt commit: %w", err)
	}
	if last.IsZero() {
		last = r.clock.Now()
	}
	return last, nil
}

// Delete removes key by writing its signed tombstone (deletes.go).
// Deleting a key that shows no record here is ErrNotFound.
func (r *Replica) Delete(ctx context.Context, key string) (Write, error) {
	h, err := r.deleteKey(ctx, key)
	if err != nil {
		return Write{}, err
	}
	return r.acknowledge(ctx, h)
}

// deleteKey is Delete's write, under writeMu; it returns the write's HLC.
func (r *Replica) deleteKey(ctx context.Context, key string) (HLC, error) {
	if err := checkKey(key); err != nil {
		return HLC{}, err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	ok, err := r.shows(ctx, key)
	if err != nil {
		return HLC{}, err
	}
	if !ok {
		return HLC{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	h := r.clock.Now()
	val, err := r.tombstone(key, h)
	if err != nil {
		return HLC{}, err
	}
	if err := r.ds.Put(ctx, ds.NewKey(key), val); err != nil {
		return HLC{}, fmt.Errorf("crdt delete %s: %w", key, err)
	}
	return h, nil
}

// acknowledge makes a local write durable (Config.Sync) and returns its
// Write. It runs after writeMu is released, so writers finishing while
// one sync runs share the next (groupSync); a Write's heads may then
// already include later writes, which only makes its token ask for more.
func (r *Replica) acknowledge(ctx context.Context, h HLC) (Write, error) {
	if err := r.durability.durable(ctx); err != nil {
		return Write{}, fmt.Errorf("crdt sync: %w", err)
	}
	return r.written(ctx, h), nil
}

func (r *Replica) written(ctx context.Context, h HLC) Write {
	st := r.ds.InternalStats(ctx)
	return Write{HLC: h, Peer: r.cfg.Self.String(), Heads: st.Heads}
}

func checkKey(key string) error {
	if !strings.HasPrefix(key, "/") || strings.Contains(key, "//") || len(key) > 1024 {
		return fmt.Errorf("%w: bad key %q", ErrBadRecord, key)
	}
	return nil
}

// Get returns the current record under key, or ErrNotFound.
func (r *Replica) Get(ctx context.Context, key string) (Record, error) {
	b, err := r.getRaw(ctx, key)
	if errors.Is(err, ErrNotFound) && r.rawDel.has(key) {
		// Unsigned tombstones hid every element from go-ds-crdt; they
		// do not hide them from admission.
		b, err = nil, nil
	}
	if err != nil {
		return Record{}, err
	}
	return r.admit(key, b)
}

// getRaw returns the bytes stored under key, or ErrNotFound.
func (r *Replica) getRaw(ctx context.Context, key string) ([]byte, error) {
	b, err := r.ds.Get(ctx, ds.NewKey(key))
	if errors.Is(err, ds.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("crdt get %s: %w", key, err)
	}
	return b, nil
}

// Scan calls f with the stored bytes of every record under prefix, in no
// particular order and undecoded: for a caller that checks many records
// against something it saved (a hash) without paying for their decoding.
// value is valid only during the call. An error from f ends the scan.
func (r *Replica) Scan(ctx context.Context, prefix string, f func(key string, value []byte) error) error {
	res, err := r.ds.Query(ctx, query.Query{Prefix: prefix})
	if err != nil {
		return fmt.Errorf("crdt query %s: %w", prefix, err)
	}
	defer res.Close()
	for e := range res.Next() {
		if e.Error != nil {
			return fmt.Errorf("crdt query %s: %w", prefix, e.Error)
		}
		if err := f(e.Key, e.Value); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// scanShown is Scan for admission: it also calls f, with a nil value, for
// the keys under prefix whose every element an unsigned tombstone hid from
// go-ds-crdt (deletes.go).
func (r *Replica) scanShown(ctx context.Context, prefix string, f func(key string, value []byte) error) error {
	hidden := r.rawDel.under(prefix)
	err := r.Scan(ctx, prefix, func(key string, value []byte) error {
		delete(hidden, key)
		return f(key, value)
	})
	if err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(hidden)) {
		if err := f(k, nil); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// List returns every valid record under prefix, ordered by key. Values that
// do not decode are skipped (and counted): they never enter the state.
func (r *Replica) List(ctx context.Context, prefix string) ([]Entry, error) {
	// The keys' elements in one pass rather than a query per key (a
	// model's state is read as one List of every record it ever had).
	elems, err := r.elementsUnder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []Entry
	err = r.scanShown(ctx, prefix, func(key string, value []byte) error {
		rec, _, err := r.admittedAmong(ctx, key, value, elems[key])
		switch {
		case err == nil:
			out = append(out, Entry{Key: key, Record: rec})
		case !errors.Is(err, ErrNotFound):
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// StateHash is a digest of the replicated key/value state: equal on two
// peers exactly when they hold the same keys with the same record bytes.
func (r *Replica) StateHash(ctx context.Context) (string, error) {
	res, err := r.ds.Query(ctx, query.Query{})
	if err != nil {
		return "", fmt.Errorf("crdt query: %w", err)
	}
	defer res.Close()
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	for e := range res.Next() {
		if e.Error != nil {
			return "", e.Error
		}
		all = append(all, kv{e.Key, e.Value})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].k < all[j].k })
	h := sha256.New()
	var n [8]byte
	for _, e := range all {
		binary.BigEndian.PutUint64(n[:], uint64(len(e.k)))
		h.Write(n[:])
		h.Write([]byte(e.k))
		binary.BigEndian.PutUint64(n[:], uint64(len(e.v)))
		h.Write(n[:])
		h.Write(e.v)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Stats returns the CRDT's heads, max height and queued jobs. Max height
// jumps before data arrives, and heads may include non-tips (#357): use
// Staleness for freshness, these only for diagnostics.
func (r *Replica) Stats(ctx context.Context) Stats {
	st := r.ds.InternalStats(ctx)
	return Stats{Heads: st.Heads, Height: st.MaxHeight, QueuedJobs: st.QueuedJobs}
}

// Processed reports whether this replica has merged the delta block c.
//
// go-ds-crdt records processed blocks under <namespace>/b/<multihash key>;
// that layout is internal to the pinned version (v0.6.5) and is read here
// and nowhere else (TestProcessedLayout guards it).
func (r *Replica) Processed(ctx context.Context, c cid.Cid) (bool, error) {
	return r.cfg.Datastore.Has(ctx, r.processedKey(c))
}

func (r *Replica) processedKey(c cid.Cid) ds.Key {
	return Namespace.ChildString("b").ChildString(dshelp.MultihashToDsKey(c.Hash()).String())
}

// syncRepairTimeout bounds the rebuild an unclean start waits for.
const syncRepairTimeout = 2 * time.Minute

// resetState deletes go-ds-crdt's state (the set under /crdt/s) and its
// processed-block markers (/crdt/b), keeping heads and DAG blocks, so that
// a repair reprocesses every block reachable from the heads and the state
// is exactly what the DAG says. The markers of pruned blocks stay: their
// blocks are gone, and the folds above them hold their state (fold.go).
// Like Processed, it reads go-ds-crdt's internal layout (guarded by
// TestProcessedLayout and TestResetState).
func resetState(ctx context.Context, d ds.Datastore) (int, error) {
	n := 0
	for _, prefix := range []ds.Key{Namespace.ChildString("s"), Namespace.ChildString("b"), completeNamespace} {
		markers := prefix == Namespace.ChildString("b")
		res, err := d.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: !markers})
		if err != nil {
			return n, err
		}
		var keys []ds.Key
		for e := range res.Next() {
			if e.Error != nil {
				res.Close()
				return n, e.Error
			}
			if markers && (bytes.Equal(e.Value, prunedMark) || bytes.Equal(e.Value, pruningMark)) {
				continue
			}
			keys = append(keys, ds.NewKey(e.Key))
		}
		res.Close()
		if b, ok := d.(ds.Batching); ok {
			for i := 0; i < len(keys); i += 4096 {
				batch, err := b.Batch(ctx)
				if err != nil {
					return n, err
				}
				for _, k := range keys[i:min(i+4096, len(keys))] {
					if err := batch.Delete(ctx, k); err != nil {
						return n, err
					}
				}
				if err := batch.Commit(ctx); err != nil {
					return n, err
				}
			}
			n += len(keys)
			continue
		}
		for _, k := range keys {
			if err := d.Delete(ctx, k); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// Staleness reports how fresh this replica's view is.
func (r *Replica) Staleness() Staleness { return r.tracker.Staleness() }

// Counters returns event counts since start.
func (r *Replica) Counters() Counters {
	r.cntMu.Lock()
	c := r.counters
	c.RejectedMessages = maps.Clone(c.RejectedMessages)
	r.cntMu.Unlock()
	c.InlineBlocks = r.bc.attached.Load()
	c.InlineRejected = r.bc.rejected.Load()
	return c
}

func (r *Replica) count(f func(*Counters)) {
	r.cntMu.Lock()
	f(&r.counters)
	r.cntMu.Unlock()
}

// Close stops the replica. The datastore is left open for its owner.
func (r *Replica) Close() error {
	r.cancel()
	var err error
	if r.ds != nil {
		err = r.ds.Close()
	}
	r.teardown()
	return err
}

func (r *Replica) teardown() {
	r.cancel()
	if r.bc != nil {
		r.bc.close()
	}
	if r.hbSub != nil {
		r.hbSub.Cancel()
	}
	r.queue.close()
	r.wg.Wait()
	if r.hbTopic != nil {
		r.hbTopic.Close()
	}
	if r.dataTop != nil {
		r.dataTop.Close()
	}
	r.unregisterValidators()
	r.subMu.Lock()
	for s := range r.subs {
		s.closeDone()
	}
	r.subs = map[*Subscription]struct{}{}
	r.subMu.Unlock()
}
