// Command shoal-attacker is a hostile mesh member for the fault scenarios
// (e2e/faults_test.go): libp2p hosts without Shoal's validators (one per
// kind of bad message) that join a mesh's gossip topics and keep
// publishing what a broken or malicious peer would — garbage, oversize
// broadcasts, inline blocks that do not match their CIDs, heartbeats
// speaking for another peer, and envelopes of an unknown version; or,
// with -records, blocks of forged, replayed and unsigned records and
// unsigned deletes (records.go). It runs inside a test's network
// namespace; nothing else uses it.
//
//	shoal-attacker -mesh M -peer /ip4/…/p2p/… [-peer …] -for 20s -impersonate PEERID
//	shoal-attacker -mesh M -peer /ip4/…/p2p/… [-peer …] -for 20s -records
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/internal/poll"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	var peers multi
	mesh := flag.String("mesh", "", "mesh name")
	flag.Var(&peers, "peer", "multiaddr of a mesh peer to connect to (repeatable)")
	dur := flag.Duration("for", 20*time.Second, "how long to attack")
	every := flag.Duration("every", 50*time.Millisecond, "pause between rounds of bad messages")
	victim := flag.String("impersonate", "", "peer id the forged heartbeats speak for")
	records := flag.Bool("records", false, "attack the replicated records instead of the gossip layer")
	flag.Parse()
	if err := run(*mesh, peers, *dur, *every, *victim, *records); err != nil {
		fmt.Fprintln(os.Stderr, "shoal-attacker:", err)
		os.Exit(1)
	}
}

func run(mesh string, peers []string, dur, every time.Duration, victim string, records bool) error {
	if mesh == "" || len(peers) == 0 || (victim == "") != records {
		return fmt.Errorf("-mesh, -peer and one of -impersonate and -records are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	if records {
		m, err := join(ctx, mesh, peers)
		if err != nil {
			return err
		}
		defer m.close()
		var l learned
		go l.listen(ctx, m.subs[0], m.h.ID().String())
		sent, err := attackRecords(ctx, m.data, &l, mesh, time.Now().Add(dur), every)
		fmt.Printf("sent %d replayed, %d forged, %d moved, %d unsigned, %d untrusted records, %d unsigned deletes\n",
			sent["replayed"], sent["forged"], sent["moved"], sent["unsigned"], sent["untrusted"], sent["deletes"])
		return err
	}
	return attackGossip(ctx, mesh, peers, time.Now().Add(dur), every, victim)
}

// attackGossip sends each kind of bad message from a host of its own until
// deadline. One identity per kind, because the peers' scoring graylists a
// sender after a few rejections (crdt.PeerScoreOptions) and then drops
// its messages unread: from one host, whichever kinds came first in a
// round would be the only ones a peer ever saw.
func attackGossip(ctx context.Context, mesh string, peers []string, deadline time.Time, every time.Duration, victim string) error {
	block := merkledag.NodeWithData([]byte("a block"))
	garbage := []byte("{not json")
	mismatch, _ := json.Marshal(map[string]any{"v": 1, "heads": []map[string]any{{"cid": block.Cid().String(), "block": []byte("not the block")}}})
	oversize, _ := json.Marshal(map[string]any{"v": 1, "heads": []map[string]any{{"cid": block.Cid().String(), "block": bytes.Repeat([]byte{1}, (1<<20-12<<10)*3/4)}}})
	newer, _ := json.Marshal(map[string]any{"v": 2, "heads": []map[string]any{{"cid": block.Cid().String()}}})
	forged := func() []byte {
		b, _ := json.Marshal(crdt.Heartbeat{V: 1, Peer: victim, HLC: crdt.HLC{Wall: time.Now().UnixNano(), Peer: victim}})
		return b
	}
	fixed := func(b []byte) func() []byte { return func() []byte { return b } }
	kinds := []struct {
		heartbeat bool
		msg       func() []byte
	}{{false, fixed(garbage)}, {false, fixed(mismatch)}, {false, fixed(oversize)}, {false, fixed(newer)}, {true, forged}}
	members := make([]*member, len(kinds))
	for i := range kinds {
		m, err := join(ctx, mesh, peers)
		if err != nil {
			return err
		}
		defer m.close()
		members[i] = m
	}
	sent := 0
	for time.Now().Before(deadline) {
		for i, k := range kinds {
			t := members[i].data
			if k.heartbeat {
				t = members[i].hb
			}
			if err := t.Publish(ctx, k.msg()); err != nil {
				return err
			}
			sent++
		}
		time.Sleep(every)
	}
	fmt.Printf("sent %d messages\n", sent)
	return nil
}

// member is one attacking host on the mesh's two topics.
type member struct {
	h        host.Host
	data, hb *pubsub.Topic
	subs     []*pubsub.Subscription
}

func (m *member) close() { m.h.Close() }

// join starts a host, joins the mesh's topics, connects to every peer and
// waits until each of them is known on both topics, so that the first
// messages are not published to nobody.
func join(ctx context.Context, mesh string, peers []string) (*member, error) {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/0.0.0.0/tcp/0"))
	if err != nil {
		return nil, err
	}
	m := &member{h: h}
	if err := m.start(ctx, mesh, peers); err != nil {
		h.Close()
		return nil, err
	}
	return m, nil
}

func (m *member) start(ctx context.Context, mesh string, peers []string) error {
	// gossipsub's own limit is 1 MiB per RPC; Shoal's validators refuse
	// broadcasts over 1 MiB − 16 KiB, so an oversize one still gets there.
	ps, err := pubsub.NewGossipSub(ctx, m.h)
	if err != nil {
		return err
	}
	if m.data, err = ps.Join(crdt.DataTopic(mesh)); err != nil {
		return err
	}
	if m.hb, err = ps.Join(crdt.HeartbeatTopic(mesh)); err != nil {
		return err
	}
	for _, t := range []*pubsub.Topic{m.data, m.hb} {
		s, err := t.Subscribe()
		if err != nil {
			return err
		}
		m.subs = append(m.subs, s)
	}
	for _, addr := range peers {
		if err := connect(ctx, m.h, addr); err != nil {
			return err
		}
	}
	if err := poll.Wait(ctx, poll.Interval, func() error {
		if d, b := len(m.data.ListPeers()), len(m.hb.ListPeers()); d < len(peers) || b < len(peers) {
			return fmt.Errorf("%d and %d of %d peers on the topics", d, b, len(peers))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("waiting for the peers' subscriptions: %w", err)
	}
	return nil
}

func connect(ctx context.Context, h host.Host, addr string) error {
	ma, err := multiaddr.NewMultiaddr(addr)
	if err != nil {
		return err
	}
	ai, err := peer.AddrInfoFromP2pAddr(ma)
	if err != nil {
		return err
	}
	if err := h.Connect(ctx, *ai); err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}
	return nil
}
