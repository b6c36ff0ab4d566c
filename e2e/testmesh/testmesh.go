// Package testmesh starts meshes of real Shoal peers inside one process:
// real libp2p hosts on 127.0.0.1, real Badger in temporary directories,
// the real HTTP API on free ports. The e2e tests and the propagation
// benchmark share it. Nothing here is mocked; the only addition is a
// connection gater per peer so a test can cut one off and heal it.
package testmesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/peer"
)

// Options configure a mesh.
type Options struct {
	// N peers. Peer 0 starts first; the others bootstrap to it.
	N int
	// Dir holds one data directory per peer. Required.
	Dir string
	// Mesh name; default "testmesh".
	Mesh string
	// Sync keeps Badger's fsync on every write (the production default);
	// off by default here for speed.
	Sync bool
	// Logger; default discards.
	Logger *slog.Logger
	// Tweak, if set, adjusts each peer's Config before it starts.
	Tweak func(i int, cfg *peer.Config)
}

// Mesh is a running set of peers.
type Mesh struct {
	opts    Options
	trusted []string
	mu      sync.Mutex
	nodes   []*peer.Node
	gaters  []*Gater
}

// Start starts opts.N peers and returns once every peer has heard a
// heartbeat from every other.
func Start(ctx context.Context, opts Options) (*Mesh, error) {
	if opts.Mesh == "" {
		opts.Mesh = "testmesh"
	}
	if opts.Logger == nil {
		// SHOAL_TEST_LOG=debug|info shows the peers' logs on stderr.
		var lv slog.Level
		if v := os.Getenv("SHOAL_TEST_LOG"); v != "" && lv.UnmarshalText([]byte(v)) == nil {
			opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
		} else {
			opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
	}
	m := &Mesh{opts: opts, nodes: make([]*peer.Node, opts.N), gaters: make([]*Gater, opts.N)}
	// Every peer gets its publisher key up front and trusts everyone's, as
	// an operator would configure a fleet.
	for i := 0; i < opts.N; i++ {
		pub, err := models.LoadOrCreatePublisherKey(m.DataDir(i))
		if err != nil {
			return nil, err
		}
		m.trusted = append(m.trusted, string(pub.ID()))
	}
	for i := 0; i < opts.N; i++ {
		m.gaters[i] = &Gater{}
		if err := m.Restart(ctx, i); err != nil {
			m.Close()
			return nil, err
		}
	}
	if err := m.WaitConnected(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// DataDir returns peer i's data directory.
func (m *Mesh) DataDir(i int) string { return filepath.Join(m.opts.Dir, fmt.Sprintf("peer%d", i)) }

func (m *Mesh) config(i int) peer.Config {
	cfg := peer.Config{
		DataDir:     m.DataDir(i),
		APIAddr:     "127.0.0.1:0",
		GRPCAddr:    "127.0.0.1:0",
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		Mesh:        m.opts.Mesh,
		NoSync:      !m.opts.Sync,
		Gater:       m.gaters[i],
		Trusted:     m.trusted,
		Logger:      m.opts.Logger.With("node", i),
		Version:     "test",
		ORTLibrary:  RepoFile("deps/onnxruntime/libonnxruntime.so"),
	}
	if i > 0 && m.nodes[0] != nil {
		cfg.Bootstrap = m.nodes[0].Addrs()[:1]
	}
	if m.opts.Tweak != nil {
		m.opts.Tweak(i, &cfg)
	}
	return cfg
}

// Restart starts peer i (again) on its data directory.
func (m *Mesh) Restart(ctx context.Context, i int) error {
	m.mu.Lock()
	cfg := m.config(i)
	m.mu.Unlock()
	n, err := peer.New(ctx, cfg)
	if err != nil {
		return fmt.Errorf("start peer %d: %w", i, err)
	}
	m.mu.Lock()
	m.nodes[i] = n
	m.mu.Unlock()
	return nil
}

// Stop closes peer i cleanly.
func (m *Mesh) Stop(i int) error {
	m.mu.Lock()
	n := m.nodes[i]
	m.nodes[i] = nil
	m.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.Close()
}

// Node returns peer i (nil while stopped).
func (m *Mesh) Node(i int) *peer.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes[i]
}

// Nodes returns the running peers.
func (m *Mesh) Nodes() []*peer.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*peer.Node
	for _, n := range m.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// WaitConnected waits until every running peer lists every other running
// peer as reachable and is connected to all of them.
func (m *Mesh) WaitConnected(ctx context.Context) error {
	return Eventually(ctx, 50*time.Millisecond, func() error {
		nodes := m.Nodes()
		for _, n := range nodes {
			reach := 0
			for _, p := range n.Replica().Staleness().Peers {
				if p.Reachable {
					reach++
				}
			}
			if reach < len(nodes)-1 {
				return fmt.Errorf("peer %s hears %d of %d peers", n.ID(), reach, len(nodes)-1)
			}
			if c := len(n.Host().Network().Peers()); c < len(nodes)-1 {
				return fmt.Errorf("peer %s is connected to %d of %d peers", n.ID(), c, len(nodes)-1)
			}
		}
		return nil
	})
}

// Isolate cuts peer i off: its gater refuses every connection and its
// open connections are closed. Heal undoes it.
func (m *Mesh) Isolate(i int) {
	m.gaters[i].blocked.Store(true)
	n := m.Node(i)
	if n == nil {
		return
	}
	// A dial that passed the gater just before it closed can still
	// complete: close whatever is open until six sweeps in a row, 50 ms
	// apart (250 ms), find nothing left to close.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := 0
	// On a timeout connections kept coming back through a closed gater;
	// the caller's assertions on the cut-off peer report that.
	_ = poll.Wait(ctx, 50*time.Millisecond, func() error {
		open := n.Host().Network().Peers()
		for _, p := range open {
			n.Host().Network().ClosePeer(p)
		}
		if len(open) > 0 {
			quiet = 0
			return fmt.Errorf("closed %d connections", len(open))
		}
		if quiet++; quiet < 6 {
			return fmt.Errorf("%d sweeps in a row found nothing open", quiet)
		}
		return nil
	})
}

// Heal lets peer i connect again and dials peer 0 (or 1 for peer 0).
func (m *Mesh) Heal(ctx context.Context, i int) error {
	m.gaters[i].blocked.Store(false)
	n := m.Node(i)
	other := m.Node(0)
	if i == 0 {
		other = m.Node(1)
	}
	if n == nil || other == nil {
		return nil
	}
	return n.Host().Connect(ctx, libp2ppeer.AddrInfo{ID: other.ID(), Addrs: other.Host().Addrs()})
}

// Close stops every peer.
func (m *Mesh) Close() error {
	var first error
	for i := range m.nodes {
		if err := m.Stop(i); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Eventually calls f every interval until it returns nil or ctx ends; the
// error then wraps ctx's and says what f last reported. It is poll.Wait,
// kept under this name for the harness's callers.
func Eventually(ctx context.Context, interval time.Duration, f func() error) error {
	return poll.Wait(ctx, interval, f)
}

// RepoFile is the path of a file relative to the repository root (where
// `make setup` puts onnxruntime and the models).
func RepoFile(rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", rel)
}

// Model reads a model `make setup` fetched into deps/models.
func Model(name string) ([]byte, error) {
	b, err := os.ReadFile(RepoFile(filepath.Join("deps", "models", name)))
	if err != nil {
		return nil, fmt.Errorf("%w (run `make setup`)", err)
	}
	return b, nil
}

// TempDir makes a directory for a mesh outside of tests.
func TempDir() (string, error) { return os.MkdirTemp("", "shoal-mesh-*") }

// Gater refuses every connection while blocked, and counts the peer's
// dial attempts.
type Gater struct {
	blocked atomic.Bool
	mu      sync.Mutex
	dials   map[libp2ppeer.ID]int
}

// Dials reports how many times the peer has tried to dial p: each
// Connect that found no connection, also those its swarm's dial backoff
// answered without touching the network.
func (g *Gater) Dials(p libp2ppeer.ID) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dials[p]
}

func (g *Gater) InterceptPeerDial(p libp2ppeer.ID) bool {
	g.mu.Lock()
	if g.dials == nil {
		g.dials = map[libp2ppeer.ID]int{}
	}
	g.dials[p]++
	g.mu.Unlock()
	return !g.blocked.Load()
}
func (g *Gater) InterceptAddrDial(libp2ppeer.ID, ma.Multiaddr) bool { return !g.blocked.Load() }
func (g *Gater) InterceptAccept(network.ConnMultiaddrs) bool        { return !g.blocked.Load() }
func (g *Gater) InterceptSecured(network.Direction, libp2ppeer.ID, network.ConnMultiaddrs) bool {
	return !g.blocked.Load()
}
func (g *Gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return !g.blocked.Load(), 0
}

// CPUModel is the "model name" of /proc/cpuinfo, or "" where there is none;
// the benchmark and reliability reports name the machine with it.
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if _, v, ok := strings.Cut(l, ":"); ok {
				return strings.TrimSpace(v)
			}
			return ""
		}
	}
	return ""
}
