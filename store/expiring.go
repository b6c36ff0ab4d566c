package store

import (
	"errors"
	"fmt"
	"os"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Expiring is a small Badger database of its own, for short-lived state
// that churns (conversation sessions): every entry carries a TTL, so an
// expired one is invisible at once, and DropAll removes the files of a
// database left with nothing live, so the disk comes back to its
// baseline. The peer's main store never sees this state: its Merkle-DAG
// would keep every version of it.
type Expiring struct {
	db *badger.DB
}

// ErrExpiringNotFound: no live entry under the key.
var ErrExpiringNotFound = errors.New("not found")

// OpenExpiring opens (creating if needed) an expiring database in dir,
// encrypted with encKey when it is set (the main store's key). Writes
// are synced: an acknowledged entry survives a power cut.
func OpenExpiring(dir string, encKey []byte) (*Expiring, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, dir, err)
	}
	opts := badger.DefaultOptions(dir).
		WithLogger(nil).
		WithSyncWrites(true).
		WithMemTableSize(8 << 20).
		WithValueThreshold(valueThreshold).
		WithValueLogFileSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(4 << 20).
		WithCompression(options.None)
	if len(encKey) > 0 {
		opts = opts.WithEncryptionKey(encKey).WithIndexCacheSize(4 << 20)
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open expiring store in %s: %w", dir, err)
	}
	return &Expiring{db: db}, nil
}

// Get returns the live value under key, or ErrExpiringNotFound.
func (e *Expiring) Get(key []byte) ([]byte, error) {
	var out []byte
	err := e.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(key)
		if err != nil {
			return err
		}
		out, err = it.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrExpiringNotFound
	}
	return out, err
}

// Put stores val under key until ttl has passed.
func (e *Expiring) Put(key, val []byte, ttl time.Duration) error {
	// Badger keeps expiry in whole seconds, and its WithTTL rounds down,
	// which would hide an entry up to a second before ttl has passed;
	// rounding up keeps it until then (and at most a second longer).
	deadline := time.Now().Add(ttl)
	entry := badger.NewEntry(key, val)
	entry.ExpiresAt = uint64(deadline.Unix())
	if deadline.Nanosecond() > 0 {
		entry.ExpiresAt++
	}
	return e.db.Update(func(txn *badger.Txn) error { return txn.SetEntry(entry) })
}

// Delete removes key.
func (e *Expiring) Delete(key []byte) error {
	return e.db.Update(func(txn *badger.Txn) error { return txn.Delete(key) })
}

// GC rewrites value-log files that are mostly garbage (values replaced
// or expired since), so a database that always holds some live entries
// does not grow without bound.
func (e *Expiring) GC() error {
	for {
		err := e.db.RunValueLogGC(0.5)
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// ScanKeys calls f with the key of every live entry under prefix (nil:
// all), reading no values; key is valid only during the call.
func (e *Expiring) ScanKeys(prefix []byte, f func(key []byte)) error {
	return e.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			f(it.Item().Key())
		}
		return nil
	})
}

// DropAll deletes every entry and the files that held them. Call it only
// once nothing live is left: it takes the database offline for the
// moment it runs.
func (e *Expiring) DropAll() error { return e.db.DropAll() }

// Close closes the database.
func (e *Expiring) Close() error { return e.db.Close() }
