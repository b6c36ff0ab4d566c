package rag

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
)

// An index's graph is saved beside Badger, so a peer restarted with a large
// collection reopens it instead of building it again. Two files per
// collection: <name>.hnsw, hnswlib's own (vectors, links, deleted marks),
// and <name>.meta.json, which names the labels of the live ids, a digest of
// every (id, vector) the graph was saved with, and the graph file's sha256
// and size. The meta file is renamed into place last, so a save cut short
// leaves a meta whose graph sum does not match: torn. A graph whose digest
// differs from the vectors read back from Badger is stale (writes after
// the save, or a kill -9 before the next one). Either way the caller builds
// the graph again — and answers exactly meanwhile — never from a wrong one.

// Errors of Load.
var (
	// ErrIndexTorn: the saved graph is incomplete or corrupt.
	ErrIndexTorn = errors.New("saved index is torn")
	// ErrIndexStale: the saved graph is of other vectors than these.
	ErrIndexStale = errors.New("saved index is stale")
)

const persistVersion = 1

type indexMeta struct {
	Version     int               `json:"version"`
	Dim         int               `json:"dim"`
	Metric      string            `json:"metric"`
	Next        uint64            `json:"next"`
	Labels      map[string]uint64 `json:"labels"`
	Digest      string            `json:"digest"`
	GraphSHA256 string            `json:"graph_sha256"`
	GraphBytes  int64             `json:"graph_bytes"`
}

func indexPaths(dir, name string) (graphPath, metaPath string) {
	return filepath.Join(dir, name+".hnsw"), filepath.Join(dir, name+".meta.json")
}

// digest hashes every (id, vector) in id order.
func digest(vectors map[string][]float32) string {
	ids := make([]string, 0, len(vectors))
	for id := range vectors {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	h := sha256.New()
	var buf [4]byte
	for _, id := range ids {
		binary.LittleEndian.PutUint32(buf[:], uint32(len(id)))
		h.Write(buf[:])
		io.WriteString(h, id)
		for _, f := range vectors[id] {
			binary.LittleEndian.PutUint32(buf[:], math.Float32bits(f))
			h.Write(buf[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
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

// Save writes the index's graph to dir as name, replacing an earlier save.
// It holds the index for reading: searches go on, writes wait. An index
// without a graph (being built, or small enough never to need one) saves
// nothing and removes an earlier save.
func (x *Index) Save(dir, name string) error {
	graphPath, metaPath := indexPaths(dir, name)
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.graph == nil || x.bulk {
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
	meta := indexMeta{Version: persistVersion, Dim: x.dim, Metric: x.metric, Next: x.next, Labels: x.keyOf,
		Digest: digest(x.vectors), GraphSHA256: sum, GraphBytes: size}
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

// Load installs the graph saved as name in dir, if it is of exactly the
// index's vectors; the index must have been filled in bulk (its vectors
// read back from the store). os.ErrNotExist: nothing saved; ErrIndexTorn,
// ErrIndexStale: build the graph again.
func (x *Index) Load(dir, name string) error {
	graphPath, metaPath := indexPaths(dir, name)
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return err
	}
	var meta indexMeta
	if err := json.Unmarshal(b, &meta); err != nil || meta.Version != persistVersion {
		return fmt.Errorf("%w: %s: %v", ErrIndexTorn, metaPath, err)
	}
	if sum, size, err := fileSHA256(graphPath); err != nil || sum != meta.GraphSHA256 || size != meta.GraphBytes {
		return fmt.Errorf("%w: %s does not match its meta file (%v)", ErrIndexTorn, graphPath, err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if meta.Dim != x.dim || meta.Metric != x.metric || len(meta.Labels) != len(x.vectors) || meta.Digest != digest(x.vectors) {
		return fmt.Errorf("%w: saved with other vectors than the %d stored", ErrIndexStale, len(x.vectors))
	}
	g, err := loadGraph(graphPath, x.dim, x.metric, len(x.vectors)+1024)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrIndexTorn, err)
	}
	g.setEf(x.EfSearch)
	idOf := make(map[uint64]string, len(meta.Labels))
	for id, l := range meta.Labels {
		idOf[l] = id
	}
	x.install(built{g: g, keyOf: meta.Labels, idOf: idOf, next: meta.Next})
	x.tombs = int(g.count()) - len(meta.Labels)
	return nil
}
