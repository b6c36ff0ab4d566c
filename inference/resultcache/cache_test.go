package resultcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-datastore"
	badger4 "github.com/ipfs/go-ds-badger4"
)

// fakeClock is an injectable, concurrency-safe clock.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (f *fakeClock) Now() time.Time               { return time.Unix(0, f.ns.Load()) }
func (f *fakeClock) Advance(d time.Duration)      { f.ns.Add(int64(d)) }
func (f *fakeClock) At(d time.Duration) time.Time { return time.Unix(0, f.ns.Load()+int64(d)) }

func openBadger(t *testing.T) *badger4.Datastore {
	t.Helper()
	opts := badger4.DefaultOptions
	opts.GcInterval = 0 // no background GC goroutine in tests
	ds, err := badger4.NewDatastore(t.TempDir(), &opts)
	if err != nil {
		t.Fatalf("open badger: %v", err)
	}
	t.Cleanup(func() {
		if err := ds.Close(); err != nil {
			t.Errorf("close badger: %v", err)
		}
	})
	return ds
}

func key(i int) Key { return KeyOf("bafy-test", []byte(fmt.Sprintf("req-%d", i))) }

func mustHit(t *testing.T, c *Cache, k Key, model string, want []byte) {
	t.Helper()
	got, ok := c.Get(context.Background(), k, model)
	if !ok {
		t.Fatalf("Get(%s): miss, want hit", k)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s) = %q, want %q", k, got, want)
	}
}

func mustMiss(t *testing.T, c *Cache, k Key, model string) {
	t.Helper()
	if got, ok := c.Get(context.Background(), k, model); ok {
		t.Fatalf("Get(%s) = %q, want miss", k, got)
	}
}

func TestKeyOf(t *testing.T) {
	req := []byte(`{"input":[1,2,3]}`)
	a := KeyOf("bafyOLD", req)
	b := KeyOf("bafyNEW", req)
	if a == b {
		t.Fatal("same request under different CIDs produced the same key")
	}
	if a != KeyOf("bafyOLD", req) {
		t.Fatal("KeyOf is not deterministic")
	}
	if KeyOf("ab", []byte("c")) == KeyOf("a", []byte("bc")) {
		t.Fatal("CID/request boundary is ambiguous")
	}
	if KeyOf("bafyOLD", []byte("x")) == KeyOf("bafyOLD", []byte("y")) {
		t.Fatal("different requests produced the same key")
	}
	s := a.String()
	if len(s) != 64 {
		t.Fatalf("String() length %d, want 64", len(s))
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			t.Fatalf("String() = %q is not lower-case hex", s)
		}
	}
}

func TestLRUByteBound(t *testing.T) {
	val := bytes.Repeat([]byte("v"), 100)
	per := int64(len(val)+32+len("m")+len("1")) + entryOverhead
	c := New(Config{MaxBytes: 3 * per})
	ctx := context.Background()

	for i := 0; i < 3; i++ {
		c.Put(ctx, key(i), "m", "1", val)
	}
	if s := c.Stats(); s.Entries != 3 || s.Bytes != 3*per || s.Evictions != 0 {
		t.Fatalf("after 3 puts: %+v, want 3 entries, %d bytes, 0 evictions", s, 3*per)
	}
	// Touch key 0 so key 1 becomes least recently used.
	mustHit(t, c, key(0), "m", val)
	c.Put(ctx, key(3), "m", "1", val)

	mustMiss(t, c, key(1), "m")
	mustHit(t, c, key(0), "m", val)
	mustHit(t, c, key(2), "m", val)
	mustHit(t, c, key(3), "m", val)
	s := c.Stats()
	if s.Entries != 3 || s.Bytes != 3*per || s.Evictions != 1 {
		t.Fatalf("after eviction: %+v, want 3 entries, %d bytes, 1 eviction", s, 3*per)
	}

	// Replacing a key must not double-charge it.
	c.Put(ctx, key(3), "m", "1", val)
	if s := c.Stats(); s.Entries != 3 || s.Bytes != 3*per {
		t.Fatalf("after replace: %+v", s)
	}

	// A bigger value evicts as many LRU entries as needed.
	big := bytes.Repeat([]byte("b"), int(2*per))
	c.Put(ctx, key(9), "m", "1", big)
	if s := c.Stats(); s.Bytes > 3*per {
		t.Fatalf("bytes %d exceed bound %d", s.Bytes, 3*per)
	}
	mustHit(t, c, key(9), "m", big)
}

func TestValuesAreCopied(t *testing.T) {
	c := New(Config{})
	ctx := context.Background()
	in := []byte("hello")
	c.Put(ctx, key(1), "m", "1", in)
	in[0] = 'X'
	got, _ := c.Get(ctx, key(1), "m")
	if string(got) != "hello" {
		t.Fatalf("Put did not copy: %q", got)
	}
	got[0] = 'Y'
	mustHit(t, c, key(1), "m", []byte("hello"))
}

func TestTTLExpiry(t *testing.T) {
	clk := newClock()
	c := New(Config{TTL: time.Minute, Now: clk.Now})
	ctx := context.Background()
	c.Put(ctx, key(1), "m", "1", []byte("a"))

	clk.Advance(time.Minute - time.Nanosecond)
	mustHit(t, c, key(1), "m", []byte("a"))
	clk.Advance(time.Nanosecond)
	mustMiss(t, c, key(1), "m")
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("expired entry still charged: %+v", s)
	}
}

func TestDefaults(t *testing.T) {
	c := New(Config{})
	if c.maxBytes != DefaultMaxBytes || c.ttl != DefaultTTL || c.maxEntry != DefaultMaxEntryBytes ||
		c.prefix.String() != DefaultPrefix {
		t.Fatalf("defaults not applied: maxBytes=%d ttl=%v maxEntry=%d prefix=%s",
			c.maxBytes, c.ttl, c.maxEntry, c.prefix)
	}
}

func TestFlushModel(t *testing.T) {
	clk := newClock()
	c := New(Config{Now: clk.Now})
	ctx := context.Background()

	c.Put(ctx, key(1), "m1", "1", []byte("old-m1"))
	c.Put(ctx, key(2), "m2", "1", []byte("old-m2"))
	clk.Advance(time.Second)
	mark := clk.Now()
	c.Put(ctx, key(3), "m1", "1", []byte("at-mark")) // stamped == watermark: kept
	clk.Advance(time.Second)

	c.Flush("m1", mark)
	if s := c.Stats(); s.Entries != 2 {
		t.Fatalf("flush should drop the old m1 entry at once: %+v", s)
	}
	c.Put(ctx, key(4), "m1", "1", []byte("new-m1"))

	mustMiss(t, c, key(1), "m1")
	mustHit(t, c, key(2), "m2", []byte("old-m2"))
	mustHit(t, c, key(3), "m1", []byte("at-mark"))
	mustHit(t, c, key(4), "m1", []byte("new-m1"))

	// Watermarks only move forward: a later flush, then an older one
	// arriving out of order, must keep the later watermark.
	clk.Advance(time.Second)
	c.Flush("m1", clk.Now()) // drops keys 3 and 4 (stamped before now)
	mustMiss(t, c, key(3), "m1")
	mustMiss(t, c, key(4), "m1")
	late := clk.Now()
	c.Flush("m1", mark) // older: no effect
	if c.modelMarks["m1"] != late.UnixNano() {
		t.Fatalf("watermark moved backwards")
	}
	mustHit(t, c, key(2), "m2", []byte("old-m2"))
}

func TestFlushAll(t *testing.T) {
	clk := newClock()
	c := New(Config{Now: clk.Now})
	ctx := context.Background()
	c.Put(ctx, key(1), "m1", "1", []byte("a"))
	c.Put(ctx, key(2), "m2", "1", []byte("b"))
	clk.Advance(time.Second)
	c.Flush("", clk.Now())
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("Flush(\"\") left entries: %+v", s)
	}
	mustMiss(t, c, key(1), "m1")
	mustMiss(t, c, key(2), "m2")
	c.Put(ctx, key(3), "m1", "1", []byte("c"))
	mustHit(t, c, key(3), "m1", []byte("c"))
}

func TestFlushAllStoreTier(t *testing.T) {
	clk := newClock()
	ds := datastore.NewMapDatastore()
	ctx := context.Background()
	c1 := New(Config{Store: ds, Now: clk.Now})
	c1.Put(ctx, key(1), "m1", "1", []byte("a"))
	c1.Put(ctx, key(2), "m2", "1", []byte("b"))
	clk.Advance(time.Second)
	c1.Put(ctx, key(3), "m2", "1", []byte("c"))

	c2 := New(Config{Store: ds, Now: clk.Now})
	c2.Flush("", clk.Now())
	mustMiss(t, c2, key(1), "m1")
	if n, err := c2.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1 (key 2), nil", n, err)
	}
	mustHit(t, c2, key(3), "m2", []byte("c")) // stamped at the watermark
}

func TestFlushUsesRecordedModel(t *testing.T) {
	clk := newClock()
	c := New(Config{Now: clk.Now})
	ctx := context.Background()
	c.Put(ctx, key(1), "m1", "1", []byte("a"))
	clk.Advance(time.Second)
	c.Flush("m1", clk.Now())
	// Even if the caller names the wrong model the entry stays flushed.
	mustMiss(t, c, key(1), "other")
}

func TestPutBehindWatermarkNotCached(t *testing.T) {
	clk := newClock()
	ds := datastore.NewMapDatastore()
	c := New(Config{Now: clk.Now, Store: ds})
	ctx := context.Background()
	// A watermark from a peer whose clock runs ahead of ours.
	c.Flush("m", clk.At(time.Hour))
	c.Put(ctx, key(1), "m", "1", []byte("a"))
	mustMiss(t, c, key(1), "m")
	if has, _ := ds.Has(ctx, c.storeKey(key(1))); has {
		t.Fatal("entry behind the watermark was written to the store")
	}
	if !c.Seen("m", "1") {
		t.Fatal("Seen should record the Put even when it was not cached")
	}
}

func TestDropVersionAndSeen(t *testing.T) {
	c := New(Config{})
	ctx := context.Background()
	if c.Seen("m", "1") {
		t.Fatal("Seen before any Put")
	}
	c.Put(ctx, key(1), "m", "1", []byte("a"))
	c.Put(ctx, key(2), "m", "2", []byte("b"))
	c.Put(ctx, key(3), "n", "1", []byte("c"))
	c.DropVersion("m", "1")
	mustMiss(t, c, key(1), "m")
	mustHit(t, c, key(2), "m", []byte("b"))
	mustHit(t, c, key(3), "n", []byte("c"))
	if !c.Seen("m", "1") || !c.Seen("m", "2") || !c.Seen("n", "1") {
		t.Fatal("Seen lost a version")
	}
	if c.Seen("n", "2") || c.Seen("x", "1") {
		t.Fatal("Seen reports a version never Put")
	}
}

func TestOversizedEntryNotCached(t *testing.T) {
	ds := openBadger(t)
	c := New(Config{MaxEntryBytes: 10, Store: ds})
	ctx := context.Background()

	c.Put(ctx, key(1), "m", "1", bytes.Repeat([]byte("x"), 11))
	mustMiss(t, c, key(1), "m")
	if has, err := ds.Has(ctx, c.storeKey(key(1))); err != nil || has {
		t.Fatalf("oversized entry in store: has=%v err=%v", has, err)
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Fatalf("oversized entry in memory: %+v", s)
	}

	c.Put(ctx, key(2), "m", "1", bytes.Repeat([]byte("x"), 10))
	mustHit(t, c, key(2), "m", bytes.Repeat([]byte("x"), 10))
}

func TestStoreTierSharedAcrossCaches(t *testing.T) {
	ds := openBadger(t)
	ctx := context.Background()
	const ttl = 5 * time.Minute

	c1 := New(Config{Store: ds, TTL: ttl})
	c1.Put(ctx, key(1), "m", "v1", []byte("result"))

	// Stored under the prefix, with a badger TTL.
	sk := datastore.NewKey("/local/cache/" + key(1).String())
	exp, err := ds.GetExpiration(ctx, sk)
	if err != nil {
		t.Fatalf("GetExpiration: %v", err)
	}
	if d := time.Until(exp); d <= 0 || d > ttl+time.Second {
		t.Fatalf("store TTL %v, want ~%v", d, ttl)
	}

	// A fresh cache (e.g. after a restart) finds it in the store...
	c2 := New(Config{Store: ds, TTL: ttl})
	mustHit(t, c2, key(1), "m", []byte("result"))
	if s := c2.Stats(); s.StoreHits != 1 || s.Entries != 1 {
		t.Fatalf("after store hit: %+v, want 1 store hit promoted to memory", s)
	}
	// ...and the promoted copy answers the next Get from memory.
	mustHit(t, c2, key(1), "m", []byte("result"))
	if s := c2.Stats(); s.StoreHits != 1 {
		t.Fatalf("second Get went to the store: %+v", s)
	}
	// The promoted entry carries its model/version.
	c2.DropVersion("m", "v1")
	if s := c2.Stats(); s.Entries != 0 {
		t.Fatalf("promoted entry lost its model/version: %+v", s)
	}
	mustMiss(t, c2, key(2), "m")
	if s := c2.Stats(); s.StoreErrors != 0 {
		t.Fatalf("unexpected store errors: %+v", s)
	}
}

func TestMemoryTierDisabled(t *testing.T) {
	ds := openBadger(t)
	ctx := context.Background()
	c := New(Config{Store: ds, MaxBytes: -1})
	c.Put(ctx, key(1), "m", "1", []byte("a"))
	mustHit(t, c, key(1), "m", []byte("a"))
	mustHit(t, c, key(1), "m", []byte("a"))
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.StoreHits != 2 {
		t.Fatalf("memory tier not disabled: %+v", s)
	}
}

func TestStoreExpiredAndFlushedAreMissesAndSwept(t *testing.T) {
	ds := openBadger(t)
	ctx := context.Background()
	clk := newClock()
	const ttl = time.Minute
	c1 := New(Config{Store: ds, TTL: ttl, Now: clk.Now})

	c1.Put(ctx, key(1), "m1", "1", []byte("flushed-a"))
	c1.Put(ctx, key(2), "m1", "1", []byte("flushed-b"))
	c1.Put(ctx, key(3), "m2", "1", []byte("expires"))
	clk.Advance(ttl / 2)
	c1.Put(ctx, key(4), "m2", "1", []byte("live"))
	clk.Advance(ttl / 2) // key 3 is now exactly TTL old

	// Foreign keys under and outside the prefix must survive Sweep.
	foreign := []datastore.Key{
		datastore.NewKey("/local/cache/not-a-cache-key"),
		datastore.NewKey("/local/cache/" + key(7).String() + "/child"),
		datastore.NewKey("/local/cachex/" + key(8).String()),
		datastore.NewKey("/other/" + key(9).String()),
	}
	for _, k := range foreign {
		if err := ds.Put(ctx, k, []byte("garbage")); err != nil {
			t.Fatal(err)
		}
	}

	// A fresh cache over the same store receives the replicated flush.
	c2 := New(Config{Store: ds, TTL: ttl, Now: clk.Now})
	c2.Flush("m1", clk.Now())

	mustMiss(t, c2, key(1), "m1")
	if has, _ := ds.Has(ctx, c2.storeKey(key(1))); has {
		t.Fatal("flushed store entry not deleted lazily by Get")
	}

	n, err := c2.Sweep(ctx)
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if n != 2 {
		t.Fatalf("Sweep removed %d entries, want 2 (flushed key 2, expired key 3)", n)
	}
	for _, k := range []Key{key(2), key(3)} {
		if has, _ := ds.Has(ctx, c2.storeKey(k)); has {
			t.Fatalf("Sweep left stale entry %s", k)
		}
	}
	for _, k := range foreign {
		if has, _ := ds.Has(ctx, k); !has {
			t.Fatalf("Sweep deleted foreign key %s", k)
		}
	}
	mustMiss(t, c2, key(3), "m2")
	mustHit(t, c2, key(4), "m2", []byte("live"))

	if n, err := c2.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("second Sweep = %d, %v; want 0, nil", n, err)
	}
	if s := c2.Stats(); s.StoreErrors != 0 {
		t.Fatalf("unexpected store errors: %+v", s)
	}
}

func TestNonTTLStore(t *testing.T) {
	// MapDatastore has no TTL support: Put is used and expiry is enforced
	// on read and by Sweep.
	ds := datastore.NewMapDatastore()
	clk := newClock()
	ctx := context.Background()
	c1 := New(Config{Store: ds, TTL: time.Minute, Now: clk.Now, Prefix: datastore.NewKey("/custom")})
	c1.Put(ctx, key(1), "m", "1", []byte("a"))
	if has, _ := ds.Has(ctx, datastore.NewKey("/custom/"+key(1).String())); !has {
		t.Fatal("entry not stored under the custom prefix")
	}
	c2 := New(Config{Store: ds, TTL: time.Minute, Now: clk.Now, Prefix: datastore.NewKey("/custom")})
	mustHit(t, c2, key(1), "m", []byte("a"))
	clk.Advance(time.Minute)
	c3 := New(Config{Store: ds, TTL: time.Minute, Now: clk.Now, Prefix: datastore.NewKey("/custom")})
	if n, err := c3.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1, nil", n, err)
	}
	mustMiss(t, c3, key(1), "m")
}

// failingStore fails every write and read.
type failingStore struct{ *datastore.MapDatastore }

var errBroken = errors.New("disk on fire")

func (failingStore) Put(context.Context, datastore.Key, []byte) error { return errBroken }
func (failingStore) Get(context.Context, datastore.Key) ([]byte, error) {
	return nil, errBroken
}

func TestStoreErrorsCountedNotFatal(t *testing.T) {
	c := New(Config{Store: failingStore{datastore.NewMapDatastore()}})
	ctx := context.Background()
	c.Put(ctx, key(1), "m", "1", []byte("a"))
	mustHit(t, c, key(1), "m", []byte("a")) // memory still works
	mustMiss(t, c, key(2), "m")
	if s := c.Stats(); s.StoreErrors != 2 {
		t.Fatalf("StoreErrors = %d, want 2 (one Put, one Get)", s.StoreErrors)
	}
}

func TestCorruptStoreValueIsMiss(t *testing.T) {
	ds := datastore.NewMapDatastore()
	ctx := context.Background()
	c := New(Config{Store: ds})
	for i, v := range [][]byte{nil, {0x7f}, {formatV1, 0xff}, {formatV1, 1, 'm', 0, 1, 2}} {
		if err := ds.Put(ctx, c.storeKey(key(i)), v); err != nil {
			t.Fatal(err)
		}
		mustMiss(t, c, key(i), "m")
	}
	if s := c.Stats(); s.StoreErrors != 4 {
		t.Fatalf("StoreErrors = %d, want 4", s.StoreErrors)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, r := range []record{
		{model: "resnet", version: "3", stamp: 1234567890123, value: []byte("out")},
		{model: "", version: "", stamp: -5, value: nil},
	} {
		got, ok := decode(encode(r))
		if !ok || got.model != r.model || got.version != r.version || got.stamp != r.stamp ||
			!bytes.Equal(got.value, r.value) {
			t.Fatalf("round trip of %+v = %+v, %v", r, got, ok)
		}
	}
}

func TestConcurrentPutGet(t *testing.T) {
	ds := openBadger(t)
	clk := newClock()
	const maxBytes = 4 << 10
	c := New(Config{Store: ds, MaxBytes: maxBytes, Now: clk.Now})
	ctx := context.Background()

	const workers, iters, keys = 8, 300, 64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				n := (w*iters + i) % keys
				model := fmt.Sprintf("m%d", n%4)
				want := []byte(fmt.Sprintf("value-%d", n))
				switch i % 10 {
				case 0:
					c.Flush(model, clk.Now())
				case 1:
					c.DropVersion(model, "1")
				case 2:
					_ = c.Stats()
					_ = c.Seen(model, "1")
				case 3:
					clk.Advance(time.Millisecond)
				case 4, 5:
					c.Put(ctx, key(n), model, "1", want)
				default:
					if got, ok := c.Get(ctx, key(n), model); ok && !bytes.Equal(got, want) {
						t.Errorf("Get(key %d) = %q, want %q", n, got, want)
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	if _, err := c.Sweep(ctx); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	s := c.Stats()
	if s.Bytes > maxBytes || s.Bytes < 0 {
		t.Fatalf("bytes %d outside [0, %d]", s.Bytes, maxBytes)
	}
	if s.StoreErrors != 0 {
		t.Fatalf("store errors under concurrency: %+v", s)
	}
	// Internal consistency: map and list agree, and bytes add up.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Len() != len(c.items) {
		t.Fatalf("lru has %d elements, map %d", c.lru.Len(), len(c.items))
	}
	var sum int64
	for el := c.lru.Front(); el != nil; el = el.Next() {
		sum += el.Value.(*entry).size
	}
	if sum != c.bytes {
		t.Fatalf("bytes %d, entries sum to %d", c.bytes, sum)
	}
}
