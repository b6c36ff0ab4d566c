package crdt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

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

	attached atomic.Uint64 // head blocks received inline
	rejected atomic.Uint64 // inline blocks whose bytes did not match their CID
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
		maxBlock: maxBlock,
		in:       make(chan []byte, subscriptionBuffer),
		ctx:      ctx, cancel: cancel,
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
	env := envelope{V: 1}
	for _, h := range msg.Heads {
		c, err := cid.Cast(h.Cid)
		if err != nil {
			return fmt.Errorf("decode head cid: %w", err)
		}
		eh := envelopeHead{CID: c.String()}
		if blk, err := b.local.Get(ctx, c); err == nil && len(blk.RawData()) <= b.maxBlock {
			eh.Block = blk.RawData()
		}
		env.Heads = append(env.Heads, eh)
	}
	out, err := json.Marshal(env)
	if err != nil {
		return err
	}
	return b.topic.Publish(ctx, out)
}

// Next implements dscrdt.Broadcaster.
func (b *broadcaster) Next(ctx context.Context) ([]byte, error) {
	b.busy.Store(false)
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
		heads, err := b.accept(msg.Data)
		if err != nil {
			b.log.Warn("dropping crdt broadcast", "from", msg.ReceivedFrom.String(), "err", err)
			continue
		}
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

var errBlockMismatch = errors.New("inline block does not match its CID")

// accept decodes an envelope, verifies each inline block against its CID
// and stores it, and returns the heads to process.
func (b *broadcaster) accept(data []byte) ([]cid.Cid, error) {
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("decode envelope: %w", err)
	}
	if env.V != 1 {
		return nil, fmt.Errorf("unknown envelope version %d", env.V)
	}
	heads := make([]cid.Cid, 0, len(env.Heads))
	for _, h := range env.Heads {
		c, err := cid.Decode(h.CID)
		if err != nil {
			return nil, fmt.Errorf("head cid: %w", err)
		}
		if len(h.Block) > 0 {
			if err := b.store(c, h.Block); err != nil {
				b.rejected.Add(1)
				b.log.Warn("ignoring inline head block", "cid", c.String(), "err", err)
			} else {
				b.attached.Add(1)
			}
		}
		heads = append(heads, c)
	}
	return heads, nil
}

func (b *broadcaster) store(c cid.Cid, data []byte) error {
	if len(data) > b.maxBlock {
		return fmt.Errorf("inline block of %d bytes over limit %d", len(data), b.maxBlock)
	}
	sum, err := c.Prefix().Sum(data)
	if err != nil {
		return err
	}
	if !sum.Equals(c) {
		return errBlockMismatch
	}
	blk, err := blocks.NewBlockWithCid(data, c)
	if err != nil {
		return err
	}
	return b.adder.AddBlock(b.ctx, blk)
}

func (b *broadcaster) close() {
	b.cancel()
	b.sub.Cancel()
	b.wg.Wait()
}
