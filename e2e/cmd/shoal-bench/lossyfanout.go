package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
)

// The fan-out scenario over impaired links (issue 16, item 3): the same
// artifact reaches n peers from one origin when every host sits behind a
// capped uplink with delay and loss — a fleet's sites — through Shoal's
// swarm, through bitswap alone, and from one HTTP origin, each in network
// namespaces behind the netsim switch.

func runLossyFanOut(n, mib int, link netsim.Link, out string, g *goalRun) error {
	g.lossyRan = true
	if err := netsim.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "lossyfanout: skipped: %v\n", err)
		g.lossySkip = err.Error()
		return nil
	}
	var rows []lossyResult
	for _, swarm := range []bool{true, false} {
		fmt.Fprintf(os.Stderr, "lossyfanout: Shoal (swarm %v), %d MiB to %d peers...\n", swarm, mib, n)
		took, ratio, err := lossyShoalFanOut(n, mib, link, swarm)
		if err != nil {
			return err
		}
		name := "Shoal: swarm, then bitswap"
		if !swarm {
			name = "Shoal: bitswap alone"
		}
		rows = append(rows, lossyResult{name, took, ratio})
	}
	fmt.Fprintf(os.Stderr, "lossyfanout: HTTP origin, %d MiB to %d clients...\n", mib, n)
	took, ratio, err := lossyHTTPFanOut(n, mib, link)
	if err != nil {
		return err
	}
	rows = append(rows, lossyResult{"one HTTP origin", took, ratio})
	g.lossy = rows

	var b bytes.Buffer
	fmt.Fprintf(&b, "### Artifact fan-out over site links: %d Mbit/s uplinks, %v delay, %.0f %% loss (network namespaces)\n\n",
		link.Rate*8/1_000_000, link.Delay, link.Loss*100)
	fmt.Fprintf(&b, `Measured %s on %s, all in the same run. Every host runs in its own network namespace behind the
e2e/netsim switch, which sends what each host sends at most at its uplink rate (queueing up to %v, then dropping),
delays every packet and drops the given share. Shoal: %d+1 `+"`shoal run`"+` processes; a %d MiB version pushed to peer 0
and listed everywhere is activated, and *time* runs until the last peer's watch stream reported it served. HTTP:
one Go HTTP server and %d clients, each in its own namespace, downloading at once and checking the sha256.
*Origin bytes* is what the origin sent of the artifact per artifact byte. Goal (issue 16): the swarm faster than
the HTTP origin.

| system | peers | time | origin bytes / artifact | time ÷ HTTP's |
|---|---:|---:|---:|---:|
`, time.Now().UTC().Format("2006-01-02"), machine(), netsim.UplinkQueue, n, mib, n)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %s | %.2f | %.2f× |\n", r.name, n, r.took.Round(10*time.Millisecond), r.ratio, r.took.Seconds()/took.Seconds())
	}
	table := b.String() + "\n"
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "lossyfanout", table)
}

// lossyShoalFanOut measures one activation of a fresh mib MiB version to
// n peer processes in namespaces behind link.
func lossyShoalFanOut(n, mib int, link netsim.Link, swarm bool) (time.Duration, float64, error) {
	nw, err := netsim.New("shoal-fan")
	if err != nil {
		return 0, 0, err
	}
	defer nw.Close()
	dir, err := os.MkdirTemp("", "shoal-bench-lossyfan-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	sites := make([]int, n+1)
	for i := range sites {
		sites[i] = 1
	}
	m, err := procmesh.New(procmesh.Options{Net: nw, Sites: sites, Dir: dir, Mesh: "bench",
		Args: benchArgs("warn", nil, fmt.Sprintf("--artifact-swarm=%v", swarm))})
	if err != nil {
		return 0, 0, err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := m.StartAll(ctx); err != nil {
		return 0, 0, err
	}
	return fanOutOnce(ctx, m, n, mib, func(activate func() error) error {
		nw.SetLink(link)
		defer nw.SetLink(netsim.Link{})
		return activate()
	})
}

// lossyHTTPFanOut has n clients, each in a namespace of its own, download
// mib MiB at once from one HTTP server in another, behind link.
func lossyHTTPFanOut(n, mib int, link netsim.Link) (time.Duration, float64, error) {
	nw, err := netsim.New("shoal-httpfan")
	if err != nil {
		return 0, 0, err
	}
	defer nw.Close()
	srvHost, err := nw.AddHost(1)
	if err != nil {
		return 0, 0, err
	}
	data := make([]byte, mib<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	var sent atomic.Int64
	var ln net.Listener
	if err := srvHost.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", srvHost.IP.String()+":8080")
		return err
	}); err != nil {
		return 0, 0, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(&countingWriter{w: w, n: &sent}, r, "model.onnx", time.Time{}, bytes.NewReader(data))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	var clients []*http.Client
	for range n {
		h, err := nw.AddHost(1)
		if err != nil {
			return 0, 0, err
		}
		clients = append(clients, &http.Client{Transport: &http.Transport{DialContext: h.DialContext}})
	}
	nw.SetLink(link)
	start := time.Now()
	if err := downloadAll(clients, "http://"+ln.Addr().String()+"/", want); err != nil {
		return 0, 0, err
	}
	return time.Since(start), float64(sent.Load()) / float64(mib<<20), nil
}
