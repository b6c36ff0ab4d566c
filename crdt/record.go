package crdt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/shoal-mesh/shoal/crdt/sign"
)

// RecordVersion is the schema version written into every record that holds
// a value. Readers refuse versions they do not know rather than guess at
// their meaning.
const RecordVersion = 1

// TombstoneVersion is the schema version of a tombstone, the signed record
// a delete writes in the key's place (see deletes.go). It is a version of
// its own so that peers of releases before signed deletes refuse it as
// unknown rather than hand a record of an unknown kind to their
// subscribers.
const TombstoneVersion = 2

// KindDeleted is the kind of every tombstone; no other record has it.
const KindDeleted = "shoal.deleted"

// FoldVersion is the schema version of a fold record, which carries
// another record across pruned history (see fold.go). Like tombstones it
// is a version of its own, so releases that do not know folds refuse
// them rather than show them.
const FoldVersion = 3

// KindFold is the kind of every fold record; no other record has it.
const KindFold = "shoal.fold"

// maxFoldRecordSize caps an encoded fold record: one record of up to
// MaxRecordSize and the fold's few fields around it.
const maxFoldRecordSize = MaxRecordSize + 16<<10

// MaxRecordSize caps an encoded record. go-ds-crdt packs records into DAG
// blocks that travel by bitswap, which refuses blocks over 2 MiB, and a
// delta over MaxBatchDeltaSize is only split after the fact; records hold
// references (CIDs), never artifacts, so they stay far below this.
const MaxRecordSize = 256 << 10

// Sentinel errors for record decoding and lookups.
var (
	ErrNotFound       = errors.New("record not found")
	ErrRecordTooLarge = errors.New("record too large")
	ErrBadRecord      = errors.New("malformed record")
)

// Record is the self-describing value stored under every replicated key.
// Values are never bare strings: each carries its schema version, what kind
// of thing it is, when (HLC) and by whom it was written, so any peer can
// order and explain it, and the writer's signature, so any peer can tell
// whether to believe it (see admit.go).
type Record struct {
	V    int    `json:"v"`
	Kind string `json:"kind"`
	HLC  HLC    `json:"hlc"`
	// Writer is the libp2p id of the peer that wrote the record.
	Writer string `json:"writer"`
	// Signer is the publisher id of the key that signed the record, Sig
	// its ed25519 signature of SigningBytes.
	Signer sign.ID         `json:"signer,omitempty"`
	Body   json.RawMessage `json:"body,omitempty"`
	Sig    []byte          `json:"sig,omitempty"`
}

// SigningBytes are what a record's signature covers: the mesh and the key
// it was written under (so a signed record cannot be moved to another key
// or replayed into another mesh), and every field but the signature, each
// length-prefixed so no two records share them.
func (r Record) SigningBytes(mesh, key string) []byte {
	fields := []string{mesh, key, strconv.Itoa(r.V), r.Kind, r.HLC.String(), r.Writer, string(r.Signer), string(r.Body)}
	n := len(signingDomain)
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	b := make([]byte, 0, n)
	b = append(b, signingDomain...)
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

const signingDomain = "shoal/record/v1\n"

// Encode returns the canonical bytes of r.
func (r Record) Encode() ([]byte, error) {
	if r.V == 0 {
		r.V = RecordVersion
	}
	if r.Kind == "" {
		return nil, fmt.Errorf("%w: empty kind", ErrBadRecord)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if limit := sizeLimit(r.V); len(b) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrRecordTooLarge, len(b), limit)
	}
	return b, nil
}

// sizeLimit is the largest encoding of a record of schema version v.
func sizeLimit(v int) int {
	if v == FoldVersion {
		return maxFoldRecordSize
	}
	return MaxRecordSize
}

// DecodeRecord parses and validates the bytes of a record. Bytes come from
// other peers, so nothing in them is trusted: size, version and required
// fields are checked before anyone sees the record.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	if len(b) > maxFoldRecordSize || (len(b) > MaxRecordSize && !mayBeFold(b)) {
		return r, fmt.Errorf("%w: %d bytes, limit %d", ErrRecordTooLarge, len(b), MaxRecordSize)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	switch {
	case r.V != RecordVersion && r.V != TombstoneVersion && r.V != FoldVersion:
		return Record{}, fmt.Errorf("%w: unknown schema version %d", ErrBadRecord, r.V)
	case len(b) > sizeLimit(r.V):
		return Record{}, fmt.Errorf("%w: %d bytes, limit %d", ErrRecordTooLarge, len(b), sizeLimit(r.V))
	case (r.V == TombstoneVersion) != (r.Kind == KindDeleted), (r.V == FoldVersion) != (r.Kind == KindFold):
		return Record{}, fmt.Errorf("%w: kind %q in a version %d record", ErrBadRecord, r.Kind, r.V)
	case r.V == TombstoneVersion && len(r.Body) > 0:
		return Record{}, fmt.Errorf("%w: a tombstone with a body", ErrBadRecord)
	case r.Kind == "":
		return Record{}, fmt.Errorf("%w: empty kind", ErrBadRecord)
	case r.HLC.Wall <= 0 || r.HLC.Peer == "":
		return Record{}, fmt.Errorf("%w: missing HLC", ErrBadRecord)
	case r.Writer == "":
		return Record{}, fmt.Errorf("%w: missing writer", ErrBadRecord)
	}
	return r, nil
}

// Deleted reports whether r is a tombstone: the key it is written under was
// deleted.
func (r Record) Deleted() bool { return r.Kind == KindDeleted }

// DecodeBody unmarshals the record's body into v.
func (r Record) DecodeBody(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("%w: body of %s: %v", ErrBadRecord, r.Kind, err)
	}
	return nil
}
