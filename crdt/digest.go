package crdt

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"sync"
)

// stateDigest keeps a digest of the replicated key/value state up to date
// as it changes, so every heartbeat can carry it: two peers whose heads are
// equal must hold the same state, and the digest is how they find out that
// they do not. StateHash reads the whole state and is too slow to run once
// a second on a gateway with 100,000 documents; this digest costs one hash
// per change.
//
// It is the sum, modulo 2^128, of a 128-bit hash of each (key, value)
// pair: independent of order, and a key's old term can be taken out when
// it changes, so the dispatcher only needs the key and its new value. The
// sum is not collision-resistant against a peer crafting values on
// purpose; it detects accidents (a half-merged branch, a lost write, a
// corrupted store), which is its job — records are signed separately.
type stateDigest struct {
	mu    sync.Mutex
	terms map[string][2]uint64
	sum   [2]uint64 // hi, lo
	ready bool
	// touched records the changes folded in while a load reads the
	// state (nil when none runs): the read may predate them, so they are
	// applied again on top of it.
	touched map[string][]byte
	added   int64 // see addedKeys
}

func newStateDigest() *stateDigest { return &stateDigest{terms: map[string][2]uint64{}} }

func digestTerm(key string, value []byte) [2]uint64 {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(key)))
	h.Write(n[:])
	h.Write([]byte(key))
	h.Write(value)
	s := h.Sum(nil)
	return [2]uint64{binary.BigEndian.Uint64(s[0:8]), binary.BigEndian.Uint64(s[8:16])}
}

func add128(a, b [2]uint64) [2]uint64 {
	lo := a[1] + b[1]
	carry := uint64(0)
	if lo < a[1] {
		carry = 1
	}
	return [2]uint64{a[0] + b[0] + carry, lo}
}

func sub128(a, b [2]uint64) [2]uint64 {
	lo := a[1] - b[1]
	borrow := uint64(0)
	if a[1] < b[1] {
		borrow = 1
	}
	return [2]uint64{a[0] - b[0] - borrow, lo}
}

// set records that key now holds value (nil: no value). Setting the value
// a key already has changes nothing, so replaying a change is harmless.
func (d *stateDigest) set(key string, value []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.touched != nil {
		d.touched[key] = value
	}
	if _, had := d.terms[key]; d.ready && !had && value != nil && !mayBeFold(value) {
		d.added++
	}
	d.setLocked(key, value)
}

func (d *stateDigest) setLocked(key string, value []byte) {
	if old, ok := d.terms[key]; ok {
		d.sum = sub128(d.sum, old)
		delete(d.terms, key)
	}
	if value != nil {
		t := digestTerm(key, value)
		d.terms[key] = t
		d.sum = add128(d.sum, t)
	}
}

// load starts the digest from a full read of the state. Changes folded in
// while it reads are applied again on top of what it read, in order, so
// the digest ends where the dispatcher is, whichever came first.
func (d *stateDigest) load(ctx context.Context, r *Replica) error {
	d.mu.Lock()
	d.touched = map[string][]byte{}
	d.mu.Unlock()
	fresh := newStateDigest()
	err := r.Scan(ctx, "/", func(key string, value []byte) error {
		fresh.setLocked(key, value) // hashed, not kept
		return nil
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	touched := d.touched
	d.touched = nil
	if err != nil {
		return err
	}
	for k, v := range touched {
		fresh.setLocked(k, v)
	}
	d.terms, d.sum, d.ready = fresh.terms, fresh.sum, true
	return nil
}

// keys returns how many keys hold a value.
func (d *stateDigest) keys() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.terms)
}

// addedKeys returns how many changes gave a value to a key that held
// none, since the replica started: fold records left out, as in
// folds.counted, and none counted before the first load, when the digest
// does not know which keys hold one.
func (d *stateDigest) addedKeys() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.added
}

// value returns the digest, or "" before the first load.
func (d *stateDigest) value() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ready {
		return ""
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], d.sum[0])
	binary.BigEndian.PutUint64(b[8:], d.sum[1])
	return hex.EncodeToString(b[:])
}

// observeState folds one state change into the digest, before the event
// is delivered (so a heartbeat that sees the queue drained sees a digest
// that includes every change queued so far), and returns what the key now
// stores. A put carries the value the key is getting; a delete hook may
// leave another value in place, so the key is read back (once: the
// dispatcher reports that value too). Undecodable values count: they are
// part of the state.
func (r *Replica) observeState(raw rawEvent) ([]byte, error) {
	if raw.typ == EventPut {
		r.digest.set(raw.key, raw.value)
		return raw.value, nil
	}
	b, err := r.getRaw(r.ctx, raw.key)
	switch {
	case err == nil:
		r.digest.set(raw.key, b)
	case errors.Is(err, ErrNotFound):
		r.digest.set(raw.key, nil)
	}
	return b, err
}
