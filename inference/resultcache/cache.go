// Package resultcache caches inference results on a Shoal edge peer.
//
// A result is addressed by [KeyOf] the model artifact's CID and the canonical
// encoding of the request. Because the CID names the exact bytes of the model,
// publishing a new model version changes every key: a request for the new
// version can never be answered from an entry computed by the old one, and no
// explicit invalidation is needed for correctness across versions.
//
// The cache has two tiers:
//
//   - an in-memory LRU bounded in bytes (the hot tier, checked first), and
//   - an optional go-datastore tier (normally the peer's Badger datastore),
//     which survives restarts and is shared by every Cache opened on it.
//
// Entries leave the cache in three ways:
//
//   - TTL: every entry lives at most Config.TTL after it was stamped.
//   - Flush watermarks: a peer can replicate "results of model M computed
//     before T are no longer valid" (for example after a bad rollout or a
//     preprocessing fix that did not change the artifact). [Cache.Flush]
//     records the watermark; entries stamped before it are misses.
//   - Capacity: the memory tier evicts the least recently used entries.
//
// The cache is an optimisation, never a source of failure: store errors are
// counted in [Stats] and otherwise ignored, and every method is safe for
// concurrent use.
package resultcache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// Defaults applied by [New] to zero Config fields.
const (
	DefaultMaxBytes      int64 = 64 << 20
	DefaultTTL                 = 10 * time.Minute
	DefaultMaxEntryBytes       = 1 << 20
	DefaultPrefix              = "/local/cache"
)

// entryOverhead approximates the per-entry bookkeeping cost of the memory
// tier (list element, map slot, entry struct) so that many tiny results
// cannot blow far past MaxBytes.
const entryOverhead = 64

// Key identifies a cached result. It is a SHA-256 digest, so it is fixed
// size, cheap to compare and safe to use as a datastore key name.
type Key [32]byte

// KeyOf derives the cache key of a request to a model artifact.
//
// It hashes the length-prefixed artifact CID followed by the canonical
// request bytes. The length prefix makes the boundary between the two parts
// unambiguous, so (cid="ab", req="c") and (cid="a", req="bc") never collide.
// Including the CID means keys of different model versions are disjoint.
// canonical must be a deterministic encoding of the request (same request,
// same bytes), otherwise identical requests will miss each other.
func KeyOf(cid string, canonical []byte) Key {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(cid)))
	h.Write(n[:])
	h.Write([]byte(cid))
	h.Write(canonical)
	var k Key
	h.Sum(k[:0])
	return k
}

// String returns the key as lower-case hex; this is also its name in the
// store tier.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// Config configures a [Cache]. The zero value is a valid memory-only cache.
type Config struct {
	// MaxBytes bounds the memory tier. An entry is charged its value length
	// plus the key, model and version strings plus ~64 bytes of overhead.
	// 0 means DefaultMaxBytes (64 MiB); a negative value disables the memory
	// tier (only Store is used).
	MaxBytes int64
	// Store is the optional second tier. nil means memory only. When it
	// implements datastore.TTLDatastore (go-ds-badger4 does) entries are
	// written with PutWithTTL so the store reclaims them on its own.
	Store datastore.Datastore
	// TTL is the lifetime of an entry in both tiers, measured from the time
	// it was Put. 0 (or negative) means DefaultTTL (10 minutes).
	TTL time.Duration
	// Prefix is the namespace of the cache's keys in Store. The zero Key
	// means DefaultPrefix (/local/cache). The "/local" root keeps cache
	// entries out of anything the peer replicates.
	Prefix datastore.Key
	// MaxEntryBytes: results larger than this are not cached in either tier,
	// so one huge response cannot flush the hot set. 0 means
	// DefaultMaxEntryBytes (1 MiB); negative means no per-entry limit.
	MaxEntryBytes int
	// Now is the clock used to stamp and expire entries; nil means time.Now.
	// Tests inject a fake clock here.
	Now func() time.Time
}

// Stats is a snapshot of cache counters.
type Stats struct {
	Entries     int    // entries in the memory tier
	Bytes       int64  // bytes charged to the memory tier
	Evictions   uint64 // memory entries evicted to stay under MaxBytes
	StoreHits   uint64 // Gets answered by the store tier
	StoreErrors uint64 // failed store operations and undecodable store values
}

// entry is one memory-tier result. Entries are immutable once inserted:
// replacing a key inserts a new entry, so value may be read without the lock.
type entry struct {
	key     Key
	model   string
	version string
	stamp   int64 // unix nanos of the Put
	value   []byte
	size    int64
}

type modelVersion struct{ model, version string }

// Cache is a two-tier inference result cache. Create it with [New]; it is
// safe for concurrent use.
type Cache struct {
	store    datastore.Datastore
	ttlStore datastore.TTLDatastore // store, when it supports TTLs
	prefix   datastore.Key
	ttl      time.Duration
	maxBytes int64 // < 0: memory tier disabled
	maxEntry int   // < 0: unlimited
	now      func() time.Time

	storeHits   atomic.Uint64
	storeErrors atomic.Uint64

	// mu guards everything below. It is never held while calling Store, so
	// a slow disk cannot stall memory hits.
	mu         sync.Mutex
	lru        *list.List // of *entry, front = most recently used
	items      map[Key]*list.Element
	bytes      int64
	evictions  uint64
	allMark    int64            // all-models flush watermark (unix nanos), 0 = none
	modelMarks map[string]int64 // per-model flush watermarks (unix nanos)
	seen       map[modelVersion]struct{}
}

// New returns a Cache configured by cfg, applying defaults to zero fields.
func New(cfg Config) *Cache {
	c := &Cache{
		store:      cfg.Store,
		ttl:        cfg.TTL,
		maxBytes:   cfg.MaxBytes,
		maxEntry:   cfg.MaxEntryBytes,
		now:        cfg.Now,
		lru:        list.New(),
		items:      make(map[Key]*list.Element),
		modelMarks: make(map[string]int64),
		seen:       make(map[modelVersion]struct{}),
	}
	if c.maxBytes == 0 {
		c.maxBytes = DefaultMaxBytes
	}
	if c.ttl <= 0 {
		c.ttl = DefaultTTL
	}
	if c.maxEntry == 0 {
		c.maxEntry = DefaultMaxEntryBytes
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.prefix = cfg.Prefix
	if c.prefix.String() == "" {
		c.prefix = datastore.NewKey(DefaultPrefix)
	}
	c.prefix.Clean()
	if t, ok := c.store.(datastore.TTLDatastore); ok {
		c.ttlStore = t
	}
	return c
}

// Get looks k up in memory, then in Store, promoting a store hit into memory
// so the next lookup is cheap.
//
// model names the entry's model so that flush watermarks apply; the model
// recorded in the entry at Put time is checked as well, so a wrong argument
// can only make Get stricter, never serve a flushed result. An entry is a
// miss if it is older than TTL or stamped before the flush watermark of its
// model or of the all-models scope. Stale store entries found here are
// deleted. The returned slice is the caller's to keep and modify.
func (c *Cache) Get(ctx context.Context, k Key, model string) ([]byte, bool) {
	now := unixNanos(c.now())

	if c.memEnabled() {
		c.mu.Lock()
		if el, ok := c.items[k]; ok {
			e := el.Value.(*entry)
			if c.liveLocked(e.stamp, now, e.model, model) {
				c.lru.MoveToFront(el)
				c.mu.Unlock()
				return clone(e.value), true
			}
			// Expired or flushed: drop it now rather than waiting for the
			// LRU to push it out. The store may still hold a fresher copy
			// written by another Cache on the same store, so fall through.
			c.removeLocked(el)
		}
		c.mu.Unlock()
	}

	if c.store == nil {
		return nil, false
	}
	sk := c.storeKey(k)
	raw, err := c.store.Get(ctx, sk)
	if err != nil {
		if !errors.Is(err, datastore.ErrNotFound) {
			c.storeErrors.Add(1)
		}
		return nil, false
	}
	rec, ok := decode(raw)
	if !ok {
		c.storeErrors.Add(1)
		return nil, false
	}
	c.mu.Lock()
	live := c.liveLocked(rec.stamp, now, rec.model, model)
	c.mu.Unlock()
	if !live {
		// Lazy deletion. A concurrent Put of a fresh result under the same
		// key could be lost here; that only costs one recomputation.
		if err := c.store.Delete(ctx, sk); err != nil {
			c.storeErrors.Add(1)
		}
		return nil, false
	}
	c.storeHits.Add(1)
	if c.memEnabled() {
		// Keep the original stamp: promotion must not extend the TTL or
		// let the entry slip past a flush watermark. The memory copy is
		// separate from the slice handed to the caller.
		c.insert(&entry{
			key:     k,
			model:   rec.model,
			version: rec.version,
			stamp:   rec.stamp,
			value:   clone(rec.value),
		})
	}
	return rec.value, true
}

// Put caches value (it is copied) for k, stamped with Now().
//
// model and version record what produced the result so that Flush and
// DropVersion can find it, and Seen can report the version as warm. Results
// larger than MaxEntryBytes are not cached. The store write uses PutWithTTL
// when Store is a datastore.TTLDatastore, else Put; the stored value encodes
// model, version, stamp and value, so expiry and flushes are also enforced
// on read. Store errors are counted in Stats.StoreErrors and otherwise
// ignored: caching never fails a request.
func (c *Cache) Put(ctx context.Context, k Key, model, version string, value []byte) {
	stamp := unixNanos(c.now())

	c.mu.Lock()
	c.seen[modelVersion{model, version}] = struct{}{}
	flushed := c.flushedLocked(stamp, model, "")
	c.mu.Unlock()

	if c.maxEntry >= 0 && len(value) > c.maxEntry {
		return
	}
	// A watermark ahead of our clock (replicated from a peer whose clock
	// runs fast) would make this entry a miss anyway; don't store it.
	if flushed {
		return
	}

	e := &entry{key: k, model: model, version: version, stamp: stamp, value: clone(value)}
	if c.memEnabled() {
		c.insert(e)
	}
	if c.store == nil {
		return
	}
	raw := encode(record{model: model, version: version, stamp: stamp, value: value})
	sk := c.storeKey(k)
	var err error
	if c.ttlStore != nil {
		err = c.ttlStore.PutWithTTL(ctx, sk, raw, c.ttl)
	} else {
		err = c.store.Put(ctx, sk, raw)
	}
	if err != nil {
		c.storeErrors.Add(1)
	}
}

// Flush invalidates every entry of model stamped before `before`; model ""
// means every model. It is how a replicated flush watermark is applied.
//
// Memory entries are dropped at once. Store entries are shared with other
// Caches and may be many, so they are dropped lazily by Get and by Sweep.
// Watermarks only move forward: flushes may arrive out of order from the
// replication layer, and an older one must not resurrect entries.
func (c *Cache) Flush(model string, before time.Time) {
	mark := unixNanos(before)
	c.mu.Lock()
	defer c.mu.Unlock()
	if model == "" {
		if mark <= c.allMark {
			return
		}
		c.allMark = mark
	} else {
		if mark <= c.modelMarks[model] {
			return
		}
		c.modelMarks[model] = mark
	}
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*entry)
		if (model == "" || e.model == model) && e.stamp < mark {
			c.removeLocked(el)
		}
		el = next
	}
}

// Sweep deletes store-tier entries that are expired or flushed and returns
// how many it deleted. Badger TTLs reclaim expired entries on their own, but
// flushed ones (and expiry under a non-TTL store) need this. Keys under
// Prefix that are not cache entries, or whose values cannot be decoded, are
// left alone: Sweep never deletes data it does not understand.
func (c *Cache) Sweep(ctx context.Context) (int, error) {
	if c.store == nil {
		return 0, nil
	}
	res, err := c.store.Query(ctx, query.Query{Prefix: c.prefix.String()})
	if err != nil {
		c.storeErrors.Add(1)
		return 0, err
	}
	now := unixNanos(c.now())
	var stale []datastore.Key
	for r := range res.Next() {
		if r.Error != nil {
			_ = res.Close()
			c.storeErrors.Add(1)
			return 0, r.Error
		}
		if !c.isEntryKey(r.Key) {
			continue
		}
		rec, ok := decode(r.Value)
		if !ok {
			continue
		}
		c.mu.Lock()
		live := c.liveLocked(rec.stamp, now, rec.model, "")
		c.mu.Unlock()
		if !live {
			stale = append(stale, datastore.RawKey(r.Key))
		}
	}
	if err := res.Close(); err != nil {
		c.storeErrors.Add(1)
		return 0, err
	}
	// Delete after the query is closed: some stores do not like writes
	// while an iterator is open.
	n := 0
	for _, k := range stale {
		if err := c.store.Delete(ctx, k); err != nil {
			c.storeErrors.Add(1)
			return n, err
		}
		n++
	}
	return n, nil
}

// DropVersion removes the memory entries of model@version. It is called when
// a version is garbage collected: its entries can never be hit again (its CID
// is no longer served), so they only waste memory. Store entries are left to
// expire by TTL.
func (c *Cache) DropVersion(model, version string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*entry)
		if e.model == model && e.version == version {
			c.removeLocked(el)
		}
		el = next
	}
}

// Stats returns a snapshot of the cache counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{Entries: len(c.items), Bytes: c.bytes, Evictions: c.evictions}
	c.mu.Unlock()
	s.StoreHits = c.storeHits.Load()
	s.StoreErrors = c.storeErrors.Load()
	return s
}

// Seen reports whether any entry was ever Put for model@version on this
// Cache (even one too large to keep, and even if it has since been evicted,
// flushed or dropped). Callers use it to tell a cold miss (the version has
// never produced a result here) from an ordinary miss.
func (c *Cache) Seen(model, version string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[modelVersion{model, version}]
	return ok
}

func (c *Cache) memEnabled() bool { return c.maxBytes > 0 }

// insert adds e to the memory tier, replacing any entry under the same key
// and evicting from the LRU tail to stay within maxBytes.
func (c *Cache) insert(e *entry) {
	e.size = int64(len(e.value)+len(e.key)+len(e.model)+len(e.version)) + entryOverhead
	if e.size > c.maxBytes {
		return // would evict everything and still not fit
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Re-check under the lock: a Flush may have run since the caller
	// decided the entry was live.
	if c.flushedLocked(e.stamp, e.model, "") {
		return
	}
	if el, ok := c.items[e.key]; ok {
		c.removeLocked(el)
	}
	c.items[e.key] = c.lru.PushFront(e)
	c.bytes += e.size
	for c.bytes > c.maxBytes {
		back := c.lru.Back()
		if back == nil {
			break
		}
		c.removeLocked(back)
		c.evictions++
	}
}

func (c *Cache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*entry)
	delete(c.items, e.key)
	c.bytes -= e.size
}

// liveLocked reports whether an entry stamped at stamp is neither expired
// nor flushed for either of the given models ("" skips one).
func (c *Cache) liveLocked(stamp, now int64, model, model2 string) bool {
	if now-stamp >= int64(c.ttl) {
		return false
	}
	return !c.flushedLocked(stamp, model, model2)
}

func (c *Cache) flushedLocked(stamp int64, model, model2 string) bool {
	if stamp < c.allMark {
		return true
	}
	if model != "" && stamp < c.modelMarks[model] {
		return true
	}
	if model2 != "" && model2 != model && stamp < c.modelMarks[model2] {
		return true
	}
	return false
}

func (c *Cache) storeKey(k Key) datastore.Key {
	return c.prefix.ChildString(k.String())
}

// isEntryKey reports whether a store key is a direct child of the prefix
// named by a hex Key, i.e. something this package wrote.
func (c *Cache) isEntryKey(s string) bool {
	base := c.prefix.String()
	if base == "/" {
		base = ""
	}
	name, ok := strings.CutPrefix(s, base+"/")
	if !ok || len(name) != hex.EncodedLen(len(Key{})) {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

// Store value format, version 1:
//
//	byte    format (1)
//	uvarint len(model), model
//	uvarint len(version), version
//	8 bytes stamp, unix nanos, big endian
//	rest    value
const formatV1 = 1

type record struct {
	model, version string
	stamp          int64
	value          []byte
}

func encode(r record) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(r.model)+len(r.version)+8+len(r.value))
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, uint64(len(r.model)))
	b = append(b, r.model...)
	b = binary.AppendUvarint(b, uint64(len(r.version)))
	b = append(b, r.version...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.stamp))
	return append(b, r.value...)
}

func decode(b []byte) (record, bool) {
	var r record
	if len(b) < 1 || b[0] != formatV1 {
		return r, false
	}
	b = b[1:]
	str := func() (string, bool) {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return "", false
		}
		s := string(b[w : w+int(n)])
		b = b[w+int(n):]
		return s, true
	}
	var ok bool
	if r.model, ok = str(); !ok {
		return r, false
	}
	if r.version, ok = str(); !ok {
		return r, false
	}
	if len(b) < 8 {
		return r, false
	}
	r.stamp = int64(binary.BigEndian.Uint64(b))
	r.value = b[8:]
	return r, true
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// unixNanos is t.UnixNano clamped to the int64 range, so that zero or far
// future times (e.g. a bogus replicated watermark) compare sensibly instead
// of overflowing.
func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
