// Package sign is the ed25519 identity that everything replicated is signed
// with: the id format ("ed25519:<hex>"), signature verification and the set
// of trusted ids.
//
// It exists so that package crdt, which signs and verifies every record,
// and package crdt/models, which also signs model manifests and
// activations with the same publisher key, share one definition without
// crdt importing models (models imports crdt). Key files stay in models
// (models.Publisher), which satisfies crdt.Signer.
package sign

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Sentinel errors.
var (
	ErrBadKey    = errors.New("malformed publisher key")
	ErrSignature = errors.New("signature does not verify")
)

// ID names a signing key: "ed25519:" + hex of its public key. It is used in
// replicated keys, so it contains no '/'.
type ID string

// IDOf returns the id of a public key.
func IDOf(pub ed25519.PublicKey) ID {
	return ID("ed25519:" + hex.EncodeToString(pub))
}

// ParseID reads an id (with or without the "ed25519:" prefix).
func ParseID(s string) (ed25519.PublicKey, ID, error) {
	raw := strings.TrimPrefix(strings.TrimSpace(s), "ed25519:")
	b, err := hex.DecodeString(raw)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, "", fmt.Errorf("%w: %q: want ed25519:<64 hex digits>", ErrBadKey, s)
	}
	pub := ed25519.PublicKey(b)
	return pub, IDOf(pub), nil
}

// Key is an ed25519 signing key held in memory only. A peer signs with its
// publisher key (models.Publisher, kept in a file); Key is for a signer
// that needs no file: a replica given none, and tests.
type Key struct{ priv ed25519.PrivateKey }

// NewKey generates a key.
func NewKey() *Key {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic("sign: no randomness: " + err.Error()) // crypto/rand does not fail on supported platforms
	}
	return &Key{priv: priv}
}

// ID returns the key's id.
func (k *Key) ID() ID { return IDOf(k.priv.Public().(ed25519.PublicKey)) }

// Sign returns the key's signature of msg.
func (k *Key) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// verified memoises successful checks: every read of a record verifies it
// (the replica admits records on Get, List and every event), and ed25519
// verification would otherwise dominate a read (~50 µs). The memo key
// covers the id, the signature and the signed bytes, so only an identical
// check hits. Bounded: cleared when full.
var verified struct {
	sync.Mutex
	m map[[32]byte]struct{}
}

const maxVerified = 1 << 16

// Verify checks that sig is id's signature of msg (ErrBadKey for an id
// that does not parse, ErrSignature for a signature that does not verify).
func Verify(id ID, msg, sig []byte) error {
	h := sha256.New()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write(sig)
	h.Write([]byte{0})
	h.Write(msg)
	var k [32]byte
	h.Sum(k[:0])
	verified.Lock()
	_, ok := verified.m[k]
	verified.Unlock()
	if ok {
		return nil
	}
	pub, _, err := ParseID(string(id))
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, msg, sig) {
		return ErrSignature
	}
	verified.Lock()
	if verified.m == nil || len(verified.m) >= maxVerified {
		verified.m = make(map[[32]byte]struct{})
	}
	verified.m[k] = struct{}{}
	verified.Unlock()
	return nil
}

// TrustSet is a set of trusted ids that can be replaced while it is read
// (a peer reloads its --trust list on SIGHUP). It is safe for concurrent
// use.
type TrustSet struct {
	mu  sync.RWMutex
	ids map[ID]bool
}

// NewTrustSet returns a set holding ids.
func NewTrustSet(ids ...ID) *TrustSet {
	s := &TrustSet{}
	s.Set(ids...)
	return s
}

// Trusts reports whether id is in the set.
func (s *TrustSet) Trusts(id ID) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ids[id]
}

// Set replaces the set's ids.
func (s *TrustSet) Set(ids ...ID) {
	m := make(map[ID]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	s.mu.Lock()
	s.ids = m
	s.mu.Unlock()
}

// IDs lists the set's ids in order.
func (s *TrustSet) IDs() []ID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]ID, 0, len(s.ids))
	for id := range s.ids {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
