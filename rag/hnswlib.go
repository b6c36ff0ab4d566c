package rag

// #cgo CXXFLAGS: -std=c++17 -O3
// #cgo LDFLAGS: -lstdc++
// #include <stdlib.h>
// #include "hnsw_shim.h"
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// graph is an HNSW graph held by hnswlib (the header-only C++ library
// Debian ships as libhnswlib-dev, the one hnswlib's Python package wraps),
// through the small C face in hnsw_shim.cpp. hnswlib copies every vector
// it is given, finds neighbours with SIMD distance kernels, skips nodes
// marked deleted, and saves and loads its graph as one file.
//
// The graph holds the only copy of an index's vectors once it is built
// (Index reads them back through exact and vector).
//
// Concurrency, as hnswlib allows it: searches may run together, and adds
// may run together and with searches, but growing the capacity (done by
// add when full) and setEf must run alone. Index's RWMutex gives that: adds
// under the write lock, or together through addMany, which reserves the
// capacity first.
type graph struct {
	h      *C.shoal_hnsw
	dim    int
	metric C.int
}

const (
	metricIP C.int = 0 // 1 - dot: normalised cosine vectors and dot products
	metricL2 C.int = 1 // squared Euclidean distance
	// 1 - dot of int8 vectors with a float scale each: cosine at a little
	// over a quarter of the memory; the shim quantises what it is given.
	metricInt8 C.int = 2
)

// Graph parameters: M 16 and ef_construction 200 are hnswlib's own
// recommended defaults (and the benchmark anchor's).
const (
	graphM              = 16
	graphEfConstruction = 200
)

func cerr(e *C.char) error {
	if e == nil {
		return errors.New("hnswlib: unknown error")
	}
	defer C.free(unsafe.Pointer(e))
	return fmt.Errorf("hnswlib: %s", C.GoString(e))
}

// kindOf is the shim's space for a metric and vector encoding.
func kindOf(metric string, int8 bool) C.int {
	switch {
	case int8:
		return metricInt8
	case metric == "l2":
		return metricL2
	}
	return metricIP
}

func newGraph(dim int, kind C.int, capacity int, seed int64) (*graph, error) {
	var e *C.char
	h := C.shoal_hnsw_new(C.int(dim), kind, C.size_t(max(capacity, 16)), graphM, graphEfConstruction, C.size_t(seed), &e)
	if h == nil {
		return nil, cerr(e)
	}
	g := &graph{h: h, dim: dim, metric: kind}
	runtime.SetFinalizer(g, (*graph).free)
	return g, nil
}

// loadGraph reads a graph save wrote, with room for capacity nodes.
func loadGraph(path string, dim int, kind C.int, capacity int) (*graph, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var e *C.char
	h := C.shoal_hnsw_load(cpath, C.int(dim), kind, C.size_t(max(capacity, 16)), &e)
	if h == nil {
		return nil, cerr(e)
	}
	g := &graph{h: h, dim: dim, metric: kind}
	runtime.SetFinalizer(g, (*graph).free)
	return g, nil
}

// save writes the graph (vectors, links, deleted marks) to path.
func (g *graph) save(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var e *C.char
	if C.shoal_hnsw_save(g.h, cpath, &e) != 0 {
		return cerr(e)
	}
	return nil
}

// free releases the C++ graph (the finalizer's job; call it to free
// early). Safe to call twice.
func (g *graph) free() {
	if g.h != nil {
		C.shoal_hnsw_free(g.h)
		g.h = nil
	}
}

func (g *graph) add(v []float32, label uint64) error {
	var e *C.char
	if C.shoal_hnsw_add(g.h, (*C.float)(unsafe.Pointer(&v[0])), C.size_t(label), &e) != 0 {
		return cerr(e)
	}
	return nil
}

// addAll adds n vectors, item(i) giving the i-th and its label, on every
// core: the capacity is reserved first, so the adds may run together.
func (g *graph) addAll(ctx context.Context, n int, item func(i int) ([]float32, uint64), done *atomic.Int64) error {
	var e *C.char
	if C.shoal_hnsw_reserve(g.h, C.size_t(int(g.count())+n), &e) != 0 {
		return cerr(e)
	}
	workers := min(runtime.GOMAXPROCS(0), max(n/64, 1))
	errs := make(chan error, workers)
	var next atomic.Int64
	for range workers {
		go func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					errs <- nil
					return
				}
				if i%1024 == 0 && ctx.Err() != nil {
					errs <- ctx.Err()
					return
				}
				if err := g.add(item(i)); err != nil {
					errs <- err
					return
				}
				if done != nil {
					done.Add(1)
				}
			}
		}()
	}
	var first error
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (g *graph) markDeleted(label uint64) error {
	var e *C.char
	if C.shoal_hnsw_delete(g.h, C.size_t(label), &e) != 0 {
		return cerr(e)
	}
	return nil
}

func (g *graph) setEf(ef int) { C.shoal_hnsw_set_ef(g.h, C.size_t(ef)) }

// search returns up to k labels with their distances, nearest first.
func (g *graph) search(q []float32, k int) ([]uint64, []float32, error) {
	labels := make([]C.size_t, k)
	dists := make([]float32, k)
	var e *C.char
	n := C.shoal_hnsw_search(g.h, (*C.float)(unsafe.Pointer(&q[0])), C.size_t(k), &labels[0], (*C.float)(unsafe.Pointer(&dists[0])), &e)
	if n < 0 {
		return nil, nil, cerr(e)
	}
	return toLabels(labels[:n]), dists[:n], nil
}

// exact returns the k live nodes nearest to q with their distances,
// nearest first, by comparing q with every node among labels (every live
// node when labels is nil): hnswlib's own SIMD distance, read from the
// graph's copy of the vectors. Like search, it may run with searches.
func (g *graph) exact(q []float32, labels []uint64, k int) ([]uint64, []float32, error) {
	if k <= 0 {
		return nil, nil, nil
	}
	var in *C.size_t
	if labels != nil {
		if len(labels) == 0 {
			return nil, nil, nil
		}
		in = (*C.size_t)(unsafe.Pointer(&labels[0])) // uint64 and size_t agree on amd64 and arm64
	}
	out := make([]C.size_t, k)
	dists := make([]float32, k)
	var e *C.char
	n := C.shoal_hnsw_exact(g.h, (*C.float)(unsafe.Pointer(&q[0])), in, C.size_t(len(labels)), C.size_t(k), &out[0], (*C.float)(unsafe.Pointer(&dists[0])), &e)
	if n < 0 {
		return nil, nil, cerr(e)
	}
	return toLabels(out[:n]), dists[:n], nil
}

// vector copies label's vector, as the graph holds it, into out.
func (g *graph) vector(label uint64, out []float32) error {
	var e *C.char
	if C.shoal_hnsw_vector(g.h, C.size_t(label), (*C.float)(unsafe.Pointer(&out[0])), &e) != 0 {
		return cerr(e)
	}
	return nil
}

func toLabels(in []C.size_t) []uint64 {
	out := make([]uint64, len(in))
	for i, l := range in {
		out[i] = uint64(l)
	}
	return out
}

// bytes estimates the memory hnswlib holds: per node its level-0 record
// (vector, 2·M links, label), and about 1/M more for the upper levels.
func (g *graph) bytes() int64 {
	n := g.count()
	vector := int64(g.dim * 4)
	if g.metric == metricInt8 {
		vector = int64(4 + g.dim)
	}
	perNode := vector + graphM*2*4 + 4 + 8
	return n*perNode + n*perNode/graphM
}

// count is the number of nodes, deleted ones included.
func (g *graph) count() int64 { return int64(C.shoal_hnsw_count(g.h)) }

// exact passes a []uint64 as size_t*: the two must have one size.
var _ = [1]struct{}{}[unsafe.Sizeof(C.size_t(0))-8]
