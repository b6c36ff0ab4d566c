package crdt

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	ds "github.com/ipfs/go-datastore"
)

// Signed deletes. go-ds-crdt deletes a key by tombstoning its elements:
// a delta naming element ids, unsigned, that anyone who can reach the mesh
// can publish — a peer without a trusted key could delete every document.
// Shoal therefore never deletes that way. Replica.Delete writes a
// tombstone instead: a signed record (TombstoneVersion, KindDeleted, no
// body) put under the key like any value, so it is admitted by the same
// rules as every other record — signed, trusted, not from the future, not
// a replay — and it takes effect as the key's newest record does (the one
// first published at the greatest height; admit.go). A key whose shown
// record is a tombstone reads as not found (ErrNotFound wrapping
// ErrDeleted), is not listed, and reaches subscribers as a delete.
//
// go-ds-crdt's own tombstones are ignored: admission chooses among all of
// a key's elements, tombstoned or not, so an unsigned delete changes
// nothing a reader sees. Each one that arrives is counted as an unsigned
// record (once per key) and logged. go-ds-crdt no longer shows a value
// for a key all of whose elements were tombstoned, so rawDeletes
// remembers which keys have raw tombstones: their reads, lists and scans
// ask the elements instead.
//
// Deletes made before this release were such raw tombstones. The first
// start of a store under this release (signedDeletesKey absent) writes a
// signed tombstone for every key go-ds-crdt shows as deleted while its
// elements still hold an admitted record, so what was deleted stays
// deleted here and, wherever this peer is trusted, on every peer. A key
// whose newest element was deleted while an older one was not (a delete
// concurrent with a write that landed lower in the DAG) shows the newest
// record again; see docs/architecture.md.

// ErrDeleted is wrapped, with ErrNotFound, by reads of a deleted key.
var ErrDeleted = errors.New("record deleted")

// errUnsignedDelete says why a raw go-ds-crdt tombstone was ignored.
var errUnsignedDelete = fmt.Errorf("%w: a delete without a signed tombstone (from a release before signed deletes, or a hostile peer) is ignored", ErrUnsigned)

// signedDeletesKey marks a store whose legacy deletes were migrated. It
// lies outside go-ds-crdt's namespace, so a state rebuild (resetState)
// keeps it: a rebuild must never turn tombstones that arrived since into
// signed deletes.
var signedDeletesKey = ds.NewKey("/crdt-deletes/signed")

// rawDeletes is the set of keys under which go-ds-crdt holds a tombstone.
// It only grows: a key in it merely takes admission's slower path. Every
// read of a key asks it (has), so readers share the lock.
type rawDeletes struct {
	mu   sync.RWMutex
	keys map[string]struct{}
}

// load fills the set from the tombstones in the store (at Open, before
// go-ds-crdt merges anything).
func (d *rawDeletes) load(ctx context.Context, store ds.Datastore) error {
	keys, err := tombstonedKeys(ctx, store)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.keys = keys
	d.mu.Unlock()
	return nil
}

func (d *rawDeletes) add(key string) {
	d.mu.Lock()
	if d.keys == nil {
		d.keys = map[string]struct{}{}
	}
	d.keys[key] = struct{}{}
	d.mu.Unlock()
}

func (d *rawDeletes) has(key string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	_, ok := d.keys[key]
	return ok
}

// under returns the keys of the set that a scan of prefix covers (a
// datastore prefix is a path: "/a" covers "/a/b", not "/ab").
func (d *rawDeletes) under(prefix string) map[string]struct{} {
	p := strings.TrimSuffix(prefix, "/")
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := map[string]struct{}{}
	for k := range d.keys {
		if p == "" || k == p || strings.HasPrefix(k, p+"/") {
			out[k] = struct{}{}
		}
	}
	return out
}

// tombstone returns the signed tombstone of key for a delete stamped h.
func (r *Replica) tombstone(key string, h HLC) ([]byte, error) {
	return r.signed(key, Record{V: TombstoneVersion, Kind: KindDeleted, HLC: h, Writer: r.cfg.Self.String()})
}

// shows reports whether key shows a record here (a delete of a key that
// shows none publishes nothing).
func (r *Replica) shows(ctx context.Context, key string) (bool, error) {
	_, err := r.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// migrateDeletes writes, once per store, a signed tombstone for every key
// that a raw tombstone of an earlier release deleted (see above). A state
// still being rebuilt in the background is not migrated yet: the next
// start does it.
func (r *Replica) migrateDeletes(ctx context.Context) error {
	if done, err := r.cfg.Datastore.Has(ctx, signedDeletesKey); err != nil || done {
		return err
	}
	if r.ds.IsDirty(ctx) {
		return nil
	}
	var ops []Op
	for _, k := range slices.Sorted(maps.Keys(r.rawDel.under("/"))) {
		if _, err := r.ds.Get(ctx, ds.NewKey(k)); !errors.Is(err, ds.ErrNotFound) {
			continue // go-ds-crdt shows a value (or failed): not deleted
		}
		if shows, err := r.shows(ctx, k); err != nil {
			return err
		} else if shows {
			ops = append(ops, Op{Key: k, Delete: true})
		}
	}
	if len(ops) > 0 {
		if _, err := r.PutBatch(ctx, ops); err != nil {
			return fmt.Errorf("sign the deletes of an earlier release: %w", err)
		}
		r.log.Info("deletes of an earlier release signed again as tombstones", "keys", len(ops))
	}
	if err := r.cfg.Datastore.Put(ctx, signedDeletesKey, []byte("1")); err != nil {
		return err
	}
	return r.cfg.Datastore.Sync(ctx, signedDeletesKey)
}
