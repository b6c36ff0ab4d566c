package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
)

func startMesh(n int) (*testmesh.Mesh, func(), error) {
	dir, err := testmesh.TempDir()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: n, Dir: dir, Sync: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return m, func() { m.Close(); os.RemoveAll(dir) }, nil
}

func runModels(sizes string, acts int, fanout string, fanN int, out string) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Activation → every peer serving the version (in-process, loopback)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. %d activations of a fresh 256 KiB artifact per mesh; lag = from the start of the push on peer 0\n", time.Now().UTC().Format("2006-01-02"), machine(), acts)
	fmt.Fprintf(&b, "(import, publish, activate) until the last peer had fetched it (artifact swarm, then bitswap), verified it, and switched to it.\n\n")
	fmt.Fprintln(&b, "| peers | p50 | p99 | max |")
	fmt.Fprintln(&b, "|---:|---:|---:|---:|")
	for _, s := range strings.Split(sizes, ",") {
		var n int
		fmt.Sscan(strings.TrimSpace(s), &n)
		fmt.Fprintf(os.Stderr, "measuring activation lag, %d peers...\n", n)
		lags, err := activationLags(n, acts)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s |\n", n, ms(testmesh.Percentile(lags, 50)), ms(testmesh.Percentile(lags, 99)), ms(lags[len(lags)-1]))
	}
	b.WriteString("\n")
	act := b.String()
	fmt.Print(act)

	b.Reset()
	fmt.Fprintf(&b, "### Artifact fan-out from one origin to %d peers (in-process, loopback)\n\n", fanN-1)
	fmt.Fprintf(&b, "Measured %s on %s, both in the same run. Shoal: origin bytes = artifact bytes (swarm and bitswap) the publishing peer sent while\n", time.Now().UTC().Format("2006-01-02"), machine())
	fmt.Fprintf(&b, "the other %d peers fetched and verified the artifact (peers serve each other the blocks they have). HTTP: the\n", fanN-1)
	fmt.Fprintf(&b, "same %d clients download the artifact at once from one Go HTTP server on loopback and check its sha256. Time = until\n", fanN-1)
	fmt.Fprintf(&b, "the last one had verified it. On loopback bandwidth is free, so time favours the single origin; the origin's\n")
	fmt.Fprintf(&b, "upload — a site's uplink in the field — is what fan-out saves.\n\n")
	fmt.Fprintln(&b, "| artifact | Shoal origin bytes / artifact | Shoal all verified after | HTTP origin bytes / artifact | HTTP all verified after | origin bytes, Shoal ÷ HTTP |")
	fmt.Fprintln(&b, "|---:|---:|---:|---:|---:|---:|")
	for _, s := range strings.Split(fanout, ",") {
		var mib int
		fmt.Sscan(strings.TrimSpace(s), &mib)
		fmt.Fprintf(os.Stderr, "measuring fan-out of %d MiB to %d peers...\n", mib, fanN-1)
		ratio, took, err := fanOut(fanN, mib<<20)
		if err != nil {
			return err
		}
		hratio, htook, err := httpFanOut(fanN-1, mib<<20)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "| %d MiB | %.2f | %s | %.2f | %s | %.2f |\n", mib, ratio, took.Round(time.Millisecond), hratio, htook.Round(time.Millisecond), ratio/hratio)
	}
	b.WriteString("\n")
	fan := b.String()
	fmt.Print(fan)
	if out == "" {
		return nil
	}
	if err := writeSection(out, "activation", act); err != nil {
		return err
	}
	return writeSection(out, "fanout", fan)
}

func activationLags(n, acts int) ([]time.Duration, error) {
	m, stop, err := startMesh(n)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var lags []time.Duration
	for i := 0; i < acts+2; i++ {
		v := fmt.Sprintf("v%d", i)
		start := time.Now()
		if err := m.PublishAndActivate(ctx, "bench", v, testmesh.RandomBytes(256<<10)); err != nil {
			return nil, err
		}
		per, err := m.WaitServing(ctx, "bench", v, start)
		if err != nil {
			return nil, err
		}
		if i >= 2 { // the first two warm up connections and sessions
			lags = append(lags, per[len(per)-1])
		}
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	return lags, nil
}

func fanOut(n, size int) (float64, time.Duration, error) {
	m, stop, err := startMesh(n)
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	origin := func() uint64 {
		return m.Node(0).Blocks().Stats().BytesSent + m.Node(0).Artifacts().SwarmStats().BytesSent
	}
	before := origin()
	start := time.Now()
	if err := m.PublishAndActivate(ctx, "fan", "v1", testmesh.RandomBytes(size)); err != nil {
		return 0, 0, err
	}
	per, err := m.WaitServing(ctx, "fan", "v1", start)
	if err != nil {
		return 0, 0, err
	}
	sent := origin() - before
	return float64(sent) / float64(size), per[len(per)-1], nil
}

// httpFanOut has n clients download size random bytes at once from one
// HTTP origin and verify their sha256; it returns the origin's bytes sent
// per artifact byte and the time until the last client had verified.
func httpFanOut(n, size int) (float64, time.Duration, error) {
	data := testmesh.RandomBytes(size)
	want := sha256.Sum256(data)
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{w: w, n: &sent}
		http.ServeContent(cw, r, "model.onnx", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	start := time.Now()
	clients := make([]*http.Client, n)
	for i := range clients {
		clients[i] = http.DefaultClient
	}
	if err := downloadAll(clients, srv.URL, want); err != nil {
		return 0, 0, err
	}
	return float64(sent.Load()) / float64(size), time.Since(start), nil
}

// downloadAll has every client GET url at once and check the body's
// sha256; it returns once all have, or with the first error.
func downloadAll(clients []*http.Client, url string, want [32]byte) error {
	errs := make(chan error, len(clients))
	for _, c := range clients {
		go func() {
			res, err := c.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, res.Body); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(h.Sum(nil), want[:]) {
				errs <- fmt.Errorf("sha256 mismatch")
				return
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

type countingWriter struct {
	w http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Header() http.Header  { return c.w.Header() }
func (c *countingWriter) WriteHeader(code int) { c.w.WriteHeader(code) }
func (c *countingWriter) Write(b []byte) (int, error) {
	k, err := c.w.Write(b)
	c.n.Add(int64(k))
	return k, err
}
