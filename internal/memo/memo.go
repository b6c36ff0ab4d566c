// Package memo is a bounded map from three strings to a value, for
// remembering work that depends only on those bytes: the replica's
// decoded and verified records (crdt, keyed by mesh, key and stored
// bytes) and the registry's checked manifests and activations
// (crdt/models, keyed by key, kind and body). An entry is found by a
// seeded hash of the three and used only if all three are equal, so no
// input crafted by another peer can be taken for a remembered one. It
// imports nothing of the module.
package memo

import (
	"hash/maphash"
	"sync"
)

// Map remembers values by (a, b, c). It is cleared when full: past
// maxEntries entries (0: no bound) or maxBytes bytes (0: no bound), where
// an entry weighs its three keys and the weight its Put names.
type Map[V any] struct {
	seed                 maphash.Seed
	maxEntries, maxBytes int

	mu    sync.Mutex
	m     map[uint64]entry[V]
	bytes int
}

type entry[V any] struct {
	a, b, c string
	v       V
}

// New returns an empty Map with the given bounds.
func New[V any](maxEntries, maxBytes int) *Map[V] {
	return &Map[V]{seed: maphash.MakeSeed(), maxEntries: maxEntries, maxBytes: maxBytes}
}

func (c *Map[V]) hash(a, b string, v []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(a)
	h.WriteByte(0)
	h.WriteString(b)
	h.WriteByte(0)
	h.Write(v)
	return h.Sum64()
}

// Get returns the value remembered for (a, b, v).
func (c *Map[V]) Get(a, b string, v []byte) (V, bool) {
	h := c.hash(a, b, v)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[h]
	if !ok || e.a != a || e.b != b || e.c != string(v) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put remembers val for (a, b, v); weight is what val holds beyond the
// keys (bytes it does not share with them), counted against maxBytes.
func (c *Map[V]) Put(a, b string, v []byte, val V, weight int) {
	h := c.hash(a, b, v)
	size := len(a) + len(b) + len(v) + weight
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || (c.maxEntries > 0 && len(c.m) >= c.maxEntries) || (c.maxBytes > 0 && c.bytes+size > c.maxBytes) {
		c.m, c.bytes = map[uint64]entry[V]{}, 0
	}
	c.m[h] = entry[V]{a: a, b: b, c: string(v), v: val}
	c.bytes += size
}
