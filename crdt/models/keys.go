package models

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoal-mesh/shoal/crdt/sign"
)

// PublisherKeyFile is the publisher key's file name inside a data dir.
const PublisherKeyFile = "publisher.key"

// Sentinel errors of publisher keys.
var (
	ErrKeyExists = errors.New("publisher key already exists")
	ErrBadKey    = sign.ErrBadKey
)

// PublisherID names a publisher: "ed25519:" + hex of its public key (the
// id format of package sign, shared with the replica's record signatures).
type PublisherID = sign.ID

// IDOf returns the id of a public key.
func IDOf(pub ed25519.PublicKey) PublisherID { return sign.IDOf(pub) }

// ParsePublisherID reads an id (with or without the "ed25519:" prefix).
func ParsePublisherID(s string) (ed25519.PublicKey, PublisherID, error) { return sign.ParseID(s) }

// Publisher is a peer's ed25519 identity: it signs manifests and
// activations, and (as a crdt.Signer) every record the peer writes.
type Publisher struct {
	priv ed25519.PrivateKey
}

// ID returns the publisher's id.
func (p *Publisher) ID() PublisherID { return IDOf(p.priv.Public().(ed25519.PublicKey)) }

// Public returns the public key.
func (p *Publisher) Public() ed25519.PublicKey { return p.priv.Public().(ed25519.PublicKey) }

// Sign returns the publisher's signature of msg.
func (p *Publisher) Sign(msg []byte) []byte { return ed25519.Sign(p.priv, msg) }

const pemType = "SHOAL PUBLISHER KEY"

// NewPublisherKey creates a key file in dir (mode 0600). It refuses to
// overwrite an existing key unless force is set.
func NewPublisherKey(dir string, force bool) (*Publisher, error) {
	path := filepath.Join(dir, PublisherKeyFile)
	if _, err := os.Stat(path); err == nil && !force {
		return nil, fmt.Errorf("%w: %s", ErrKeyExists, path)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: priv.Seed()})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, fmt.Errorf("write publisher key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write publisher key: %w", err)
	}
	return &Publisher{priv: priv}, nil
}

// LoadPublisherKey reads the key file in dir.
func LoadPublisherKey(dir string) (*Publisher, error) {
	path := filepath.Join(dir, PublisherKeyFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != pemType || len(blk.Bytes) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: %s", ErrBadKey, path)
	}
	return &Publisher{priv: ed25519.NewKeyFromSeed(blk.Bytes)}, nil
}

// LoadOrCreatePublisherKey loads the key in dir, creating one on first use.
func LoadOrCreatePublisherKey(dir string) (*Publisher, error) {
	p, err := LoadPublisherKey(dir)
	if errors.Is(err, os.ErrNotExist) {
		return NewPublisherKey(dir, false)
	}
	return p, err
}
