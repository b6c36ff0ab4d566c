package crdt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	cid "github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Topic validators run inside gossipsub, before a message is delivered to
// this peer's subscriptions and before it is forwarded to anyone else.
// Without them garbage, oversize or mis-attributed messages were relayed
// mesh-wide and only then dropped by each peer's own parser, at no cost to
// their sender. A message that fails here is rejected: gossipsub does not
// forward it, and (with PeerScoreOptions) every rejection lowers the
// sender's score until it is graylisted. A message of a newer schema
// version is ignored instead — dropped without penalty — so a mesh in the
// middle of an upgrade does not graylist its upgraded peers.
//
// The checks are structural: size, decodability, inline blocks that match
// their CIDs, and for heartbeats that the signed author is the peer the
// heartbeat speaks for (gossipsub's StrictSign verifies the signature
// itself). Whether a record inside a delta is trustworthy is decided when
// it is read (Replica.admit): a delta is a batch of many records, and
// refusing a whole block would make its branch unmergeable for everyone.

// maxDataMessage is the largest CRDT broadcast this peer sends or accepts:
// gossipsub's 1 MiB RPC limit less room for the RPC framing and the
// message signature. Envelopes are built to fit (buildEnvelope).
const maxDataMessage = 1<<20 - 16<<10

// maxEnvelopeHeads bounds the heads one broadcast may carry.
const maxEnvelopeHeads = 256

// Reasons a message is refused at the pubsub layer
// (Counters.RejectedMessages, shoal_pubsub_rejected_total).
const (
	MsgOversize  = "oversize"  // over the topic's size limit
	MsgMalformed = "malformed" // does not decode, or breaks a bound
	MsgMismatch  = "mismatch"  // an inline block whose bytes do not hash to its CID
	MsgAuthor    = "author"    // a heartbeat signed by someone other than the peer it speaks for
	MsgVersion   = "version"   // a schema version this peer does not know (ignored, no penalty)
)

// errMsg carries the reason a message was refused.
type errMsg struct {
	reason string
	err    error
}

func (e *errMsg) Error() string { return e.reason + ": " + e.err.Error() }
func (e *errMsg) Unwrap() error { return e.err }

func msgErr(reason string, format string, args ...any) error {
	return &errMsg{reason: reason, err: fmt.Errorf(format, args...)}
}

func reasonOf(err error) string {
	var m *errMsg
	if errors.As(err, &m) {
		return m.reason
	}
	return MsgMalformed
}

// decodeEnvelope parses and checks a CRDT broadcast: its size, schema,
// heads and the inline blocks' hashes.
func decodeEnvelope(data []byte, maxBlock int) (*envelope, error) {
	if len(data) > maxDataMessage {
		return nil, msgErr(MsgOversize, "broadcast of %d bytes, limit %d", len(data), maxDataMessage)
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, msgErr(MsgMalformed, "decode envelope: %v", err)
	}
	switch {
	case env.V != 1:
		return nil, msgErr(MsgVersion, "envelope version %d", env.V)
	case len(env.Heads) == 0 || len(env.Heads) > maxEnvelopeHeads:
		return nil, msgErr(MsgMalformed, "%d heads, want 1..%d", len(env.Heads), maxEnvelopeHeads)
	}
	for _, h := range env.Heads {
		c, err := cid.Decode(h.CID)
		if err != nil {
			return nil, msgErr(MsgMalformed, "head cid %q: %v", h.CID, err)
		}
		if len(h.Block) == 0 {
			continue
		}
		if len(h.Block) > maxBlock {
			return nil, msgErr(MsgOversize, "inline block of %d bytes, limit %d", len(h.Block), maxBlock)
		}
		sum, err := c.Prefix().Sum(h.Block)
		if err != nil || !sum.Equals(c) {
			return nil, msgErr(MsgMismatch, "inline block does not hash to %s", c)
		}
	}
	return &env, nil
}

// decodeHeartbeat parses and checks a heartbeat from author.
func decodeHeartbeat(data []byte, author peer.ID) (*Heartbeat, error) {
	if len(data) > maxHeartbeatSize {
		return nil, msgErr(MsgOversize, "heartbeat of %d bytes, limit %d", len(data), maxHeartbeatSize)
	}
	var hb Heartbeat
	if err := json.Unmarshal(data, &hb); err != nil {
		return nil, msgErr(MsgMalformed, "decode heartbeat: %v", err)
	}
	switch {
	case hb.V != 1:
		return nil, msgErr(MsgVersion, "heartbeat version %d", hb.V)
	case hb.Peer != author.String() || hb.HLC.Peer != hb.Peer:
		// A heartbeat speaks for its author only: pubsub signs messages
		// with the sender's libp2p key.
		return nil, msgErr(MsgAuthor, "heartbeat for %s signed by %s", hb.Peer, author)
	case len(hb.Heads) > maxHeartbeatHeads || len(hb.Addrs) > maxHeartbeatAddrs || len(hb.Loaded) > maxHeartbeatLoaded:
		return nil, msgErr(MsgMalformed, "heartbeat lists over their bounds")
	}
	return &hb, nil
}

// validator adapts a decoder to a gossipsub topic validator: the decoded
// value travels on in ValidatorData, so receivers do not parse twice.
func (r *Replica) validator(topic string, decode func(*pubsub.Message) (any, error)) pubsub.ValidatorEx {
	return func(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		v, err := decode(msg)
		if err != nil {
			reason := reasonOf(err)
			r.count(func(c *Counters) {
				if c.RejectedMessages == nil {
					c.RejectedMessages = map[string]uint64{}
				}
				c.RejectedMessages[topic+"/"+reason]++
			})
			r.log.Debug("pubsub message refused", "topic", topic, "from", from.String(), "author", msg.GetFrom().String(), "reason", reason, "err", err)
			if reason == MsgVersion {
				return pubsub.ValidationIgnore
			}
			return pubsub.ValidationReject
		}
		msg.ValidatorData = v
		return pubsub.ValidationAccept
	}
}

// registerValidators installs the validators of both topics.
func (r *Replica) registerValidators() error {
	data := r.validator("crdt", func(m *pubsub.Message) (any, error) { return decodeEnvelope(m.Data, r.cfg.MaxInlineBlock) })
	if err := r.cfg.PubSub.RegisterTopicValidator(DataTopic(r.cfg.Mesh), data); err != nil {
		return fmt.Errorf("register crdt topic validator: %w", err)
	}
	hb := r.validator("heartbeat", func(m *pubsub.Message) (any, error) { return decodeHeartbeat(m.Data, m.GetFrom()) })
	if err := r.cfg.PubSub.RegisterTopicValidator(HeartbeatTopic(r.cfg.Mesh), hb); err != nil {
		r.cfg.PubSub.UnregisterTopicValidator(DataTopic(r.cfg.Mesh))
		return fmt.Errorf("register heartbeat topic validator: %w", err)
	}
	r.validators = true
	return nil
}

func (r *Replica) unregisterValidators() {
	if r.validators {
		r.cfg.PubSub.UnregisterTopicValidator(DataTopic(r.cfg.Mesh))
		r.cfg.PubSub.UnregisterTopicValidator(HeartbeatTopic(r.cfg.Mesh))
		r.validators = false
	}
}

// PeerScoreOptions returns the gossipsub option that scores the peers of
// mesh: each message a validator rejects costs its sender (the squared
// count of invalid deliveries, weight -10), so a peer that keeps sending
// garbage is graylisted (its messages neither processed nor forwarded)
// while it does, and forgiven within a minute of stopping (the count
// decays by 10 % a second): an honest peer that sends one bad message now
// and then — an older release during an upgrade, a relay forwarding what
// it did not check — never stays graylisted (one every 10 s settles at a
// count of 1.5, a score of −23, above the graylist's −80). Delivery-rate penalties stay off: on a quiet edge mesh a peer
// that has nothing to send is not misbehaving, and IP colocation is not
// penalised, since a site's gateways often share one NAT address.
func PeerScoreOptions(mesh string) pubsub.Option {
	topic := func() *pubsub.TopicScoreParams {
		return &pubsub.TopicScoreParams{
			TopicWeight: 1,
			// Time in mesh earns nothing, but gossipsub divides by the
			// quantum whatever the weight.
			TimeInMeshQuantum:              time.Second,
			InvalidMessageDeliveriesWeight: -10,
			InvalidMessageDeliveriesDecay:  0.9,
			SkipAtomicValidation:           true,
		}
	}
	params := &pubsub.PeerScoreParams{
		Topics:                      map[string]*pubsub.TopicScoreParams{DataTopic(mesh): topic(), HeartbeatTopic(mesh): topic()},
		AppSpecificScore:            func(peer.ID) float64 { return 0 },
		DecayInterval:               time.Second,
		DecayToZero:                 0.01,
		RetainScore:                 10 * time.Minute,
		BehaviourPenaltyWeight:      -1,
		BehaviourPenaltyThreshold:   6,
		BehaviourPenaltyDecay:       0.9,
		SkipAtomicValidation:        true,
		IPColocationFactorWeight:    0,
		IPColocationFactorThreshold: 1,
	}
	thresholds := &pubsub.PeerScoreThresholds{
		GossipThreshold:             -10,
		PublishThreshold:            -50,
		GraylistThreshold:           -80,
		AcceptPXThreshold:           10,
		OpportunisticGraftThreshold: 1,
	}
	return pubsub.WithPeerScore(params, thresholds)
}
