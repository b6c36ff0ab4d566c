package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
)

// lagStats summarises one system at one size.
// recordSystem names the rows of Shoal's activation record, which the
// growth table and the goals pick out of a scenario's rows.
const recordSystem = "Shoal: activation record"

type lagStats struct {
	system        string
	subscribers   int
	p50, p99, max time.Duration
	note          string
}

func statsOf(system string, n int, sorted []time.Duration) lagStats {
	return lagStats{system: system, subscribers: n, p50: testmesh.Percentile(sorted, 50), p99: testmesh.Percentile(sorted, 99), max: sorted[len(sorted)-1]}
}

// measureNotifier publishes warm+notices notices, one every gap, and
// returns for each measured notice the time from the start of its publish
// call until the last of n subscribers had it.
func measureNotifier(nt notifier, n, warm, notices int, gap time.Duration) ([]time.Duration, error) {
	type arrival struct {
		id string
		at time.Time
	}
	arrivals := make(chan arrival, (warm+notices)*n+16)
	if err := nt.Subscribe(n, func(_ int, notice string) { arrivals <- arrival{notice, time.Now()} }); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	started := map[string]time.Time{}
	total := warm + notices
	pubErr := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			id := fmt.Sprintf("n%06d", i)
			mu.Lock()
			started[id] = time.Now()
			mu.Unlock()
			if err := nt.Publish(id); err != nil {
				pubErr <- err
				return
			}
			time.Sleep(gap) // paces the notices, not synchronisation
		}
		pubErr <- nil
	}()
	seen := map[string]int{}
	last := map[string]time.Time{}
	complete := 0
	timeout := time.After(time.Duration(total)*gap + time.Minute)
	for complete < total {
		select {
		case a := <-arrivals:
			seen[a.id]++
			if a.at.After(last[a.id]) {
				last[a.id] = a.at
			}
			if seen[a.id] == n {
				complete++
			}
		case err := <-pubErr:
			if err != nil {
				return nil, err
			}
			pubErr = nil
		case <-timeout:
			return nil, fmt.Errorf("%s: %d of %d notices reached all %d subscribers", nt.Name(), complete, total, n)
		}
	}
	var lags []time.Duration
	mu.Lock()
	for i := warm; i < total; i++ {
		id := fmt.Sprintf("n%06d", i)
		lags = append(lags, last[id].Sub(started[id]))
	}
	mu.Unlock()
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	return lags, nil
}

// shoalNotice measures Shoal's equivalent of a change notice: a replicated
// record written on one peer until n other peers have applied it.
func shoalNotice(n, notices int, gap time.Duration) ([]time.Duration, error) {
	m, stop, err := startMesh(n + 1)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := m.MeasurePropagation(ctx, 10, gap); err != nil {
		return nil, err
	}
	return m.MeasurePropagation(ctx, notices, gap)
}

func runCompare(sizes string, notices, acts int, gap time.Duration, out string) error {
	var rows []lagStats
	versions := map[string]string{}
	for _, s := range strings.Split(sizes, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			return fmt.Errorf("bad subscriber count %q", s)
		}
		fmt.Fprintf(os.Stderr, "compare: Shoal record propagation to %d peers...\n", n)
		lags, err := shoalNotice(n, notices, gap)
		if err != nil {
			return err
		}
		rows = append(rows, statsOf(recordSystem, n, lags))
		fmt.Fprintf(os.Stderr, "compare: Shoal activation → serving on %d peers...\n", n)
		lags, err = activationLags(n+1, acts)
		if err != nil {
			return err
		}
		st := statsOf("Shoal: activation → serving", n, lags)
		st.note = "includes the 256 KiB artifact's fetch and sha256 check"
		rows = append(rows, st)
		for _, mk := range []func() (notifier, error){newEtcd, newRedis, newNATS} {
			nt, err := mk()
			if err != nil {
				return err
			}
			versions[nt.Name()] = nt.Version()
			fmt.Fprintf(os.Stderr, "compare: %s to %d subscribers...\n", nt.Name(), n)
			lags, err := measureNotifier(nt, n, 10, notices, gap)
			nt.Close()
			if err != nil {
				return err
			}
			rows = append(rows, statsOf(nt.Name(), n, lags))
		}
	}
	table := renderCompare(rows, versions, notices, acts, gap)
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "compare", table)
}

func renderCompare(rows []lagStats, versions map[string]string, notices, acts int, gap time.Duration) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Version-change propagation: Shoal against etcd, Redis and NATS (loopback)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s, all in the same run. Servers: %s; %s; %s.\n", time.Now().UTC().Format("2006-01-02"), machine(),
		versions["etcd watch"], versions["Redis pub/sub"], versions["NATS"])
	fmt.Fprintf(&b, `For each size N one publisher tells N subscribers that the current version changed, %d times, one every %s;
lag = from the start of the publish call until the last subscriber had the notice. Shoal's publisher and
subscribers are N+1 peers in one process (Badger fsync on) — each a full libp2p host, CRDT replica and Badger
store, all sharing the machine's cores, while the alternatives' subscribers are sockets; *activation record* is the signed record's
replication (the notice itself), *activation → serving* (%d activations) adds what the alternatives leave to
the gateway: fetching the new 256 KiB artifact over bitswap, checking its sha256 and swapping it in. etcd runs as
one member with fsync (a put is committed before the watchers hear of it); its watchers use the JSON gateway,
one connection each. Redis and NATS subscribers speak the wire protocol, one connection each. The ratio column
is Shoal's activation-record p50 over each alternative's p50 at the same N: how many times longer Shoal takes to
deliver the notice (it replicates a signed, persisted record through a Merkle-DAG over gossipsub, with no server
to run; the alternatives relay a message through one central server, which is their single point of failure).

`, notices, gap, acts)
	fmt.Fprintln(&b, "| N | system | p50 | p99 | max | Shoal record p50 ÷ this p50 |")
	fmt.Fprintln(&b, "|---:|---|---:|---:|---:|---:|")
	ratioOf := shoalRatios(rows, func(r lagStats) time.Duration { return r.p50 })
	for _, r := range rows {
		ratio := ratioOf(r)
		name := r.system
		if r.note != "" {
			name += " (" + r.note + ")"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", r.subscribers, name, ms(r.p50), ms(r.p99), ms(r.max), ratio)
	}
	return b.String() + "\n"
}

// shoalRatios returns the ratio column of a comparison: for an
// alternative's row, Shoal's activation-record figure (of picks p50 or
// p99) over the row's at the same N; "—" for Shoal's own rows.
func shoalRatios(rows []lagStats, of func(lagStats) time.Duration) func(lagStats) string {
	base := map[int]time.Duration{}
	for _, r := range rows {
		if r.system == recordSystem {
			base[r.subscribers] = of(r)
		}
	}
	return func(r lagStats) string {
		if b0 := base[r.subscribers]; b0 > 0 && !strings.HasPrefix(r.system, "Shoal") && of(r) > 0 {
			return fmt.Sprintf("%.1f×", float64(b0)/float64(of(r)))
		}
		return "—"
	}
}
