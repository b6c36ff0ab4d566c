package crdt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	blocks "github.com/ipfs/go-block-format"
	cid "github.com/ipfs/go-cid"
	dscrdt "github.com/ipfs/go-ds-crdt"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// BlockAdder stores a block locally and announces it to the block exchange,
// so that peers waiting for it get it. A boxo BlockService satisfies it.
type BlockAdder interface {
	AddBlock(ctx context.Context, b blocks.Block) error
}

// LocalBlocks reads blocks already in the local blockstore, never the
// network. A boxo Blockstore satisfies it.
type LocalBlocks interface {
	Get(ctx context.Context, c cid.Cid) (blocks.Block, error)
}

// envelope is what Shoal puts on the CRDT topic: the heads go-ds-crdt wants
// to announce, each with the bytes of its delta block when it is small
// enough. Receivers verify and store those bytes before handing the heads
// to the CRDT, which saves the bitswap round trip per update that the stock
// broadcaster costs (design §9).
type envelope struct {
	V     int            `json:"v"`
	Heads []envelopeHead `json:"heads"`
}

type envelopeHead struct {
	CID   string `json:"cid"`
	Block []byte `json:"block,omitempty"`
}

// broadcaster implements go-ds-crdt's Broadcaster over a gossipsub topic.
// Besides carrying head blocks inline, it lets the heartbeat layer inject
// heads it learned about, so a peer that missed a broadcast does not wait
// for the next rebroadcast.
type broadcaster struct {
	self     peer.ID
	topic    *pubsub.Topic
	sub      *pubsub.Subscription
	local    LocalBlocks
	adder    BlockAdder
	log      *slog.Logger
	maxBlock int

	in     chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pushed   *pushedBlocks
	attached atomic.Uint64 // head blocks received inline
	rejected atomic.Uint64 // inline blocks whose bytes did not match their CID
	// resumed, while not nil, holds Next back (pause); closed by resume.
	pauseMu sync.Mutex
	resumed chan struct{}
	// busy is set while go-ds-crdt works on heads Next handed it: it
	// calls Next again only once every head of the previous broadcast is
	// handled (handleNext processes them one by one), so between two
	// calls a merge is under way.
	busy atomic.Bool
}

// subscriptionBuffer replaces pubsub's default of 32 messages, which drops
// heads while a busy peer catches up.
const subscriptionBuffer = 1024

func newBroadcaster(ctx context.Context, self peer.ID, topic *pubsub.Topic, local LocalBlocks, adder BlockAdder, maxBlock int, log *slog.Logger) (*broadcaster, error) {
	sub, err := topic.Subscribe(pubsub.WithBufferSize(subscriptionBuffer))
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", topic.String(), err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &broadcaster{
		self: self, topic: topic, sub: sub, local: local, adder: adder, log: log,
		maxBlock: maxBlock, pushed: newPushedBlocks(maxPushedBytes, pushedTTL),
		in:  make(chan []byte, subscriptionBuffer),
		ctx: ctx, cancel: cancel,
	}
	b.wg.Add(1)
	go b.receive()
	return b, nil
}

// Broadcast implements dscrdt.Broadcaster.
func (b *broadcaster) Broadcast(ctx context.Context, data []byte) error {
	var msg crdtpb.CRDTBroadcast
	if err := proto.Unmarshal(data, &msg); err != nil {
		return fmt.Errorf("decode crdt broadcast: %w", err)
	}
	heads := make([]cid.Cid, 0, len(msg.Heads))
	for _, h := range msg.Heads {
		c, err := cid.Cast(h.Cid)
		if err != nil {
			return fmt.Errorf("decode head cid: %w", err)
		}
		heads = append(heads, c)
	}
	out, err := buildEnvelope(ctx, b.local, heads, b.maxBlock)
	if err != nil {
		return err
	}
	return b.topic.Publish(ctx, out)
}

// buildEnvelope announces heads (at most maxEnvelopeHeads of them; the
// rest follow in later broadcasts and heartbeats) with as many of their
// blocks inline as fit in one message. Gossipsub drops a message over its
// 1 MiB limit without telling the receivers, and JSON carries a block in
// base64 (a third larger), so two 512 KiB heads used to make a broadcast
// nobody got; a head whose block does not fit goes without it and is
// fetched by bitswap instead.
func buildEnvelope(ctx context.Context, local LocalBlocks, heads []cid.Cid, maxBlock int) ([]byte, error) {
	env := envelope{V: 1}
	size := len(`{"v":1,"heads":[]}`)
	for _, c := range heads[:min(len(heads), maxEnvelopeHeads)] {
		eh := envelopeHead{CID: c.String()}
		size += len(eh.CID) + len(`{"cid":""},`)
		env.Heads = append(env.Heads, eh)
	}
	for i := range env.Heads {
		blk, err := local.Get(ctx, heads[i])
		if err != nil || len(blk.RawData()) > maxBlock {
			continue
		}
		n := base64.StdEncoding.EncodedLen(len(blk.RawData())) + len(`,"block":""`)
		if size+n > maxDataMessage {
			continue
		}
		size += n
		env.Heads[i].Block = blk.RawData()
	}
	return json.Marshal(env)
}

// Next implements dscrdt.Broadcaster.
func (b *broadcaster) Next(ctx context.Context) ([]byte, error) {
	b.busy.Store(false)
	if err := b.waitResumed(ctx); err != nil {
		return nil, err
	}
	select {
	case data := <-b.in:
		b.busy.Store(true)
		return data, nil
	case <-ctx.Done():
		return nil, dscrdt.ErrNoMoreBroadcast
	case <-b.ctx.Done():
		return nil, dscrdt.ErrNoMoreBroadcast
	}
}

// idle reports that go-ds-crdt is not merging broadcast heads and none
// are waiting for it.
func (b *broadcaster) idle() bool { return !b.busy.Load() && len(b.in) == 0 }

// pause holds back new broadcasts from go-ds-crdt (Next waits) and waits,
// up to ctx, until the heads it was handed last are merged: a state
// rebuild must not run beside a branch walk, whose blocks above its
// frontier would be left with their state wiped and no processed mark.
// Broadcasts arriving meanwhile queue (and, past the queue, are announced
// again by heartbeats). resume lets them through.
func (b *broadcaster) pause(ctx context.Context) error {
	b.pauseMu.Lock()
	if b.resumed == nil {
		b.resumed = make(chan struct{})
	}
	b.pauseMu.Unlock()
	for b.busy.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (b *broadcaster) resume() {
	b.pauseMu.Lock()
	if b.resumed != nil {
		close(b.resumed)
		b.resumed = nil
	}
	b.pauseMu.Unlock()
}

func (b *broadcaster) waitResumed(ctx context.Context) error {
	b.pauseMu.Lock()
	ch := b.resumed
	b.pauseMu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return dscrdt.ErrNoMoreBroadcast
	case <-b.ctx.Done():
		return dscrdt.ErrNoMoreBroadcast
	}
}

// Inject hands heads learned elsewhere (heartbeats) to the CRDT as if they
// had been broadcast. It never blocks: a full queue means the CRDT is busy
// and the heads will be announced again.
func (b *broadcaster) Inject(heads []cid.Cid) bool {
	if len(heads) == 0 {
		return false
	}
	data, err := encodeCRDTHeads(heads)
	if err != nil {
		return false
	}
	select {
	case b.in <- data:
		return true
	default:
		return false
	}
}

func encodeCRDTHeads(heads []cid.Cid) ([]byte, error) {
	var msg crdtpb.CRDTBroadcast
	for _, c := range heads {
		msg.Heads = append(msg.Heads, &crdtpb.Head{Cid: c.Bytes()})
	}
	return proto.Marshal(&msg)
}

func (b *broadcaster) receive() {
	defer b.wg.Done()
	for {
		msg, err := b.sub.Next(b.ctx)
		if err != nil {
			return // subscription cancelled or context done
		}
		if msg.ReceivedFrom == b.self {
			continue
		}
		// The topic validator has decoded and checked the envelope;
		// decode here only if it did not run.
		env, ok := msg.ValidatorData.(*envelope)
		if !ok {
			if env, err = decodeEnvelope(msg.Data, b.maxBlock); err != nil {
				b.log.Warn("dropping crdt broadcast", "from", msg.ReceivedFrom.String(), "err", err)
				continue
			}
		}
		heads := b.accept(env)
		data, err := encodeCRDTHeads(heads)
		if err != nil {
			continue
		}
		select {
		case b.in <- data:
		case <-b.ctx.Done():
			return
		}
	}
}

// accept takes a checked envelope's inline blocks into the pushed-block
// cache and returns the heads to process. The blocks are not stored yet:
// pushedDAG stores one when go-ds-crdt asks for it, so a peer pushing
// blocks nobody needs (they only have to match their CIDs) fills a
// bounded cache, not the disk.
func (b *broadcaster) accept(env *envelope) []cid.Cid {
	heads := make([]cid.Cid, 0, len(env.Heads))
	for _, h := range env.Heads {
		c, err := cid.Decode(h.CID)
		if err != nil {
			continue // the validator checked it; a direct caller may not have
		}
		if len(h.Block) > 0 {
			blk, err := blocks.NewBlockWithCid(h.Block, c)
			if err == nil {
				b.pushed.put(blk)
				b.attached.Add(1)
			} else {
				b.rejected.Add(1)
			}
		}
		heads = append(heads, c)
	}
	return heads
}

func (b *broadcaster) close() {
	b.cancel()
	b.sub.Cancel()
	b.wg.Wait()
}
