package artifacts

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/store"
)

const testMesh = "swarmtest"

// testPeer is a real libp2p host on loopback with a real Badger store,
// bitswap and a Manager; swarm false leaves the Manager without the swarm
// (bitswap only, as a peer of an older release).
type testPeer struct {
	host host.Host
	m    *Manager
}

func newTestPeer(t testing.TB, swarm bool) *testPeer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	b := store.NewBlocks(ctx, h, st.Blockstore(), store.BlocksConfig{})
	cfg := Config{Datastore: st.Datastore(), Blocks: b, Logger: slog.New(slog.DiscardHandler)}
	if swarm {
		cfg.Host, cfg.Mesh = h, testMesh
	}
	m := New(cfg)
	t.Cleanup(func() {
		m.Close()
		cancel()
		b.Close()
		h.Close()
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return &testPeer{host: h, m: m}
}

func connectAll(t testing.TB, hosts ...host.Host) {
	t.Helper()
	for i, a := range hosts {
		for _, b := range hosts[i+1:] {
			if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// publish imports size random bytes on p as ref, verified there.
func publish(t testing.TB, p *testPeer, ref string, size int) Spec {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	ctx := context.Background()
	c, sum, n, err := p.m.Import(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if sum != hex.EncodeToString(want[:]) || n != int64(size) {
		t.Fatalf("import: sha256 %s size %d", sum, n)
	}
	s := Spec{Ref: ref, CID: c, SHA256: sum, Size: n}
	if err := p.m.MarkVerified(ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// ensureAll has every fetcher ensure s at once; the first error, if any.
func ensureAll(ctx context.Context, fetchers []*testPeer, s Spec) error {
	errs := make(chan error, len(fetchers))
	for _, f := range fetchers {
		go func() {
			_, err := f.m.Ensure(ctx, s)
			errs <- err
		}()
	}
	var first error
	for range fetchers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// TestSwarmFetch: fetchers that start together get a published artifact
// through the swarm — bitswap moves none of it — and each one verified
// reads back exactly the published bytes.
func TestSwarmFetch(t *testing.T) {
	origin := newTestPeer(t, true)
	fetchers := []*testPeer{newTestPeer(t, true), newTestPeer(t, true), newTestPeer(t, true)}
	hosts := []host.Host{origin.host}
	for _, f := range fetchers {
		hosts = append(hosts, f.host)
	}
	connectAll(t, hosts...)
	s := publish(t, origin, "m@v1", 3<<20+12345) // 13 leaves under one inner node

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ensureAll(ctx, fetchers, s); err != nil {
		t.Fatal(err)
	}
	var received uint64
	for i, f := range fetchers {
		st, _ := f.m.Status(ctx, s.Ref)
		if st.State != StateVerified || st.Fetched != s.Size {
			t.Errorf("fetcher %d: %+v", i, st)
		}
		if n := f.m.BytesFetched(); n != 0 {
			t.Errorf("fetcher %d took %d bytes over bitswap; the swarm should have brought all", i, n)
		}
		received += f.m.SwarmStats().BytesReceived
		r, err := f.m.Open(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, r)
		if hex.EncodeToString(h.Sum(nil)) != s.SHA256 {
			t.Errorf("fetcher %d reads other bytes", i)
		}
	}
	var sent uint64
	for _, p := range append([]*testPeer{origin}, fetchers...) {
		sent += p.m.SwarmStats().BytesSent
	}
	if received < 3*uint64(s.Size) || sent != received {
		t.Errorf("the fetchers received %d bytes and the peers sent %d; want both at least 3 × %d and equal", received, sent, s.Size)
	}
}

// fakePeer is a host that speaks the swarm protocol through answer, which
// writes to w what it answers a request with op (or nothing at all).
func fakePeer(t *testing.T, answer func(op byte, w *bufio.Writer)) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler(SwarmProtocol(testMesh), func(st network.Stream) {
		defer st.Close()
		r, w := bufio.NewReader(st), bufio.NewWriter(st)
		for {
			op, _, err := readRequest(r)
			if err != nil {
				return
			}
			answer(op, w)
			if w.Flush() != nil {
				return
			}
		}
	})
	return h
}

// liar claims to hold everything and answers every GET with bytes that
// hash to nothing asked for.
func liar(t *testing.T) host.Host {
	return fakePeer(t, func(op byte, w *bufio.Writer) {
		if op == opHave {
			w.WriteByte(holdsAll)
			return
		}
		w.WriteByte(blockFound)
		writeChunk(w, []byte("not the block you asked for"))
	})
}

// mute hangs. claim "": it never answers at all — a peer cut off whose
// connection has not timed out yet; "all": it claims to be a seed and never
// answers a GET; "fellow": it claims every leaf as a fetcher would (leaves
// leaves) and never answers a GET.
func mute(t *testing.T, claim string, leaves int) host.Host {
	return fakePeer(t, func(op byte, w *bufio.Writer) {
		switch {
		case op != opHave:
		case claim == "all":
			w.WriteByte(holdsAll)
		case claim == "fellow":
			w.WriteByte(holdsPartial)
			w.Write(binary.AppendUvarint(nil, uint64(leaves)))
			w.Write(bytes.Repeat([]byte{0xff}, (leaves+7)/8))
		}
	})
}

// TestSwarmHungPeersDelayLittle: a peer that never answers does not hold
// up the start of a fetch; the leaves asked of a peer that claims to be a
// seed and never sends them are asked of another after endgameAfter; those
// a peer claims as a fetcher and never sends are taken from the seed once
// nothing arrives — the fetch completes through the swarm well before any
// request times out.
func TestSwarmHungPeersDelayLittle(t *testing.T) {
	origin := newTestPeer(t, true)
	fetcher := newTestPeer(t, true)
	connectAll(t, origin.host, fetcher.host, mute(t, "", 0), mute(t, "all", 0), mute(t, "fellow", 8))
	s := publish(t, origin, "m@v1", 2<<20) // 8 leaves

	ctx, cancel := context.WithTimeout(context.Background(), swarmRequestTimeout/3)
	defer cancel()
	st, err := fetcher.m.Ensure(ctx, s)
	if err != nil || st.State != StateVerified {
		t.Fatalf("ensure (within a third of the request timeout): %+v, %v", st, err)
	}
	if n := fetcher.m.BytesFetched(); n != 0 {
		t.Errorf("bitswap brought %d bytes; the swarm should have brought all", n)
	}
}

// TestSwarmRefusesBadBlocks: a peer that serves blocks that do not hash to
// their CIDs is counted and dropped, and the fetch completes over bitswap
// from an origin that does not speak the swarm.
func TestSwarmRefusesBadBlocks(t *testing.T) {
	origin := newTestPeer(t, false)
	fetcher := newTestPeer(t, true)
	connectAll(t, origin.host, fetcher.host, liar(t))
	s := publish(t, origin, "m@v1", 1<<20+1)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := fetcher.m.Ensure(ctx, s)
	if err != nil || st.State != StateVerified {
		t.Fatalf("ensure: %+v, %v", st, err)
	}
	if n := fetcher.m.SwarmStats().BadBlocks; n != 1 {
		t.Errorf("bad blocks counted: %d, want 1 (the liar is not asked again)", n)
	}
	if fetcher.m.BytesFetched() < uint64(s.Size) {
		t.Errorf("bitswap brought %d bytes, want the whole artifact (%d)", fetcher.m.BytesFetched(), s.Size)
	}
}

// TestSwarmSchedule drives choose: leaves a fellow fetcher holds are taken
// from the fellow; from a seed, this peer takes its own stripe, and the
// others' only once nothing has arrived for helpAfter.
func TestSwarmSchedule(t *testing.T) {
	f := newSwarmFetch("b", "m@v1")
	leaves := make([]cid.Cid, 8)
	for i := range leaves {
		leaves[i] = cid.NewCidV1(cid.Raw, mustSum(t, []byte{byte(i)}))
	}
	f.setLeaves(leaves, func(cid.Cid) bool { return false })
	f.heard("seed", holdsAll, nil, 0)
	f.heard("a", holdsPartial, []byte{1 << 1}, 8) // a holds leaf 1
	f.heard("c", holdsPartial, []byte{0}, 8)
	// Fetchers a, b, c: b's stripe is leaves 1, 4, 7.
	take := func(p peer.ID) int {
		f.mu.Lock()
		defer f.mu.Unlock()
		i := f.choose(p)
		if i >= 0 {
			f.inflight[i] = time.Now()
		}
		return i
	}
	if i := take("a"); i != 1 {
		t.Errorf("from fellow a: leaf %d, want 1", i)
	}
	// From the seed: b's own stripe (4 and 7; 1 is a's), in either order,
	// then the rest.
	own := map[int]bool{take("seed"): true, take("seed"): true}
	if !own[4] || !own[7] {
		t.Errorf("from the seed first: %v, want b's stripe 4 and 7", own)
	}
	if i := take("seed"); i != -1 {
		t.Errorf("from the seed with b's stripe asked for and the fetch just started: leaf %d, want none (their owners take them)", i)
	}
	f.lastGot = time.Now().Add(-helpAfter) // nothing arrived for a while: take any
	rest := map[int]bool{}
	for range 5 {
		rest[take("seed")] = true
	}
	for _, i := range []int{0, 2, 3, 5, 6} {
		if !rest[i] {
			t.Errorf("from the seed after b's stripe: %v, want 0, 2, 3, 5, 6", rest)
			break
		}
	}
	if i := take("seed"); i != -1 {
		t.Errorf("from the seed with every leaf asked for: leaf %d, want none", i)
	}
	if i := take("c"); i != -1 {
		t.Errorf("from c, which holds nothing: leaf %d", i)
	}
}

func mustSum(t *testing.T, b []byte) []byte {
	t.Helper()
	sum, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum(b)
	if err != nil {
		t.Fatal(err)
	}
	return sum.Hash()
}

// BenchmarkSwarmFanOut: one origin, 10 fetchers starting together, all in
// this process on loopback. Reports the origin's upload per artifact byte
// (the goal of issue 16 is ≤ 1.5) and the time until the last fetcher
// verified. SHOAL_FANOUT_MIB sets the size (default 20).
func BenchmarkSwarmFanOut(b *testing.B) {
	size := 20 << 20
	if v := os.Getenv("SHOAL_FANOUT_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		size = n << 20
	}
	for b.Loop() {
		b.StopTimer()
		origin := newTestPeer(b, true)
		var fetchers []*testPeer
		hosts := []host.Host{origin.host}
		for range 10 {
			f := newTestPeer(b, true)
			fetchers = append(fetchers, f)
			hosts = append(hosts, f.host)
		}
		connectAll(b, hosts...)
		s := publish(b, origin, "m@v1", size)
		b.StartTimer()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		if err := ensureAll(ctx, fetchers, s); err != nil {
			b.Fatal(err)
		}
		cancel()
		took := time.Since(start)
		b.ReportMetric(float64(origin.m.SwarmStats().BytesSent+origin.m.blocks.Stats().BytesSent)/float64(size), "origin-bytes/artifact")
		b.ReportMetric(took.Seconds(), "s/fan-out")
	}
}
