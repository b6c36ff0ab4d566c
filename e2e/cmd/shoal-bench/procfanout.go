package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/e2e/procmesh"
)

// The multi-process fan-out scenario (issue 16, item 3): one `shoal run`
// process publishes an artifact, n others are told to serve it, and the
// origin's upload and the time until every peer serves it are measured
// beside n clients downloading the same bytes from one HTTP origin in the
// same run.

// fanRow is one artifact size.
type fanRow struct {
	mib                   int
	swarm                 bool // false: the peers run with --artifact-swarm=false
	shoalRatio, httpRatio float64
	shoalTook, httpTook   time.Duration
	swarmShare            float64
	slowestFetch          time.Duration // the longest fetch and verification of one peer
	cpu                   time.Duration // CPU time of every process during the fan-out
}

func runProcFanOut(n int, sizes []int, out string, g *goalRun) error {
	var rows []fanRow
	for _, mib := range sizes {
		fmt.Fprintf(os.Stderr, "procfanout: %d MiB from one HTTP origin to %d clients...\n", mib, n)
		hratio, htook, err := httpFanOut(n, mib<<20)
		if err != nil {
			return err
		}
		for _, swarm := range []bool{true, false} {
			fmt.Fprintf(os.Stderr, "procfanout: %d MiB to %d shoal processes (swarm %v)...\n", mib, n, swarm)
			r, err := procFanOut(n, mib, swarm)
			if err != nil {
				return fmt.Errorf("%d MiB: %w", mib, err)
			}
			r.httpRatio, r.httpTook = hratio, htook
			rows = append(rows, r)
		}
	}
	g.fan, g.fanRan = rows, true
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Artifact fan-out from one origin to %d peers, one `shoal run` process per peer (loopback)\n\n", n)
	fmt.Fprintf(&b, "Measured %s on %s, Shoal and HTTP in the same run. Shoal: %d+1 processes, each with its own Badger store; the\n", time.Now().UTC().Format("2006-01-02"), machine(), n)
	fmt.Fprintf(&b, "artifact is pushed to peer 0 and listed everywhere, then activated; *time* is from the activation call until the\n")
	fmt.Fprintf(&b, "last peer's watch stream reported it served (fetched, checked block by block against its CID, sha256 of the whole,\n")
	fmt.Fprintf(&b, "loaded); *origin bytes* is what peer 0 uploaded of it (`shoal_artifact_bytes_total{direction=\"out\"}`, swarm and\n")
	fmt.Fprintf(&b, "bitswap) per artifact byte; *bitswap alone* is the same with every peer run with `--artifact-swarm=false`. HTTP: %d clients download the artifact at once from one Go HTTP server and check its\n", n)
	fmt.Fprintf(&b, "sha256, all in the bench process. *Slowest peer's fetch* is the longest `shoal_artifact_fetch_seconds` of a peer (fetch and checks). Goals (issue 16): origin ≤ 1.5× the artifact, time ≤ 3× the HTTP origin's.\n\n")
	fmt.Fprintln(&b, "| artifact | fetch | Shoal origin bytes / artifact | Shoal all serving after | slowest peer's fetch | of it through the swarm | CPU, all processes | HTTP origin bytes / artifact | HTTP all verified after | time, Shoal ÷ HTTP |")
	fmt.Fprintln(&b, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		how := "swarm, then bitswap"
		if !r.swarm {
			how = "bitswap alone"
		}
		fmt.Fprintf(&b, "| %d MiB | %s | %.2f | %s | %s | %.0f %% | %s | %.2f | %s | %.1f× |\n", r.mib, how, r.shoalRatio, r.shoalTook.Round(time.Millisecond),
			r.slowestFetch.Round(time.Millisecond), 100*r.swarmShare, r.cpu.Round(10*time.Millisecond), r.httpRatio, r.httpTook.Round(time.Millisecond), r.shoalTook.Seconds()/r.httpTook.Seconds())
	}
	b.WriteString("\n")
	fmt.Print(b.String())
	if out == "" {
		return nil
	}
	return writeSection(out, "procfanout", b.String())
}

// procFanOut runs n+1 peer processes and measures one activation of a
// fresh artifact of mib MiB.
func procFanOut(n, mib int, swarm bool) (fanRow, error) {
	r := fanRow{mib: mib, swarm: swarm}
	dir, err := os.MkdirTemp("", "shoal-bench-fan-*")
	if err != nil {
		return r, err
	}
	// SHOAL_BENCH_KEEP keeps the peers' logs, at info, and CPU profiles of
	// the origin and one fetcher during the fan-out, for a post-mortem.
	level, keep := "warn", os.Getenv("SHOAL_BENCH_KEEP") != ""
	var pprof map[int]string
	if keep {
		level = "info"
		fmt.Fprintf(os.Stderr, "procfanout: peers' data, logs and profiles kept in %s\n", dir)
		if pprof, err = pprofAddrs(0, 1); err != nil {
			return r, err
		}
	} else {
		defer os.RemoveAll(dir)
	}
	m, err := procmesh.New(procmesh.Options{Sites: make([]int, n+1), Dir: dir, Mesh: "bench",
		Args: benchArgs(level, pprof, fmt.Sprintf("--artifact-swarm=%v", swarm))})
	if err != nil {
		return r, err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := m.StartAll(ctx); err != nil {
		return r, err
	}
	r.shoalTook, r.shoalRatio, err = fanOutOnce(ctx, m, n, mib, func(activate func() error) error {
		if keep {
			defer startProfiles(pprof, time.Duration(mib/10+1)*time.Second, dir, n, fmt.Sprintf("fanout-%dmib", mib))()
		}
		c, err := sampleCost(ctx, m.Peers, activate)
		r.cpu = c.cpu
		return err
	})
	if err != nil {
		return r, err
	}
	var viaSwarm, all float64
	for _, p := range m.Peers[1:] {
		in, err := metricValues(ctx, p, "shoal_artifact_bytes_total", `direction="in"`, "source")
		if err != nil {
			return r, err
		}
		viaSwarm += in["swarm"]
		all += in["swarm"] + in["bitswap"]
		f, err := metricValues(ctx, p, "shoal_artifact_fetch_seconds_sum", "", "")
		if err != nil {
			return r, err
		}
		r.slowestFetch = max(r.slowestFetch, time.Duration(f[""]*float64(time.Second)))
	}
	if all > 0 {
		r.swarmShare = viaSwarm / all
	}
	return r, nil
}

// fanOutOnce pushes a fresh mib MiB version of model "fan" to peer 0 of m,
// waits until every peer lists it, and activates it through around (which
// calls activate once: a CPU sample, an impaired link). It returns the time
// from the activation until the n subscribers serve the version, and what
// the origin uploaded of it per artifact byte.
func fanOutOnce(ctx context.Context, m *procmesh.Mesh, n, mib int, around func(activate func() error) error) (time.Duration, float64, error) {
	if err := pushVersions(ctx, m, "fan", 1, mib<<20, false); err != nil {
		return 0, 0, err
	}
	before, err := artifactBytesOut(ctx, m.Peers[0])
	if err != nil {
		return 0, 0, err
	}
	var lags []time.Duration
	if err := around(func() error {
		nt := &procNotifier{m: m, model: "fan", serving: true}
		defer nt.Close()
		var err error
		lags, err = measureInTurn(nt, n, 0, 1)
		return err
	}); err != nil {
		return 0, 0, err
	}
	after, err := artifactBytesOut(ctx, m.Peers[0])
	if err != nil {
		return 0, 0, err
	}
	sent := after["swarm"] + after["bitswap"] - before["swarm"] - before["bitswap"]
	return lags[0], sent / float64(mib<<20), nil
}

// artifactBytesOut is a peer's shoal_artifact_bytes_total{direction="out"}
// by source.
func artifactBytesOut(ctx context.Context, p *procmesh.Peer) (map[string]float64, error) {
	return metricValues(ctx, p, "shoal_artifact_bytes_total", `direction="out"`, "source")
}

// metricValues reads the series of a counter on p's /metrics whose labels
// contain match, by the value of label.
func metricValues(ctx context.Context, p *procmesh.Peer, name, match, label string) (map[string]float64, error) {
	r, err := p.Do(ctx, "GET", "/metrics", nil)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(r.Body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, match) {
			continue
		}
		value := ""
		if label != "" {
			_, rest, ok := strings.Cut(line, label+`="`)
			if !ok {
				continue
			}
			value, _, _ = strings.Cut(rest, `"`)
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[value] += v
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("peer %d: no %s{%s} on /metrics", p.Index, name, match)
	}
	return out, nil
}
