// Command shoal-bench measures Shoal on this machine and prints tables:
// the propagation lag of a record from one writer to all peers, the lag
// from a model activation to every peer serving it, and artifact fan-out
// (bytes the origin uploads per artifact byte), all with in-process meshes
// on loopback. With -out it also writes the tables, with the machine they
// ran on, to a Markdown file (docs/benchmarks.md).
package main

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
)

func main() {
	var (
		sizes  = flag.String("peers", "3,10", "mesh sizes to measure, comma-separated")
		writes = flag.Int("writes", 200, "records written per mesh size")
		gap    = flag.Duration("gap", 20*time.Millisecond, "pause between writes")
		out    = flag.String("out", "", "also write the results to this Markdown file")
		acts   = flag.Int("activations", 20, "activations measured per mesh size")
		fanout = flag.String("fanout-mib", "20,100", "artifact sizes (MiB) for the fan-out scenario, comma-separated")
		fanN   = flag.Int("fanout-peers", 11, "peers in the fan-out scenario")
		iters  = flag.Int("infer-requests", 200, "requests per mode and round of the inference scenario")
		rounds = flag.Int("infer-rounds", 5, "interleaved rounds of the inference overhead table")
		tput   = flag.Duration("throughput-time", 5*time.Second, "duration of each throughput row")
		thr    = flag.String("intra-op-threads", "0,1", "intra-op thread settings for the inference scenario, comma-separated (0 = one per core)")
		ragN   = flag.Int("rag-vectors", 100000, "vectors in the retrieval scenario")
		ragDim = flag.Int("rag-dim", 384, "their dimension")
		ragQ   = flag.Int("rag-queries", 500, "queries in the retrieval scenario")
		ragA   = flag.Bool("rag-anchors", true, "also run hnswlib's and faiss's Python bindings in the retrieval scenario")
		ragS   = flag.String("rag-section", "rag", "the docs/benchmarks.md section the retrieval scenario writes")
		cmpN   = flag.String("compare-subscribers", "3,10,25", "subscriber counts of the comparison with etcd, Redis and NATS")
		cmpK   = flag.Int("compare-notices", 50, "change notices per system and size in the comparison")
		cmpG   = flag.Duration("compare-gap", 200*time.Millisecond, "pause between change notices in the comparison (version changes are rare; this measures latency, not throughput)")
		cmpA   = flag.Int("compare-activations", 10, "Shoal activations per size in the comparison")
		zipfK  = flag.Int("zipf-inputs", 256, "distinct inputs of the case-study workload")
		zipfS  = flag.Float64("zipf-s", 1.1, "Zipf exponent of the case-study workload (> 1)")
		zipfC  = flag.Int("zipf-clients", 4, "clients of the case-study workload")
		zipfD  = flag.Duration("zipf-time", 30*time.Second, "duration of each case-study run")
		zipfE  = flag.Duration("zipf-every", 10*time.Second, "a new model version every this long in the case study")
		lossyN = flag.Int("lossy-subscribers", 10, "subscribers of the delay/loss comparison")
		lossyK = flag.Int("lossy-notices", 20, "version changes per system in the delay/loss comparison")
		lossyD = flag.Duration("lossy-delay", 50*time.Millisecond, "one-way delay per link in the delay/loss comparison")
		lossyL = flag.Float64("lossy-loss", 0.01, "packet loss per link in the delay/loss comparison")
		lossyR = flag.Int64("lossy-uplink-mbit", 100, "every host's uplink (Mbit/s) in the fan-out over site links")
		lossyM = flag.Int("lossy-fanout-mib", 20, "artifact size (MiB) of the fan-out over site links")
		rstN   = flag.Int("restart-docs", 100000, "documents in the restart scenario")
		soakN  = flag.Int("soak-docs", 1000, "documents the soak scenario rewrites")
		soakW  = flag.Int("soak-writes", 100000, "writes of the soak scenario")
		soakB  = flag.Int("soak-batch", 10, "documents per request in the soak scenario (one DAG delta each)")
		qset   = flag.String("quality-set", "", "labelled set of the retrieval-quality scenario (default "+qualitySetPath+")")
		procN  = flag.String("proc-subscribers", "2,9,24,49", "subscriber counts of the multi-process scenario (one `shoal run` per peer)")
		procA  = flag.Int("proc-alternates-upto", 24, "largest subscriber count at which the multi-process scenario also runs etcd, Redis and NATS")
		procS  = flag.Int("proc-serve-upto", 24, "largest subscriber count at which the multi-process scenario measures activation → serving")
		procM  = flag.Int("proc-serve-mib", 20, "artifact size (MiB) of the multi-process serving measurement")
		procK  = flag.Int("proc-serve-activations", 8, "activations measured for the multi-process serving measurement")
		procP  = flag.Int("proc-profile", 9, "subscriber count at which the multi-process scenario CPU-profiles the publisher and one subscriber (0: none)")
		procD  = flag.String("proc-profile-dir", os.TempDir(), "where those profiles are written")
		pfanN  = flag.Int("proc-fanout-peers", 10, "peers the multi-process fan-out scenario serves an artifact to")
		pfanM  = flag.String("proc-fanout-mib", "20,100", "artifact sizes (MiB) of the multi-process fan-out scenario, comma-separated")
		sessT  = flag.Int("session-turns", 20, "turns of the session the sessions scenario reads")
		sessN  = flag.Int("session-reads", 2000, "reads per reader and round in the sessions scenario")
		sessR  = flag.Int("session-rounds", 5, "rounds of the sessions scenario")
		only   = flag.String("only", "", "run these scenarios only, comma-separated: propagation, compare, procprop, procfanout, lossy, lossyfanout, models, inference, rag, quality, restart, soak, sessions, casestudy")
	)
	flag.Parse()
	g := &goalRun{}
	scenarios := []scenario{
		{"propagation", func() error { return run(*sizes, *writes, *gap, *out) }},
		{"compare", func() error { return runCompare(*cmpN, *cmpK, *cmpA, *cmpG, *out) }},
		{"procprop", func() error {
			sizes, err := parseSizes(*procN)
			if err != nil {
				return err
			}
			return runProcProp(procOptions{sizes: sizes, alternates: *procA, serveUpTo: *procS, notices: *cmpK, gap: *cmpG,
				serveMiB: *procM, serveActs: *procK, profile: *procP, profileDir: *procD}, *out, g)
		}},
		{"procfanout", func() error {
			sizes, err := parseSizes(*pfanM)
			if err != nil {
				return err
			}
			return runProcFanOut(*pfanN, sizes, *out, g)
		}},
		{"lossy", func() error {
			return runLossy(*lossyN, *lossyK, netsim.Link{Delay: *lossyD, Loss: *lossyL}, *out)
		}},
		{"lossyfanout", func() error {
			return runLossyFanOut(*lossyN, *lossyM, netsim.Link{Delay: *lossyD, Loss: *lossyL, Rate: *lossyR * 1_000_000 / 8}, *out, g)
		}},
		{"models", func() error { return runModels(*sizes, *acts, *fanout, *fanN, *out) }},
		{"casestudy", func() error { return runCaseStudy(*zipfK, *zipfS, *zipfC, *zipfD, *zipfE, *out) }},
		{"rag", func() error {
			return runRAG(ragOptions{n: *ragN, dim: *ragDim, queries: *ragQ, anchors: *ragA, section: *ragS}, *out)
		}},
		{"quality", func() error { return runQuality(*qset, *out) }},
		{"restart", func() error { return runRestart(*rstN, *ragDim, *out) }},
		{"soak", func() error { return runSoak(*soakN, *soakW, *soakB, *out) }},
		{"sessions", func() error { return runSessions(*sessT, *sessN, *sessR, *out) }},
		{"inference", func() error {
			for _, s := range strings.Split(*thr, ",") {
				var t int
				if _, err := fmt.Sscan(strings.TrimSpace(s), &t); err != nil {
					return fmt.Errorf("bad -intra-op-threads %q", s)
				}
				if err := runInference(*iters, *rounds, *tput, t, *out); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	chosen := map[string]bool{}
	for _, name := range strings.Split(*only, ",") {
		if name = strings.TrimSpace(name); name != "" {
			chosen[name] = true
		}
	}
	for name := range chosen {
		if !slices.ContainsFunc(scenarios, func(s scenario) bool { return s.name == name }) {
			fmt.Fprintf(os.Stderr, "shoal-bench: -only: no scenario %q\n", name)
			os.Exit(2)
		}
	}
	// The goals are written as soon as the scenarios they come from have
	// run, so that a scenario failing later in a long `make bench` does
	// not lose them (the restart row once failed an hour in).
	wrote := false
	for _, s := range scenarios {
		if len(chosen) > 0 && !chosen[s.name] {
			continue
		}
		if err := s.run(); err != nil {
			fmt.Fprintln(os.Stderr, "shoal-bench:", s.name+":", err)
			os.Exit(1)
		}
		if !wrote && g.complete() {
			wrote = true
			if err := writeGoals(g, *out); err != nil {
				fmt.Fprintln(os.Stderr, "shoal-bench: goals:", err)
				os.Exit(1)
			}
		}
	}
}

// writeGoals prints the goals section and writes it into out, if set.
func writeGoals(g *goalRun, out string) error {
	section := renderGoals(g)
	fmt.Print(section)
	if out == "" {
		return nil
	}
	return writeSection(out, "goals", section)
}

// scenario is one section of the benchmarks, run by name.
type scenario struct {
	name string
	run  func() error
}

type row struct {
	peers         int
	p50, p99, max time.Duration
	writes        int
}

func run(sizes string, writes int, gap time.Duration, out string) error {
	var rows []row
	for _, s := range strings.Split(sizes, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 2 {
			return fmt.Errorf("bad mesh size %q", s)
		}
		fmt.Fprintf(os.Stderr, "measuring %d peers, %d writes...\n", n, writes)
		r, err := measure(n, writes, gap)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	table := render(rows, writes, gap)
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "propagation", table)
}

func measure(n, writes int, gap time.Duration) (row, error) {
	dir, err := testmesh.TempDir()
	if err != nil {
		return row{}, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: n, Dir: dir, Sync: true})
	if err != nil {
		return row{}, err
	}
	defer m.Close()
	// Warm up connections and gossip meshes before measuring.
	if _, err := m.MeasurePropagation(ctx, 10, gap); err != nil {
		return row{}, err
	}
	lags, err := m.MeasurePropagation(ctx, writes, gap)
	if err != nil {
		return row{}, err
	}
	return row{peers: n, writes: writes, p50: testmesh.Percentile(lags, 50), p99: testmesh.Percentile(lags, 99), max: lags[len(lags)-1]}, nil
}

func render(rows []row, writes int, gap time.Duration) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Record propagation, one writer to all peers (in-process, loopback)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. %d writes per mesh, one every %s, Badger fsync on; lag = write call start until the\n", time.Now().UTC().Format("2006-01-02"), machine(), writes, gap)
	fmt.Fprintf(&b, "record's event was delivered on the last peer. All peers share the machine's cores.\n\n")
	fmt.Fprintln(&b, "| peers | p50 | p99 | max |")
	fmt.Fprintln(&b, "|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %s | %s | %s |\n", r.peers, ms(r.p50), ms(r.p99), ms(r.max))
	}
	return b.String() + "\n"
}

// parseSizes parses a comma-separated list of positive counts.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return nil, fmt.Errorf("bad count %q in %q", f, s)
		}
		out = append(out, n)
	}
	return out, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func machine() string {
	cpu := cmp.Or(testmesh.CPUModel(), "unknown CPU")
	return fmt.Sprintf("%s, %d cores, %s %s/%s", cpu, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// writeSection replaces the named section of the file (between its
// markers), creating the file or appending the section when needed.
func writeSection(path, name, table string) error {
	beginMark := "<!-- shoal-bench:" + name + ":begin -->"
	endMark := "<!-- shoal-bench:" + name + ":end -->"
	section := beginMark + "\n" + table + endMark + "\n"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	if i, j := strings.Index(s, beginMark), strings.Index(s, endMark); i >= 0 && j > i {
		s = s[:i] + section + s[j+len(endMark)+1:]
	} else {
		if s == "" {
			s = "# Benchmarks\n\nFigures are from `make bench` on the machine each section names; compare ratios, not absolutes.\n\n"
		}
		s += section
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
