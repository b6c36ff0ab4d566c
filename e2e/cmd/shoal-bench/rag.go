package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/viterin/vek/vek32"

	"github.com/shoal-mesh/shoal/rag"
)

// clusteredVectors makes n vectors of dim components around 256 centres
// (seeded): clustered like real embeddings, not uniform.
func clusteredVectors(n, dim int, seed int64) [][]float32 {
	r := rand.New(rand.NewSource(seed))
	centres := make([][]float32, 256)
	for i := range centres {
		centres[i] = make([]float32, dim)
		for j := range centres[i] {
			centres[i][j] = float32(r.NormFloat64())
		}
	}
	out := make([][]float32, n)
	for i := range out {
		c := centres[r.Intn(len(centres))]
		v := make([]float32, dim)
		for j := range v {
			v[j] = c[j] + 0.5*float32(r.NormFloat64())
		}
		out[i] = v
	}
	return out
}

type annRow struct {
	name        string
	recall, qps float64
	build       time.Duration
	bytesPerVec float64
	note        string
}

// ragOptions are the retrieval scenario's knobs.
type ragOptions struct {
	n, dim, queries int
	anchors         bool   // also run hnswlib's and faiss's Python bindings
	section         string // the docs/benchmarks.md section written
}

func runRAG(o ragOptions, out string) error {
	fmt.Fprintf(os.Stderr, "generating %d clustered vectors of dimension %d...\n", o.n, o.dim)
	all := clusteredVectors(o.n+o.queries, o.dim, 42)
	data, qs := all[:o.n], all[o.n:]
	ids := make([]string, o.n)
	for i := range ids {
		ids[i] = fmt.Sprintf("v%06d", i)
	}
	var py *anchors
	if o.anchors {
		if py = startAnchors(data, qs); py != nil {
			defer py.close()
		}
	}
	// Builds and query passes move from run to run on a shared machine:
	// Shoal's and hnswlib's alternate, and each figure is the median.
	var x *rag.Index
	var builds, pyBuilds []float64
	var perVec, pyMem float64
	rounds := 3
	if py == nil {
		rounds = 1 // nothing to alternate with (a 1M run builds once)
	}
	for range rounds {
		if x != nil {
			x.Close()
		}
		var build time.Duration
		var err error
		if x, build, perVec, err = buildIndex(ids, data, o.dim); err != nil {
			return err
		}
		builds = append(builds, build.Seconds())
		if py != nil {
			secs, mem := py.build()
			pyBuilds, pyMem = append(pyBuilds, secs), mem
		}
	}
	prev := runtime.GOMAXPROCS(1) // queries on one core
	defer runtime.GOMAXPROCS(prev)
	truth, exactQPS := exactTruth(x, qs)
	if py != nil {
		py.setTruth(truth)
	}
	var passes, pyPasses []float64
	var recall, pyRecall float64
	for range 5 {
		r, qps, err := searchRecall(x, qs, truth, nil)
		if err != nil {
			return err
		}
		recall, passes = r, append(passes, qps)
		if py != nil {
			r, qps := py.pass("hnswlib")
			pyRecall, pyPasses = r, append(pyPasses, qps)
		}
	}
	filtered, err := filteredRows(x, ids, data, qs)
	if err != nil {
		return err
	}
	efRows, err := efSweep(x, qs, truth)
	if err != nil {
		return err
	}
	q8, err := int8Row(ids, data, qs, truth)
	if err != nil {
		return err
	}
	rows := []annRow{
		{name: "Shoal index (hnswlib 0.6.2 through cgo, M 16, ef 100)", recall: recall, qps: median(passes), build: seconds(median(builds)), bytesPerVec: perVec},
		{name: "exact brute force (hnswlib's distance over the graph's copy of the vectors)", recall: 1, qps: exactQPS, note: "no build"},
	}
	rows = append(rows, q8)
	if py != nil {
		rows = append(rows, annRow{name: "hnswlib 0.6.2 (M 16, ef 100)", recall: pyRecall, qps: median(pyPasses), build: seconds(median(pyBuilds)), bytesPerVec: pyMem})
		rows = append(rows, py.faissRows()...)
		if err := py.err(); err != nil {
			return err
		}
	}
	text := ragTable(o, rows) + efTable(efRows) + filteredTable(filtered)
	fmt.Print(text)
	if out != "" {
		return writeSection(out, o.section, text)
	}
	return nil
}

// int8Row builds the int8 option's index of the same vectors and measures
// it against the float vectors' exact answers (median of five passes).
func int8Row(ids []string, data, qs [][]float32, truth []map[string]bool) (annRow, error) {
	prev := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(runtime.NumCPU()) // built on every core, as the others
	x := rag.NewIndexInt8(len(data[0]))
	defer x.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := x.UpsertAll(ids, data)
	build := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.GOMAXPROCS(prev)
	if err != nil {
		return annRow{}, err
	}
	var passes []float64
	var recall float64
	for range 5 {
		r, qps, err := searchRecall(x, qs, truth, nil)
		if err != nil {
			return annRow{}, err
		}
		recall, passes = r, append(passes, qps)
	}
	mem := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)+x.GraphBytes()) / float64(len(ids))
	return annRow{name: "Shoal index, int8 vectors (`vectors: int8`; recall against the float vectors' exact answer)",
		recall: recall, qps: median(passes), build: build, bytesPerVec: mem}, nil
}

type efRow struct {
	ef          int
	recall, qps float64
}

// efSweep measures the same graph with longer result lists (median of
// three passes each), then sets ef back to 100.
func efSweep(x *rag.Index, qs [][]float32, truth []map[string]bool) ([]efRow, error) {
	defer x.SetEf(100)
	var rows []efRow
	for _, ef := range []int{50, 100, 200, 400} {
		x.SetEf(ef)
		var passes []float64
		var recall float64
		for range 3 {
			r, qps, err := searchRecall(x, qs, truth, nil)
			if err != nil {
				return nil, err
			}
			recall, passes = r, append(passes, qps)
		}
		rows = append(rows, efRow{ef, recall, median(passes)})
	}
	return rows, nil
}

func efTable(rows []efRow) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "The same Shoal graph searched with other result-list lengths (ef; median of three passes):\n\n")
	fmt.Fprintln(&b, "| ef | recall@10 | queries/s (1 core) |")
	fmt.Fprintln(&b, "|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %.3f | %.0f |\n", r.ef, r.recall, r.qps)
	}
	b.WriteString("\n")
	return b.String()
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// buildIndex bulk-loads the vectors on every core, as hnswlib's add_items
// does in the anchor row, and returns the index, the build time and the
// memory per vector: the Go heap's growth (the id maps: the vectors live
// only in hnswlib) plus hnswlib's own allocation.
func buildIndex(ids []string, data [][]float32, dim int) (*rag.Index, time.Duration, float64, error) {
	x := rag.NewIndex(dim, "cosine")
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	if err := x.UpsertAll(ids, data); err != nil {
		return nil, 0, 0, err
	}
	build := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	return x, build, float64(heap+x.GraphBytes()) / float64(len(ids)), nil
}

// exactTruth returns each query's exact top 10 and the exact q/s.
func exactTruth(x *rag.Index, qs [][]float32) ([]map[string]bool, float64) {
	truth := make([]map[string]bool, len(qs))
	start := time.Now()
	for i, q := range qs {
		truth[i] = map[string]bool{}
		for _, h := range x.Exact(q, 10) {
			truth[i][h.ID] = true
		}
	}
	return truth, float64(len(qs)) / time.Since(start).Seconds()
}

// searchRecall runs every query through Search (with f) and returns
// recall@10 against truth and the q/s.
func searchRecall(x *rag.Index, qs [][]float32, truth []map[string]bool, f *rag.Filter) (float64, float64, error) {
	start := time.Now()
	found, total := 0, 0
	for i, q := range qs {
		hits, err := x.Search(q, 10, f)
		if err != nil {
			return 0, 0, err
		}
		for _, h := range hits {
			if f != nil && !f.Allow(h.ID) {
				return 0, 0, fmt.Errorf("the filter let %s through", h.ID)
			}
			if truth[i][h.ID] {
				found++
			}
		}
		total += len(truth[i])
	}
	return float64(found) / float64(max(total, 1)), float64(len(qs)) / time.Since(start).Seconds(), nil
}

type filteredRow struct {
	share      float64
	candidates int
	recall     float64
	qps        float64
}

// filteredRows measures filtered searches: every stride-th document
// allowed, for shares of a half, a tenth and a hundredth, against an
// exact filtered search of the same candidates (Go, over the inputs).
func filteredRows(x *rag.Index, ids []string, data, qs [][]float32) ([]filteredRow, error) {
	norm := make([][]float32, len(data))
	for i, v := range data {
		norm[i] = normalised(v)
	}
	var rows []filteredRow
	for _, stride := range []int{2, 10, 100} {
		allowed := map[string]bool{}
		f := &rag.Filter{Allow: func(id string) bool { return allowed[id] }}
		var idx []int
		for i := 0; i < len(ids); i += stride {
			allowed[ids[i]] = true
			f.IDs = append(f.IDs, ids[i])
			idx = append(idx, i)
		}
		fq := qs[:min(len(qs), 200)]
		truth := make([]map[string]bool, len(fq))
		for qi, q := range fq {
			truth[qi] = exactAmong(normalised(q), norm, ids, idx)
		}
		recall, qps, err := searchRecall(x, fq, truth, f)
		if err != nil {
			return nil, err
		}
		rows = append(rows, filteredRow{share: 1 / float64(stride), candidates: len(f.IDs), recall: recall, qps: qps})
	}
	return rows, nil
}

// median is the middle of xs (the upper one of two), xs left unsorted.
func median[T cmp.Ordered](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func normalised(v []float32) []float32 {
	n := float32(math.Sqrt(float64(vek32.Dot(v, v))))
	return vek32.DivNumber(v, n)
}

// exactAmong returns the ids of the 10 vectors among idx nearest to q.
func exactAmong(q []float32, norm [][]float32, ids []string, idx []int) map[string]bool {
	type hit struct {
		i int
		s float32
	}
	var top []hit
	for _, i := range idx {
		s := vek32.Dot(q, norm[i])
		if len(top) < 10 {
			top = append(top, hit{i, s})
			sort.Slice(top, func(a, b int) bool { return top[a].s > top[b].s })
		} else if s > top[9].s {
			top[9] = hit{i, s}
			sort.Slice(top, func(a, b int) bool { return top[a].s > top[b].s })
		}
	}
	out := map[string]bool{}
	for _, h := range top {
		out[ids[h.i]] = true
	}
	return out
}

func ragTable(o ragOptions, rows []annRow) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Retrieval: approximate index against exact search (%d vectors)\n\n", o.n)
	fmt.Fprintf(&b, "Measured %s on %s. %d vectors of dimension %d around 256 centres (seed 42, Gaussian spread 0.5), cosine,\n", time.Now().UTC().Format("2006-01-02"), machine(), o.n, o.dim)
	fmt.Fprintf(&b, "%d held-out queries from the same distribution, k = 10. Builds run on every core (Shoal's bulk load and hnswlib's\n", o.queries)
	fmt.Fprintf(&b, "add_items alike; faiss with one OpenMP thread per core); queries run one at a time on one core (GOMAXPROCS 1 for Go;\n")
	fmt.Fprintf(&b, "one thread for the Python libraries); builds (three each) and query passes (five each) of Shoal and hnswlib alternate, and\n")
	fmt.Fprintf(&b, "each figure is their median. Memory per vector: for Shoal, the Go heap growth over the build (the id maps;\n")
	fmt.Fprintf(&b, "the vectors live only in hnswlib) plus hnswlib's own allocation, estimated as vector, 2·M links, link count and label\n")
	fmt.Fprintf(&b, "per node with about 1/M more for the upper levels; for the hnswlib row the same without the upper levels.\n\n")
	fmt.Fprintln(&b, "| index | recall@10 | queries/s (1 core) | build | memory/vector |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|---:|")
	for _, r := range rows {
		buildS, mem := "—", "—"
		if r.build > 0 {
			buildS = fmt.Sprintf("%.1f s", r.build.Seconds())
		}
		if r.bytesPerVec > 0 {
			mem = fmt.Sprintf("%.0f B", r.bytesPerVec)
		}
		name := r.name
		if r.note != "" {
			name += " (" + r.note + ")"
		}
		fmt.Fprintf(&b, "| %s | %.3f | %.0f | %s | %s |\n", name, r.recall, r.qps, buildS, mem)
	}
	b.WriteString("\n")
	return b.String()
}

func filteredTable(rows []filteredRow) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Filtered queries on the same index (every 2nd, 10th or 100th vector allowed; 200 queries; recall@10 against an exact\n")
	fmt.Fprintf(&b, "search of the allowed vectors). Fewer than 8,192 candidates are compared exactly; more are searched in the graph\n")
	fmt.Fprintf(&b, "with the result list widened by the inverse share × 1.5, then filtered.\n\n")
	fmt.Fprintln(&b, "| allowed | candidates | path | recall@10 | queries/s (1 core) |")
	fmt.Fprintln(&b, "|---:|---:|---|---:|---:|")
	for _, r := range rows {
		path := "graph, widened"
		if r.candidates < 8192 {
			path = "exact among the candidates"
		}
		fmt.Fprintf(&b, "| %.0f %% | %d | %s | %.3f | %.0f |\n", 100*r.share, r.candidates, path, r.recall, r.qps)
	}
	b.WriteString("\n")
	return b.String()
}

// anchors runs hnswlib and faiss (Debian's python3-hnswlib and
// python3-faiss) on the same vectors in one Python process that stays up,
// so its builds and query passes can alternate with Shoal's.
type anchors struct {
	dir   string
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	fail  error
	nq, d int
}

const anchorScript = `
import sys, time, os, numpy as np, hnswlib, faiss
d = int(sys.argv[2]); dir = sys.argv[1]
data = np.fromfile(dir + "/data.f32", dtype=np.float32).reshape(-1, d)
qs = np.fromfile(dir + "/queries.f32", dtype=np.float32).reshape(-1, d)
faiss.normalize_L2(data); faiss.normalize_L2(qs)
truth = None; p = None
def recall(ids):
    return sum(len(set(r) & t) for r, t in zip(ids, truth)) / (10 * len(truth))
def timed(f):
    t = time.time(); ids = f(); return recall(ids), len(qs) / (time.time() - t)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "build":
        p = None
        t = time.time(); p = hnswlib.Index(space="cosine", dim=d); p.init_index(max_elements=len(data), ef_construction=200, M=16)
        p.add_items(data, num_threads=os.cpu_count()); build = time.time() - t; p.set_ef(100); p.set_num_threads(1)
        print(build, p.get_current_count() * (d * 4 + 16 * 2 * 4 + 8) / len(data), flush=True)
    elif cmd[0] == "truth":
        truth = [set(map(int, l.split())) for l in open(dir + "/truth.txt")]
        print("ok", flush=True)
    elif cmd[0] == "hnswlib":
        print(*timed(lambda: [p.knn_query(q, k=10)[0][0] for q in qs]), flush=True)
    elif cmd[0] == "faiss":
        faiss.omp_set_num_threads(os.cpu_count())
        t = time.time(); ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT); ix.hnsw.efConstruction = 200; ix.add(data); build = time.time() - t
        ix.hnsw.efSearch = 100; faiss.omp_set_num_threads(1)
        r = [timed(lambda: [ix.search(q.reshape(1, -1), 10)[1][0] for q in qs]) for _ in range(5)]
        print(r[0][0], sorted(x[1] for x in r)[2], build, flush=True)
        fl = faiss.IndexFlatIP(d); fl.add(data)
        print(*timed(lambda: [fl.search(q.reshape(1, -1), 10)[1][0] for q in qs]), flush=True)
`

func startAnchors(data, qs [][]float32) *anchors {
	a := &anchors{nq: len(qs), d: len(data[0])}
	py := "/usr/bin/python3"
	if exec.Command(py, "-c", "import hnswlib, faiss, numpy").Run() != nil {
		fmt.Fprintln(os.Stderr, "python3-hnswlib / python3-faiss not installed: skipping their rows")
		return nil
	}
	var err error
	if a.dir, err = os.MkdirTemp("", "shoal-ann-*"); err != nil {
		return nil
	}
	writeVectors(filepath.Join(a.dir, "data.f32"), data)
	writeVectors(filepath.Join(a.dir, "queries.f32"), qs)
	a.cmd = exec.Command(py, "-c", anchorScript, a.dir, fmt.Sprint(a.d))
	a.cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
	a.cmd.Stderr = os.Stderr
	a.in, _ = a.cmd.StdinPipe()
	stdout, _ := a.cmd.StdoutPipe()
	a.out = bufio.NewScanner(stdout)
	if err := a.cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "python anchors: %v\n", err)
		return nil
	}
	return a
}

func writeVectors(path string, vs [][]float32) {
	var buf bytes.Buffer
	for _, v := range vs {
		binary.Write(&buf, binary.LittleEndian, v)
	}
	os.WriteFile(path, buf.Bytes(), 0o600)
}

// ask sends one command and parses the answer's fields into floats.
func (a *anchors) ask(cmd string, n int) []float64 {
	out := make([]float64, n)
	if a.fail != nil {
		return out
	}
	fmt.Fprintln(a.in, cmd)
	if !a.out.Scan() {
		a.fail = fmt.Errorf("python anchors: no answer to %q (%v)", cmd, a.out.Err())
		return out
	}
	f := strings.Fields(a.out.Text())
	for i := range out {
		if i < len(f) {
			fmt.Sscan(f[i], &out[i])
		}
	}
	return out
}

// build builds hnswlib's index (on every core) and returns its seconds
// and memory per vector.
func (a *anchors) build() (float64, float64) {
	r := a.ask("build", 2)
	return r[0], r[1]
}

func (a *anchors) setTruth(truth []map[string]bool) {
	var tb strings.Builder
	for i := range truth {
		first := true
		for id := range truth[i] {
			var n int
			fmt.Sscanf(id, "v%06d", &n)
			if !first {
				tb.WriteString(" ")
			}
			first = false
			fmt.Fprint(&tb, n)
		}
		tb.WriteString("\n")
	}
	os.WriteFile(filepath.Join(a.dir, "truth.txt"), []byte(tb.String()), 0o600)
	a.ask("truth", 0)
}

// pass runs the queries once through hnswlib: recall@10 and q/s.
func (a *anchors) pass(which string) (float64, float64) {
	r := a.ask(which, 2)
	return r[0], r[1]
}

// faissRows builds faiss's HNSW (on every core) and measures it (median
// of five passes) and its exact flat index.
func (a *anchors) faissRows() []annRow {
	h := a.ask("faiss", 3)
	if a.fail != nil || !a.out.Scan() {
		return nil
	}
	var fr, fq float64
	fmt.Sscan(a.out.Text(), &fr, &fq)
	return []annRow{
		{name: "faiss 1.7.3 IndexHNSWFlat (M 32, ef 100)", recall: h[0], qps: h[1], build: seconds(h[2])},
		{name: "faiss 1.7.3 IndexFlatIP (exact)", recall: fr, qps: fq},
	}
}

func (a *anchors) err() error { return a.fail }

func (a *anchors) close() {
	a.in.Close()
	a.cmd.Wait()
	os.RemoveAll(a.dir)
}
