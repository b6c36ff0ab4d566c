package rag

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/crdt/collections"
)

// Start-up: each collection's index is reopened from its save when the
// document records stored now hash the same as those it was saved from —
// their vectors not decoded, which is what makes a restart fast — or else
// built from the decoded records, its graph in the background while the
// collection answers exactly. Either way only records the replica admits
// count (collections.Store.ScanDocs): a document Get would refuse enters
// no index, and since events carry the same admitted bytes, a save made
// after such a record arrived still matches at the next start.

// ErrLoading: the collection's index is being loaded at start; it
// answers once loaded (reopened, or read and searched exactly).
var ErrLoading = errors.New("the collection's index is being loaded")

type buildProgress struct {
	total   atomic.Int64 // 0 while the documents are being read
	done    atomic.Int64
	started time.Time
}

// Build is the progress of one index being built from the store.
type Build struct {
	Collection string    `json:"collection"`
	Done       int64     `json:"done"`
	Total      int64     `json:"total"` // 0 while the documents are read (unknown yet)
	StartedAt  time.Time `json:"started_at"`
}

// Building lists the indexes being loaded or built now.
func (m *Manager) Building() []Build {
	var out []Build
	m.building.Range(func(k, v any) bool {
		p := v.(*buildProgress)
		out = append(out, Build{Collection: k.(string), Done: p.done.Load(), Total: p.total.Load(), StartedAt: p.started})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Collection < out[j].Collection })
	return out
}

// scan reads the store once at start: every collection's spec, and the
// hash of every admitted document record, by collection. A record whose
// bytes are those a saved index was made from, under the same trust set,
// is known admitted and not verified again (knownAdmitted).
func (m *Manager) scan(ctx context.Context) ([]collections.Spec, map[string]map[string]recordSum, error) {
	var specs []collections.Spec
	sums := map[string]map[string]recordSum{}
	known := m.knownAdmitted()
	err := m.store.ScanKnown(ctx, func(c, id string, value []byte) bool {
		s, ok := known[c][id]
		return ok && s == sumOf(value)
	}, func(s collections.Spec) { specs = append(specs, s) }, func(c, id string, value []byte) error {
		if sums[c] == nil {
			sums[c] = map[string]recordSum{}
		}
		sums[c][id] = sumOf(value)
		return nil
	})
	return specs, sums, err
}

// knownAdmitted reads the record hashes saved beside each collection's
// index whose trust fingerprint is this replica's: those records were
// admitted when the index applied them.
func (m *Manager) knownAdmitted() map[string]map[string]recordSum {
	fp := m.replica.TrustFingerprint()
	if m.indexDir == "" || fp == "" {
		return nil
	}
	metas, _ := filepath.Glob(filepath.Join(m.indexDir, "*.meta.json"))
	out := map[string]map[string]recordSum{}
	saves := map[string]savedRead{}
	for _, p := range metas {
		name := strings.TrimSuffix(filepath.Base(p), ".meta.json")
		sr := m.readSave(name)
		saves[name] = sr
		if sr.err != nil || sr.state.Trust != fp {
			continue
		}
		if sums := decodeSums(sr.state.Sums); sums != nil {
			out[name] = sums
		}
	}
	m.savesMu.Lock()
	m.startSaves = saves
	m.savesMu.Unlock()
	return out
}

// savedRead is a collection's save as read from disk: its meta file and
// the manager's state in it, or why it could not be read
// (os.ErrNotExist: nothing saved; ErrIndexTorn: unreadable).
type savedRead struct {
	saved *Saved
	state savedState
	err   error
}

func (m *Manager) readSave(name string) savedRead {
	saved, err := ReadSaved(m.indexDir, name)
	sr := savedRead{saved: saved, err: err}
	if err == nil {
		if err := json.Unmarshal(saved.State(), &sr.state); err != nil {
			sr.err = fmt.Errorf("%w: state: %v", ErrIndexTorn, err)
		}
	}
	return sr
}

// takeSave returns the save of name read at start, once, or reads it.
func (m *Manager) takeSave(name string) savedRead {
	m.savesMu.Lock()
	sr, ok := m.startSaves[name]
	delete(m.startSaves, name)
	m.savesMu.Unlock()
	if ok {
		return sr
	}
	return m.readSave(name)
}

func newIndexFor(spec collections.Spec) *Index {
	if spec.Vectors == collections.VectorsInt8 {
		return NewIndexInt8(spec.Dimension)
	}
	return NewIndex(spec.Dimension, spec.Metric)
}

// loading marks a collection as being loaded (queries answer ErrLoading)
// and returns its progress.
func (m *Manager) loading(name string) *buildProgress {
	p, _ := m.building.LoadOrStore(name, &buildProgress{started: time.Now().UTC()})
	return p.(*buildProgress)
}

// load makes one collection's index from the store and registers it,
// returning how many documents it holds. sums, when not nil, are the
// hashes of its stored document records (scan); else they are read.
func (m *Manager) load(ctx context.Context, spec collections.Spec, sums map[string]recordSum) int {
	ci := &collectionIndex{spec: spec, index: newIndexFor(spec), docs: newDocState()}
	prog := m.loading(spec.Name)
	reopened := m.reopen(ctx, ci, sums)
	if !reopened {
		m.readDocs(ctx, ci, prog)
	}
	ci.updated = time.Now()
	m.mu.Lock()
	m.indexes[spec.Name] = ci
	m.mu.Unlock()
	m.building.Delete(spec.Name)
	if !reopened {
		m.buildGraph(ctx, ci)
	}
	return ci.index.Len()
}

// reopen installs the collection's saved index if the stored document
// records are exactly those it was saved from, and reports whether it did.
func (m *Manager) reopen(ctx context.Context, ci *collectionIndex, sums map[string]recordSum) bool {
	if m.indexDir == "" {
		return false
	}
	name := ci.spec.Name
	readStart := time.Now()
	sr := m.takeSave(name)
	saved, st, err := sr.saved, sr.state, sr.err
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	scanStart := time.Now()
	if err == nil {
		err = m.checkRecords(ctx, ci, sums, st.Records)
	}
	installStart := time.Now()
	if err == nil {
		err = ci.index.Install(m.indexDir, name, saved)
	}
	if err != nil {
		m.log.Warn("saved retrieval index not used; building it again", "collection", name, "err", err)
		ci.docs = newDocState()
		return false
	}
	for id, md := range st.Metadata {
		ci.docs.meta.set(id, md)
	}
	ci.docs.applied = st.Applied
	m.count(func(s *Stats) { s.GraphsLoaded++ })
	m.log.Info("retrieval index reopened", "collection", name, "documents", ci.index.Len(),
		"read_seconds", scanStart.Sub(readStart).Seconds(), "check_seconds", installStart.Sub(scanStart).Seconds(), "install_seconds", time.Since(installStart).Seconds())
	return true
}

// checkRecords takes the hashes of the collection's stored document
// records (sums, or read now when nil) into ci.docs.sums and compares
// their digest with want: ErrIndexStale if the documents changed since
// the save (writes after it, or a kill -9 before the next).
func (m *Manager) checkRecords(ctx context.Context, ci *collectionIndex, sums map[string]recordSum, want string) error {
	if sums == nil {
		sums = map[string]recordSum{}
		err := m.store.ScanDocs(ctx, ci.spec.Name, func(id string, value []byte) error {
			sums[id] = sumOf(value)
			return nil
		})
		if err != nil {
			return err
		}
	}
	ci.docs.sums = sums
	if recordsDigest(ci.docs.sums) != want {
		return fmt.Errorf("%w: the %d stored documents are not those it was saved from", ErrIndexStale, len(ci.docs.sums))
	}
	return nil
}

// readDocs decodes the collection's stored documents into its index,
// vectors loose (the graph is built after), on every core: one goroutine
// reads the store, the others decode (JSON and base64 are most of a
// start without a save). Progress is logged for large collections.
func (m *Manager) readDocs(ctx context.Context, ci *collectionIndex, prog *buildProgress) {
	ci.index.BeginBulk()
	type record struct {
		id    string
		value []byte
	}
	records := make(chan record, 256)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range records {
				if d, _, err := collections.DecodeDoc(r.value); err != nil {
					m.leaveOut(ci, r.id, err)
				} else {
					m.addDoc(ci, r.id, d)
				}
				prog.done.Add(1)
			}
		}()
	}
	last := time.Now()
	err := m.store.ScanDocs(ctx, ci.spec.Name, func(id string, value []byte) error {
		sum := sumOf(value)
		ci.mu.Lock()
		ci.docs.sums[id] = sum
		ci.mu.Unlock()
		records <- record{id, bytes.Clone(value)}
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			m.log.Info("reading retrieval documents", "collection", ci.spec.Name, "done", prog.done.Load())
		}
		return nil
	})
	close(records)
	wg.Wait()
	if err != nil {
		m.log.Error("reading documents", "collection", ci.spec.Name, "err", err)
	}
}

// buildGraph builds the graph of a collection read from the store: at
// once when it is small (searches are exact anyway), else in the
// background while it answers exactly, with progress in /v1/status.
func (m *Manager) buildGraph(ctx context.Context, ci *collectionIndex) {
	if ci.index.Len() < ci.index.ExactBelow {
		ci.index.Rebuild()
		return
	}
	bp := &buildProgress{started: time.Now().UTC()}
	bp.total.Store(int64(ci.index.Len()))
	m.building.Store(ci.spec.Name, bp)
	m.builds.Add(1)
	go func() {
		defer m.builds.Done()
		defer m.building.Delete(ci.spec.Name)
		start := time.Now()
		if err := ci.index.BuildGraph(ctx, &bp.done); err != nil {
			return // shutting down: the next start builds it
		}
		m.count(func(s *Stats) { s.GraphsBuilt++ })
		m.log.Info("retrieval index built", "collection", ci.spec.Name, "documents", ci.index.Len(), "seconds", time.Since(start).Seconds())
	}()
}

// saveAll saves every collection's index with its state (Run's last act,
// after the background builds end and no event is applied any more).
func (m *Manager) saveAll() {
	m.builds.Wait()
	if m.indexDir == "" {
		return
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for name, ci := range m.indexes {
		if err := m.save(name, ci); err != nil {
			m.log.Warn("retrieval index not saved", "collection", name, "err", err)
		}
	}
}

func (m *Manager) save(name string, ci *collectionIndex) error {
	if m.space != nil {
		if err := m.space(ci.index.GraphBytes()); err != nil {
			return err
		}
	}
	ci.mu.RLock()
	state, err := json.Marshal(savedState{Records: recordsDigest(ci.docs.sums), Metadata: ci.docs.meta.byID, Applied: ci.docs.applied,
		Sums: encodeSums(ci.docs.sums), Trust: m.replica.TrustFingerprint()})
	ci.mu.RUnlock()
	if err != nil {
		return err
	}
	return ci.index.Save(m.indexDir, name, state)
}
