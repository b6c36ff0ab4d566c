package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// The multi-process scenario (issue 16): version-change propagation with
// one `shoal run` process per peer on loopback, as a fleet deploys it,
// beside etcd, Redis and NATS measured in the same run, with what each
// update costs every peer in CPU time and in bytes on its libp2p streams.
// Lags are observed through each peer's watch stream
// (GET /v1/models/{model}/watch), so no polling interval hides in them.

// procOptions configure runProcProp.
type procOptions struct {
	sizes      []int         // subscriber counts
	alternates int           // the largest size at which etcd, Redis and NATS run too
	serveUpTo  int           // the largest size at which activation → serving runs
	notices    int           // measured activations per size (after 10 warm-ups)
	gap        time.Duration // between activations
	serveMiB   int           // artifact size of the serving measurement
	serveActs  int           // measured activations of the serving measurement
	profile    int           // size at which a publisher and a subscriber are CPU-profiled (0: none)
	profileDir string
}

// procRow is one system at one size.
type procRow struct {
	lagStats
	cpuMs      float64 // CPU time per peer per update (ms), net of idle
	bytesOut   float64 // libp2p stream bytes sent per peer per update, net of idle
	idleCPU    float64 // CPU ms per peer per second when nothing changes
	idleBytes  float64 // bytes per peer per second when nothing changes
	idleGossip float64 // the share of idleBytes that is gossipsub's
	hasCost    bool
	processes  int
}

// gapFor is the pause between notices to n subscribers: the configured
// gap, and at least 40 ms per process, so the notices measure latency on
// a machine whose cores every process shares, not the queue that forms
// when n+1 processes are offered more work than two cores do (at 25
// processes and 200 ms, CPU per update × peers exceeded the machine).
func (o procOptions) gapFor(n int) time.Duration {
	return max(o.gap, time.Duration(n+1)*40*time.Millisecond)
}

// idleLoad is the idle CPU of all the mesh's processes against the
// machine's cores.
func (r procRow) idleLoad() float64 {
	return r.idleCPU * float64(r.processes) / 1000 / float64(runtime.NumCPU())
}

// costCells are the CPU and bytes per peer per update, or a note where
// the idle load alone took every core: the busy span then cost no more
// than the idle one, and the difference says nothing.
func (r procRow) costCells() (cpu, bytes string) {
	if r.idleLoad() >= 1 {
		return "— (idle load ≥ cores)", "—"
	}
	return fmt.Sprintf("%.2f ms", r.cpuMs), fmt.Sprintf("%.0f B", r.bytesOut)
}

func runProcProp(o procOptions, out string, g *goalRun) error {
	var rows []procRow
	versions := map[string]string{}
	for _, n := range o.sizes {
		fmt.Fprintf(os.Stderr, "procprop: %d shoal processes...\n", n+1)
		r, err := procShoal(n, o)
		if err != nil {
			return fmt.Errorf("%d peers: %w", n+1, err)
		}
		rows = append(rows, r...)
		if n > o.alternates {
			continue
		}
		for _, mk := range []func() (notifier, error){newEtcd, newRedis, newNATS} {
			nt, err := mk()
			if err != nil {
				return err
			}
			versions[nt.Name()] = nt.Version()
			fmt.Fprintf(os.Stderr, "procprop: %s to %d subscribers...\n", nt.Name(), n)
			lags, err := measureNotifier(nt, n, 10, o.notices, o.gapFor(n))
			nt.Close()
			if err != nil {
				return err
			}
			rows = append(rows, procRow{lagStats: statsOf(nt.Name(), n, lags)})
		}
	}
	g.prop, g.propRan = rows, true
	if slices.Contains(o.sizes, o.profile) {
		g.profiled = o.profile
		g.profiles = map[string]string{}
		for _, phase := range []string{"idle", "busy"} {
			g.profiles[phase] = filepath.Join(o.profileDir, profileName(o.profile, profiledSubscriber, phase))
		}
	}
	table := renderProcProp(rows, versions, o)
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "procprop", table)
}

// procShoal runs n+1 peer processes and measures the activation record
// (and, up to serveUpTo, activation → serving) to the n subscribers.
func procShoal(n int, o procOptions) ([]procRow, error) {
	dir, err := os.MkdirTemp("", "shoal-bench-proc-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sites := make([]int, n+1)
	profiled := o.profile == n
	var pprof map[int]string
	if profiled {
		if pprof, err = pprofAddrs(0, profiledSubscriber); err != nil {
			return nil, err
		}
	}
	m, err := procmesh.New(procmesh.Options{Sites: sites, Dir: dir, Mesh: "bench", Args: benchArgs("warn", pprof)})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := m.StartAll(ctx); err != nil {
		return nil, err
	}
	total := 10 + o.notices
	if err := pushVersions(ctx, m, "note", total, 1<<10, true); err != nil {
		return nil, err
	}
	span := time.Duration(total) * o.gapFor(n)
	var stopProf func() error
	if profiled {
		stopProf = startProfiles(pprof, span, o.profileDir, n, "idle")
	}
	idle, err := sampleCost(ctx, m.Peers[1:], func() error {
		time.Sleep(span) // the idle baseline is a span of time, not a wait for anything
		return nil
	})
	if err != nil {
		return nil, err
	}
	waitProfiles(stopProf)
	var lags []time.Duration
	if profiled {
		stopProf = startProfiles(pprof, span, o.profileDir, n, "busy")
	}
	busy, err := sampleCost(ctx, m.Peers[1:], func() error {
		var err error
		nt := &procNotifier{m: m, model: "note"}
		defer nt.Close()
		lags, err = measureNotifier(nt, n, 10, o.notices, o.gapFor(n))
		return err
	})
	if err != nil {
		return nil, err
	}
	waitProfiles(stopProf)
	rec := procRow{lagStats: statsOf(recordSystem, n, lags), hasCost: true, processes: n + 1}
	rec.cpuMs, rec.bytesOut = busy.net(idle, total)
	rec.idleCPU, rec.idleBytes = idle.perSecond()
	if idle.bytes > 0 {
		rec.idleGossip = idle.gossip / idle.bytes
	}
	rows := []procRow{rec}
	if n > o.serveUpTo {
		return rows, nil
	}
	acts := 2 + o.serveActs
	if err := pushVersions(ctx, m, "serve", acts, o.serveMiB<<20, false); err != nil {
		return nil, err
	}
	nt := &procNotifier{m: m, model: "serve", serving: true}
	lags, err = measureInTurn(nt, n, 2, o.serveActs)
	nt.Close()
	if err != nil {
		return nil, err
	}
	st := statsOf(fmt.Sprintf("Shoal: activation → serving a %d MiB model", o.serveMiB), n, lags)
	rows = append(rows, procRow{lagStats: st, processes: n + 1})
	return rows, nil
}

// measureInTurn is measureNotifier for notices that take longer than any
// fixed gap (a 20 MiB fetch by every peer at once): each notice is
// published once the previous one reached every subscriber.
func measureInTurn(nt notifier, n, warm, notices int) ([]time.Duration, error) {
	type arrival struct {
		id string
		at time.Time
	}
	arrivals := make(chan arrival, (warm+notices)*n+16)
	if err := nt.Subscribe(n, func(_ int, id string) { arrivals <- arrival{id, time.Now()} }); err != nil {
		return nil, err
	}
	var lags []time.Duration
	for i := range warm + notices {
		id := fmt.Sprintf("n%06d", i)
		start := time.Now()
		if err := nt.Publish(id); err != nil {
			return nil, err
		}
		got, timeout := 0, time.After(2*time.Minute)
		var last time.Time
		for got < n {
			select {
			case a := <-arrivals:
				if a.id == id {
					got, last = got+1, a.at
				}
			case <-timeout:
				return nil, fmt.Errorf("%s reached %d of %d subscribers in 2 min", id, got, n)
			}
		}
		if i >= warm {
			lags = append(lags, last.Sub(start))
		}
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	return lags, nil
}

func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// pushVersions pushes count versions of model (named as measureNotifier
// names its notices) to peer 0 without activating them, and waits until
// every peer lists them all — and, with prefetch, holds them verified —
// so an activation measures only itself.
func pushVersions(ctx context.Context, m *procmesh.Mesh, model string, count, size int, prefetch bool) error {
	data := make([]byte, size)
	for i := range count {
		rand.Read(data)
		r, err := m.Peers[0].Do(ctx, "PUT", fmt.Sprintf("/v1/models/%s/versions/n%06d?prefetch=%v", model, i, prefetch), data)
		if err != nil {
			return err
		}
		if r.Code/100 != 2 {
			return fmt.Errorf("push %s n%06d: %s", model, i, r)
		}
	}
	for _, p := range m.Peers {
		err := poll.Wait(ctx, 50*time.Millisecond, func() error {
			mi, err := p.Model(ctx, model)
			if err != nil {
				return err
			}
			if len(mi.Versions) < count {
				return fmt.Errorf("peer %d lists %d of %d versions", p.Index, len(mi.Versions), count)
			}
			for _, v := range mi.Versions {
				if prefetch && (v.Local == nil || v.Local.State != artifacts.StateVerified) {
					return fmt.Errorf("peer %d has not fetched %s yet", p.Index, v.Version)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// procNotifier is Shoal as a notifier: Publish activates a pushed version
// on peer 0, and a subscriber has the notice when its peer's watch stream
// reports that version as current (or, with serving, as served).
type procNotifier struct {
	m       *procmesh.Mesh
	model   string
	serving bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func (s *procNotifier) Name() string    { return "Shoal" }
func (s *procNotifier) Version() string { return "" }

func (s *procNotifier) Subscribe(n int, got func(int, string)) error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ready := make(chan error, n)
	for i, p := range s.m.Peers[1 : n+1] {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watch(ctx, i, p, got, ready)
		}()
	}
	for range n {
		if err := <-ready; err != nil {
			cancel()
			return err
		}
	}
	return nil
}

// watch follows one peer's watch stream, calling got once per version it
// reports; it says on ready when the stream is open.
func (s *procNotifier) watch(ctx context.Context, i int, p *procmesh.Peer, got func(int, string), ready chan<- error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.APIAddr()+"/v1/models/"+s.model+"/watch", nil)
	resp, err := p.Client().Do(req)
	if err != nil {
		ready <- err
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		ready <- fmt.Errorf("watch on peer %d: %d %s", p.Index, resp.StatusCode, b)
		return
	}
	ready <- nil
	last := ""
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Current string `json:"current"`
			Serving string `json:"serving"`
		}
		if json.Unmarshal([]byte(data), &ev) != nil {
			continue
		}
		v := ev.Current
		if s.serving {
			v = ev.Serving
		}
		if v == "" || v == last {
			continue
		}
		// The stream reports the latest state, not every step (a peer
		// that applied two activations at once reports the second): the
		// notices it skipped were superseded when it reported this one,
		// and count as arriving then, which can only overstate their lag.
		for _, skipped := range skippedNotices(last, v) {
			got(i, skipped)
		}
		last = v
		got(i, v)
	}
}

// skippedNotices lists the notices measureNotifier published (named
// n%06d in order) after last and before now, two a stream reported; last
// is empty before the stream reported any.
func skippedNotices(last, now string) []string {
	a := -1 // nothing reported yet: every notice before now was skipped
	if last != "" {
		if _, err := fmt.Sscanf(last, "n%06d", &a); err != nil {
			return nil
		}
	}
	var b int
	if _, err := fmt.Sscanf(now, "n%06d", &b); err != nil {
		return nil
	}
	var out []string
	for k := a + 1; k < b; k++ {
		out = append(out, fmt.Sprintf("n%06d", k))
	}
	return out
}

func (s *procNotifier) Publish(notice string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := s.m.Peers[0].Do(ctx, "POST", "/v1/models/"+s.model+"/activate", map[string]string{"version": notice})
	if err != nil {
		return err
	}
	if r.Code/100 != 2 {
		return fmt.Errorf("activate %s: %s", notice, r)
	}
	return nil
}

func (s *procNotifier) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// cost is what a set of peer processes used over a span of time.
type cost struct {
	cpu    time.Duration // summed over the peers
	bytes  float64       // libp2p stream bytes sent, summed over the peers
	gossip float64       // of which gossipsub's
	peers  int
	span   time.Duration
}

// net returns the CPU ms and bytes per peer per update of a busy span,
// less what the idle span's rate would have used in the same time.
func (c cost) net(idle cost, updates int) (cpuMs, bytes float64) {
	scale := c.span.Seconds() / idle.span.Seconds()
	cpu := c.cpu.Seconds() - idle.cpu.Seconds()*scale
	b := c.bytes - idle.bytes*scale
	per := float64(c.peers * updates)
	return max(cpu, 0) * 1000 / per, max(b, 0) / per
}

// perSecond returns the CPU ms and bytes per peer per second.
func (c cost) perSecond() (cpuMs, bytes float64) {
	per := float64(c.peers) * c.span.Seconds()
	return c.cpu.Seconds() * 1000 / per, c.bytes / per
}

// sampleCost runs f and returns what peers used meanwhile: CPU time from
// /proc/<pid>/stat, bytes from each peer's shoal_p2p_bytes_total.
func sampleCost(ctx context.Context, peers []*procmesh.Peer, f func() error) (cost, error) {
	read := func() (time.Duration, float64, float64, error) {
		var cpu time.Duration
		var sent, gossip float64
		for _, p := range peers {
			c, err := processCPU(p.Pid())
			if err != nil {
				return 0, 0, 0, err
			}
			b, g, err := sentBytes(ctx, p)
			if err != nil {
				return 0, 0, 0, err
			}
			cpu += c
			sent += b
			gossip += g
		}
		return cpu, sent, gossip, nil
	}
	cpu0, b0, g0, err := read()
	if err != nil {
		return cost{}, err
	}
	start := time.Now()
	if err := f(); err != nil {
		return cost{}, err
	}
	span := time.Since(start)
	cpu1, b1, g1, err := read()
	if err != nil {
		return cost{}, err
	}
	return cost{cpu: cpu1 - cpu0, bytes: b1 - b0, gossip: g1 - g0, peers: len(peers), span: span}, nil
}

// processCPU is a process's user and system CPU time so far.
func processCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, errors.New("peer not running")
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in ")".
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticksPerSecond, nil
}

// sentBytes sums a peer's shoal_p2p_bytes_total{direction="out"}, and
// its gossipsub series.
func sentBytes(ctx context.Context, p *procmesh.Peer) (sum, gossip float64, err error) {
	byFamily, err := metricValues(ctx, p, "shoal_p2p_bytes_total", `direction="out"`, "protocol")
	if err != nil {
		return 0, 0, err
	}
	for _, v := range byFamily {
		sum += v
	}
	return sum, byFamily["gossipsub"], nil
}

// benchArgs are the flags of a benchmark mesh's peers: no discovery but
// the mesh's own bootstrap, no result cache, logs at level, Go's profiles
// served where pprof names an address for the peer.
func benchArgs(level string, pprof map[int]string, extra ...string) func(int, []*procmesh.Peer) []string {
	return func(i int, _ []*procmesh.Peer) []string {
		args := append([]string{"--log-level", level, "--dht=false", "--mdns=false", "--cache-mb", "0"}, extra...)
		if a, ok := pprof[i]; ok {
			args = append(args, "--pprof", a)
		}
		return args
	}
}

// pprofAddrs returns a free loopback address for each of peers' profiles.
func pprofAddrs(peers ...int) (map[int]string, error) {
	out := map[int]string{}
	for _, i := range peers {
		a, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		out[i] = a
	}
	return out, nil
}

// startProfiles takes a CPU profile of each pprof address for d and
// returns a function that waits for them and writes their top functions
// to stderr.
func startProfiles(addrs map[int]string, d time.Duration, dir string, n int, phase string) func() error {
	var wg sync.WaitGroup
	errs := make([]error, len(addrs))
	k := 0
	for i, a := range addrs {
		wg.Add(1)
		go func(slot int) {
			defer wg.Done()
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", a, max(int(d.Seconds()), 1))
			resp, err := http.Get(url)
			if err != nil {
				errs[slot] = err
				return
			}
			defer resp.Body.Close()
			path := filepath.Join(dir, profileName(n, i, phase))
			f, err := os.Create(path)
			if err != nil {
				errs[slot] = err
				return
			}
			defer f.Close()
			if _, err := io.Copy(f, resp.Body); err != nil {
				errs[slot] = err
				return
			}
			fmt.Fprintf(os.Stderr, "procprop: %s CPU profile of peer %d (%s) in %s\n", phase, i, map[bool]string{true: "publisher", false: "subscriber"}[i == 0], path)
		}(k)
		k++
	}
	return func() error {
		wg.Wait()
		return errors.Join(errs...)
	}
}

func renderProcProp(rows []procRow, versions map[string]string, o procOptions) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Version-change propagation, one `shoal run` process per peer, against etcd, Redis and NATS (loopback)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s, all in the same run. Servers: %s; %s; %s.\n", time.Now().UTC().Format("2006-01-02"), machine(),
		versions["etcd watch"], versions["Redis pub/sub"], versions["NATS"])
	fmt.Fprintf(&b, `For each size N one publisher tells N subscribers that the current version changed, %d times (after 10
warm-ups), one every %s or 40 ms per process if that is longer (*gap* below: latency, not the queue that
forms when every process's share of the cores runs out). Shoal: N+1 `+"`shoal run`"+` processes on loopback ports, each with its own Badger
store (the writer syncs each write before acknowledging it); versions (1 KiB each) are pushed beforehand with `+"`?prefetch=true`"+` and held verified by every peer, and peer 0 activates one per notice (`+"`POST /v1/models/…/activate`"+`);
lag = from the start of that call until the last subscriber's watch stream (`+"`GET /v1/models/{model}/watch`"+`)
reported the new current version (*activation record*), or served it, fetched over bitswap and checked
(*activation → serving*, %d activations, each once the previous one was served everywhere). The alternatives as in the in-process comparison (etcd
one member with fsync and JSON-gateway watchers; Redis and NATS wire-protocol subscribers), in the same run.
*CPU / peer / update* and *bytes / peer / update* are the subscribers' CPU time (/proc) and libp2p stream bytes
sent (`+"`shoal_p2p_bytes_total`"+`) during the measured notices, less what the same peers used in an idle span of the
same length just before (their heartbeats), per subscriber and notice; *idle* is that baseline per peer per
second. Every process shares the machine's cores.

`, o.notices, o.gap, o.serveActs)
	fmt.Fprintln(&b, "| N | gap | system | p50 | p99 | max | CPU / peer / update | bytes / peer / update | idle CPU, bytes / peer / s | Shoal record p99 ÷ this p99 |")
	fmt.Fprintln(&b, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	stats := make([]lagStats, len(rows))
	for i, r := range rows {
		stats[i] = r.lagStats
	}
	ratioOf := shoalRatios(stats, func(r lagStats) time.Duration { return r.p99 })
	for _, r := range rows {
		ratio := ratioOf(r.lagStats)
		cpu, by, idle := "—", "—", "—"
		if r.hasCost {
			cpu, by = r.costCells()
			idle = fmt.Sprintf("%.2f ms, %.0f B", r.idleCPU, r.idleBytes)
		}
		gap := o.gapFor(r.subscribers).String()
		if strings.Contains(r.system, "serving") {
			gap = "in turn"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.subscribers, gap, r.system, ms(r.p50), ms(r.p99), ms(r.max), cpu, by, idle, ratio)
	}
	b.WriteString("\n")
	b.WriteString(renderGrowth(rows))
	return b.String()
}

// renderGrowth is the growth table: the activation record's p99 and cost
// per peer at each size, and how each grows against the smallest size.
func renderGrowth(rows []procRow) string {
	recs := recordRows(rows)
	if len(recs) < 2 {
		return ""
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "#### How the activation record's cost grows with the mesh (same run)\n\n")
	fmt.Fprintln(&b, "| processes | p50 | p99 | p99 ÷ smallest mesh's | CPU / peer / update | bytes / peer / update | idle CPU / peer / s | idle bytes / peer / s | of which gossipsub | idle CPU, all peers ÷ cores |")
	fmt.Fprintln(&b, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range recs {
		cpu, by := r.costCells()
		fmt.Fprintf(&b, "| %d | %s | %s | %.1f× | %s | %s | %.2f ms | %.0f B | %.0f %% | %.2f |\n", r.processes, ms(r.p50), ms(r.p99),
			float64(r.p99)/float64(recs[0].p99), cpu, by, r.idleCPU, r.idleBytes, 100*r.idleGossip, r.idleLoad())
	}
	return b.String() + "\n"
}

// profiledSubscriber is the subscriber whose CPU is profiled (beside the
// publisher, peer 0).
const profiledSubscriber = 1

// waitProfiles waits for the profiles stop was returned for by
// startProfiles, if any; a profile that failed is reported, not fatal.
func waitProfiles(stop func() error) {
	if stop == nil {
		return
	}
	if err := stop(); err != nil {
		fmt.Fprintf(os.Stderr, "procprop: profile: %v\n", err)
	}
}

// recordRows are the activation record's rows among rows, smallest mesh
// first.
func recordRows(rows []procRow) []procRow {
	var recs []procRow
	for _, r := range rows {
		if r.system == recordSystem {
			recs = append(recs, r)
		}
	}
	return recs
}

// profileName is the file a CPU profile of peer i of an n-subscriber mesh
// taken during phase is written to.
func profileName(n, i int, phase string) string {
	return fmt.Sprintf("procprop-%dpeers-peer%d-%s.pprof", n+1, i, phase)
}
