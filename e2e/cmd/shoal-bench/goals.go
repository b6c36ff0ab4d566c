package main

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// The goals section (issue 16): each goal of the multi-process scenarios
// stated as met or missed by how much, from the figures of this run, with
// a subscriber's CPU profile of the same run saying where its time went.
// It is written only when procprop, procfanout and lossyfanout all ran in
// one invocation (`make bench`, or -only procprop,procfanout,lossyfanout),
// so the verdicts never mix runs.

// goalRun collects what those scenarios measured.
type goalRun struct {
	prop      []procRow
	propRan   bool
	profiled  int               // subscribers of the profiled mesh (0: none)
	profiles  map[string]string // phase ("idle", "busy") → the subscriber's CPU profile
	fan       []fanRow
	fanRan    bool
	lossy     []lossyResult
	lossyRan  bool
	lossySkip string // why the namespaces row did not run, if it did not
}

// lossyResult is one row of the fan-out over site links.
type lossyResult struct {
	name  string
	took  time.Duration
	ratio float64
}

func (g *goalRun) complete() bool { return g.propRan && g.fanRan && g.lossyRan }

// goal is one line of the section.
type goal struct {
	what, measured, verdict string
}

// verdict states a ratio against its bound: met, or missed by how much.
func verdict(ratio, bound float64) string {
	if ratio <= bound {
		return "**met**"
	}
	return fmt.Sprintf("**missed**, %.1f× the goal", ratio/bound)
}

// rowsAt returns the Shoal activation record's, its serving row's and
// etcd's rows at n subscribers.
func (g *goalRun) rowsAt(n int) (rec, serve, etcd *procRow) {
	for i := range g.prop {
		r := &g.prop[i]
		if r.subscribers != n {
			continue
		}
		switch {
		case r.system == recordSystem:
			rec = r
		case strings.HasPrefix(r.system, "Shoal: activation → serving"):
			serve = r
		case r.system == "etcd watch":
			etcd = r
		}
	}
	return rec, serve, etcd
}

func (g *goalRun) goals() []goal {
	var out []goal
	for _, c := range []struct {
		n     int
		bound float64
	}{{9, 1}, {24, 2}} {
		rec, _, etcd := g.rowsAt(c.n)
		what := fmt.Sprintf("%d peers: activation record p99 ≤ etcd watch p99", c.n+1)
		if c.bound != 1 {
			what = fmt.Sprintf("%d peers: activation record p99 ≤ %g× etcd watch p99", c.n+1, c.bound)
		}
		if rec == nil || etcd == nil {
			out = append(out, goal{what, "not measured (-proc-subscribers / -proc-alternates-upto)", "—"})
			continue
		}
		r := float64(rec.p99) / float64(etcd.p99)
		out = append(out, goal{what, fmt.Sprintf("%s against %s (%.1f×; p50 %s against %s)", ms(rec.p99), ms(etcd.p99), r, ms(rec.p50), ms(etcd.p50)), verdict(r, c.bound)})
	}
	if _, serve, _ := g.rowsAt(9); serve != nil {
		out = append(out, goal{"10 peers: activation → every peer serving a 20 MiB model ≤ 0.5 s",
			fmt.Sprintf("p99 %s (p50 %s)", secs(serve.p99), secs(serve.p50)), verdict(serve.p99.Seconds(), 0.5)})
	}
	for _, r := range g.fan {
		if r.mib != 100 || !r.swarm {
			continue
		}
		out = append(out,
			goal{"100 MiB to 10 peers: the origin uploads ≤ 1.5× the artifact", fmt.Sprintf("%.2f× (one HTTP origin: %.2f×)", r.shoalRatio, r.httpRatio), verdict(r.shoalRatio, 1.5)},
			goal{"100 MiB to 10 peers: all serving within 3× one HTTP origin's time (loopback)",
				fmt.Sprintf("%s against %s (%.1f×)", secs(r.shoalTook), secs(r.httpTook), r.shoalTook.Seconds()/r.httpTook.Seconds()),
				verdict(r.shoalTook.Seconds()/r.httpTook.Seconds(), 3)})
	}
	out = append(out, g.lossyGoal())
	out = append(out, g.growthGoal())
	return out
}

func (g *goalRun) lossyGoal() goal {
	what := "Fan-out over 50 ms / 1 % loss links faster than one HTTP origin"
	if g.lossySkip != "" {
		return goal{what, "not measured: " + g.lossySkip, "—"}
	}
	var swarm, http *lossyResult
	for i := range g.lossy {
		switch g.lossy[i].name {
		case "Shoal: swarm, then bitswap":
			swarm = &g.lossy[i]
		case "one HTTP origin":
			http = &g.lossy[i]
		}
	}
	if swarm == nil || http == nil {
		return goal{what, "not measured", "—"}
	}
	r := swarm.took.Seconds() / http.took.Seconds()
	v := "**met**"
	if r >= 1 {
		v = fmt.Sprintf("**missed**, %.2f× the HTTP origin's time", r)
	}
	return goal{what, fmt.Sprintf("%s against %s (%.2f×)", secs(swarm.took), secs(http.took), r), v}
}

// growthGoal fits p99 ∝ processes^k over the activation record's sizes:
// gossipsub's own cost grows about logarithmically (k near 0); k near 1
// is linear growth, what N processes sharing two cores give at best.
func (g *goalRun) growthGoal() goal {
	recs := recordRows(g.prop)
	what := "Cost grows roughly logarithmically with the mesh"
	if len(recs) < 2 {
		return goal{what, "needs two sizes or more", "—"}
	}
	first, last := recs[0], recs[len(recs)-1]
	k := math.Log(float64(last.p99)/float64(first.p99)) / math.Log(float64(last.processes)/float64(first.processes))
	kc := math.Log(last.idleCPU*float64(last.processes)/(first.idleCPU*float64(first.processes))) / math.Log(float64(last.processes)/float64(first.processes))
	measured := fmt.Sprintf("%d → %d processes: p99 %s → %s, p99 ∝ N^%.2f; the mesh's idle CPU ∝ N^%.2f (per peer %.1f → %.1f ms/s)",
		first.processes, last.processes, ms(first.p99), ms(last.p99), k, kc, first.idleCPU, last.idleCPU)
	v := "**met**"
	switch {
	case k >= 0.9:
		v = "**missed**: linear or worse"
	case k >= 0.5:
		v = "**missed**: sub-linear, not logarithmic"
	}
	return goal{what, measured, v}
}

// renderGoals is the section: the goals, then where the profiled
// subscriber's CPU went.
func renderGoals(g *goalRun) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Issue 16's goals, from this run (one `shoal run` process per peer)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s; written by the run that wrote the multi-process sections below, from their figures.\n\n",
		time.Now().UTC().Format("2006-01-02"), machine())
	fmt.Fprintln(&b, "| goal | measured | verdict |")
	fmt.Fprintln(&b, "|---|---|---|")
	for _, x := range g.goals() {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", x.what, x.measured, x.verdict)
	}
	b.WriteString("\n")
	b.WriteString(g.renderProfiles())
	return b.String()
}

func (g *goalRun) renderProfiles() string {
	busy, idle := g.profiles["busy"], g.profiles["idle"]
	if busy == "" || idle == "" {
		return ""
	}
	pb, errB := readCPUProfile(busy)
	pi, errI := readCPUProfile(idle)
	if errB != nil || errI != nil {
		return fmt.Sprintf("(profiles unreadable: %v)\n\n", cmp.Or(errB, errI))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `**Where a subscriber's CPU went** (%d processes; CPU profiles of one subscriber, `+"`%s` and `%s`"+` in
-proc-profile-dir: the measured notices (*busy*) and the idle span before them). Each sample is counted once, under the innermost
frame that belongs to one of these parts (a Badger read by the registry counts as Badger); *Go runtime* is
what no part's frame is on: the scheduler waking and parking goroutines, and GC.

| part | busy: ms / s | busy: share | idle: ms / s | idle: share |
|---|---:|---:|---:|---:|
`, g.profiled+1, filepath.Base(busy), filepath.Base(idle))
	for _, p := range append(slices.Clone(cpuParts), cpuPart{name: "other"}) {
		fmt.Fprintf(&b, "| %s | %.1f | %.0f %% | %.1f | %.0f %% |\n", p.name, pb.perSecond(p.name), 100*pb.share(p.name), pi.perSecond(p.name), 100*pi.share(p.name))
	}
	fmt.Fprintf(&b, "| all | %.1f | 100 %% | %.1f | 100 %% |\n\n", pb.perSecond(""), pi.perSecond(""))
	return b.String()
}

// secs is a duration in seconds, as the goals state them.
func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// cpuPart names a part of a peer by the function-name prefixes of its
// frames.
type cpuPart struct {
	name     string
	prefixes []string
}

// cpuParts are matched in order at each frame, innermost frame first.
var cpuParts = []cpuPart{
	{"Badger (store reads, writes, compaction)", []string{"github.com/dgraph-io/", "github.com/ipfs/go-ds-badger4"}},
	{"sockets, Noise, yamux", []string{"github.com/libp2p/go-yamux", "github.com/libp2p/go-libp2p/p2p/security/", "github.com/flynn/noise", "github.com/libp2p/go-libp2p/p2p/net/", "github.com/libp2p/go-libp2p/p2p/muxer/", "github.com/libp2p/go-libp2p/p2p/transport/", "github.com/libp2p/go-msgio", "github.com/multiformats/go-multistream", "net.", "internal/poll."}},
	{"gossipsub (with its signature checks)", []string{"github.com/libp2p/go-libp2p-pubsub"}},
	{"go-ds-crdt (merging, DAG)", []string{"github.com/ipfs/go-ds-crdt"}},
	{"registry evaluation (crdt/models)", []string{"github.com/shoal-mesh/shoal/crdt/models"}},
	{"replica (crdt: admission, heartbeats, freshness, completeness)", []string{"github.com/shoal-mesh/shoal/crdt"}},
	{"artifacts and bitswap", []string{"github.com/ipfs/boxo/", "github.com/shoal-mesh/shoal/store/artifacts"}},
	{"HTTP API and watch streams", []string{"github.com/shoal-mesh/shoal/httpapi", "github.com/shoal-mesh/shoal/lifecycle", "net/http."}},
	{"rest of libp2p (identify, peerstore, resource manager)", []string{"github.com/libp2p/"}},
	{"Go runtime (scheduler, GC)", []string{"runtime.", "internal/runtime/"}},
}

// cpuSplit is a profile's CPU time by part.
type cpuSplit struct {
	seconds float64 // the profile's duration
	total   time.Duration
	by      map[string]time.Duration
}

func (c cpuSplit) perSecond(part string) float64 {
	d := c.total
	if part != "" {
		d = c.by[part]
	}
	return float64(d.Milliseconds()) / c.seconds
}

func (c cpuSplit) share(part string) float64 {
	if c.total == 0 {
		return 0
	}
	return float64(c.by[part]) / float64(c.total)
}

func readCPUProfile(path string) (cpuSplit, error) {
	f, err := os.Open(path)
	if err != nil {
		return cpuSplit{}, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return cpuSplit{}, fmt.Errorf("%s: %w", path, err)
	}
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			idx = i
		}
	}
	if idx < 0 {
		return cpuSplit{}, fmt.Errorf("%s: not a CPU profile", path)
	}
	c := cpuSplit{seconds: max(float64(p.DurationNanos)/1e9, 1e-9), by: map[string]time.Duration{}}
	for _, s := range p.Sample {
		d := time.Duration(s.Value[idx])
		c.total += d
		c.by[partOf(s)] += d
	}
	return c, nil
}

// partOf is the part of the innermost frame of s that belongs to one,
// with the runtime counted only where no other part's frame is on the
// stack.
func partOf(s *profile.Sample) string {
	runtimePart := cpuParts[len(cpuParts)-1]
	sawRuntime := false
	for _, loc := range s.Location { // innermost first
		for _, line := range loc.Line { // inlined callees first, their caller last
			fn := line.Function
			if fn == nil {
				continue
			}
			for _, p := range cpuParts[:len(cpuParts)-1] {
				for _, pre := range p.prefixes {
					if strings.HasPrefix(fn.Name, pre) {
						return p.name
					}
				}
			}
			for _, pre := range runtimePart.prefixes {
				if strings.HasPrefix(fn.Name, pre) {
					sawRuntime = true
				}
			}
		}
	}
	if sawRuntime {
		return runtimePart.name
	}
	return "other"
}
