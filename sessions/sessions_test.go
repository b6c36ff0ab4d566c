package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store"
)

// testNode is one peer's session service on a real libp2p host on
// loopback, with its own expiring Badger database.
type testNode struct {
	*Service
	key *sign.Key
	dir string
}

type nodeOpt func(*Config)

func withSite(site string) nodeOpt { return func(c *Config) { c.Site = site } }

// testMesh starts n connected nodes that trust each other's keys.
func testMesh(t *testing.T, n int, opts ...func(i int) []nodeOpt) []*testNode {
	t.Helper()
	keys := make([]*sign.Key, n)
	var ids []sign.ID
	for i := range keys {
		keys[i] = sign.NewKey()
		ids = append(ids, keys[i].ID())
	}
	trust := sign.NewTrustSet(ids...)
	var nodes []*testNode
	for i := 0; i < n; i++ {
		var extra []nodeOpt
		if len(opts) > 0 {
			extra = opts[0](i)
		}
		nodes = append(nodes, startNode(t, keys[i], trust, extra...))
	}
	for i := 1; i < n; i++ {
		h := nodes[i].cfg.Host
		for j := 0; j < i; j++ {
			o := nodes[j].cfg.Host
			if err := h.Connect(t.Context(), peer.AddrInfo{ID: o.ID(), Addrs: o.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	poll.Until(t, 30*time.Second, "every node sees its peers on the mesh topic", poll.True(func() bool {
		for _, nd := range nodes {
			if len(nd.rep.topics[""].ListPeers()) < n-1 {
				return false
			}
		}
		return true
	}, func() string { return "topic peers missing" }))
	return nodes
}

func startNode(t *testing.T, key *sign.Key, trust Trust, opts ...nodeOpt) *testNode {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.NewGossipSub(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	db, err := store.OpenExpiring(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Mesh: "unit", Host: h, PubSub: ps, Signer: key, Trust: trust, Clock: crdt.NewClock(h.ID().String(), nil),
		DB: db, SweepEvery: 100 * time.Millisecond, AckTimeout: 2 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		db.Close()
		h.Close()
	})
	return &testNode{Service: s, key: key, dir: dir}
}

const sid = "conversation-0000000000001"

func texts(v View) []string {
	var out []string
	for _, t := range v.Turns {
		out = append(out, t.Role+":"+t.Text)
	}
	return out
}

// A conversation moves between three peers: each reads with the token of
// the write before it and sees every turn, in one order.
func TestConversationFollowsTheUser(t *testing.T) {
	n := testMesh(t, 3)
	ctx := t.Context()
	tok, err := n[0].Append(ctx, sid, "user", "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := n[1].Get(ctx, sid, &tok)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(texts(v)) != "[user:hello]" || v.TTL != DefaultTTL.Seconds() || !v.ExpiresAt.After(time.Now()) {
		t.Fatalf("peer 1 reads %+v", v)
	}
	tok, err = n[1].Append(ctx, sid, "assistant", "hi", json.RawMessage(`{"model":"m@v1"}`))
	if err != nil {
		t.Fatal(err)
	}
	tok, err = n[2].Append(ctx, sid, "user", "bye", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, nd := range n {
		v, err := nd.Get(ctx, sid, &tok)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(texts(v)); got != "[user:hello assistant:hi user:bye]" {
			t.Errorf("peer %d reads %s", i, got)
		}
	}
}

// Appends at once on two peers converge to the same order everywhere.
func TestConcurrentAppendsConverge(t *testing.T) {
	n := testMesh(t, 2)
	ctx := t.Context()
	var wg sync.WaitGroup
	toks := make([][]Token, 2)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				tok, err := n[i].Append(ctx, sid, "user", fmt.Sprintf("p%d-%d", i, k), nil)
				if err != nil {
					t.Error(err)
					return
				}
				toks[i] = append(toks[i], tok)
			}
		}()
	}
	wg.Wait()
	var views [2]string
	for i, nd := range n {
		for _, ts := range toks {
			if _, err := nd.Get(ctx, sid, &ts[len(ts)-1]); err != nil {
				t.Fatal(err)
			}
		}
		v, _ := nd.Get(ctx, sid, nil)
		if len(v.Turns) != 40 {
			t.Fatalf("peer %d holds %d turns, want 40", i, len(v.Turns))
		}
		views[i] = fmt.Sprint(texts(v))
	}
	if views[0] != views[1] {
		t.Errorf("the peers disagree on the order:\n%s\n%s", views[0], views[1])
	}
}

// A site-only session reaches the peers of its site and no other; a peer
// of another site cannot fetch it either.
func TestSiteOnlySessionsStayOnTheirSite(t *testing.T) {
	sites := []string{"north", "north", "south"}
	n := testMesh(t, 3, func(i int) []nodeOpt { return []nodeOpt{withSite(sites[i])} })
	ctx := t.Context()
	tok, err := n[0].Put(ctx, sid, time.Minute, json.RawMessage(`{"user":"u1"}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err = n[0].Append(ctx, sid, "user", "private", nil); err != nil {
		t.Fatal(err)
	}
	v, err := n[1].Get(ctx, sid, &tok)
	if err != nil || !v.SiteOnly || v.Site != "north" || len(v.Turns) != 1 {
		t.Fatalf("the site's other peer reads %+v, %v", v, err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := n[2].Get(short, sid, &tok); !errors.Is(err, crdt.ErrNotCaughtUp) {
		t.Errorf("a peer of another site, with the token: %v, want not caught up", err)
	}
	if _, err := n[2].Get(ctx, sid, nil); !errors.Is(err, ErrUnknown) {
		t.Errorf("a peer of another site: %v, want unknown", err)
	}
}

// Sessions expire on every peer, and once none is left each peer drops
// its session files: the disk comes back to where it was.
func TestExpiredSessionsLeaveNothing(t *testing.T) {
	n := testMesh(t, 2)
	ctx := t.Context()
	// The baseline is an empty database as a drop leaves it: a service
	// starts dirty and its first sweep drops the files once (see New).
	// Measured before that, a fresh file's first page may not be written
	// yet (CI once saw 4 KiB less than the end state).
	base := make([]int64, len(n))
	for i, nd := range n {
		poll.Until(t, 10*time.Second, fmt.Sprintf("peer %d drops its files at start", i), poll.True(
			func() bool { return testutil.ToFloat64(nd.m.drops) >= 1 },
			func() string { return "no drop yet" }))
		base[i] = diskUse(t, nd.dir)
	}
	var tok Token
	for k := 0; k < 50; k++ {
		id := fmt.Sprintf("%s-%03d", sid, k)
		if _, err := n[0].Put(ctx, id, 3*time.Second, nil, false); err != nil {
			t.Fatal(err)
		}
		var err error
		if tok, err = n[0].Append(ctx, id, "user", string(make([]byte, 4000)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n[1].Get(ctx, tok.Session, &tok); err != nil {
		t.Fatal(err)
	}
	for i, nd := range n {
		poll.Until(t, 30*time.Second, fmt.Sprintf("peer %d drops its expired sessions' files", i), poll.True(
			func() bool {
				_, err := nd.Get(ctx, tok.Session, nil)
				return errors.Is(err, ErrUnknown) && diskUse(t, nd.dir) <= base[i]
			},
			func() string {
				var files []string
				filepath.Walk(nd.dir, func(p string, info os.FileInfo, err error) error {
					if err == nil && !info.IsDir() {
						files = append(files, fmt.Sprintf("%s=%d", filepath.Base(p), allocated(info)))
					}
					return nil
				})
				return fmt.Sprintf("disk %d bytes, baseline %d: %v", diskUse(t, nd.dir), base[i], files)
			}))
	}
}

// diskUse is the space dir's files take on disk.
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			total += allocated(info)
		}
		return nil
	})
	return total
}

// Forged, untrusted, expired and oversize ops are refused and counted.
func TestReplicatedOpsAreChecked(t *testing.T) {
	n := testMesh(t, 1)
	r := n[0].rep
	stranger := sign.NewKey()
	good := func(k *sign.Key, mod func(*Op)) []byte {
		o := Op{V: 1, Session: sid, Kind: KindTurn, Role: "user", Text: "x", TTLMs: 60000, HLC: n[0].cfg.Clock.Now(), Signer: k.ID()}
		if mod != nil {
			mod(&o)
		}
		o.Sig = k.Sign(o.signingBytes("unit"))
		b, _ := json.Marshal(o)
		return b
	}
	forged := good(n[0].key, nil)
	var o Op
	json.Unmarshal(forged, &o)
	o.Text = "changed"
	forged, _ = json.Marshal(o)
	for reason, data := range map[string][]byte{
		"forged":    forged,
		"untrusted": good(stranger, nil),
		"expired":   good(n[0].key, func(o *Op) { o.HLC.Wall -= int64(2 * time.Minute) }),
		"oversize":  make([]byte, MaxOpBytes+1),
		"malformed": good(n[0].key, func(o *Op) { o.Role = "king" }),
		"site":      good(n[0].key, func(o *Op) { o.Site = "elsewhere" }),
	} {
		_, err := r.decode(data, "")
		var rj *reject
		if !errors.As(err, &rj) || rj.reason != reason || !errors.Is(err, ErrRejected) {
			t.Errorf("%s: %v", reason, err)
		}
	}
	if _, err := r.decode(good(n[0].key, nil), ""); err != nil {
		t.Errorf("a good op: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	n := testMesh(t, 1)
	ctx := t.Context()
	for what, err := range map[string]error{
		"short id": func() error { _, err := n[0].Append(ctx, "abc", "user", "x", nil); return err }(),
		"bad role": func() error { _, err := n[0].Append(ctx, sid, "king", "x", nil); return err }(),
		"huge turn": func() error {
			_, err := n[0].Append(ctx, sid, "user", string(make([]byte, MaxTurnBytes+1)), nil)
			return err
		}(),
		"array md": func() error { _, err := n[0].Put(ctx, sid, time.Minute, json.RawMessage(`[1]`), false); return err }(),
		"no site":  func() error { _, err := n[0].Put(ctx, sid, time.Minute, nil, true); return err }(),
		"unknown":  func() error { _, err := n[0].Get(ctx, NewID(), nil); return err }(),
	} {
		want := map[string]error{"short id": ErrBadID, "bad role": ErrBadOp, "huge turn": ErrTooLarge, "array md": ErrBadOp,
			"no site": ErrBadOp, "unknown": ErrUnknown}[what]
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	if id := NewID(); CheckID(id) != nil {
		t.Errorf("NewID %q does not pass CheckID", id)
	}
}

// A write that shortens a session's TTL ends it on time even when a peer
// that missed the write hands on the session's older ops afterwards: they
// carry their own, longer TTLs, and would bring the session back.
func TestShortenedSessionIsNotBroughtBack(t *testing.T) {
	n := testMesh(t, 1)
	ctx := t.Context()
	if _, err := n[0].Append(ctx, sid, "user", "remember me", nil); err != nil {
		t.Fatal(err)
	}
	st, err := n[0].load(sid)
	if err != nil || st == nil || len(st.Turns) != 1 {
		t.Fatalf("state %+v, %v", st, err)
	}
	old := st.Turns[0] // what a peer that missed the next write still holds
	if _, err := n[0].Put(ctx, sid, 200*time.Millisecond, nil, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the session ends at its shortened TTL", func() error {
		if _, err := n[0].Get(ctx, sid, nil); !errors.Is(err, ErrUnknown) {
			return fmt.Errorf("Get: %v", err)
		}
		return nil
	})
	if changed, err := n[0].apply(old); changed || err != nil {
		t.Fatalf("an old op of the ended session was merged (%v, %v)", changed, err)
	}
	if v, err := n[0].Get(ctx, sid, nil); !errors.Is(err, ErrUnknown) {
		t.Fatalf("the ended session came back: %+v, %v", v, err)
	}
	// A new write after the end starts the session anew.
	if _, err := n[0].Append(ctx, sid, "user", "new start", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := n[0].Get(ctx, sid, nil); err != nil || fmt.Sprint(texts(v)) != "[user:new start]" {
		t.Fatalf("after a new write: %+v, %v", v, err)
	}
}
