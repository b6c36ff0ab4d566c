package rag

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// An index's graph is saved beside Badger, so a peer restarted with a large
// collection reopens it instead of building it again. Two files per
// collection: <name>.hnsw, hnswlib's own (vectors, links, deleted marks),
// and <name>.meta.json, which names the labels of the live ids, the graph
// file's sha256 and size, and a state of the caller's (the Manager keeps
// there a digest of the document records the graph was saved from, and
// their metadata). The meta file is renamed into place last, so a save cut
// short leaves a meta whose graph sum does not match: torn. Whether the
// graph is of the documents stored now (not stale) is the caller's to
// check with its state before Install; either way a torn or stale save is
// built again — answering exactly meanwhile — never used.

// Errors of ReadSaved and Install.
var (
	// ErrIndexTorn: the saved graph is incomplete or corrupt.
	ErrIndexTorn = errors.New("saved index is torn")
	// ErrIndexStale: the saved graph is of other vectors than these.
	ErrIndexStale = errors.New("saved index is stale")
)

const persistVersion = 2

type indexMeta struct {
	Version     int               `json:"version"`
	Dim         int               `json:"dim"`
	Metric      string            `json:"metric"`
	Int8        bool              `json:"int8,omitempty"`
	Next        uint64            `json:"next"`
	Labels      map[string]uint64 `json:"labels"`
	GraphSHA256 string            `json:"graph_sha256"`
	GraphBytes  int64             `json:"graph_bytes"`
	State       json.RawMessage   `json:"state,omitempty"`
}

// Saved is a saved index's meta file, read before its graph.
type Saved struct{ meta indexMeta }

// State is what the saver passed to Save.
func (s *Saved) State() json.RawMessage { return s.meta.State }

// Len is the number of live vectors saved.
func (s *Saved) Len() int { return len(s.meta.Labels) }

func indexPaths(dir, name string) (graphPath, metaPath string) {
	return filepath.Join(dir, name+".hnsw"), filepath.Join(dir, name+".meta.json")
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// Save writes the index's graph to dir as name with the caller's state,
// replacing an earlier save. It holds the index for reading: searches go
// on, writes wait. An index without a graph (its vectors loose: being
// built) saves nothing and removes an earlier save.
func (x *Index) Save(dir, name string, state json.RawMessage) error {
	graphPath, metaPath := indexPaths(dir, name)
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.loose != nil {
		os.Remove(metaPath)
		os.Remove(graphPath)
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := x.graph.save(graphPath + ".tmp"); err != nil {
		return err
	}
	sum, size, err := syncedSum(graphPath + ".tmp")
	if err != nil {
		return err
	}
	meta := indexMeta{Version: persistVersion, Dim: x.dim, Metric: x.metric, Int8: x.int8, Next: x.next, Labels: x.keyOf,
		GraphSHA256: sum, GraphBytes: size, State: state}
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	if err := writeSynced(metaPath+".tmp", b); err != nil {
		return err
	}
	if err := os.Rename(graphPath+".tmp", graphPath); err != nil {
		return err
	}
	return os.Rename(metaPath+".tmp", metaPath)
}

// syncedSum fsyncs a file and returns its sha256 and size.
func syncedSum(path string) (string, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", 0, err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return "", 0, err
	}
	return fileSHA256(path)
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadSaved reads the meta file of the index saved as name in dir.
// os.ErrNotExist: nothing saved; ErrIndexTorn: unreadable.
func ReadSaved(dir, name string) (*Saved, error) {
	_, metaPath := indexPaths(dir, name)
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, err
	}
	var s Saved
	if err := json.Unmarshal(b, &s.meta); err != nil || s.meta.Version != persistVersion {
		return nil, fmt.Errorf("%w: %s: version %d, %v", ErrIndexTorn, metaPath, s.meta.Version, err)
	}
	return &s, nil
}

// Install loads the graph saved as name in dir (whose meta s is) into an
// empty index, after checking it is whole and of this dimension and
// metric: ErrIndexTorn or ErrIndexStale if not. Whether its vectors are
// the ones stored now is the caller's check, made on s.State() first.
func (x *Index) Install(dir, name string, s *Saved) error {
	graphPath, _ := indexPaths(dir, name)
	meta := s.meta
	if meta.Dim != x.dim || meta.Metric != x.metric || meta.Int8 != x.int8 {
		return fmt.Errorf("%w: saved as %d-d %s (int8 %v), the collection is %d-d %s (int8 %v)", ErrIndexStale, meta.Dim, meta.Metric, meta.Int8, x.dim, x.metric, x.int8)
	}
	if sum, size, err := fileSHA256(graphPath); err != nil || sum != meta.GraphSHA256 || size != meta.GraphBytes {
		return fmt.Errorf("%w: %s does not match its meta file (%v)", ErrIndexTorn, graphPath, err)
	}
	g, err := loadGraph(graphPath, x.dim, kindOf(x.metric, x.int8), len(meta.Labels)+1024)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrIndexTorn, err)
	}
	g.setEf(x.EfSearch)
	idOf := make(map[uint64]string, len(meta.Labels))
	for id, l := range meta.Labels {
		idOf[l] = id
	}
	if len(idOf) != len(meta.Labels) || g.count() < int64(len(meta.Labels)) {
		g.free()
		return fmt.Errorf("%w: %d labels for %d graph nodes", ErrIndexTorn, len(meta.Labels), g.count())
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.lenLocked() != 0 {
		g.free()
		return errors.New("rag: Install into an index that holds vectors")
	}
	x.gen++
	x.install(built{g: g, keyOf: meta.Labels, idOf: idOf, next: meta.Next})
	x.tombs = int(g.count()) - len(meta.Labels)
	return nil
}
