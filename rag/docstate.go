package rag

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"io"
	"maps"
	"slices"

	"github.com/shoal-mesh/shoal/crdt"
)

// docState is what a collection's index knows of its documents besides
// their vectors: each document record's hash, for the saved index's
// staleness check, and each document's metadata, for filters. The manager
// keeps it under collectionIndex.mu.
type docState struct {
	// sums holds the hash of every document record applied, valid or not,
	// by id: the digest of sums is what a saved index is checked against
	// at start (recordsDigest of the stored records, read undecoded).
	sums map[string]recordSum
	meta metaIndex
	// applied is the newest document HLC applied.
	applied crdt.HLC
}

func newDocState() *docState {
	return &docState{sums: map[string]recordSum{}, meta: newMetaIndex()}
}

// recordSum is the first 16 bytes of a record's sha256: a collision needs
// 2^64 records, and a saved index is only as trusted as the data
// directory it lies in.
type recordSum [16]byte

func sumOf(value []byte) recordSum {
	full := sha256.Sum256(value)
	return recordSum(full[:16])
}

// recordsDigest hashes (id, sum) pairs in id order: equal exactly when the
// same records are stored under the same ids.
func recordsDigest(sums map[string]recordSum) string {
	ids := slices.Sorted(maps.Keys(sums))
	h := sha256.New()
	var n [4]byte
	for _, id := range ids {
		binary.LittleEndian.PutUint32(n[:], uint32(len(id)))
		h.Write(n[:])
		io.WriteString(h, id)
		s := sums[id]
		h.Write(s[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// savedState is the Manager's part of a saved index (Index.Save's state).
type savedState struct {
	// Records is recordsDigest of the document records the index was saved
	// from; the index is reopened only if the stored records hash the same.
	Records  string                       `json:"records"`
	Metadata map[string]map[string]string `json:"metadata,omitempty"`
	Applied  crdt.HLC                     `json:"applied"`
	// Sums are the records' hashes themselves (encodeSums), and Trust
	// the replica's TrustFingerprint when they were admitted: at the next
	// start a record whose bytes hash the same, under the same trust set,
	// is known admitted and its signature is not verified again.
	Sums  string `json:"sums,omitempty"`
	Trust string `json:"trust,omitempty"`
}

// encodeSums packs (id, sum) pairs: for each, a 2-byte id length, the id
// and the 16-byte sum; base64 for JSON. A third of a JSON map's size.
func encodeSums(sums map[string]recordSum) string {
	var b []byte
	for _, id := range slices.Sorted(maps.Keys(sums)) {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(id)))
		b = append(b, id...)
		s := sums[id]
		b = append(b, s[:]...)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// decodeSums reverses encodeSums; nil if s does not decode.
func decodeSums(s string) map[string]recordSum {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil
	}
	out := map[string]recordSum{}
	for len(b) > 0 {
		if len(b) < 2 {
			return nil
		}
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n+16 {
			return nil
		}
		id := string(b[2 : 2+n])
		out[id] = recordSum(b[2+n : 2+n+16])
		b = b[2+n+16:]
	}
	return out
}

// metaIndex holds each document's metadata and, per key/value pair, the
// ids that have it, so a filter's candidates are found from its rarest
// pair instead of a scan of every document.
type metaIndex struct {
	byID  map[string]map[string]string
	byKey map[string]map[string]struct{} // pairKey(k, v) → ids
}

func newMetaIndex() metaIndex {
	return metaIndex{byID: map[string]map[string]string{}, byKey: map[string]map[string]struct{}{}}
}

func pairKey(k, v string) string { return k + "\x00" + v }

func (mi metaIndex) set(id string, md map[string]string) {
	mi.remove(id)
	if len(md) == 0 {
		return
	}
	mi.byID[id] = md
	for k, v := range md {
		pk := pairKey(k, v)
		ids := mi.byKey[pk]
		if ids == nil {
			ids = map[string]struct{}{}
			mi.byKey[pk] = ids
		}
		ids[id] = struct{}{}
	}
}

func (mi metaIndex) remove(id string) {
	for k, v := range mi.byID[id] {
		pk := pairKey(k, v)
		delete(mi.byKey[pk], id)
		if len(mi.byKey[pk]) == 0 {
			delete(mi.byKey, pk)
		}
	}
	delete(mi.byID, id)
}

// matches says whether id's metadata has every pair of filter.
func (mi metaIndex) matches(id string, filter map[string]string) bool {
	md := mi.byID[id]
	for k, v := range filter {
		if md[k] != v {
			return false
		}
	}
	return true
}

// match lists the ids whose metadata has every pair of filter (which must
// not be empty).
func (mi metaIndex) match(filter map[string]string) []string {
	var rarest map[string]struct{}
	first := true
	for k, v := range filter {
		ids := mi.byKey[pairKey(k, v)]
		if first || len(ids) < len(rarest) {
			rarest, first = ids, false
		}
	}
	out := make([]string, 0, len(rarest))
	for id := range rarest {
		if mi.matches(id, filter) {
			out = append(out, id)
		}
	}
	return out
}
