package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/peer"
)

// converge bounds how long replicated state may take to settle, or a
// model to load, on loopback. Generous: CI machines are small and shared,
// and a first model load there has been seen to sit in onnxruntime's
// session creation for more than 30 s (see nativeThreads).
const converge = 90 * time.Second

func startMesh(t *testing.T, n int, tweak func(int, *peer.Config)) *testmesh.Mesh {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: n, Dir: t.TempDir(), Tweak: tweak})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close mesh: %v", err)
		}
	})
	return m
}

// eventually is poll.Until with the converge bound that, on a timeout,
// also logs what the peers' goroutines and this process's threads were
// doing.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	if err := poll.Wait(ctx, 50*time.Millisecond, f); err != nil {
		t.Logf("goroutines of the peers when %q timed out:\n%s", what, peerStacks())
		t.Logf("threads of this process:\n%s", nativeThreads())
		t.Fatalf("%s: %v", what, err)
	}
}

// peerStacks returns the stacks of goroutines running Shoal's own code,
// so a timeout in CI shows what the peers were doing.
func peerStacks() string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "shoal-mesh/shoal/peer.") || strings.Contains(g, "shoal-mesh/shoal/inference.") {
			if !strings.Contains(g, "testing.tRunner") {
				out = append(out, g)
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// nativeThreads describes this process's threads as the kernel sees them
// (state, wait channel, kernel stack of those not sleeping), and, where gdb
// is installed, the native stacks of threads inside onnxruntime: a
// goroutine stuck in a cgo call shows only "[syscall]" in Go's dump.
func nativeThreads() string {
	var b strings.Builder
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		dir := "/proc/self/task/" + task.Name()
		stat, _ := os.ReadFile(dir + "/stat")
		state := "?"
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			state = string(stat[i+2])
		}
		wchan, _ := os.ReadFile(dir + "/wchan")
		fmt.Fprintf(&b, "tid %s state %s wchan %s\n", task.Name(), state, wchan)
		if state != "S" {
			if stack, err := os.ReadFile(dir + "/stack"); err == nil {
				b.Write(stack)
			}
		}
	}
	if gdb, err := exec.LookPath("gdb"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, gdb, "-p", strconv.Itoa(os.Getpid()), "-batch", "-nx",
			"-ex", "thread apply all bt 25").CombinedOutput()
		for _, th := range strings.Split(string(out), "\nThread ") {
			if strings.Contains(th, "onnxruntime") {
				b.WriteString("Thread " + th + "\n")
			}
		}
	}
	return b.String()
}

type kv struct {
	Value string `json:"value"`
}

// sameState waits until every running peer reports the same state hash and
// returns it.
func sameState(t *testing.T, m *testmesh.Mesh) string {
	t.Helper()
	var hash string
	eventually(t, "state hashes converge", func() error {
		hashes := map[string]int{}
		for _, n := range m.Nodes() {
			h, err := n.Replica().StateHash(context.Background())
			if err != nil {
				return err
			}
			hashes[h]++
			hash = h
		}
		if len(hashes) != 1 {
			return fmt.Errorf("%d distinct state hashes: %v", len(hashes), hashes)
		}
		return nil
	})
	return hash
}

func TestRecordReplicatesToEveryPeer(t *testing.T) {
	m := startMesh(t, 3, nil)
	ctx := context.Background()
	w, err := m.Node(0).Replica().Put(ctx, "/test/greeting", "test.kv", kv{"hello"})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Heads) == 0 || w.Peer != m.Node(0).ID().String() {
		t.Errorf("write = %+v: want heads and the writer's id", w)
	}
	for i := 1; i < 3; i++ {
		r := m.Node(i).Replica()
		eventually(t, fmt.Sprintf("record on peer %d", i), func() error {
			rec, err := r.Get(ctx, "/test/greeting")
			if err != nil {
				return err
			}
			var v kv
			if err := rec.DecodeBody(&v); err != nil {
				return err
			}
			if v.Value != "hello" || rec.Writer != m.Node(0).ID().String() || rec.HLC != w.HLC {
				return fmt.Errorf("got %+v body %q", rec, v.Value)
			}
			return nil
		})
	}
	sameState(t, m)
}

func TestEventsFollowRemoteWrites(t *testing.T) {
	m := startMesh(t, 2, nil)
	ctx := context.Background()
	sub := m.Node(1).Replica().Subscribe("/test/", 16)
	defer sub.Close()
	if _, err := m.Node(0).Replica().Put(ctx, "/test/a", "test.kv", kv{"1"}); err != nil {
		t.Fatal(err)
	}
	next := func() crdt.Event {
		select {
		case ev := <-sub.C():
			return ev
		case <-time.After(converge):
			t.Fatal("no event")
		}
		return crdt.Event{}
	}
	if ev := next(); ev.Type != crdt.EventPut || ev.Key != "/test/a" || ev.Record.Kind != "test.kv" {
		t.Fatalf("first event = %+v", ev)
	}
	if _, err := m.Node(0).Replica().Delete(ctx, "/test/a"); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != crdt.EventDelete || ev.Key != "/test/a" {
		t.Fatalf("second event = %+v", ev)
	}
	if _, err := m.Node(1).Replica().Get(ctx, "/test/a"); err == nil {
		t.Error("deleted key still readable on peer 1")
	}
}

func TestConcurrentWritesConverge(t *testing.T) {
	m := startMesh(t, 3, nil)
	ctx := context.Background()
	const perPeer = 25
	var wg sync.WaitGroup
	errs := make(chan error, 3*perPeer)
	for i, n := range m.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perPeer; j++ {
				// Own keys, plus a contended key every peer overwrites.
				if _, err := n.Replica().Put(ctx, fmt.Sprintf("/test/p%d/k%d", i, j), "test.kv", kv{fmt.Sprint(j)}); err != nil {
					errs <- err
				}
				if _, err := n.Replica().Put(ctx, "/test/contended", "test.kv", kv{fmt.Sprintf("peer%d-%d", i, j)}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sameState(t, m)
	for i, n := range m.Nodes() {
		list, err := n.Replica().List(ctx, "/test/")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 3*perPeer+1 {
			t.Errorf("peer %d holds %d keys, want %d", i, len(list), 3*perPeer+1)
		}
	}
	// Every peer sees the same winner of the contended key.
	var winner string
	for i, n := range m.Nodes() {
		rec, err := n.Replica().Get(ctx, "/test/contended")
		if err != nil {
			t.Fatal(err)
		}
		var v kv
		rec.DecodeBody(&v)
		if i == 0 {
			winner = v.Value
		} else if v.Value != winner {
			t.Errorf("peer %d: contended = %q, peer 0: %q", i, v.Value, winner)
		}
	}
}

func TestRestartKeepsStateAndCatchesUp(t *testing.T) {
	m := startMesh(t, 3, nil)
	ctx := context.Background()
	for j := 0; j < 10; j++ {
		if _, err := m.Node(0).Replica().Put(ctx, fmt.Sprintf("/test/before/%d", j), "test.kv", kv{"x"}); err != nil {
			t.Fatal(err)
		}
	}
	before := sameState(t, m)
	if err := m.Stop(2); err != nil {
		t.Fatal(err)
	}
	// Written while peer 2 is down, on both remaining peers.
	for j := 0; j < 10; j++ {
		if _, err := m.Node(j%2).Replica().Put(ctx, fmt.Sprintf("/test/during/%d", j), "test.kv", kv{"y"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Restart(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// Its persisted state is there at once, before any sync.
	got, err := m.Node(2).Replica().List(ctx, "/test/before/")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Errorf("after restart peer 2 holds %d of its 10 earlier keys", len(got))
	}
	after := sameState(t, m)
	if after == before {
		t.Error("state hash did not change although 10 keys were added")
	}
	during, err := m.Node(2).Replica().List(ctx, "/test/during/")
	if err != nil || len(during) != 10 {
		t.Errorf("peer 2 caught up on %d of 10 missed keys (%v)", len(during), err)
	}
}

func TestStalenessWhileCutOff(t *testing.T) {
	m := startMesh(t, 3, func(i int, c *peer.Config) { c.PeerTimeout = 2 * time.Second })
	ctx := context.Background()
	cut := m.Node(2)
	staleness := func() float64 { return cut.Replica().Staleness().Seconds }
	eventually(t, "peer 2 fresh", func() error {
		if s := staleness(); s > 1.5 {
			return fmt.Errorf("staleness %.2fs", s)
		}
		return nil
	})

	m.Isolate(2)
	cutAt := time.Now()
	// The others keep writing; peer 2 cannot know. The writer stops before
	// the mesh closes (cleanups run last-registered first): a test that
	// finished early let it write to a closed mesh, a nil node (CI panic).
	stop, stopped := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-stopped })
	go func() {
		defer close(stopped)
		for j := 0; j < 20 && time.Since(cutAt) < 6*time.Second; j++ {
			m.Node(0).Replica().Put(ctx, fmt.Sprintf("/test/while-cut/%d", j), "test.kv", kv{"z"})
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond): // paces the writes, not synchronisation
			}
		}
	}()
	eventually(t, "staleness rises while cut off", func() error {
		if s := staleness(); s < 4 {
			return fmt.Errorf("staleness %.2fs %.1fs after the cut", s, time.Since(cutAt).Seconds())
		}
		return nil
	})
	st := cut.Replica().Staleness()
	for _, p := range st.Peers {
		if p.Reachable {
			t.Errorf("peer %s listed reachable from the cut-off peer", p.ID)
		}
	}
	if len(st.Peers) != 2 {
		t.Errorf("cut-off peer lists %d peers, want the 2 unreachable ones", len(st.Peers))
	}
	// The others see peer 2 as unreachable, not gone.
	eventually(t, "peer 0 marks peer 2 unreachable", func() error {
		for _, p := range m.Node(0).Replica().Staleness().Peers {
			if p.ID == cut.ID().String() && !p.Reachable {
				return nil
			}
		}
		return fmt.Errorf("peer 2 not listed unreachable")
	})

	if err := m.Heal(ctx, 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "staleness falls after rejoining", func() error {
		if s := staleness(); s > 1.5 {
			return fmt.Errorf("staleness %.2fs", s)
		}
		return nil
	})
	sameState(t, m)
}
