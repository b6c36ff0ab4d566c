// Package collections is the replicated state of retrieval (design §1, §5):
// collection specs at /shoal/rag/<collection> and documents at
// /shoal/rag/<collection>/docs/<id>, as typed, versioned records on the
// peer's Merkle-CRDT.
//
// A document carries its text, its metadata and the embedding computed by
// the peer that ingested it, tagged with the embedder's model@version, so
// no other peer ever embeds it again: retrieval on every peer works from
// replicated vectors. Concurrent writes of one document converge by the
// CRDT's deterministic rule (every peer keeps the same value); a delete is
// the deleter's signed tombstone (crdt/deletes.go) and meets a concurrent
// update by the same rule.
package collections

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/shoal-mesh/shoal/crdt"
)

// Record kinds.
const (
	KindSpec = "rag.collection"
	KindDoc  = "rag.doc"
)

// Prefix is where retrieval state lives.
const Prefix = "/shoal/rag"

// Limits that keep records small (go-ds-crdt keeps every version of a
// record forever; see docs/architecture.md).
const (
	MaxTextBytes     = 64 << 10
	MaxMetadataBytes = 8 << 10
	MaxDimension     = 4096
)

// Metrics.
const (
	MetricCosine = "cosine"
	MetricDot    = "dot"
	MetricL2     = "l2"
)

// Sentinel errors.
var (
	ErrBadName      = errors.New("bad collection name or document id")
	ErrBadSpec      = errors.New("bad collection spec")
	ErrBadDoc       = errors.New("bad document")
	ErrUnknown      = errors.New("unknown collection")
	ErrUnknownDoc   = errors.New("unknown document")
	ErrExists       = errors.New("collection exists with another spec")
	ErrDimension    = errors.New("vector dimension does not match the collection")
	ErrTooLarge     = errors.New("document too large")
	ErrEmptyText    = errors.New("document text is empty")
	ErrBadEmbedder  = errors.New("bad embedder reference")
	ErrBadMetric    = errors.New("unknown metric")
	ErrNonFinite    = errors.New("vector has NaN or infinite components")
	ErrZeroVector   = errors.New("vector is all zeros")
	ErrBadRecordKey = errors.New("key is not a retrieval record")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckName validates a collection name or document id (key segments).
func CheckName(kind, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q: use letters, digits, '.', '_' and '-' (at most 128)", ErrBadName, kind, s)
	}
	return nil
}

// Spec is a collection: which embedder makes its vectors, their dimension
// and the metric queries rank by.
type Spec struct {
	Name      string `json:"name"`
	Embedder  string `json:"embedder"` // model@version
	Dimension int    `json:"dimension"`
	Metric    string `json:"metric"`
	// Vectors is how the index holds vectors: "" (float32) or "int8"
	// (cosine only; a quarter of the memory, approximate distances).
	Vectors string   `json:"vectors,omitempty"`
	HLC     crdt.HLC `json:"hlc"`
}

// VectorsInt8 is Spec.Vectors for int8-quantised index vectors.
const VectorsInt8 = "int8"

// Validate checks a spec.
func (s *Spec) Validate() error {
	if err := CheckName("collection", s.Name); err != nil {
		return err
	}
	if _, _, err := SplitRef(s.Embedder); err != nil {
		return err
	}
	if s.Dimension <= 0 || s.Dimension > MaxDimension {
		return fmt.Errorf("%w: dimension %d: must be 1..%d", ErrBadSpec, s.Dimension, MaxDimension)
	}
	if s.Metric == "" {
		s.Metric = MetricCosine
	}
	switch s.Metric {
	case MetricCosine, MetricDot, MetricL2:
	default:
		return fmt.Errorf("%w %q: use cosine, dot or l2", ErrBadMetric, s.Metric)
	}
	switch {
	case s.Vectors == "float32":
		s.Vectors = ""
	case s.Vectors == VectorsInt8 && s.Metric != MetricCosine:
		return fmt.Errorf("%w: int8 vectors need the cosine metric, not %s", ErrBadSpec, s.Metric)
	case s.Vectors != "" && s.Vectors != VectorsInt8:
		return fmt.Errorf("%w: vectors %q: use float32 or int8", ErrBadSpec, s.Vectors)
	}
	return nil
}

// SplitRef splits model@version.
func SplitRef(ref string) (model, version string, err error) {
	m, v, ok := strings.Cut(ref, "@")
	if !ok || !nameRE.MatchString(m) || !nameRE.MatchString(v) {
		return "", "", fmt.Errorf("%w %q: use model@version", ErrBadEmbedder, ref)
	}
	return m, v, nil
}

// Doc is one document.
type Doc struct {
	ID       string            `json:"id"`
	Text     string            `json:"text"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Vector is little-endian float32, base64: a third of the JSON size of
	// a number list, and exact.
	Vector   string   `json:"vector"`
	Embedder string   `json:"embedder"` // model@version that made Vector; "client" when supplied by the writer
	HLC      crdt.HLC `json:"hlc"`
}

// EncodeVector renders a vector for Doc.Vector.
func EncodeVector(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeVector parses Doc.Vector.
func DecodeVector(s string) ([]float32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		return nil, fmt.Errorf("%w: vector encoding", ErrBadDoc)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// CheckVector validates a vector for a collection of dimension dim.
func CheckVector(v []float32, dim int) error {
	if len(v) != dim {
		return fmt.Errorf("%w: %d components, the collection has dimension %d", ErrDimension, len(v), dim)
	}
	zero := true
	for _, f := range v {
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return ErrNonFinite
		}
		if f != 0 {
			zero = false
		}
	}
	if zero {
		return ErrZeroVector
	}
	return nil
}

// CheckDoc validates a document's id, text and metadata.
func CheckDoc(id, text string, metadata map[string]string) error {
	if err := CheckName("document id", id); err != nil {
		return err
	}
	if strings.TrimSpace(text) == "" {
		return fmt.Errorf("%w: %s", ErrEmptyText, id)
	}
	if len(text) > MaxTextBytes {
		return fmt.Errorf("%w: %s: text is %d bytes, at most %d", ErrTooLarge, id, len(text), MaxTextBytes)
	}
	n := 0
	for k, v := range metadata {
		n += len(k) + len(v)
	}
	if n > MaxMetadataBytes {
		return fmt.Errorf("%w: %s: metadata is %d bytes, at most %d", ErrTooLarge, id, n, MaxMetadataBytes)
	}
	return nil
}

// SpecKey and DocKey are the records' keys.
func SpecKey(c string) string       { return Prefix + "/" + c }
func DocKey(c, id string) string    { return Prefix + "/" + c + "/docs/" + id }
func docsPrefix(c string) string    { return Prefix + "/" + c + "/docs/" }
func isSpecKey(parts []string) bool { return len(parts) == 1 }

// ParseKey tells a spec key (id == "") from a document key.
func ParseKey(key string) (collection, id string, err error) {
	rest, ok := strings.CutPrefix(key, Prefix+"/")
	if !ok {
		return "", "", ErrBadRecordKey
	}
	parts := strings.Split(rest, "/")
	switch {
	case isSpecKey(parts):
		return parts[0], "", nil
	case len(parts) == 3 && parts[1] == "docs":
		return parts[0], parts[2], nil
	}
	return "", "", ErrBadRecordKey
}

// Store reads and writes retrieval records on a replica.
type Store struct{ r *crdt.Replica }

// NewStore wraps a replica.
func NewStore(r *crdt.Replica) *Store { return &Store{r: r} }

// CreateCollection writes a spec. Creating an existing collection with the
// same embedder, dimension and metric is a no-op; with another one it is
// ErrExists.
func (s *Store) CreateCollection(ctx context.Context, spec Spec) (Spec, crdt.Write, error) {
	if err := spec.Validate(); err != nil {
		return spec, crdt.Write{}, err
	}
	if old, err := s.Collection(ctx, spec.Name); err == nil {
		if old.Embedder == spec.Embedder && old.Dimension == spec.Dimension && old.Metric == spec.Metric && old.Vectors == spec.Vectors {
			return old, crdt.Write{HLC: old.HLC}, nil
		}
		return old, crdt.Write{}, fmt.Errorf("%w: %s uses %s, dimension %d, %s", ErrExists, old.Name, old.Embedder, old.Dimension, old.Metric)
	}
	spec.HLC = s.r.Clock().Now()
	w, err := s.r.Put(ctx, SpecKey(spec.Name), KindSpec, spec)
	return spec, w, err
}

// Collection reads one spec.
func (s *Store) Collection(ctx context.Context, name string) (Spec, error) {
	if err := CheckName("collection", name); err != nil {
		return Spec{}, err
	}
	rec, err := s.r.Get(ctx, SpecKey(name))
	if errors.Is(err, crdt.ErrNotFound) {
		return Spec{}, fmt.Errorf("%w: %s", ErrUnknown, name)
	}
	if err != nil {
		return Spec{}, err
	}
	var spec Spec
	if rec.Kind != KindSpec {
		return Spec{}, fmt.Errorf("%w: %s", ErrUnknown, name)
	}
	return spec, rec.DecodeBody(&spec)
}

// Scan reads every collection in one pass: spec is called with each
// collection's spec, doc (when not nil) with each document's id and the
// bytes of its record, valid only during the call (see ScanDocs). Specs
// that do not decode are skipped. The two are never called at once.
func (s *Store) Scan(ctx context.Context, spec func(Spec), doc func(collection, id string, value []byte) error) error {
	return s.ScanKnown(ctx, nil, spec, doc)
}

// ScanKnown is Scan for a caller that knows some document records were
// admitted already (crdt.Replica.ScanAdmittedKnown): a document for which
// known reports true is handed to doc without being admitted again. Specs
// are always admitted.
func (s *Store) ScanKnown(ctx context.Context, known func(collection, id string, value []byte) bool, spec func(Spec), doc func(collection, id string, value []byte) error) error {
	var knownKey func(key string, value []byte) bool
	if known != nil {
		knownKey = func(key string, value []byte) bool {
			c, id, err := ParseKey(key)
			return err == nil && id != "" && known(c, id, value)
		}
	}
	return s.r.ScanAdmittedKnown(ctx, Prefix+"/", knownKey, func(key string, rec crdt.Record, value []byte) error {
		c, id, err := ParseKey(key)
		switch {
		case err != nil:
			return nil
		case id == "":
			if rec.Kind == KindSpec {
				var sp Spec
				if rec.DecodeBody(&sp) == nil && sp.Name == c {
					spec(sp)
				}
			}
			return nil
		case doc != nil:
			return doc(c, id, value)
		}
		return nil
	})
}

// PutDocs writes documents (already validated and embedded) in batches.
func (s *Store) PutDocs(ctx context.Context, collection string, docs []Doc) (crdt.Write, error) {
	ops := make([]crdt.Op, len(docs))
	for i, d := range docs {
		d.HLC = s.r.Clock().Now()
		ops[i] = crdt.Op{Key: DocKey(collection, d.ID), Kind: KindDoc, Body: d}
	}
	return s.r.PutBatch(ctx, ops)
}

// DeleteDoc deletes one document; ErrUnknownDoc if this peer has not seen it.
func (s *Store) DeleteDoc(ctx context.Context, collection, id string) (crdt.Write, error) {
	w, err := s.r.Delete(ctx, DocKey(collection, id))
	if errors.Is(err, crdt.ErrNotFound) {
		return w, fmt.Errorf("%w: %s/%s", ErrUnknownDoc, collection, id)
	}
	return w, err
}

// Doc reads one document.
func (s *Store) Doc(ctx context.Context, collection, id string) (Doc, error) {
	rec, err := s.r.Get(ctx, DocKey(collection, id))
	if errors.Is(err, crdt.ErrNotFound) {
		return Doc{}, fmt.Errorf("%w: %s/%s", ErrUnknownDoc, collection, id)
	}
	if err != nil {
		return Doc{}, err
	}
	var d Doc
	return d, rec.DecodeBody(&d)
}

// ScanDocs calls f with the id and the record bytes of each of a
// collection's documents, in no particular order (value is valid only
// during the call; DecodeDoc decodes it). An error from f ends it.
//
// The bytes are those of the record Get would answer — the replica admits
// each (crdt.Replica.ScanAdmitted): a record it refuses (unsigned, forged,
// untrusted, from the future, replayed) is left out, or gives way to the
// record it tried to displace, so a start-up read cannot index what events
// and reads never show. It is what the saved index's digest is checked
// against, and the events a manager applies carry the same bytes.
func (s *Store) ScanDocs(ctx context.Context, collection string, f func(id string, value []byte) error) error {
	return s.r.ScanAdmitted(ctx, docsPrefix(collection), func(key string, _ crdt.Record, value []byte) error {
		c, id, err := ParseKey(key)
		if err != nil || c != collection || id == "" {
			return nil // not a document key
		}
		return f(id, value)
	})
}

// DecodeDoc decodes the bytes of a document record that ScanDocs admitted.
func DecodeDoc(value []byte) (Doc, crdt.Record, error) {
	rec, err := crdt.DecodeRecord(value)
	if err != nil {
		return Doc{}, rec, err
	}
	d, err := DocOf(rec)
	return d, rec, err
}

// DocOf decodes the document a record holds (ErrBadRecord if it holds
// something else).
func DocOf(rec crdt.Record) (Doc, error) {
	if rec.Kind != KindDoc {
		return Doc{}, fmt.Errorf("%w: a %s record where a document belongs", crdt.ErrBadRecord, rec.Kind)
	}
	var d Doc
	err := rec.DecodeBody(&d)
	return d, err
}
