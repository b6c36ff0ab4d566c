package sessions

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-mesh/shoal/crdt/sign"
)

// Topic is the gossipsub topic of a scope's sessions: the whole mesh's
// (site ""), or one site's, to which only that site's peers subscribe.
func Topic(mesh, site string) string {
	if site == "" {
		return "/shoal/" + mesh + "/sessions/1"
	}
	return "/shoal/" + mesh + "/sessions/1/site/" + site
}

// replication sends this peer's ops and takes others'. Each op travels
// by gossip on its scope's topic, and is also pushed over a stream to the
// topic's peers, the first of whose acknowledgement lets the write return:
// an acknowledged turn is then on two peers' disks. A peer that lacks a
// session (it restarted, or gossip missed it) fetches its ops from the
// others when a read needs them.
type replication struct {
	s      *Service
	topics map[string]*pubsub.Topic // by site ("" = mesh-wide)
	subs   []*pubsub.Subscription
	push   protocol.ID
	fetchP protocol.ID
	wg     sync.WaitGroup
}

// Wire limits of the push and fetch protocols.
const (
	maxFetchBytes = MaxSessionBytes + (MaxTurns+2)*2<<10
	streamTimeout = 5 * time.Second
)

func startReplication(s *Service) (*replication, error) {
	r := &replication{s: s, topics: map[string]*pubsub.Topic{},
		push:   protocol.ID("/shoal/" + s.cfg.Mesh + "/sessions/push/1"),
		fetchP: protocol.ID("/shoal/" + s.cfg.Mesh + "/sessions/fetch/1")}
	scopes := []string{""}
	if s.cfg.Site != "" {
		scopes = append(scopes, s.cfg.Site)
	}
	for _, scope := range scopes {
		name := Topic(s.cfg.Mesh, scope)
		if err := s.cfg.PubSub.RegisterTopicValidator(name, r.validator(scope)); err != nil {
			r.close()
			return nil, fmt.Errorf("session topic validator: %w", err)
		}
		t, err := s.cfg.PubSub.Join(name)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("join %s: %w", name, err)
		}
		r.topics[scope] = t
		sub, err := t.Subscribe()
		if err != nil {
			r.close()
			return nil, fmt.Errorf("subscribe %s: %w", name, err)
		}
		r.subs = append(r.subs, sub)
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.readLoop(sub) }()
	}
	s.cfg.Host.SetStreamHandler(r.push, r.handlePush)
	s.cfg.Host.SetStreamHandler(r.fetchP, r.handleFetch)
	return r, nil
}

func (r *replication) close() {
	r.s.cfg.Host.RemoveStreamHandler(r.push)
	r.s.cfg.Host.RemoveStreamHandler(r.fetchP)
	for _, sub := range r.subs {
		sub.Cancel()
	}
	for scope, t := range r.topics {
		r.s.cfg.PubSub.UnregisterTopicValidator(Topic(r.s.cfg.Mesh, scope))
		t.Close()
	}
	r.wg.Wait()
}

// reject is a refusal with its metric reason.
type reject struct {
	reason string
	err    error
}

func (e *reject) Error() string { return e.err.Error() }
func (e *reject) Unwrap() error { return ErrRejected }

func refuse(reason, format string, args ...any) error {
	return &reject{reason: reason, err: fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))}
}

// decode reads and checks a replicated op for scope: shape and size,
// signature, trust, site, expiry and clock.
func (r *replication) decode(data []byte, scope string) (Op, error) {
	var o Op
	if len(data) > MaxOpBytes {
		return o, refuse("oversize", "an op of %d bytes", len(data))
	}
	if err := json.Unmarshal(data, &o); err != nil {
		return o, refuse("malformed", "%v", err)
	}
	return o, r.verify(o, scope)
}

func (r *replication) verify(o Op, scope string) error {
	cfg := r.s.cfg
	switch {
	case o.V != 1:
		return refuse("malformed", "op version %d", o.V)
	case o.Site != scope:
		return refuse("site", "an op of site %q on the scope of site %q", o.Site, scope)
	case o.Signer == "" || len(o.Sig) == 0:
		return refuse("unsigned", "op of %s unsigned", o.Session)
	}
	if err := o.checkShape(); err != nil {
		return refuse("malformed", "%v", err)
	}
	if err := sign.Verify(o.Signer, o.signingBytes(cfg.Mesh), o.Sig); err != nil {
		return refuse("forged", "%v", err)
	}
	if o.Signer != cfg.Signer.ID() && !cfg.Trust.Trusts(o.Signer) {
		return refuse("untrusted", "signer %s", o.Signer)
	}
	if !o.Expires().After(time.Now()) {
		return refuse("expired", "op of %s expired at %s", o.Session, o.Expires().UTC().Format(time.RFC3339))
	}
	if ahead := time.Duration(o.HLC.Wall - cfg.Clock.Peek().Wall); ahead > cfg.MaxClockSkew {
		return refuse("future", "op %v ahead", ahead.Round(time.Millisecond))
	}
	return nil
}

// count records a refusal.
func (r *replication) count(err error) {
	var rj *reject
	reason := "other"
	if errors.As(err, &rj) {
		reason = rj.reason
	}
	r.s.m.rejected.WithLabelValues(reason).Inc()
	r.s.log.Debug("session op refused", "reason", reason, "err", err)
}

func (r *replication) validator(scope string) pubsub.ValidatorEx {
	return func(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		o, err := r.decode(msg.Data, scope)
		if err != nil {
			r.count(err)
			return pubsub.ValidationReject
		}
		msg.ValidatorData = o
		return pubsub.ValidationAccept
	}
}

func (r *replication) readLoop(sub *pubsub.Subscription) {
	self := r.s.cfg.Host.ID()
	for {
		msg, err := sub.Next(r.s.ctx)
		if err != nil {
			return
		}
		if msg.ReceivedFrom == self {
			continue
		}
		if o, ok := msg.ValidatorData.(Op); ok {
			if _, err := r.s.apply(o); err != nil {
				r.count(err)
			}
		}
	}
}

// replicate publishes o and pushes it to its topic's peers, returning
// once one of them holds it, none answered within AckTimeout, or ctx
// ends. The pushes still under way go on in the background.
func (r *replication) replicate(ctx context.Context, o Op) {
	data, _ := json.Marshal(o)
	t := r.topics[o.Site]
	if err := t.Publish(r.s.ctx, data); err != nil {
		r.s.log.Warn("publish session op", "session", o.Session, "err", err)
	}
	peers := t.ListPeers()
	if len(peers) == 0 {
		r.s.m.acks.WithLabelValues("local").Inc()
		return
	}
	actx, cancel := context.WithTimeout(r.s.ctx, r.s.cfg.AckTimeout)
	acked := make(chan bool, len(peers))
	var pushes sync.WaitGroup
	for _, p := range peers {
		pushes.Add(1)
		go func() { defer pushes.Done(); acked <- r.pushTo(actx, p, data) == nil }()
	}
	r.s.wg.Add(1)
	go func() { defer r.s.wg.Done(); pushes.Wait(); cancel() }()
	for range peers {
		select {
		case ok := <-acked:
			if ok {
				r.s.m.acks.WithLabelValues("peer").Inc()
				return
			}
			continue
		case <-actx.Done():
		case <-ctx.Done():
		}
		break
	}
	r.s.m.acks.WithLabelValues("local").Inc()
}

func (r *replication) pushTo(ctx context.Context, p peer.ID, data []byte) error {
	st, err := r.s.cfg.Host.NewStream(ctx, p, r.push)
	if err != nil {
		return err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	if err := writeFrame(st, data); err != nil {
		st.Reset()
		return err
	}
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		st.Reset()
		return err
	}
	if ack[0] != 1 {
		return fmt.Errorf("peer %s refused the op", p)
	}
	return nil
}

// handlePush takes one op and answers 1 once it is stored here (or was
// already), 0 when it is refused.
func (r *replication) handlePush(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(streamTimeout))
	data, err := readFrame(st, MaxOpBytes)
	if err != nil {
		st.Reset()
		return
	}
	ack := byte(1)
	o, err := r.decode(data, r.scopeOf(data))
	if err == nil {
		_, err = r.s.apply(o)
	}
	if err != nil {
		r.count(err)
		ack = 0
	}
	st.Write([]byte{ack})
}

// scopeOf is the scope this peer takes an op of: its own site's when the
// op names it, else the mesh's (so an op of another site is refused).
func (r *replication) scopeOf(data []byte) string {
	var o struct {
		Site string `json:"site"`
	}
	json.Unmarshal(data, &o)
	if o.Site != "" && o.Site == r.s.cfg.Site {
		return o.Site
	}
	return ""
}

// fetch asks peers for session id's ops — prefer (a libp2p id, may be
// "") first, then every peer of the session topics — and merges what
// they send, within ctx and a second at most.
func (r *replication) fetch(ctx context.Context, id, prefer string) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var peers []peer.ID
	if p, err := peer.Decode(prefer); err == nil && p != r.s.cfg.Host.ID() {
		peers = append(peers, p)
	}
	for _, t := range r.topics {
		for _, p := range t.ListPeers() {
			if !slices.Contains(peers, p) {
				peers = append(peers, p)
			}
		}
	}
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() { defer wg.Done(); r.fetchFrom(ctx, p, id) }()
	}
	wg.Wait()
}

func (r *replication) fetchFrom(ctx context.Context, p peer.ID, id string) {
	st, err := r.s.cfg.Host.NewStream(ctx, p, r.fetchP)
	if err != nil {
		return
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	if err := writeFrame(st, []byte(id)); err != nil {
		st.Reset()
		return
	}
	data, err := readFrame(st, maxFetchBytes)
	if err != nil || len(data) == 0 {
		return
	}
	var ops []json.RawMessage
	if err := json.Unmarshal(data, &ops); err != nil {
		r.count(refuse("malformed", "fetch answer from %s: %v", p, err))
		return
	}
	for _, raw := range ops {
		o, err := r.decode(raw, r.scopeOf(raw))
		if err == nil && o.Session != id {
			err = refuse("malformed", "fetch of %s answered with an op of %s", id, o.Session)
		}
		if err == nil {
			_, err = r.s.apply(o)
		}
		if err != nil {
			r.count(err)
		}
	}
}

// handleFetch answers a session's ops; a site-only session only to a
// peer of its site (one subscribed to the site's topic).
func (r *replication) handleFetch(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(streamTimeout))
	raw, err := readFrame(st, 128)
	if err != nil || CheckID(string(raw)) != nil {
		st.Reset()
		return
	}
	s, err := r.s.load(string(raw))
	var out []byte
	if err == nil && s != nil && (s.Site == "" || r.topics[s.Site] != nil && slices.Contains(r.topics[s.Site].ListPeers(), st.Conn().RemotePeer())) {
		out, _ = json.Marshal(s.ops())
	}
	writeFrame(st, out)
}

func writeFrame(w io.Writer, b []byte) error {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readFrame(rd io.Reader, max int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(rd, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if int64(size) > int64(max) {
		return nil, fmt.Errorf("a frame of %d bytes, at most %d", size, max)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(rd, b)
	return b, err
}
