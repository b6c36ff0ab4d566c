package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// buildBinary compiles shoal once per test binary run.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func shoalBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-bin-*")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "shoal")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a `shoal run` child process.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex // guards api and addr while the peer starts
	api    string
	addr   string // first libp2p multiaddr
	stderr *syncBuffer
	done   chan error
}

// syncBuffer holds a child's stderr: the exec package writes it while a
// test polls it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPeer runs `shoal run` with args and waits for it to print its API
// and libp2p addresses.
func startPeer(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(shoalBinary(t), append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), "SHOAL_LOG_FORMAT=json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	// The wait ends early, cancelled, when the peer exits.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go p.readStdout(stdout, cancel)
	if err := poll.Wait(ctx, poll.Interval, p.addrsKnown); err != nil {
		if errors.Is(err, context.Canceled) {
			t.Fatalf("shoal run exited early:\n%s", p.stderr)
		}
		t.Fatalf("shoal run did not report its addresses (%v):\n%s", err, p.stderr)
	}
	return p
}

// readStdout notes the API and the first libp2p address the peer prints;
// when its output ends (it exited) it calls exited and reaps it.
func (p *proc) readStdout(stdout io.Reader, exited func()) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		p.mu.Lock()
		if len(f) == 2 && f[0] == "API" {
			p.api = f[1]
		}
		if len(f) == 2 && f[0] == "libp2p" && p.addr == "" {
			p.addr = f[1]
		}
		p.mu.Unlock()
	}
	exited()
	p.done <- p.cmd.Wait()
}

// addrsKnown is nil once the peer has printed both addresses.
func (p *proc) addrsKnown() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.api == "" || p.addr == "" {
		return fmt.Errorf("API %q, libp2p %q so far", p.api, p.addr)
	}
	return nil
}

func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("shoal run exited with %v after SIGTERM:\n%s", err, p.stderr)
		}
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		t.Errorf("shoal run ignored SIGTERM")
	}
}

// pollCLI is poll.Until at a slower pace: each check runs a shoal command
// (a process), and a few a second are plenty.
func pollCLI(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := poll.Wait(ctx, 200*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, err)
	}
}

// shoal runs a short CLI command and returns its stdout, stderr and exit code.
func shoal(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(shoalBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func loopbackArgs(dir string) []string {
	return []string{"--data", dir, "--api", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--mdns=false", "--mesh", "proctest",
		"--ort-lib", repoFile("deps/onnxruntime/libonnxruntime.so"), "--default-model", "none"}
}

// repoFile is a path under the repository root (tests run in cmd/shoal).
func repoFile(rel string) string {
	abs, _ := filepath.Abs(filepath.Join("..", "..", rel))
	return abs
}

func TestTwoProcessesSeeEachOther(t *testing.T) {
	a := startPeer(t, loopbackArgs(t.TempDir())...)
	b := startPeer(t, append(loopbackArgs(t.TempDir()), "--bootstrap", a.addr)...)

	statusOf := func(p *proc) api.Status {
		out, stderr, code := shoal(t, "status", "--api", p.api, "--json")
		if code != 0 {
			t.Fatalf("shoal status exited %d: %s", code, stderr)
		}
		var st api.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, out)
		}
		return st
	}
	sees := func(st api.Status, id string) bool {
		for _, p := range st.Peers {
			if p.ID == id && p.Reachable {
				return true
			}
		}
		return false
	}
	var sa, sb api.Status
	pollCLI(t, 30*time.Second, "the peers see each other", func() error {
		sa, sb = statusOf(a), statusOf(b)
		if sees(sa, sb.PeerID) && sees(sb, sa.PeerID) {
			return nil
		}
		return fmt.Errorf("A: %+v, B: %+v", sa.Peers, sb.Peers)
	})
	if sa.Mesh != "proctest" || sa.StateHash != sb.StateHash {
		t.Errorf("mesh %q, state hashes %s vs %s", sa.Mesh, sa.StateHash, sb.StateHash)
	}
	// The readable form names the other peer too.
	out, _, code := shoal(t, "status", "--api", b.api)
	if code != 0 || !strings.Contains(out, statusOf(a).PeerID) || !strings.Contains(out, "staleness") {
		t.Errorf("human status (exit %d):\n%s", code, out)
	}
}

// TestPprofOnItsOwnLoopbackListener: --pprof serves the runtime profiles
// on the address given and nowhere else (not on the API).
func TestPprofOnItsOwnLoopbackListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := startPeer(t, append(loopbackArgs(t.TempDir()), "--pprof", addr)...)
	for url, want := range map[string]int{"http://" + addr + "/debug/pprof/cmdline": 200, p.api + "/debug/pprof/cmdline": 404} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", url, resp.StatusCode, want)
		}
		if want == 200 && !bytes.Contains(body, []byte("--pprof")) {
			t.Errorf("cmdline profile %q does not show the peer's command line", body)
		}
	}
}

func TestStartupErrorsAreOneClearLine(t *testing.T) {
	dir := t.TempDir()
	running := startPeer(t, loopbackArgs(dir)...)

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"data dir locked", loopbackArgs(dir), 1, "locked by another process"},
		{"API port taken", append(loopbackArgs(t.TempDir()), "--api", strings.TrimPrefix(running.api, "http://")), 1, "address already in use"},
		{"bad multiaddr", append(loopbackArgs(t.TempDir()), "--listen", "/ip4/nonsense"), 2, "listen address"},
		{"bootstrap without id", append(loopbackArgs(t.TempDir()), "--bootstrap", "/ip4/127.0.0.1/tcp/4010"), 2, "/p2p/<peer id>"},
		{"unknown flag", []string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{"API on the network without a token", append(loopbackArgs(t.TempDir()), "--api", "0.0.0.0:0"), 2, "without an API token"},
		{"unknown device", append(loopbackArgs(t.TempDir()), "--device", "tpu"), 2, "use auto, cpu or cuda"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := shoal(t, append([]string{"run"}, c.args...)...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr does not say %q:\n%s", c.want, stderr)
			}
			if c.code == 1 && strings.Count(strings.TrimSpace(lastLine(stderr)), "\n") != 0 {
				t.Errorf("error not on one line:\n%s", stderr)
			}
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}

func TestStatusWithoutPeerFails(t *testing.T) {
	_, stderr, code := shoal(t, "status", "--api", "127.0.0.1:1")
	if code == 0 || !strings.Contains(stderr, "cannot reach") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestVersionAndUsage(t *testing.T) {
	out, _, code := shoal(t, "version")
	if code != 0 || !strings.HasPrefix(out, "shoal ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	_, stderr, code := shoal(t, "frobnicate")
	if code != 2 || !strings.Contains(stderr, "unknown command") {
		t.Errorf("unknown command: exit %d, %q", code, stderr)
	}
}

func TestModelWorkflowAcrossProcesses(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	keyA, stderr, code := shoal(t, "key", "new", "--data", dirA)
	if code != 0 || !strings.HasPrefix(keyA, "ed25519:") {
		t.Fatalf("key new: exit %d %q %s", code, keyA, stderr)
	}
	keyA = strings.TrimSpace(keyA)
	if _, stderr, code := shoal(t, "key", "new", "--data", dirA); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("key new over an existing key: exit %d, %s", code, stderr)
	}
	if out, _, _ := shoal(t, "key", "show", "--data", dirA); strings.TrimSpace(out) != keyA {
		t.Errorf("key show = %q, want %q", out, keyA)
	}

	a := startPeer(t, loopbackArgs(dirA)...)
	b := startPeer(t, append(loopbackArgs(dirB), "--bootstrap", a.addr, "--trust", keyA)...)

	artifact := filepath.Join(t.TempDir(), "model.bin")
	os.WriteFile(artifact, bytes.Repeat([]byte("weights!"), 100000), 0o600)
	out, stderr, code := shoal(t, "model", "push", artifact, "--name", "cls", "--version", "v1", "--activate", "--api", a.api)
	if code != 0 || !strings.Contains(out, "published cls@v1") || !strings.Contains(out, "activated cls@v1") {
		t.Fatalf("push: exit %d\n%s%s", code, out, stderr)
	}
	other := filepath.Join(t.TempDir(), "other.bin")
	os.WriteFile(other, []byte("other bytes"), 0o600)
	if _, stderr, code := shoal(t, "model", "push", other, "--name", "cls", "--version", "v1", "--api", a.api); code != 1 || !strings.Contains(stderr, "already published") {
		t.Errorf("duplicate push: exit %d, %s", code, stderr)
	}
	if _, stderr, code := shoal(t, "model", "push", "/no/such/file", "--name", "cls", "--version", "v2", "--api", a.api); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing file: exit %d, %s", code, stderr)
	}

	// Peer B trusts A's key: it fetches, verifies and serves v1.
	pollCLI(t, 30*time.Second, "peer B serves cls@v1", func() error {
		out, _, _ := shoal(t, "model", "ls", "--json", "--api", b.api)
		var res struct {
			Models []api.ModelInfo `json:"models"`
		}
		json.Unmarshal([]byte(out), &res)
		if len(res.Models) == 1 && res.Models[0].Serving != nil && res.Models[0].Serving.Version == "v1" {
			return nil
		}
		return fmt.Errorf("model ls: %s", out)
	})
	out, _, code = shoal(t, "model", "ls", "--api", b.api)
	if code != 0 || !strings.Contains(out, "only trusted activation") || !strings.Contains(out, "verified") {
		t.Errorf("model ls:\n%s", out)
	}
	if _, stderr, code := shoal(t, "model", "rollback", "cls", "--api", a.api); code != 1 || !strings.Contains(stderr, "no previous version") {
		t.Errorf("rollback with no previous: exit %d, %s", code, stderr)
	}
}

// TestDefaultModelAndInferCommand: a peer with no model flags serves the
// default model, and `shoal infer` / `shoal cache flush` drive it.
func TestDefaultModelAndInferCommand(t *testing.T) {
	args := loopbackArgs(t.TempDir())
	args[len(args)-1] = repoFile("deps/models/ocr-cls.onnx")
	p := startPeer(t, args...)
	example := repoFile("examples/ocr-cls-request.json")
	var out, stderr string
	pollCLI(t, 30*time.Second, "shoal infer answers", func() error {
		var code int
		if out, stderr, code = shoal(t, "infer", "ocr-cls", "--input", example, "--api", p.api); code != 0 {
			return fmt.Errorf("infer: exit %d\n%s%s", code, out, stderr)
		}
		return nil
	})
	var resp struct {
		ModelName    string `json:"model_name"`
		ModelVersion string `json:"model_version"`
		ID           string `json:"id"`
		Outputs      []struct {
			Shape []int     `json:"shape"`
			Data  []float64 `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("infer output is not the JSON response: %v\n%s", err, out)
	}
	if resp.ModelName != "ocr-cls" || resp.ModelVersion != DefaultModelVersion || resp.ID != "example-1" ||
		len(resp.Outputs) != 1 || len(resp.Outputs[0].Data) != 2 {
		t.Fatalf("response %+v", resp)
	}
	if sum := resp.Outputs[0].Data[0] + resp.Outputs[0].Data[1]; sum < 0.999 || sum > 1.001 {
		t.Errorf("class probabilities %v do not sum to 1", resp.Outputs[0].Data)
	}
	if !strings.Contains(stderr, "answered by ocr-cls@"+DefaultModelVersion) {
		t.Errorf("stderr %q", stderr)
	}
	_, stderr, _ = shoal(t, "infer", "ocr-cls", "--input", example, "--api", p.api)
	if !strings.Contains(stderr, "cache hit") {
		t.Errorf("second identical request: %q", stderr)
	}
	if out, stderr, code := shoal(t, "cache", "flush", "ocr-cls", "--api", p.api); code != 0 || !strings.Contains(out, "flushed cached results of ocr-cls") {
		t.Errorf("cache flush: exit %d %s%s", code, out, stderr)
	}
	if _, stderr, _ := shoal(t, "infer", "ocr-cls", "--input", example, "--api", p.api); !strings.Contains(stderr, "cache miss") {
		t.Errorf("after flush: %q", stderr)
	}

	// Bad input: clear message, non-zero exit.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"inputs":[{"name":"x","shape":[1,3,2,2],"datatype":"FP32","data":[1,2,3]}]}`), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"infer", "ocr-cls", "--input", bad}, 1, "3 elements for shape [1 3 2 2], which needs 12"},
		{[]string{"infer", "ocr-cls@v9", "--input", example}, 1, "unknown model version"},
		{[]string{"infer", "ocr-cls", "--input", "/no/such.json"}, 1, "no such file"},
		{[]string{"infer", "ocr-cls"}, 2, "usage: shoal infer"},
		{[]string{"cache", "drop"}, 2, "usage: shoal cache flush"},
	} {
		_, stderr, code := shoal(t, append(tc.args, "--api", p.api)...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d %q, want %d with %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
}

// TestRetrievalCommands drives collections and documents from the CLI:
// publish an embedder and its tokenizer, create a collection, add files,
// query, remove.
func TestRetrievalCommands(t *testing.T) {
	p := startPeer(t, loopbackArgs(t.TempDir())...)
	dir := t.TempDir()
	model := filepath.Join(dir, "embedder.onnx")
	os.WriteFile(model, onnxmodel.HashEmbedder(8192, 384, 1), 0o600)
	if out, stderr, code := shoal(t, "model", "push", model, "--name", "emb", "--version", "v1", "--activate", "--api", p.api); code != 0 {
		t.Fatalf("push embedder: %d %s%s", code, out, stderr)
	}
	if out, stderr, code := shoal(t, "model", "push", repoFile("deps/models/minilm-tokenizer.json"), "--name", "emb.tokenizer", "--version", "v1",
		"--media-type", api.MediaTypeTokenizer, "--api", p.api); code != 0 {
		t.Fatalf("push tokenizer: %d %s%s", code, out, stderr)
	}
	// int8 index vectors: the rest of the walk runs on the quantised index.
	out, stderr, code := shoal(t, "collection", "create", "manuals", "--embedder", "emb@v1", "--vectors", "int8", "--api", p.api)
	if code != 0 || !strings.Contains(out, "dimension 384") || !strings.Contains(out, "int8 vectors") {
		t.Fatalf("collection create: %d %s%s", code, out, stderr)
	}
	files := map[string]string{
		"pump-maintenance.txt": "Replace the pump seal every six months and check the pressure valve.",
		"camera-setup.txt":     "Mount the camera two metres high and align the frame with the conveyor.",
		"battery-care.txt":     "Charge forklift batteries fully before storing them in the cold.",
	}
	var paths []string
	for name, text := range files {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(text), 0o600)
		paths = append(paths, path)
	}
	jsonl := filepath.Join(dir, "more.jsonl")
	os.WriteFile(jsonl, []byte(`{"id":"valve-torque","text":"Tighten the pressure valve to 40 Nm.","metadata":{"team":"maintenance"}}`+"\n"), 0o600)
	out, stderr, code = shoal(t, append(append([]string{"doc", "add", "manuals"}, paths...), jsonl, "--api", p.api)...)
	if code != 0 || !strings.Contains(out, "added 4 documents") {
		t.Fatalf("doc add: %d %s%s", code, out, stderr)
	}
	token := strings.TrimSpace(out[strings.Index(out, "token ")+6:])
	out, stderr, code = shoal(t, "doc", "query", "manuals", "pressure valve of the pump", "-k", "2", "--after", token, "--api", p.api)
	if code != 0 || !strings.Contains(out, "pump-maintenance") || !strings.Contains(out, "valve-torque") || strings.Contains(out, "camera-setup") {
		t.Fatalf("doc query: %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(stderr, "4 documents indexed") {
		t.Errorf("query freshness line: %s", stderr)
	}
	out, _, code = shoal(t, "doc", "query", "manuals", "valve", "--filter", "team=maintenance", "--json", "--api", p.api)
	var res api.QueryResponse
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Results) != 1 || res.Results[0].ID != "valve-torque" {
		t.Errorf("filtered query: %d %s", code, out)
	}
	if out, stderr, code := shoal(t, "doc", "rm", "manuals", "valve-torque", "--api", p.api); code != 0 || !strings.Contains(out, "deleted manuals/valve-torque") {
		t.Errorf("doc rm: %d %s%s", code, out, stderr)
	}
	if _, stderr, code := shoal(t, "doc", "rm", "manuals", "valve-torque", "--api", p.api); code != 1 || !strings.Contains(stderr, "unknown document") {
		t.Errorf("second rm: %d %s", code, stderr)
	}
	if out, _, code := shoal(t, "collection", "ls", "--api", p.api); code != 0 || !strings.Contains(out, "manuals") || !strings.Contains(out, "emb@v1") {
		t.Errorf("collection ls: %d %s", code, out)
	}
	if _, stderr, code := shoal(t, "doc", "query", "nope", "x", "--api", p.api); code != 1 || !strings.Contains(stderr, "unknown collection") {
		t.Errorf("query unknown collection: %d %s", code, stderr)
	}
}

func TestKeyPSK(t *testing.T) {
	path := filepath.Join(t.TempDir(), "swarm.key")
	out, stderr, code := shoal(t, "key", "psk", path)
	if code != 0 || !strings.Contains(out, "--psk "+path) {
		t.Fatalf("key psk: %d %s%s", code, out, stderr)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", fi, err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "/key/swarm/psk/1.0.0/\n/base16/\n") || len(b) != len("/key/swarm/psk/1.0.0/\n/base16/\n")+65 {
		t.Errorf("key file content %q", b)
	}
	if _, stderr, code := shoal(t, "key", "psk", path); code != 1 || !strings.Contains(stderr, "exists") {
		t.Errorf("overwriting without --force: %d %s", code, stderr)
	}
	// A peer refuses a key file that is not one.
	bad := filepath.Join(t.TempDir(), "bad.key")
	os.WriteFile(bad, []byte("nope"), 0o600)
	if _, stderr, code := shoal(t, append([]string{"run"}, append(loopbackArgs(t.TempDir()), "--psk", bad)...)...); code != 2 || !strings.Contains(stderr, "swarm key") {
		t.Errorf("bad --psk: %d %s", code, stderr)
	}
}

// TestModelPull prefetches a published, not activated version onto a
// second peer by hand.
func TestModelPull(t *testing.T) {
	dirA := t.TempDir()
	keyA, _, _ := shoal(t, "key", "new", "--data", dirA)
	a := startPeer(t, loopbackArgs(dirA)...)
	b := startPeer(t, append(loopbackArgs(t.TempDir()), "--bootstrap", a.addr, "--trust", strings.TrimSpace(keyA))...)
	artifact := filepath.Join(t.TempDir(), "weights.bin")
	os.WriteFile(artifact, bytes.Repeat([]byte("0123456789abcdef"), 200000), 0o600)
	if out, stderr, code := shoal(t, "model", "push", artifact, "--name", "det", "--version", "v1", "--api", a.api); code != 0 {
		t.Fatalf("push: %d %s%s", code, out, stderr)
	}
	var out, stderr string
	var code int
	pollCLI(t, 20*time.Second, "peer B has the manifest of det@v1", func() error {
		if out, stderr, code = shoal(t, "model", "pull", "det@v1", "--api", b.api); code != 0 && strings.Contains(stderr, "unknown model") {
			return fmt.Errorf("pull: %s", stderr)
		}
		return nil
	})
	if code != 0 || !strings.Contains(out, "det@v1 verified here (3200000 bytes") {
		t.Fatalf("pull: %d %s%s", code, out, stderr)
	}
	if _, stderr, code := shoal(t, "model", "pull", "det@v9", "--api", b.api); code != 1 || !strings.Contains(stderr, "unknown model version") {
		t.Errorf("pull unknown version: %d %s", code, stderr)
	}
	if _, stderr, code := shoal(t, "model", "pull", "det", "--api", b.api); code != 1 || !strings.Contains(stderr, "no current version") {
		t.Errorf("pull without a current version: %d %s", code, stderr)
	}
}

// TestConfigFile: a TOML file supplies settings; $SHOAL_* and flags win
// over it; `shoal config print` shows the result with secrets masked, and
// a peer started with the file uses it.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shoal.toml")
	os.WriteFile(file, []byte(`
data = "`+filepath.Join(dir, "data")+`"
api = "127.0.0.1:0"
listen = ["/ip4/127.0.0.1/tcp/0"]
mesh = "from-file"
mdns = false
keep_versions = 3
api_token = "hunter2"
default_model = "none"
demo_rag = false
`), 0o600)
	t.Setenv("SHOAL_KEEP_VERSIONS", "4")
	out, stderr, code := shoal(t, "config", "print", "--config", file, "--device", "cpu")
	if code != 0 {
		t.Fatalf("config print: %d %s", code, stderr)
	}
	for _, want := range []string{`mesh = "from-file"`, `keep_versions = 4`, `device = "cpu"`, `mdns = false`, `listen = ["/ip4/127.0.0.1/tcp/0"]`, `api_token = "********" # masked`} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Error("config print shows the API token")
	}
	// The printed settings are themselves a valid config file.
	printed := filepath.Join(dir, "printed.toml")
	os.WriteFile(printed, []byte(strings.ReplaceAll(out, `"********" # masked`, `"x"`)), 0o600)
	if _, stderr, code := shoal(t, "config", "print", "--config", printed); code != 0 {
		t.Errorf("printed settings do not load: %s", stderr)
	}
	p := startPeer(t, "--config", file, "--ort-lib", repoFile("deps/onnxruntime/libonnxruntime.so"))
	out, stderr, code = shoal(t, "status", "--json", "--api", p.api)
	var st api.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Mesh != "from-file" {
		t.Errorf("peer started with the file: %d mesh %q %s", code, st.Mesh, stderr)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("mesh = \"x\"\nbogus = 1\n"), 0o600)
	if _, stderr, code := shoal(t, "run", "--config", bad); code != 2 || !strings.Contains(stderr, `unknown key "bogus"`) {
		t.Errorf("unknown key: %d %s", code, stderr)
	}
}

// TestEncryptionAtRest: with --encrypt-key-file nothing in the data
// directory holds a stored document's text (without it, the same check
// finds it); the directory then opens only with its key.
func TestEncryptionAtRest(t *testing.T) {
	const secret = "zebra-quartz-4471 maintenance note for pump 7"
	keyFile := filepath.Join(t.TempDir(), "data.key")
	if out, stderr, code := shoal(t, "key", "encryption", keyFile); code != 0 || !strings.Contains(out, "--encrypt-key-file "+keyFile) {
		t.Fatalf("key encryption: %d %s%s", code, out, stderr)
	}
	store := func(dir string, extra ...string) {
		p := startPeer(t, append(loopbackArgs(dir), extra...)...)
		for _, req := range []struct{ method, path, body string }{
			{"POST", "/v1/collections", `{"name":"notes","embedder":"client@v1","dimension":3}`},
			{"PUT", "/v1/collections/notes/docs/n1", `{"text":"` + secret + `","vector":[1,2,3]}`},
		} {
			r, err := http.NewRequest(req.method, p.api+req.path, strings.NewReader(req.body))
			if err != nil {
				t.Fatal(err)
			}
			res, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode/100 != 2 {
				t.Fatalf("%s %s: %d %s", req.method, req.path, res.StatusCode, b)
			}
		}
		p.stop(t)
	}
	holds := func(dir string) []string {
		var found []string
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte("zebra-quartz-4471")) {
					found = append(found, path)
				}
			}
			return nil
		})
		return found
	}
	plain, enc := t.TempDir(), t.TempDir()
	store(plain)
	if len(holds(plain)) == 0 {
		t.Fatal("the unencrypted data dir does not hold the text either: the check proves nothing")
	}
	store(enc, "--encrypt-key-file", keyFile)
	if f := holds(enc); len(f) > 0 {
		t.Errorf("plaintext of a stored document in %v", f)
	}
	// The directory opens only with its key.
	if _, stderr, code := shoal(t, append([]string{"run"}, loopbackArgs(enc)...)...); code == 0 || !strings.Contains(stderr, "encryption key") {
		t.Errorf("opened without its key: %d %s", code, stderr)
	}
	other := filepath.Join(t.TempDir(), "other.key")
	shoal(t, "key", "encryption", other)
	if _, stderr, code := shoal(t, append([]string{"run"}, append(loopbackArgs(enc), "--encrypt-key-file", other)...)...); code == 0 || !strings.Contains(stderr, "encryption key") {
		t.Errorf("opened with another key: %d %s", code, stderr)
	}
	p := startPeer(t, append(loopbackArgs(enc), "--encrypt-key-file", keyFile)...)
	res, err := http.Get(p.api + "/v1/collections/notes/docs/n1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(b), secret) {
		t.Errorf("reopened with its key: %d %s", res.StatusCode, b)
	}
}

// TestSIGHUPReloadsWhatIsSafe: SIGHUP re-reads the --config file; a new
// API token takes effect at once, a changed mesh name waits for a restart
// (and says so), and a broken file changes nothing.
func TestSIGHUPReloadsWhatIsSafe(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shoal.toml")
	base := `data = "` + filepath.Join(dir, "data") + `"
api = "127.0.0.1:0"
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
dht = false
default_model = "none"
demo_rag = false
`
	os.WriteFile(file, []byte(base), 0o600)
	p := startPeer(t, "--config", file)
	create := func(name, auth string) int {
		r, _ := http.NewRequest("POST", p.api+"/v1/collections", strings.NewReader(`{"name":"`+name+`","embedder":"e@v1","dimension":3}`))
		if auth != "" {
			r.Header.Set("Authorization", "Bearer "+auth)
		}
		res, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := create("a", ""); code/100 != 2 {
		t.Fatalf("write before the reload: %d", code)
	}
	os.WriteFile(file, []byte(base+"api_token = \"s3cret\"\nmesh = \"renamed\"\n"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	poll.Until(t, 10*time.Second, "the API token from the reloaded file takes effect", func() error {
		if code := create("b", ""); code != http.StatusUnauthorized {
			return fmt.Errorf("a write without it answered %d", code)
		}
		return nil
	})
	if code := create("c", "s3cret"); code/100 != 2 {
		t.Errorf("write with the reloaded token: %d", code)
	}
	os.WriteFile(file, []byte(base+"bogus = 1\n"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	poll.Until(t, 10*time.Second, "the peer refuses the broken file", poll.True(
		func() bool { return strings.Contains(p.stderr.String(), "configuration not reloaded") },
		func() string { return "its log does not say so yet" }))
	if code := create("d", ""); code != http.StatusUnauthorized {
		t.Errorf("a broken file changed the token: write without it answered %d", code)
	}
	p.stop(t)
	logs := p.stderr.String()
	for _, want := range []string{"configuration reloaded", `"setting":"mesh"`, "takes effect at the next restart", "configuration not reloaded"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}
