package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// runLossy measures version-change propagation to n subscribers when every
// link has delay and loss: Shoal as n+1 `shoal run` processes, NATS (the
// fastest alternative on loopback) as nats-server with n subscribers, each
// peer or subscriber in a network namespace of its own behind the netsim
// switch.
func runLossy(n, notices int, link netsim.Link, out string) error {
	if err := netsim.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "lossy: skipped: %v\n", err)
		return nil
	}
	fmt.Fprintf(os.Stderr, "lossy: Shoal, %d peers, %v delay, %.0f %% loss...\n", n+1, link.Delay, link.Loss*100)
	rec, serve, err := lossyShoal(n, notices, link)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "lossy: NATS, %d subscribers...\n", n)
	nats, err := lossyNATS(n, notices, link)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Version-change propagation with %v delay and %.0f %% loss on every link (network namespaces)\n\n", link.Delay, link.Loss*100)
	fmt.Fprintf(&b, `Measured %s on %s, both in the same run. Every peer, subscriber and server runs in its own network
namespace; the e2e/netsim switch adds the delay to every packet and drops the given share (one way, every
link, including to and from the NATS server). Shoal: %d `+"`shoal run`"+` processes; peer 0 activates a new 64 KiB
version %d times, and the test polls every peer's API every 10 ms for the new current version (*record*) and for
serving it (*serving*, after fetch and verification). NATS: nats-server with %d subscribers, %d notices. Lag =
publish call start until the last subscriber had it.

| system | N | p50 | p99 | max | Shoal record p50 ÷ this p50 |
|---|---:|---:|---:|---:|---:|
`, time.Now().UTC().Format("2006-01-02"), machine(), n+1, notices, n, notices)
	ratio := func(l []time.Duration) string {
		return fmt.Sprintf("%.1f×", float64(testmesh.Percentile(rec, 50))/float64(testmesh.Percentile(l, 50)))
	}
	for _, r := range []struct {
		name string
		lags []time.Duration
		rat  string
	}{{"Shoal: activation record", rec, "—"}, {"Shoal: activation → serving", serve, "—"}, {"NATS", nats, ratio(nats)}} {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s |\n", r.name, n, ms(testmesh.Percentile(r.lags, 50)), ms(testmesh.Percentile(r.lags, 99)), ms(r.lags[len(r.lags)-1]), r.rat)
	}
	table := b.String() + "\n"
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "lossy", table)
}

func lossyShoal(n, notices int, link netsim.Link) (rec, serve []time.Duration, err error) {
	nw, err := netsim.New("shoal-bench")
	if err != nil {
		return nil, nil, err
	}
	defer nw.Close()
	dir, err := os.MkdirTemp("", "shoal-bench-lossy-*")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	sites := make([]int, n+1)
	for i := range sites {
		sites[i] = 1
	}
	m, err := procmesh.New(procmesh.Options{Net: nw, Sites: sites, Dir: dir, Mesh: "bench",
		Args: func(int, []*procmesh.Peer) []string {
			return []string{"--log-level", "warn", "--dht=false", "--mdns=false"}
		}})
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := m.StartAll(ctx); err != nil {
		return nil, nil, err
	}
	nw.SetLink(link)
	for v := 0; v < notices+2; v++ {
		data := make([]byte, 64<<10)
		rand.Read(data)
		version := fmt.Sprintf("v%d", v)
		start := time.Now()
		r, err := m.Peers[0].Do(ctx, "PUT", "/v1/models/bench/versions/"+version+"?activate=true", data)
		if err != nil {
			return nil, nil, err
		}
		if r.Code/100 != 2 {
			return nil, nil, fmt.Errorf("push: %s", r)
		}
		var mu sync.Mutex
		var lastRec, lastServe time.Duration
		var wg sync.WaitGroup
		var werr error
		for _, p := range m.Peers[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				gotRec := false
				// A short interval: the times measured are propagation latencies.
				err := poll.Wait(ctx, 10*time.Millisecond, func() error {
					st, err := p.Status(ctx)
					if err != nil {
						return err
					}
					for _, ms := range st.Models {
						if ms.Name != "bench" {
							continue
						}
						now := time.Since(start)
						mu.Lock()
						if !gotRec && ms.Current == version {
							gotRec, lastRec = true, max(lastRec, now)
						}
						if ms.Serving == version {
							lastServe = max(lastServe, now)
							mu.Unlock()
							return nil
						}
						mu.Unlock()
					}
					return fmt.Errorf("not serving %s", version)
				})
				if err != nil {
					mu.Lock()
					werr = fmt.Errorf("peer %d never served %s: %w", p.Index, version, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if werr != nil {
			return nil, nil, werr
		}
		if v >= 2 { // two warm-up rounds
			rec, serve = append(rec, lastRec), append(serve, lastServe)
		}
	}
	sort.Slice(rec, func(i, j int) bool { return rec[i] < rec[j] })
	sort.Slice(serve, func(i, j int) bool { return serve[i] < serve[j] })
	return rec, serve, nil
}

func lossyNATS(n, notices int, link netsim.Link) ([]time.Duration, error) {
	nw, err := netsim.New("shoal-bench-nats")
	if err != nil {
		return nil, err
	}
	defer nw.Close()
	srvHost, err := nw.AddHost(1)
	if err != nil {
		return nil, err
	}
	var hosts []*netsim.Host
	for i := 0; i <= n; i++ { // host 0 publishes
		h, err := nw.AddHost(1)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	addr := srvHost.IP.String() + ":4222"
	cmd := srvHost.Command("nats-server", "-a", srvHost.IP.String(), "-p", "4222")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	dial := func(h *netsim.Host, extra ...string) (net.Conn, *bufio.Reader, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var c net.Conn
		if err := poll.Wait(ctx, 50*time.Millisecond, func() (err error) {
			c, err = h.DialContext(ctx, "tcp", addr)
			return err
		}); err != nil {
			return nil, nil, err
		}
		rd, err := natsHandshake(c, extra...)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return c, rd, nil
	}
	type arrival struct {
		id string
		at time.Time
	}
	arrivals := make(chan arrival, (notices+2)*n+16)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, h := range hosts[1:] {
		c, rd, err := dial(h, "SUB model.current 1\r\n")
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		go natsReceive(c, rd, func(p string) { arrivals <- arrival{p, time.Now()} })
	}
	pub, _, err := dial(hosts[0])
	if err != nil {
		return nil, err
	}
	conns = append(conns, pub)
	nw.SetLink(link)
	var lags []time.Duration
	for i := 0; i < notices+2; i++ {
		id := fmt.Sprintf("n%04d", i)
		start := time.Now()
		if _, err := fmt.Fprintf(pub, "PUB model.current %d\r\n%s\r\n", len(id), id); err != nil {
			return nil, err
		}
		got := 0
		var last time.Time
		timeout := time.After(time.Minute)
		for got < n {
			select {
			case a := <-arrivals:
				if a.id == id {
					got++
					last = a.at
				}
			case <-timeout:
				return nil, fmt.Errorf("NATS notice %s reached %d of %d subscribers", id, got, n)
			}
		}
		if i >= 2 {
			lags = append(lags, last.Sub(start))
		}
		time.Sleep(100 * time.Millisecond) // paces the notices, not synchronisation
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	return lags, nil
}
