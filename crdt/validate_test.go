package crdt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	cid "github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/internal/poll"
)

type memBlocks map[cid.Cid]blocks.Block

func (m memBlocks) Get(_ context.Context, c cid.Cid) (blocks.Block, error) {
	if b, ok := m[c]; ok {
		return b, nil
	}
	return nil, ipld.ErrNotFound{Cid: c}
}

// bigNode is a dag-pb block of about n bytes.
func bigNode(n int, seed byte) blocks.Block {
	nd := merkledag.NodeWithData(bytes.Repeat([]byte{seed}, n))
	return nd
}

// TestEnvelopeFitsOneMessage: a broadcast of two heads whose blocks are
// each just under the inline limit used to carry both (about 1.33 MiB in
// base64), over gossipsub's 1 MiB message limit, so nobody received it.
// Blocks that do not fit now go without, to be fetched by bitswap.
func TestEnvelopeFitsOneMessage(t *testing.T) {
	const maxBlock = 512 << 10
	a, b := bigNode(maxBlock-1024, 'a'), bigNode(maxBlock-1024, 'b')
	local := memBlocks{a.Cid(): a, b.Cid(): b}
	out, err := buildEnvelope(context.Background(), local, []cid.Cid{a.Cid(), b.Cid()}, maxBlock)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > maxDataMessage {
		t.Fatalf("broadcast of two %d-byte heads is %d bytes, over the %d-byte limit", maxBlock-1024, len(out), maxDataMessage)
	}
	env, err := decodeEnvelope(out, maxBlock)
	if err != nil {
		t.Fatalf("the envelope does not pass this peer's own validator: %v", err)
	}
	if len(env.Heads) != 2 || len(env.Heads[0].Block) == 0 || len(env.Heads[1].Block) != 0 {
		t.Errorf("want both heads, the first with its block: %d heads, blocks %d and %d bytes",
			len(env.Heads), len(env.Heads[0].Block), len(env.Heads[1].Block))
	}
}

// attacker is a libp2p host on the mesh's topics without Shoal's
// validators: it publishes whatever it is told to.
type attacker struct {
	ps     *pubsub.PubSub
	data   *pubsub.Topic
	hb     *pubsub.Topic
	id     peer.ID
	closer func()
}

func newAttacker(t *testing.T, ctx context.Context, victim *testNode) *attacker {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.NewGossipSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	a := &attacker{ps: ps, id: h.ID(), closer: func() { h.Close() }}
	if a.data, err = ps.Join(DataTopic("unit")); err != nil {
		t.Fatal(err)
	}
	if a.hb, err = ps.Join(HeartbeatTopic("unit")); err != nil {
		t.Fatal(err)
	}
	// Subscribing makes the attacker a mesh member, as a real peer is.
	if _, err := a.data.Subscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.hb.Subscribe(); err != nil {
		t.Fatal(err)
	}
	if err := h.Connect(ctx, peer.AddrInfo{ID: victim.h.ID(), Addrs: victim.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the attacker sees the victim on both topics", poll.True(
		func() bool { return len(a.data.ListPeers()) > 0 && len(a.hb.ListPeers()) > 0 },
		func() string { return fmt.Sprintf("data %v, heartbeat %v", a.data.ListPeers(), a.hb.ListPeers()) }))
	return a
}

// TestTopicValidatorsRejectAndScore: garbage, oversize broadcasts, inline
// blocks that do not match their CID and heartbeats speaking for another
// peer are refused inside gossipsub (so they are never relayed), counted
// by reason, and cost their sender its score.
func TestTopicValidatorsRejectAndScore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	scores := map[peer.ID]float64{}
	victim := openNode(t, ctx, t.TempDir(), nodeOpts{pubsub: []pubsub.Option{
		PeerScoreOptions("unit"),
		pubsub.WithPeerScoreInspect(func(m map[peer.ID]float64) {
			mu.Lock()
			for k, v := range m {
				scores[k] = v
			}
			mu.Unlock()
		}, 100*time.Millisecond),
	}})
	defer victim.close()
	a := newAttacker(t, ctx, victim)
	defer a.closer()

	good := bigNode(64, 'g')
	forgedHB, _ := json.Marshal(Heartbeat{V: 1, Peer: victim.h.ID().String(), HLC: HLC{Wall: time.Now().UnixNano(), Peer: victim.h.ID().String()}})
	mismatch, _ := json.Marshal(envelope{V: 1, Heads: []envelopeHead{{CID: good.Cid().String(), Block: []byte("not the block")}}})
	// Over this peer's limit, under gossipsub's own 1 MiB, so it reaches
	// the validator.
	oversize, _ := json.Marshal(envelope{V: 1, Heads: []envelopeHead{{CID: good.Cid().String(), Block: bytes.Repeat([]byte{1}, (maxDataMessage+4<<10)*3/4)}}})
	newer, _ := json.Marshal(envelope{V: 2, Heads: []envelopeHead{{CID: good.Cid().String()}}})
	sends := []struct {
		topic *pubsub.Topic
		data  []byte
	}{
		{a.data, []byte("{not json")},
		{a.data, mismatch},
		{a.data, oversize},
		{a.data, newer},
		{a.hb, forgedHB},
	}
	// The attacker keeps sending (gossipsub may drop what it sends before
	// both sides have exchanged their subscriptions).
	poll.Until(t, 30*time.Second, "every bad message refused by reason", func() error {
		for _, s := range sends {
			if err := s.topic.Publish(ctx, s.data); err != nil {
				return err
			}
		}
		got := victim.r.Counters().RejectedMessages
		for _, want := range []string{"crdt/" + MsgMalformed, "crdt/" + MsgMismatch, "crdt/" + MsgOversize, "crdt/" + MsgVersion, "heartbeat/" + MsgAuthor} {
			if got[want] == 0 {
				return fmt.Errorf("no %s rejection yet: %v", want, got)
			}
		}
		return nil
	})
	poll.Until(t, 30*time.Second, "the attacker's score falls below zero", func() error {
		mu.Lock()
		defer mu.Unlock()
		if s := scores[a.id]; s >= 0 {
			return fmt.Errorf("score %.1f", s)
		}
		return nil
	})
	if c := victim.r.Counters(); c.InlineBlocks != 0 || c.HeartbeatsIn != 0 {
		t.Errorf("refused messages reached the replica: %+v", c)
	}
}
