package crdt

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

type fakeProcessed struct {
	mu  sync.Mutex
	set map[cid.Cid]bool
}

func (f *fakeProcessed) has(_ context.Context, c cid.Cid) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.set[c], nil
}

func (f *fakeProcessed) add(c cid.Cid) {
	f.mu.Lock()
	f.set[c] = true
	f.mu.Unlock()
}

func testCID(t *testing.T, s string) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte(s), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.DagProtobuf, h)
}

type fakeTime struct{ t time.Time }

func (f *fakeTime) now() time.Time          { return f.t }
func (f *fakeTime) advance(d time.Duration) { f.t = f.t.Add(d) }

func approx(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 0.001 {
		t.Errorf("%s = %.3f, want %.3f", what, got, want)
	}
}

// trackerFixture is a Tracker on a fake clock with a fake processed set,
// and hb, which delivers a heartbeat from peer announcing heads and
// evaluates.
type trackerFixture struct {
	ft   *fakeTime
	proc *fakeProcessed
	tr   *Tracker
}

func newTrackerFixture(grace time.Duration) *trackerFixture {
	f := &trackerFixture{ft: &fakeTime{t: time.Unix(10000, 0)}, proc: &fakeProcessed{set: map[cid.Cid]bool{}}}
	f.tr = NewTracker(TrackerConfig{
		Self: "self", Clock: NewClock("self", f.ft.now), Processed: f.proc.has, Now: f.ft.now,
		PeerTimeout: 5 * time.Second, ForgetAfter: time.Hour, StartupGrace: grace,
	})
	return f
}

func (f *trackerFixture) hb(peer string, heads ...cid.Cid) {
	h := Heartbeat{V: 1, Peer: peer, HLC: HLC{Wall: f.ft.t.UnixNano(), Peer: peer}}
	for _, c := range heads {
		h.Heads = append(h.Heads, c.String())
	}
	f.tr.Observe(h)
	f.tr.Evaluate(context.Background())
}

func TestTrackerStaleness(t *testing.T) {
	f := newTrackerFixture(10 * time.Second)
	ft, proc, tr, hb := f.ft, f.proc, f.tr, f.hb
	ctx := context.Background()

	// Alone and young: uptime; alone after the grace period: fresh.
	ft.advance(3 * time.Second)
	approx(t, "alone at 3s", tr.Staleness().Seconds, 3)
	ft.advance(8 * time.Second)
	approx(t, "alone at 11s", tr.Staleness().Seconds, 0)

	c1, c2 := testCID(t, "one"), testCID(t, "two")

	// B announces c1 which we have processed: fresh up to that heartbeat.
	proc.add(c1)
	hb("B", c1)
	ft.advance(500 * time.Millisecond)
	approx(t, "fresh w.r.t. B", tr.Staleness().Seconds, 0.5)

	// B moves to c2, which we lack: staleness grows from the last heartbeat
	// we could match, however many heartbeats B sends meanwhile.
	for i := 0; i < 4; i++ {
		ft.advance(time.Second)
		hb("B", c2)
	}
	approx(t, "behind B", tr.Staleness().Seconds, 4.5)
	if got := tr.Unprocessed(ctx); len(got) != 1 || got[0] != c2 {
		t.Errorf("Unprocessed = %v, want [%v]", got, c2)
	}

	// Once c2 is processed, the newest heartbeat announcing it counts.
	proc.add(c2)
	tr.Evaluate(ctx)
	approx(t, "caught up with B", tr.Staleness().Seconds, 0)

	// B falls silent: unreachable after PeerTimeout, and since B was the
	// only peer, this peer is isolated and its staleness keeps growing.
	ft.advance(6 * time.Second)
	s := tr.Staleness()
	if len(s.Peers) != 1 || s.Peers[0].Reachable {
		t.Fatalf("peers = %+v, want B unreachable", s.Peers)
	}
	approx(t, "isolated", s.Seconds, 6)

	// C appears and is current: the unreachable B no longer counts.
	hb("C")
	approx(t, "fresh w.r.t. C", tr.Staleness().Seconds, 0)
	if n := len(tr.Staleness().Peers); n != 2 {
		t.Errorf("%d peers listed, want 2 (B unreachable, C reachable)", n)
	}

	// A replayed (older) heartbeat changes nothing.
	tr.Observe(Heartbeat{V: 1, Peer: "C", HLC: HLC{Wall: ft.t.Add(-time.Minute).UnixNano(), Peer: "C"}, Heads: []string{testCID(t, "old").String()}})
	tr.Evaluate(ctx)
	approx(t, "after replay", tr.Staleness().Seconds, 0)

	// After ForgetAfter, B is no longer listed.
	for i := 0; i < 61; i++ {
		ft.advance(time.Minute)
		hb("C")
	}
	if ps := tr.Staleness().Peers; len(ps) != 1 || ps[0].ID != "C" {
		t.Errorf("peers after an hour = %+v, want only C", ps)
	}
}

// TestTrackerCountsASilentWriterWhoseHeadsAreMissing: a peer that
// announced heads this peer has not merged keeps counting after it falls
// silent (a writer that went offline right after writing): its writes are
// known to be missing, so the staleness grows although every reachable
// peer is current. A silent peer whose heads are all merged does not count.
func TestTrackerCountsASilentWriterWhoseHeadsAreMissing(t *testing.T) {
	f := newTrackerFixture(time.Second)
	ft, proc, tr, hb := f.ft, f.proc, f.tr, f.hb
	ctx := context.Background()
	base, tip := testCID(t, "base"), testCID(t, "tip")
	proc.add(base)
	hb("W", base)
	hb("C", base)
	ft.advance(time.Second)
	hb("W", tip)              // W's last words: heads this peer cannot merge
	for i := 0; i < 10; i++ { // W is gone; C keeps talking and is current
		ft.advance(time.Second)
		hb("C", base)
	}
	s := tr.Staleness()
	var w PeerStatus
	for _, p := range s.Peers {
		if p.ID == "W" {
			w = p
		}
	}
	if w.Reachable || !w.Missing {
		t.Fatalf("W = %+v, want unreachable with heads missing here", w)
	}
	approx(t, "staleness with W's writes known missing", s.Seconds, 11)

	proc.add(tip) // the writer came back long enough to send them
	tr.Evaluate(ctx)
	approx(t, "after W's heads are merged", tr.Staleness().Seconds, 0)
}

// TestTrackerIsolationNeverLowersStaleness: when a peer is cut off, its
// peers fall silent one by one, each a heartbeat apart. Letting each stop
// counting as it times out made the staleness drop back below the bound it
// had just broken (the peer claimed to be fresher than a moment before,
// with no new evidence). A silent peer keeps counting until some other
// peer is heard after it timed out, so isolation only ever grows the
// staleness.
func TestTrackerIsolationNeverLowersStaleness(t *testing.T) {
	f := newTrackerFixture(time.Second)
	ft, proc, tr, hb := f.ft, f.proc, f.tr, f.hb
	c := testCID(t, "c")
	proc.add(c)
	hb("A", c)
	ft.advance(900 * time.Millisecond)
	hb("B", c) // then the link goes down
	last := 0.0
	for i := 0; i < 100; i++ {
		ft.advance(100 * time.Millisecond)
		s := tr.Staleness().Seconds
		if s < last-1e-9 {
			t.Fatalf("after %v of isolation the staleness fell from %.3f to %.3f", time.Duration(i+1)*100*time.Millisecond, last, s)
		}
		last = s
	}
	approx(t, "isolated for 10s, A last fresh 10.9s ago", last, 10.9)

	// B is heard again (the link is back) after A timed out: the mesh
	// moves on without A, which stops counting.
	hb("B", c)
	approx(t, "B heard again", tr.Staleness().Seconds, 0)
}

func TestHeartbeatEveryGrowsWithTheMesh(t *testing.T) {
	for _, c := range []struct {
		reachable int
		want      time.Duration
	}{{0, time.Second}, {15, time.Second}, {16, 2 * time.Second}, {31, 2 * time.Second}, {49, 4 * time.Second}, {10000, 8 * time.Second}} {
		if got := heartbeatEvery(time.Second, c.reachable); got != c.want {
			t.Errorf("heartbeatEvery(1s, %d reachable) = %v, want %v", c.reachable, got, c.want)
		}
	}
}

// TestSlowHeartbeatsKeepAPeerReachable: a peer announcing a slower
// heartbeat (a large mesh) stays reachable for five of its intervals, and
// no announcement buys more than five times maxAnnouncedEvery.
func TestSlowHeartbeatsKeepAPeerReachable(t *testing.T) {
	f := newTrackerFixture(time.Millisecond)
	reachable := func(peer string) bool {
		for _, p := range f.tr.Staleness().Peers {
			if p.ID == peer {
				return p.Reachable
			}
		}
		t.Fatalf("peer %s not listed", peer)
		return false
	}
	send := func(peer string, every time.Duration) {
		f.tr.Observe(Heartbeat{V: 1, Peer: peer, HLC: HLC{Wall: f.ft.t.UnixNano(), Peer: peer}, Every: every.Milliseconds()})
		f.tr.Evaluate(context.Background())
	}
	send("slow", 4*time.Second)
	send("fast", 0)
	send("liar", time.Hour)
	f.ft.advance(10 * time.Second)
	f.tr.Evaluate(context.Background())
	if !reachable("slow") || reachable("fast") || f.tr.Reachable() != 2 {
		t.Fatalf("after 10 s: slow %v (want true), fast %v (want false), %d reachable (want slow and liar)", reachable("slow"), reachable("fast"), f.tr.Reachable())
	}
	f.ft.advance(11 * time.Second)
	f.tr.Evaluate(context.Background())
	if reachable("slow") {
		t.Fatal("a peer silent for more than five of its 4 s intervals is still reachable")
	}
	f.ft.advance(peerTimeoutBeats*maxAnnouncedEvery - 21*time.Second + time.Second)
	f.tr.Evaluate(context.Background())
	if reachable("liar") {
		t.Fatal("an announced interval of an hour kept a silent peer reachable past the cap")
	}
}
