package crdt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ipfs/boxo/datastore/dshelp"
	cid "github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
	ipld "github.com/ipfs/go-ipld-format"
)

// go-ds-crdt keeps, besides the value it shows for a key, every element
// ever added under it: <Namespace>/s/s/<key>/<block> for the element that
// delta block <block> added, <Namespace>/s/t/<key>/<block> once a delete
// tombstoned it, and the element's value and priority (DAG height) in the
// block itself. Admission reads them to tell a replayed record from a new
// one (admit.go); tombstones are unsigned and it ignores them, but
// rawDeletes asks which keys have any (tombstonedKeys, deletes.go). Like
// Processed, this layout is internal to the pinned version (v0.6.5): it is
// read here and nowhere else, and TestElementsLayout guards it.

var (
	elemsNamespace = Namespace.ChildString("s").ChildString("s")
	tombsNamespace = Namespace.ChildString("s").ChildString("t")
)

// element is one delta block's addition under a key.
type element struct {
	block string // the block's datastore key segment (base32 multihash)
}

// elements lists the elements of key, tombstoned or not. The query's
// prefix also covers the elements of key's descendants (a collection
// spec's key is a prefix of its documents'); block ids are base32
// (A–Z, 2–7), so the scan stops at the first child segment that sorts
// after 'Z' — the lower-case segments of Shoal's key spaces ("docs",
// "versions", "current") — instead of reading every descendant.
func (r *Replica) elements(ctx context.Context, key string) ([]element, error) {
	prefix := elemsNamespace.String() + key
	res, err := r.cfg.Datastore.Query(ctx, query.Query{Prefix: prefix, KeysOnly: true, Orders: []query.Order{query.OrderByKey{}}})
	if err != nil {
		return nil, fmt.Errorf("crdt elements of %s: %w", key, err)
	}
	defer res.Close()
	var out []element
	for e := range res.Next() {
		if e.Error != nil {
			return nil, fmt.Errorf("crdt elements of %s: %w", key, e.Error)
		}
		rest, ok := strings.CutPrefix(e.Key, prefix+"/")
		if !ok || rest == "" {
			continue
		}
		if rest[0] > 'Z' {
			break
		}
		if !strings.Contains(rest, "/") {
			out = append(out, element{block: rest})
		}
	}
	return out, nil
}

// elementsUnder lists the elements of every key under prefix (as Scan
// reads prefix), by key, in one pass.
func (r *Replica) elementsUnder(ctx context.Context, prefix string) (map[string][]element, error) {
	ns := elemsNamespace.String()
	res, err := r.cfg.Datastore.Query(ctx, query.Query{Prefix: ns + ds.NewKey(prefix).String(), KeysOnly: true})
	if err != nil {
		return nil, fmt.Errorf("crdt elements under %s: %w", prefix, err)
	}
	defer res.Close()
	out := map[string][]element{}
	for e := range res.Next() {
		if e.Error != nil {
			return nil, fmt.Errorf("crdt elements under %s: %w", prefix, e.Error)
		}
		i := strings.LastIndexByte(e.Key, '/')
		if i <= len(ns) {
			continue
		}
		key := e.Key[len(ns):i]
		out[key] = append(out[key], element{block: e.Key[i+1:]})
	}
	return out, nil
}

// tombstonedKeys lists the keys under which go-ds-crdt holds a tombstone.
func tombstonedKeys(ctx context.Context, store ds.Datastore) (map[string]struct{}, error) {
	ns := tombsNamespace.String()
	res, err := store.Query(ctx, query.Query{Prefix: ns + "/", KeysOnly: true})
	if err != nil {
		return nil, fmt.Errorf("crdt tombstones: %w", err)
	}
	defer res.Close()
	keys := map[string]struct{}{}
	for e := range res.Next() {
		if e.Error != nil {
			return nil, fmt.Errorf("crdt tombstones: %w", e.Error)
		}
		if i := strings.LastIndexByte(e.Key, '/'); i > len(ns) {
			keys[e.Key[len(ns):i]] = struct{}{}
		}
	}
	return keys, nil
}

// delta reads the delta of an element's block from the local blockstore
// (a merged element's block is always there), or from r.deltas. The
// delta returned may be shared: callers must not change it.
func (r *Replica) delta(ctx context.Context, e element) (*crdtpb.Delta, error) {
	mh, err := dshelp.DsKeyToMultihash(ds.NewKey(e.block))
	if err != nil {
		return nil, fmt.Errorf("element block %s: %w", e.block, err)
	}
	c := cid.NewCidV1(cid.DagProtobuf, mh)
	d, gen, ok := r.deltas.get(c)
	if ok {
		return d, nil
	}
	blk, err := r.cfg.Local.Get(ctx, c)
	if ipld.IsNotFound(err) && r.pruned(ctx, c) {
		return nil, fmt.Errorf("%w: %s", errPrunedBlock, c)
	}
	if err != nil {
		return nil, fmt.Errorf("read block %s: %w", c, err)
	}
	if _, d, err = decodeDelta(blk); err != nil {
		return nil, err
	}
	r.deltas.add(gen, c, d)
	return d, nil
}

// errPrunedBlock: an element's block was pruned (fold.go) after the
// element was listed; the element is gone with it.
var errPrunedBlock = errors.New("block pruned")

// identity names one written record: a writer stamps every write with a
// new HLC, so two elements holding the same (HLC, signer) hold copies of
// one record — one of them a replay.
type identity struct {
	hlc    HLC
	signer string
}

func identityOf(rec Record) identity { return identity{rec.HLC, string(rec.Signer)} }

// held is the identity of a record an element holds, and whether a fold
// record carries it (fold.go).
type held struct {
	identity
	carried bool
}

// heldIdentity is the identity of the record value holds, or carries
// when it is a fold record; it is not verified.
func heldIdentity(value []byte) (held, bool) {
	rec, err := DecodeRecord(value)
	if err != nil {
		return held{}, false
	}
	if rec.Kind != KindFold {
		return held{identity: identityOf(rec)}, true
	}
	b, err := decodeFold(rec)
	if err != nil {
		return held{}, false
	}
	if rec, err = DecodeRecord(b.Record); err != nil {
		return held{}, false
	}
	return held{identity: identityOf(rec), carried: true}, true
}

// identities caches, per block, the identities of the records the block
// added under each key. Blocks are immutable and named by their hash, so
// an entry never goes stale and the cache is shared by every replica of
// the process. It spares a replica reading a block again on each read of
// a key with several elements (a document updated, a cache-flush scope).
// Bounded: cleared when full.
var identities struct {
	sync.Mutex
	blocks map[string]map[string][]held // block → key → identities
	n      int
}

const maxIdentities = 1 << 18

// identitiesOf returns the identities of the records e's block added
// under key (undecodable values have none).
func (r *Replica) identitiesOf(ctx context.Context, key string, e element) ([]held, error) {
	identities.Lock()
	byKey, ok := identities.blocks[e.block]
	identities.Unlock()
	if ok {
		return byKey[key], nil
	}
	d, err := r.delta(ctx, e)
	if errors.Is(err, errPrunedBlock) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// Every key of the block at once: a batch block holds hundreds of
	// documents, and a start-up scan asks about each in turn.
	byKey = map[string][]held{}
	n := 0
	for _, el := range d.GetElements() {
		if id, ok := heldIdentity(el.GetValue()); ok {
			byKey[el.GetKey()] = append(byKey[el.GetKey()], id)
			n++
		}
	}
	identities.Lock()
	if identities.blocks == nil || identities.n+n > maxIdentities {
		identities.blocks, identities.n = map[string]map[string][]held{}, 0
	}
	identities.blocks[e.block] = byKey
	identities.n += n
	identities.Unlock()
	return byKey[key], nil
}
