// Package procmesh runs a mesh of Shoal peers the way a fleet runs them:
// each peer is a separate `shoal run` process with its own data directory,
// living in its own network namespace (a netsim host), talking to the others
// over the network the test controls. A peer can be killed with SIGKILL and
// restarted on the same directory; its API stays on the namespace's
// loopback and the test reaches it from inside the namespace.
//
// With no Options.Net the peers run in the test's own network namespace
// instead, each on its own loopback ports: the deployment's process
// boundaries without a userspace switch on every packet (benchmarks).
//
// Every peer's libp2p identity and publisher key are made before the first
// start, so each peer is given every other as a bootstrap address and
// trusts every other's publications, as an operator would configure a
// fleet.
package procmesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/peer"
)

// APIAddr is every peer's API address inside its namespace.
const APIAddr = "127.0.0.1:8080"

// P2PPort is every peer's libp2p TCP port inside its namespace.
const P2PPort = 4010

type built struct {
	once sync.Once
	bin  string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*built{}
)

// Binary builds ./cmd/shoal once per test process and returns its path.
func Binary() (string, error) { return Build("./cmd/shoal") }

// Build builds the command in pkg (a path relative to the repository
// root, "./e2e/cmd/…") once per test process and returns its path.
func Build(pkg string) (string, error) {
	buildsMu.Lock()
	b := builds[pkg]
	if b == nil {
		b = &built{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-bin-*")
		if err != nil {
			b.err = err
			return
		}
		b.bin = filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", b.bin, pkg)
		cmd.Dir = testmesh.RepoFile(".")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	})
	return b.bin, b.err
}

// Options describe a mesh.
type Options struct {
	// Net holds each peer in a namespace of its own; nil runs every peer
	// on loopback ports of the caller's namespace.
	Net *netsim.Net
	// Sites lists each peer's site; its length is the number of peers.
	Sites []int
	// Dir holds each peer's data directory and log.
	Dir string
	// Mesh name; default "procmesh".
	Mesh string
	// Args, when set, adds flags to peer i's command line; peers have
	// their hosts and IDs already.
	Args func(i int, peers []*Peer) []string
	// Env, when set, adds environment variables to peer i's process.
	Env func(i int) []string
	// Prepare, when set, runs for each peer after its data directory is
	// made and before anything is written to it (to mount a file system
	// there, say).
	Prepare func(i int, dir string) error
	// SkipWait makes StartAll return once every API is up, without waiting
	// for the peers to connect (discovery tests wait themselves).
	SkipWait bool
	// NoBootstrap leaves peers without bootstrap addresses (discovery
	// tests).
	NoBootstrap bool
	// Untrusted lists peers whose publisher keys the others do not trust
	// (they still trust everyone): what they write replicates but must
	// never be shown elsewhere.
	Untrusted []int
}

// Mesh is a set of peer processes.
type Mesh struct {
	opts  Options
	bin   string
	Peers []*Peer
}

// Peer is one `shoal run` process, running or not.
type Peer struct {
	Index int
	// Host is the peer's namespace; nil on loopback.
	Host    *netsim.Host
	ID      libp2ppeer.ID
	DataDir string
	LogPath string
	Args    []string

	mesh    *Mesh
	client  *http.Client
	apiAddr string // host:port of the API, as reached from the test
	ip      string // the peer's libp2p IPv4 address
	p2pPort int
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exit    error
}

// New makes the peers' hosts, directories and keys; it starts nothing.
func New(opts Options) (*Mesh, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if opts.Mesh == "" {
		opts.Mesh = "procmesh"
	}
	m := &Mesh{opts: opts, bin: bin}
	var trust []string
	for i, site := range opts.Sites {
		p := &Peer{Index: i, mesh: m,
			DataDir: filepath.Join(opts.Dir, fmt.Sprintf("peer%d", i)),
			LogPath: filepath.Join(opts.Dir, fmt.Sprintf("peer%d.log", i))}
		if err := p.place(opts.Net, site); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
			return nil, err
		}
		if opts.Prepare != nil {
			if err := opts.Prepare(i, p.DataDir); err != nil {
				return nil, err
			}
		}
		if p.ID, err = makeIdentity(p.DataDir); err != nil {
			return nil, err
		}
		pub, err := models.NewPublisherKey(p.DataDir, false)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(opts.Untrusted, i) {
			trust = append(trust, string(pub.ID()))
		}
		m.Peers = append(m.Peers, p)
	}
	for i, p := range m.Peers {
		p.Args = []string{"run", "--data", p.DataDir, "--api", p.apiAddr, "--grpc", "127.0.0.1:0", "--mesh", opts.Mesh,
			"--listen", fmt.Sprintf("/ip4/%s/tcp/%d", p.listenIP(), p.p2pPort),
			"--default-model", "none", "--demo-rag=false", "--log-format", "json", "--log-level", "debug"}
		for _, k := range trust {
			p.Args = append(p.Args, "--trust", k)
		}
		if !opts.NoBootstrap {
			for _, o := range m.Peers {
				if o != p {
					p.Args = append(p.Args, "--bootstrap", o.Multiaddr())
				}
			}
		}
		if opts.Args != nil {
			p.Args = append(p.Args, opts.Args(i, m.Peers)...)
		}
	}
	return m, nil
}

// place gives p its addresses: the namespace's fixed ones on a netsim
// host, or free loopback ports.
func (p *Peer) place(nw *netsim.Net, site int) error {
	if nw != nil {
		h, err := nw.AddHost(site)
		if err != nil {
			return err
		}
		p.Host, p.apiAddr, p.ip, p.p2pPort = h, APIAddr, h.IP.String(), P2PPort
		p.client = &http.Client{Transport: &http.Transport{DialContext: h.DialContext, MaxIdleConnsPerHost: 16}}
		return nil
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	p.apiAddr, p.ip, p.p2pPort = fmt.Sprintf("127.0.0.1:%d", ports[0]), "127.0.0.1", ports[1]
	p.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	return nil
}

// freePorts returns n TCP ports free on loopback, from below Linux's
// ephemeral range (32768 and up by default): a port the kernel hands out
// as free is free only until some process's outgoing connection takes it
// as its source port, which a mesh of fifty peers dialling each other did
// before the peer meant to listen there had started. Ports are handed out
// once per test process.
func freePorts(n int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free loopback port below 32768")
		}
		p := 20000 + mrand.IntN(12000)
		if portsUsed[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		portsUsed[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// listenIP is the address the peer's libp2p host listens on.
func (p *Peer) listenIP() string {
	if p.Host != nil {
		return "0.0.0.0"
	}
	return p.ip
}

// APIAddr is the peer's API address as the test reaches it (inside the
// peer's namespace when it has one).
func (p *Peer) APIAddr() string { return p.apiAddr }

// Client reaches the peer's API (through its namespace when it has one),
// for requests Do does not fit, such as a stream.
func (p *Peer) Client() *http.Client { return p.client }

// Pid is the running process's id, 0 when it is stopped.
func (p *Peer) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// makeIdentity writes the libp2p key `shoal run` would make and returns its
// peer ID.
func makeIdentity(dir string) (libp2ppeer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return "", err
	}
	b, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, peer.IdentityFile), b, 0o600); err != nil {
		return "", err
	}
	return libp2ppeer.IDFromPrivateKey(k)
}

// Multiaddr is the peer's TCP address with its ID.
func (p *Peer) Multiaddr() string {
	return fmt.Sprintf("/ip4/%s/tcp/%d/p2p/%s", p.ip, p.p2pPort, p.ID)
}

// StartAll starts every peer and waits until each is connected to all
// others.
func (m *Mesh) StartAll(ctx context.Context) error {
	for _, p := range m.Peers {
		if err := p.Start(ctx); err != nil {
			return err
		}
	}
	if m.opts.SkipWait {
		return nil
	}
	return m.WaitConnected(ctx, m.Peers...)
}

// WaitConnected waits until each of peers is connected to all others of
// peers.
func (m *Mesh) WaitConnected(ctx context.Context, peers ...*Peer) error {
	for _, p := range peers {
		err := p.WaitFor(ctx, func(st api.Status) bool {
			conn := map[string]bool{}
			for _, pi := range st.Peers {
				if pi.Connected {
					conn[pi.ID] = true
				}
			}
			for _, o := range peers {
				if o != p && !conn[o.ID.String()] {
					return false
				}
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("peer %d not connected to the others: %w", p.Index, err)
		}
	}
	return nil
}

// Close stops every peer that still runs.
func (m *Mesh) Close() {
	for _, p := range m.Peers {
		p.Kill()
	}
}

// Start starts the process and waits for its API.
func (p *Peer) Start(ctx context.Context) error {
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return fmt.Errorf("peer %d already running", p.Index)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	cmd := exec.Command(p.mesh.bin, p.Args...)
	if p.Host != nil {
		cmd = p.Host.Command(p.mesh.bin, p.Args...)
	}
	cmd.Dir = testmesh.RepoFile(".")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	if p.mesh.opts.Env != nil {
		cmd.Env = append(cmd.Env, p.mesh.opts.Env(p.Index)...)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.exit = err
		p.mu.Unlock()
		close(done)
	}()
	exited := false
	err = poll.Wait(ctx, 100*time.Millisecond, func() error {
		select {
		case <-done:
			exited = true
			return nil // no use waiting on
		default:
		}
		r, err := p.Do(ctx, "GET", "/healthz", nil)
		if err != nil {
			return err
		}
		if r.Code != 200 {
			return fmt.Errorf("/healthz: %s", r)
		}
		return nil
	})
	if exited {
		return fmt.Errorf("peer %d exited at start (%v); log:\n%s", p.Index, p.exit, p.LogTail(40))
	}
	if err != nil {
		return fmt.Errorf("peer %d API not up: %w", p.Index, err)
	}
	return nil
}

// Running reports whether the process runs.
func (p *Peer) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Kill sends SIGKILL and waits for the process to end; no-op if stopped.
func (p *Peer) Kill() { p.signal(syscall.SIGKILL) }

// Stop sends SIGTERM (a clean shutdown) and waits.
func (p *Peer) Stop() error { return p.signal(syscall.SIGTERM) }

func (p *Peer) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd = nil
	err := p.exit
	p.mu.Unlock()
	if sig == syscall.SIGTERM && err != nil {
		return fmt.Errorf("peer %d: unclean exit: %w", p.Index, err)
	}
	return nil
}

// LogTail returns the last n lines of the peer's log.
func (p *Peer) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Response is an API answer.
type Response struct {
	Code   int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v.
func (r *Response) JSON(v any) error { return json.Unmarshal(r.Body, v) }

func (r *Response) String() string { return fmt.Sprintf("%d %s", r.Code, bytes.TrimSpace(r.Body)) }

// Do sends one API request; body may be nil, []byte or a value to encode
// as JSON.
func (p *Peer) Do(ctx context.Context, method, path string, body any, hdr ...string) (*Response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.apiAddr+path, rd)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	return &Response{Code: res.StatusCode, Header: res.Header, Body: b}, nil
}

// Status reads /v1/status.
func (p *Peer) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	r, err := p.Do(ctx, "GET", "/v1/status", nil)
	if err != nil {
		return st, err
	}
	if r.Code != 200 {
		return st, fmt.Errorf("status: %s", r)
	}
	return st, r.JSON(&st)
}

// ErrTimeout is returned by WaitFor when the condition never held.
var ErrTimeout = errors.New("condition not met in time")

// WaitFor polls the peer's status until cond holds or ctx ends.
func (p *Peer) WaitFor(ctx context.Context, cond func(api.Status) bool) error {
	var last api.Status
	var lastErr error
	if poll.Wait(ctx, 100*time.Millisecond, func() error {
		st, err := p.Status(ctx)
		if err == nil && cond(st) {
			return nil
		}
		if err == nil {
			last = st
		}
		lastErr = err
		return errors.New("condition not met")
	}) != nil {
		return fmt.Errorf("%w (peer %d: last status heads=%d hash=%.12s connected=%d, err=%v)",
			ErrTimeout, p.Index, len(last.Heads), last.StateHash, last.Connected, lastErr)
	}
	return nil
}

// Model reads /v1/models/{name}.
func (p *Peer) Model(ctx context.Context, name string) (api.ModelInfo, error) {
	var st api.ModelInfo
	r, err := p.Do(ctx, "GET", "/v1/models/"+name, nil)
	if err != nil {
		return st, err
	}
	if r.Code != 200 {
		return st, fmt.Errorf("model %s: %s", name, r)
	}
	return st, r.JSON(&st)
}

// DirBytes sums the sizes of the files under dir (a peer's data dir, say).
func DirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil && !d.IsDir() {
			total += info.Size()
		}
		return nil
	})
	return total, err
}
