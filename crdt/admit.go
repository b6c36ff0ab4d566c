package crdt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/internal/memo"
)

// Admission decides which of the bytes stored under a key is a record this
// replica shows to anyone. Every read path (Get, List, Scan through
// ScanAdmitted, the dispatcher) goes through admit, so the rules for what
// enters the visible state live here:
//
//  1. The record decodes (size, schema, required fields: DecodeRecord).
//  2. It is signed (ErrUnsigned) and the signature verifies over its mesh,
//     key and fields (ErrForged: tampered, or moved to another key).
//  3. Its signer is trusted (ErrUntrusted).
//  4. Its HLC is at most MaxClockSkew ahead of this peer's clock
//     (ErrFuture): a trusted writer with a runaway clock cannot pin a key
//     for as long as its clock is ahead.
//  5. It is not a replay (ErrReplayed). go-ds-crdt shows, for each key,
//     the value of the element with the greatest DAG height; anyone who
//     can reach the mesh can publish a new block at any height holding a
//     copy of an old signed record, which would then win everywhere. A
//     writer stamps every write with a fresh HLC, so a record is one
//     (HLC, signer) identity: a record is counted once, at the height of
//     its first publication (its lowest element). A deleted record stays
//     deleted because its tombstone, a record too, was first published
//     above it (deletes.go).
//
// go-ds-crdt's own tombstones are unsigned and ignored (deletes.go): the
// key's elements decide whether any of them is tombstoned. A shown
// tombstone reads as not found, wrapping ErrDeleted.
//
// When the value go-ds-crdt shows is refused, the key shows the best
// record admission accepts among all of the key's elements (greatest
// height of first publication, then greatest bytes, as go-ds-crdt breaks
// ties) — so an untrusted or replayed overwrite does not even hide the
// record it tried to replace — or nothing, and Get answers ErrNotFound
// wrapping the reason.
//
// Every rule is a function of the DAG (and of the trust set and the
// clock), never of the order in which this peer happened to merge it, so
// peers that hold the same DAG show the same records, also after a
// restart. Without replays, rule 5 picks exactly go-ds-crdt's value, so
// honest concurrent writes still resolve as they always did. What it
// cannot do is raise an event for a change no go-ds-crdt hook reports:
// see docs/architecture.md ("Signed records").

// Sentinel errors: why admission refused a record. A read of a key whose
// records are all refused returns ErrNotFound wrapping one of them.
var (
	ErrUnsigned  = errors.New("record is not signed")
	ErrForged    = errors.New("record signature does not verify for its key")
	ErrUntrusted = errors.New("record signed by a key this peer does not trust")
	ErrFuture    = errors.New("record stamped too far ahead of this peer's clock")
	ErrReplayed  = errors.New("record replayed: a copy of an older or deleted record")
)

// Rejection reasons, the label values of shoal_rejected_records_total.
const (
	ReasonUnsigned  = "unsigned"
	ReasonForged    = "forged"
	ReasonUntrusted = "untrusted"
	ReasonFuture    = "future"
	ReasonReplayed  = "replayed"
)

// RejectReasons lists every reason of Rejections.
var RejectReasons = []string{ReasonUnsigned, ReasonForged, ReasonUntrusted, ReasonFuture, ReasonReplayed}

// Rejections count the distinct records admission refused, by reason
// (undecodable and oversize records are Counters.BadRecords and
// OversizeRecords).
type Rejections struct {
	Unsigned, Forged, Untrusted, Future, Replayed uint64
}

// Of returns the count of one reason (0 for an unknown one).
func (c Rejections) Of(reason string) uint64 {
	switch reason {
	case ReasonUnsigned:
		return c.Unsigned
	case ReasonForged:
		return c.Forged
	case ReasonUntrusted:
		return c.Untrusted
	case ReasonFuture:
		return c.Future
	case ReasonReplayed:
		return c.Replayed
	}
	return 0
}

// Signer signs the records this replica writes. A *models.Publisher, the
// peer's publisher key, is one; so is a *sign.Key.
type Signer interface {
	ID() sign.ID
	Sign(msg []byte) []byte
}

// Trust says which signers' records this replica admits; a
// *sign.TrustSet is one. The replica's own signer is always trusted.
type Trust interface {
	Trusts(id sign.ID) bool
}

// admission is a replica's admission state: which refused records were
// counted already, so a record read again (every List) counts once.
type admission struct {
	mu      sync.Mutex
	counted map[[16]byte]struct{}
}

const maxCounted = 1 << 16

// check applies rules 1–4 to one stored value of key.
func (r *Replica) check(key string, value []byte) (Record, error) {
	rec, err := r.verified(key, value)
	if err != nil {
		return rec, err
	}
	if rec.Signer != r.self && !r.cfg.Trust.Trusts(rec.Signer) {
		return rec, fmt.Errorf("%w: %s", ErrUntrusted, rec.Signer)
	}
	// Measured against the HLC, not the wall clock: the HLC already
	// follows the fastest clock heard in the mesh (within MaxClockSkew),
	// so a trusted writer whose records carry that lead is not refused by
	// a reader whose own clock runs a little slow.
	if ahead := time.Duration(rec.HLC.Wall - r.clock.Peek().Wall); ahead > r.cfg.MaxClockSkew {
		return rec, fmt.Errorf("%w: %v ahead (bound %v)", ErrFuture, ahead.Round(time.Millisecond), r.cfg.MaxClockSkew)
	}
	return rec, nil
}

// verified applies rules 1 and 2: the record value holds, decoded, with
// a signature that verifies for key. Both depend only on the bytes, so
// the answer is remembered (decodedRecords): a model's state is read as a
// List of every record it has, on every change, and decoding them again
// each time was most of that read.
func (r *Replica) verified(key string, value []byte) (Record, error) {
	if rec, ok := decodedRecords.Get(r.cfg.Mesh, key, value); ok {
		return rec, nil
	}
	rec, err := DecodeRecord(value)
	if err != nil {
		return rec, err
	}
	if rec.Signer == "" || len(rec.Sig) == 0 {
		return rec, ErrUnsigned
	}
	if err := sign.Verify(rec.Signer, rec.SigningBytes(r.cfg.Mesh, key), rec.Sig); err != nil {
		return rec, fmt.Errorf("%w: %v", ErrForged, err)
	}
	decodedRecords.Put(r.cfg.Mesh, key, value, rec, len(value)) // the record holds a decoded copy
	return rec, nil
}

// decodedRecords remembers verified records by mesh, key and bytes,
// shared by the process's replicas. Callers share the Body and Sig of
// what it returns and must not modify them. Bounded by the bytes it
// holds, like the signature memo it sits in front of.
var decodedRecords = memo.New[Record](0, 8<<20)

// admit returns the record key shows, given the bytes go-ds-crdt holds
// under it (see above).
func (r *Replica) admit(key string, value []byte) (Record, error) {
	rec, _, err := r.admitted(r.ctx, key, value)
	return rec, err
}

// admitted returns the record key shows and its bytes, given value, the
// bytes go-ds-crdt holds under it; refused: an error wrapping ErrNotFound
// and the reason. A reader of many keys uses ScanAdmitted.
func (r *Replica) admitted(ctx context.Context, key string, value []byte) (Record, []byte, error) {
	els, err := r.elements(ctx, key)
	if err != nil {
		return Record{}, nil, err
	}
	return r.admittedAmong(ctx, key, value, els)
}

// admittedAmong is admitted given the key's elements. value is nil when
// go-ds-crdt shows nothing for a key that unsigned tombstones hid.
func (r *Replica) admittedAmong(ctx context.Context, key string, value []byte, els []element) (Record, []byte, error) {
	// hidden: unsigned tombstones may have made go-ds-crdt show an older
	// element than the newest, or none: the elements decide.
	hidden := r.rawDel.has(key)
	var rec Record
	why := errNoValue
	if value != nil {
		rec, why = r.check(key, value)
	}
	// A fold record stands for the record it carries (fold.go).
	folded := why == nil && rec.Kind == KindFold
	doubt := notDoubtful
	if why == nil && !folded && len(els) > 1 {
		var err error
		if doubt, err = r.doubtful(ctx, key, rec, els); err != nil {
			return Record{}, nil, err
		}
	}
	if why == nil && !folded && doubt == notDoubtful && !hidden {
		return shown(key, rec, value) // the common case
	}
	// The value is refused, or its record was published more than once
	// or is older than one a fold carries, or is a fold, or tombstones
	// are to be ignored: let the key's elements decide.
	best, bestVal, found, err := r.resolve(ctx, key, els, nil)
	if err != nil {
		return Record{}, nil, err
	}
	switch {
	case why == nil && !folded && found && identityOf(best) == identityOf(rec):
		return shown(key, best, bestVal) // a copy of the key's own record: harmless
	case why == nil && doubt == republished:
		why = ErrReplayed
	case why == nil && doubt == superseded && r.stillShown(ctx, key, value):
		// Published after the fold that carries a newer record of its
		// signer: a replay. (A put event's value that go-ds-crdt no
		// longer shows is merely old news: its event reports best.)
		why = ErrReplayed
	case why == nil, why == errNoValue:
		// go-ds-crdt showed a fold, an older record than the newest, or
		// none, only because of unsigned tombstones: nothing was refused.
		why = nil
	}
	if why != nil {
		r.refuse(key, value, why)
	}
	if found {
		return shown(key, best, bestVal)
	}
	if why == nil {
		return Record{}, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return Record{}, nil, fmt.Errorf("%w: %s: %w", ErrNotFound, key, why)
}

// errNoValue stands for the missing value of a key go-ds-crdt shows none
// for; it is never returned.
var errNoValue = errors.New("no value")

// shown is what a key whose admitted record is rec shows: rec, or nothing
// when rec is a tombstone.
func shown(key string, rec Record, value []byte) (Record, []byte, error) {
	if rec.Deleted() {
		return Record{}, nil, fmt.Errorf("%w: %s: %w", ErrNotFound, key, ErrDeleted)
	}
	return rec, value, nil
}

// doubt is why admission cannot take go-ds-crdt's value as it is.
type doubt int

const (
	notDoubtful doubt = iota
	republished       // another element holds the same record
	superseded        // a fold carries a newer record of the same signer
)

// doubtful reports whether another element of key holds id's record too
// (a replay, or a harmless re-publication) or a fold carries a newer
// record of the same signer (rec's first publication was pruned, so the
// fold's record is what tells it is old): resolve must decide. It reads
// identities without verifying them, so it may doubt for nothing, never
// the other way round.
func (r *Replica) doubtful(ctx context.Context, key string, rec Record, els []element) (doubt, error) {
	id := identityOf(rec)
	holders := 0
	for _, e := range els {
		ids, err := r.identitiesOf(ctx, key, e)
		if err != nil {
			return notDoubtful, err
		}
		here := false
		for _, x := range ids {
			switch {
			case x.identity == id:
				here = true
			case x.carried && x.signer == id.signer && id.hlc.Compare(x.hlc) < 0:
				return superseded, nil
			}
		}
		if here {
			holders++
		}
		if holders > 1 {
			return republished, nil
		}
	}
	return notDoubtful, nil
}

// stillShown reports whether go-ds-crdt still shows value under key.
func (r *Replica) stillShown(ctx context.Context, key string, value []byte) bool {
	now, err := r.getRaw(ctx, key)
	return err == nil && bytes.Equal(now, value)
}

// candidate is a record some element of a key holds.
type candidate struct {
	rec   Record
	value []byte
	prio  uint64 // height of the record's first publication
}

// resolve picks the record key shows from all of its elements, tombstoned
// or not: among the records that pass check, the one first published at
// the greatest height, then with the greatest bytes. It reads every
// element's block, so it runs only when go-ds-crdt's own choice is
// refused or in doubt. Elements holding exactly the bytes exclude (when
// not nil) are left out.
func (r *Replica) resolve(ctx context.Context, key string, els []element, exclude []byte) (Record, []byte, bool, error) {
	cands, err := r.candidates(ctx, key, els, exclude, r.check)
	if err != nil {
		return Record{}, nil, false, err
	}
	var best *candidate
	for _, c := range cands {
		if best == nil || c.prio > best.prio || (c.prio == best.prio && bytes.Compare(c.value, best.value) > 0) {
			best = c
		}
	}
	if best == nil {
		return Record{}, nil, false, nil
	}
	return best.rec, best.value, true, nil
}

// candidates collects the distinct records key's elements hold that
// accept admits (check; Fold takes every verified record, whose trust
// each reader decides), each at the height of its first publication, and
// drops every one older than another record of the same signer: a writer
// stamps its records with an increasing HLC and writes each above its
// previous one, so an older record reappearing is a replay. Fold records
// count as the records they carry, at the heights they carry, and only
// when check admits the fold itself. Elements whose block was pruned
// since they were listed are skipped.
func (r *Replica) candidates(ctx context.Context, key string, els []element, exclude []byte, accept func(string, []byte) (Record, error)) (map[identity]*candidate, error) {
	byID := map[identity]*candidate{}
	add := func(rec Record, value []byte, prio uint64) {
		id := identityOf(rec)
		c, ok := byID[id]
		if !ok {
			byID[id] = &candidate{rec: rec, value: value, prio: prio}
			return
		}
		if prio < c.prio || (prio == c.prio && bytes.Compare(value, c.value) > 0) {
			c.rec, c.value, c.prio = rec, value, prio
		}
	}
	for _, e := range els {
		d, err := r.delta(ctx, e)
		if errors.Is(err, errPrunedBlock) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, el := range d.GetElements() {
			v := el.GetValue()
			if el.GetKey() != key || (exclude != nil && bytes.Equal(v, exclude)) {
				continue
			}
			if mayBeFold(v) {
				rec, inner, prio, ok, err := r.unfold(key, v, accept)
				if ok {
					if err == nil {
						add(rec, inner, prio)
					}
					continue
				}
			}
			if rec, err := accept(key, v); err == nil {
				add(rec, v, d.GetPriority())
			}
		}
	}
	newest := map[string]HLC{}
	for id := range byID {
		if h, ok := newest[id.signer]; !ok || h.Compare(id.hlc) < 0 {
			newest[id.signer] = id.hlc
		}
	}
	for id := range byID {
		if id.hlc.Compare(newest[id.signer]) < 0 {
			delete(byID, id)
		}
	}
	return byID, nil
}

// unfold returns the record a fold record value carries, with its bytes
// and first height, if check admits the fold and accept the record; ok
// is false when value is no fold at all.
func (r *Replica) unfold(key string, value []byte, accept func(string, []byte) (Record, error)) (rec Record, inner []byte, height uint64, ok bool, err error) {
	if fold, err := r.verified(key, value); err != nil || fold.Kind != KindFold {
		return Record{}, nil, 0, false, nil
	}
	fold, err := r.check(key, value)
	if err != nil {
		return Record{}, nil, 0, true, err
	}
	b, err := decodeFold(fold)
	if err != nil {
		return Record{}, nil, 0, true, err
	}
	if rec, err = accept(key, b.Record); err == nil && rec.Kind == KindFold {
		err = fmt.Errorf("%w: a fold of a fold", ErrBadRecord)
	}
	return rec, b.Record, b.Height, true, err
}

// refuse counts a refused value by reason, once per distinct value.
func (r *Replica) refuse(key string, value []byte, why error) {
	h := sha256.New()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write(value)
	var k [16]byte
	copy(k[:], h.Sum(nil))
	a := &r.adm
	a.mu.Lock()
	if _, seen := a.counted[k]; seen {
		a.mu.Unlock()
		return
	}
	if a.counted == nil || len(a.counted) >= maxCounted {
		a.counted = map[[16]byte]struct{}{}
	}
	a.counted[k] = struct{}{}
	a.mu.Unlock()
	r.count(func(c *Counters) {
		switch {
		case errors.Is(why, ErrRecordTooLarge):
			c.OversizeRecords++
		case errors.Is(why, ErrBadRecord):
			c.BadRecords++
		case errors.Is(why, ErrUnsigned):
			c.Rejected.Unsigned++
		case errors.Is(why, ErrForged):
			c.Rejected.Forged++
		case errors.Is(why, ErrUntrusted):
			c.Rejected.Untrusted++
		case errors.Is(why, ErrFuture):
			c.Rejected.Future++
		case errors.Is(why, ErrReplayed):
			c.Rejected.Replayed++
		}
	})
	r.log.Warn("record refused", "key", key, "err", why)
}

// ScanAdmitted calls f with the record every key under prefix shows and
// its bytes — what Get would answer — in no particular order, f never
// running twice at once. Admission runs on every core: a start-up scan of
// a large collection verifies every signature. value is valid only
// during the call. An error from f ends the scan.
func (r *Replica) ScanAdmitted(ctx context.Context, prefix string, f func(key string, rec Record, value []byte) error) error {
	return r.ScanAdmittedKnown(ctx, prefix, nil, f)
}

// ScanAdmittedKnown is ScanAdmitted for a caller that already knows some
// records were admitted: a stored value for which known reports true is
// handed to f as it is, with a zero Record, without being admitted again
// (verifying a signature costs ~65 µs; a start-up reading 100,000
// documents it had applied before paid 3 s for it). known must only vouch
// for bytes admitted under the same trust set (TrustFingerprint).
func (r *Replica) ScanAdmittedKnown(ctx context.Context, prefix string, known func(key string, value []byte) bool, f func(key string, rec Record, value []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type kv struct {
		key   string
		value []byte
	}
	// The keys' elements in one pass rather than a query per key.
	elems, err := r.elementsUnder(ctx, prefix)
	if err != nil {
		return err
	}
	in := make(chan kv, 256)
	var (
		wg    sync.WaitGroup
		fmu   sync.Mutex
		ferr  error
		once  sync.Once
		fail  = func(err error) { once.Do(func() { ferr = err; cancel() }) }
		calls = func(key string, rec Record, value []byte) {
			fmu.Lock()
			defer fmu.Unlock()
			if ctx.Err() != nil {
				return
			}
			if err := f(key, rec, value); err != nil {
				fail(err)
			}
		}
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range in {
				if known != nil && e.value != nil && known(e.key, e.value) {
					calls(e.key, Record{}, e.value)
					continue
				}
				rec, val, err := r.admittedAmong(ctx, e.key, e.value, elems[e.key])
				switch {
				case errors.Is(err, ErrNotFound):
				case err != nil:
					fail(err)
				default:
					calls(e.key, rec, val)
				}
			}
		}()
	}
	err = r.scanShown(ctx, prefix, func(key string, value []byte) error {
		select {
		case in <- kv{key, bytes.Clone(value)}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(in)
	wg.Wait()
	if ferr != nil {
		return ferr
	}
	return err
}

// signed signs rec for key with the replica's Signer and encodes it (Put
// and PutBatch).
func (r *Replica) signed(key string, rec Record) ([]byte, error) {
	rec.Signer = r.self
	rec.Sig = r.cfg.Signer.Sign(rec.SigningBytes(r.cfg.Mesh, key))
	return rec.Encode()
}

// defaultSigning fills in Config.Signer and Trust (setDefaults).
func (c *Config) defaultSigning() {
	if c.Signer == nil {
		c.Signer = sign.NewKey()
	}
	if c.Trust == nil {
		c.Trust = sign.NewTrustSet()
	}
}

// TrustFingerprint names the signers this replica admits (its own and the
// trusted ones): equal across runs exactly when admission would decide
// the same about a signer. Empty when the trust set cannot be listed (a
// Trust that is not a *sign.TrustSet), in which case nothing may be taken
// as known admitted.
func (r *Replica) TrustFingerprint() string {
	ts, ok := r.cfg.Trust.(interface{ IDs() []sign.ID })
	if !ok {
		return ""
	}
	ids := append(ts.IDs(), r.cfg.Signer.ID())
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	h := sha256.New()
	h.Write([]byte(r.cfg.Mesh))
	for _, id := range ids {
		h.Write([]byte{0})
		h.Write([]byte(id))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
