package peer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/pnet"
)

// IdentityFile is the libp2p private key's file name inside the data dir.
const IdentityFile = "identity.key"

// loadIdentity reads the peer's libp2p key from dir, creating an Ed25519
// key (mode 0600) on first start, so the peer id survives restarts.
func loadIdentity(dir string) (crypto.PrivKey, error) {
	path := filepath.Join(dir, IdentityFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("identity %s is corrupt: %w", path, err)
		}
		return k, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read identity: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("write identity: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write identity: %w", err)
	}
	return k, nil
}

// readPSK reads a libp2p private-network key (swarm.key format).
func readPSK(path string) (pnet.PSK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --psk: %v", ErrBadConfig, err)
	}
	defer f.Close()
	psk, err := pnet.DecodeV1PSK(f)
	if err != nil {
		return nil, fmt.Errorf("%w: --psk %s: not a swarm key (/key/swarm/psk/1.0.0/): %v", ErrBadConfig, path, err)
	}
	return psk, nil
}

// NewPSK returns a fresh private-network key in the swarm.key format.
func NewPSK() ([]byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(b) + "\n"), nil
}

// NewEncryptionKey returns a fresh data-at-rest key file's contents: 32
// random bytes (AES-256) in hex.
func NewEncryptionKey() ([]byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return []byte(hex.EncodeToString(b) + "\n"), nil
}

// readEncryptionKey reads a key file written by NewEncryptionKey.
func readEncryptionKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --encrypt-key-file: %v", ErrBadConfig, err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, fmt.Errorf("%w: --encrypt-key-file %s: want 32, 48 or 64 hex digits (AES-128/192/256; `shoal key encryption FILE` makes one)", ErrBadConfig, path)
	}
	return key, nil
}
