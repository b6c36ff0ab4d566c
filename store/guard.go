package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Badger reports a held directory and a wrong encryption key only as
// text (its errors are flattened with %+v), so the store checks both
// itself, before Badger opens: a lock file of its own and a fingerprint
// of the encryption key. Errors then wrap ErrLocked and ErrEncryptionKey,
// which callers test with errors.Is.

const (
	lockFile  = "LOCK"
	keyCheck  = "ENCRYPTION"
	noKey     = "none"
	keyPrefix = "sha256:"
)

// lockDir takes an exclusive, non-blocking lock on dir for the life of
// the returned file (the lock goes with the process, whatever its end).
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// fingerprint names a key without revealing it: a hash of 16–32 random
// bytes says nothing about them.
func fingerprint(key []byte) string {
	if len(key) == 0 {
		return noKey
	}
	h := sha256.Sum256(append([]byte("shoal data-at-rest key\x00"), key...))
	return keyPrefix + hex.EncodeToString(h[:])
}

// checkKey compares key with the fingerprint the data dir was first
// opened with. A data dir from before fingerprints has none: it is
// recorded at the first successful open (recordKey).
func checkKey(dir string, key []byte) error {
	b, err := os.ReadFile(filepath.Join(dir, keyCheck))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnwritable, dir, err)
	}
	want, got := strings.TrimSpace(string(b)), fingerprint(key)
	switch {
	case want == got:
		return nil
	case want == noKey:
		return fmt.Errorf("%w: %s is not encrypted at rest; open it without --encrypt-key-file", ErrEncryptionKey, dir)
	case got == noKey:
		return fmt.Errorf("%w: %s is encrypted at rest; give its key with --encrypt-key-file", ErrEncryptionKey, dir)
	}
	return fmt.Errorf("%w: %s was encrypted with another key", ErrEncryptionKey, dir)
}

func recordKey(dir string, key []byte) error {
	path := filepath.Join(dir, keyCheck)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(fingerprint(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrUnwritable, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("%w: %v", ErrUnwritable, err)
	}
	return nil
}
