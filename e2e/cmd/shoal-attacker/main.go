// Command shoal-attacker is a hostile mesh member for the fault scenarios
// (e2e/faults_test.go): a libp2p host without Shoal's validators that
// joins a mesh's gossip topics and keeps publishing what a broken or
// malicious peer would — garbage, oversize broadcasts, inline blocks that
// do not match their CIDs, heartbeats speaking for another peer, and
// envelopes of an unknown version; or, with -records, blocks of forged,
// replayed and unsigned records and unsigned deletes (records.go). It runs
// inside a test's network namespace; nothing else uses it.
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
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/shoal-mesh/shoal/crdt"
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
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/0.0.0.0/tcp/0"))
	if err != nil {
		return err
	}
	defer h.Close()
	// gossipsub's own limit is 1 MiB per RPC; Shoal's validators refuse
	// broadcasts over 1 MiB − 16 KiB, so an oversize one still gets there.
	ps, err := pubsub.NewGossipSub(ctx, h)
	if err != nil {
		return err
	}
	data, err := ps.Join(crdt.DataTopic(mesh))
	if err != nil {
		return err
	}
	hb, err := ps.Join(crdt.HeartbeatTopic(mesh))
	if err != nil {
		return err
	}
	var subs []*pubsub.Subscription
	for _, t := range []*pubsub.Topic{data, hb} {
		s, err := t.Subscribe()
		if err != nil {
			return err
		}
		subs = append(subs, s)
	}
	for _, s := range peers {
		ma, err := multiaddr.NewMultiaddr(s)
		if err != nil {
			return err
		}
		ai, err := peer.AddrInfoFromP2pAddr(ma)
		if err != nil {
			return err
		}
		if err := h.Connect(ctx, *ai); err != nil {
			return fmt.Errorf("connect %s: %w", s, err)
		}
	}
	if records {
		var l learned
		go l.listen(ctx, subs[0], h.ID().String())
		sent, err := attackRecords(ctx, data, &l, mesh, time.Now().Add(dur), every)
		fmt.Printf("sent %d replayed, %d forged, %d moved, %d unsigned, %d untrusted records, %d unsigned deletes\n",
			sent["replayed"], sent["forged"], sent["moved"], sent["unsigned"], sent["untrusted"], sent["deletes"])
		return err
	}
	block := merkledag.NodeWithData([]byte("a block"))
	garbage := []byte("{not json")
	mismatch, _ := json.Marshal(map[string]any{"v": 1, "heads": []map[string]any{{"cid": block.Cid().String(), "block": []byte("not the block")}}})
	oversize, _ := json.Marshal(map[string]any{"v": 1, "heads": []map[string]any{{"cid": block.Cid().String(), "block": bytes.Repeat([]byte{1}, (1<<20-12<<10)*3/4)}}})
	newer, _ := json.Marshal(map[string]any{"v": 2, "heads": []map[string]any{{"cid": block.Cid().String()}}})
	sent := 0
	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) {
		forged, _ := json.Marshal(crdt.Heartbeat{V: 1, Peer: victim, HLC: crdt.HLC{Wall: time.Now().UnixNano(), Peer: victim}})
		for _, m := range []struct {
			t *pubsub.Topic
			b []byte
		}{{data, garbage}, {data, mismatch}, {data, oversize}, {data, newer}, {hb, forged}} {
			if err := m.t.Publish(ctx, m.b); err != nil {
				return err
			}
			sent++
		}
		time.Sleep(every)
	}
	fmt.Printf("sent %d messages\n", sent)
	return nil
}
