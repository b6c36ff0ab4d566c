package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

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

func runRAG(n, dim, queries int, out string) error {
	fmt.Fprintf(os.Stderr, "generating %d clustered vectors of dimension %d...\n", n, dim)
	all := clusteredVectors(n+queries, dim, 42)
	data, qs := all[:n], all[n:]

	x := rag.NewIndex(dim, "cosine")
	x.ExactBelow = 0
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("v%06d", i)
	}
	// One bulk load, on every core, as hnswlib's add_items does below.
	start := time.Now()
	if err := x.UpsertAll(ids, data); err != nil {
		return err
	}
	build := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The Go heap (vectors, id maps) plus what hnswlib holds in C++.
	perVec := float64(after.HeapAlloc-before.HeapAlloc+uint64(x.GraphBytes())) / float64(n)

	// Ground truth and exact-search speed.
	truth := make([]map[string]bool, len(qs))
	prev := runtime.GOMAXPROCS(1)
	start = time.Now()
	for i, q := range qs {
		truth[i] = map[string]bool{}
		for _, h := range x.Exact(q, 10) {
			truth[i][h.ID] = true
		}
	}
	exactQPS := float64(len(qs)) / time.Since(start).Seconds()
	start = time.Now()
	found := 0
	for i, q := range qs {
		hits, err := x.Search(q, 10, nil)
		if err != nil {
			return err
		}
		for _, h := range hits {
			if truth[i][h.ID] {
				found++
			}
		}
	}
	hnswQPS := float64(len(qs)) / time.Since(start).Seconds()
	runtime.GOMAXPROCS(prev)
	rows := []annRow{
		{name: "Shoal index (hnswlib 0.6.2 through cgo, M 16, ef 100)", recall: float64(found) / float64(10*len(qs)), qps: hnswQPS, build: build, bytesPerVec: perVec},
		{name: "exact brute force (Go, same vectors)", recall: 1, qps: exactQPS, note: "no build; the vectors themselves"},
	}
	rows = append(rows, pythonRows(data, qs, truth)...)

	var b bytes.Buffer
	fmt.Fprintf(&b, "### Retrieval: approximate index against exact search\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. %d vectors of dimension %d around 256 centres (seed 42, Gaussian spread 0.5), cosine,\n", time.Now().UTC().Format("2006-01-02"), machine(), n, dim)
	fmt.Fprintf(&b, "%d held-out queries from the same distribution, k = 10. Queries run one at a time on one core (GOMAXPROCS 1 for Go;\n", len(qs))
	fmt.Fprintf(&b, "one thread for the Python libraries). Memory per vector: for Shoal, the Go heap growth over the build (the\n")
	fmt.Fprintf(&b, "vectors kept for exact search and rebuilds, the id maps) plus hnswlib's own allocation, computed as for the hnswlib row\n")
	fmt.Fprintf(&b, "(vector, 2·M links, label per node, upper levels about 1/M more), divided by n.\n\n")
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
	fmt.Print(b.String())
	if out != "" {
		return writeSection(out, "rag", b.String())
	}
	return nil
}

// pythonRows runs hnswlib and faiss (Debian's python3-hnswlib and
// python3-faiss) on the same vectors when /usr/bin/python3 has them.
func pythonRows(data, qs [][]float32, truth []map[string]bool) []annRow {
	py := "/usr/bin/python3"
	if exec.Command(py, "-c", "import hnswlib, faiss, numpy").Run() != nil {
		fmt.Fprintln(os.Stderr, "python3-hnswlib / python3-faiss not installed: skipping their rows")
		return nil
	}
	dir, err := os.MkdirTemp("", "shoal-ann-*")
	if err != nil {
		return nil
	}
	defer os.RemoveAll(dir)
	write := func(name string, vs [][]float32) {
		var buf bytes.Buffer
		for _, v := range vs {
			binary.Write(&buf, binary.LittleEndian, v)
		}
		os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o600)
	}
	write("data.f32", data)
	write("queries.f32", qs)
	var tb strings.Builder
	for i := range qs {
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
	os.WriteFile(filepath.Join(dir, "truth.txt"), []byte(tb.String()), 0o600)
	script := fmt.Sprintf(`
import time, numpy as np, hnswlib, faiss, os, resource
d = %d
data = np.fromfile("%s/data.f32", dtype=np.float32).reshape(-1, d)
qs = np.fromfile("%s/queries.f32", dtype=np.float32).reshape(-1, d)
truth = [set(map(int, l.split())) for l in open("%s/truth.txt")]
faiss.normalize_L2(data); faiss.normalize_L2(qs)
faiss.omp_set_num_threads(1)
def recall(ids):
    return sum(len(set(r) & t) for r, t in zip(ids, truth)) / (10 * len(truth))
t = time.time(); p = hnswlib.Index(space="cosine", dim=d); p.init_index(max_elements=len(data), ef_construction=200, M=16)
p.set_num_threads(1); p.add_items(data); build = time.time() - t; p.set_ef(100)
t = time.time(); ids = [p.knn_query(q, k=10)[0][0] for q in qs]; qps = len(qs) / (time.time() - t)
print("hnswlib 0.6.2 (M 16, ef 100)|%%f|%%f|%%f|%%f" %% (recall(ids), qps, build, (p.get_current_count() * (d * 4 + 16 * 2 * 4 + 8)) / len(data)))
t = time.time(); ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT); ix.hnsw.efConstruction = 200; ix.add(data); build = time.time() - t
ix.hnsw.efSearch = 100
t = time.time(); ids = [ix.search(q.reshape(1, -1), 10)[1][0] for q in qs]; qps = len(qs) / (time.time() - t)
print("faiss 1.7.3 IndexHNSWFlat (M 32, ef 100)|%%f|%%f|%%f|0" %% (recall(ids), qps, build))
fl = faiss.IndexFlatIP(d); fl.add(data)
t = time.time(); ids = [fl.search(q.reshape(1, -1), 10)[1][0] for q in qs]; qps = len(qs) / (time.time() - t)
print("faiss 1.7.3 IndexFlatIP (exact)|%%f|%%f|0|0" %% (recall(ids), qps))
`, len(data[0]), dir, dir, dir)
	fmt.Fprintln(os.Stderr, "running hnswlib and faiss on the same vectors...")
	cmd := exec.Command(py, "-c", script)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
	outb, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "python benchmark failed: %v\n%s\n", err, outb)
		return nil
	}
	var rows []annRow
	for _, line := range strings.Split(strings.TrimSpace(string(outb)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 5 {
			continue
		}
		var r annRow
		r.name = f[0]
		var build, mem float64
		fmt.Sscan(f[1], &r.recall)
		fmt.Sscan(f[2], &r.qps)
		fmt.Sscan(f[3], &build)
		fmt.Sscan(f[4], &mem)
		r.build = time.Duration(build * float64(time.Second))
		r.bytesPerVec = mem
		if math.IsNaN(r.recall) {
			continue
		}
		rows = append(rows, r)
	}
	return rows
}
