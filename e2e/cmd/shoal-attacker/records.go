package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/boxo/ipld/merkledag"
	cid "github.com/ipfs/go-cid"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
	ipld "github.com/ipfs/go-ipld-format"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/sign"
)

// The -records mode attacks the replicated state itself rather than the
// gossip layer: it reads the delta blocks the peers broadcast inline,
// learns their signed records, and publishes blocks of its own — valid
// go-ds-crdt deltas, linked under the newest head it heard, one height
// above it, carried inline as a peer's would be — holding, for a key of
// which it saw two versions:
//
//	replayed   the older version again, so go-ds-crdt shows it on top;
//	forged     the newer version with its body changed;
//	moved      the newer version under another document's key;
//	unsigned   the newer version, body changed, signature removed;
//	untrusted  the newer version, body changed, signed with its own key;
//	deletes    go-ds-crdt tombstones for every element of the key.
//
// A peer must show none of it: every document keeps what its trusted
// writers last wrote.

// version is one element the attacker heard under a key.
type version struct {
	value []byte
	prio  uint64
	id    string // go-ds-crdt's element id: the block's datastore key
}

// learned is what the attacker heard: every key's versions and the newest
// head.
type learned struct {
	mu       sync.Mutex
	versions map[string][]version
	head     cid.Cid
	headPrio uint64
}

// decodeDelta decodes a go-ds-crdt delta block.
func decodeDelta(block []byte) (*crdtpb.Delta, error) {
	n, err := merkledag.DecodeProtobuf(block)
	if err != nil {
		return nil, err
	}
	var d crdtpb.Delta
	if err := proto.Unmarshal(n.Data(), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// listen decodes every broadcast's inline blocks until ctx ends.
func (l *learned) listen(ctx context.Context, sub *pubsub.Subscription, self string) {
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if m.ReceivedFrom.String() == self {
			continue
		}
		var env struct {
			Heads []struct {
				CID   string `json:"cid"`
				Block []byte `json:"block"`
			} `json:"heads"`
		}
		if json.Unmarshal(m.Data, &env) != nil {
			continue
		}
		for _, h := range env.Heads {
			c, err := cid.Decode(h.CID)
			if err != nil || len(h.Block) == 0 {
				continue
			}
			d, err := decodeDelta(h.Block)
			if err != nil {
				continue
			}
			l.add(c, d)
		}
	}
}

func (l *learned) add(c cid.Cid, d *crdtpb.Delta) {
	id := dshelp.MultihashToDsKey(c.Hash()).String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.versions == nil {
		l.versions = map[string][]version{}
	}
	for _, e := range d.GetElements() {
		rec, err := crdt.DecodeRecord(e.GetValue())
		if err != nil || rec.Signer == "" {
			continue // only signed records are worth replaying
		}
		l.versions[e.GetKey()] = append(l.versions[e.GetKey()], version{value: e.GetValue(), prio: d.GetPriority(), id: id})
	}
	if d.GetPriority() >= l.headPrio {
		l.head, l.headPrio = c, d.GetPriority()
	}
}

// target returns a key with two versions or more (a different one each
// round), its versions oldest first, and the newest head.
func (l *learned) target(round int) (string, []version, cid.Cid, uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	for k, vs := range l.versions {
		if len(vs) >= 2 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 || !l.head.Defined() {
		return "", nil, cid.Undef, 0, false
	}
	sort.Strings(keys)
	k := keys[round%len(keys)]
	vs := append([]version(nil), l.versions[k]...)
	sort.Slice(vs, func(i, j int) bool { return vs[i].prio < vs[j].prio })
	return k, vs, l.head, l.headPrio, true
}

// tampered returns rec with its body changed: a document whose text says
// so.
func tampered(rec crdt.Record) crdt.Record {
	var body map[string]any
	if json.Unmarshal(rec.Body, &body) == nil {
		body["text"] = fmt.Sprint(body["text"]) + " (tampered)"
		rec.Body, _ = json.Marshal(body)
	}
	return rec
}

// attackRecords publishes one block of each kind per round until
// deadline, and reports how many of each it sent.
func attackRecords(ctx context.Context, data *pubsub.Topic, l *learned, mesh string, deadline time.Time, every time.Duration) (map[string]int, error) {
	own := sign.NewKey()
	sent := map[string]int{}
	for round := 0; time.Now().Before(deadline); round++ {
		key, vs, head, prio, ok := l.target(round)
		if !ok {
			time.Sleep(every)
			continue
		}
		older, newer := vs[0], vs[len(vs)-1]
		rec, err := crdt.DecodeRecord(newer.value)
		if err != nil {
			return sent, err
		}
		forged, _ := tampered(rec).Encode()
		moved := key[:strings.LastIndexByte(key, '/')+1] + "moved" + key[strings.LastIndexByte(key, '/')+1:]
		unsigned := tampered(rec)
		unsigned.Signer, unsigned.Sig = "", nil
		unsignedVal, _ := unsigned.Encode()
		untrusted := tampered(rec)
		untrusted.Signer = own.ID()
		untrusted.Sig = own.Sign(untrusted.SigningBytes(mesh, key))
		untrustedVal, _ := untrusted.Encode()
		var tombs []*crdtpb.Element
		for _, v := range vs {
			tombs = append(tombs, &crdtpb.Element{Key: key, Id: v.id})
		}
		for _, a := range []struct {
			kind  string
			delta *crdtpb.Delta
		}{
			{"replayed", &crdtpb.Delta{Elements: []*crdtpb.Element{{Key: key, Value: older.value}}}},
			{"forged", &crdtpb.Delta{Elements: []*crdtpb.Element{{Key: key, Value: forged}}}},
			{"moved", &crdtpb.Delta{Elements: []*crdtpb.Element{{Key: moved, Value: newer.value}}}},
			{"unsigned", &crdtpb.Delta{Elements: []*crdtpb.Element{{Key: key, Value: unsignedVal}}}},
			{"untrusted", &crdtpb.Delta{Elements: []*crdtpb.Element{{Key: key, Value: untrustedVal}}}},
			{"deletes", &crdtpb.Delta{Tombstones: tombs}},
		} {
			a.delta.Priority = prio + 1
			if err := publishDelta(ctx, data, a.delta, head); err != nil {
				return sent, err
			}
			sent[a.kind]++
		}
		time.Sleep(every)
	}
	return sent, nil
}

// publishDelta broadcasts d as a block linked under head, inline, as a
// peer's broadcaster does.
func publishDelta(ctx context.Context, data *pubsub.Topic, d *crdtpb.Delta, head cid.Cid) error {
	b, err := proto.Marshal(d)
	if err != nil {
		return err
	}
	n := merkledag.NodeWithData(b)
	if err := n.AddRawLink("", &ipld.Link{Cid: head}); err != nil {
		return err
	}
	n.SetCidBuilder(merkledag.V1CidPrefix())
	msg, err := json.Marshal(map[string]any{"v": 1, "heads": []map[string]any{{"cid": n.Cid().String(), "block": n.RawData()}}})
	if err != nil {
		return err
	}
	return data.Publish(ctx, msg)
}
