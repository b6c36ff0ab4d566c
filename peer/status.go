package peer

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// nodeStatus is the Node as the API's status routes see it.
type nodeStatus struct{ n *Node }

func (s nodeStatus) ID() string                                     { return s.n.host.ID().String() }
func (s nodeStatus) Status(ctx context.Context) (api.Status, error) { return s.n.Status(ctx) }

// Status gathers the peer's status: /v1/status and `shoal status`.
func (n *Node) Status(ctx context.Context) (api.Status, error) {
	st := n.replica.Stats(ctx)
	hash, err := n.replica.StateHash(ctx)
	if err != nil {
		return api.Status{}, err
	}
	stale := n.replica.Staleness()
	s := api.Status{
		PeerID: n.host.ID().String(), Addrs: n.Addrs(), GRPCAddr: n.GRPCAddr(), Mesh: n.cfg.Mesh, Version: n.cfg.Version,
		StartedAt: n.started.UTC(), StalenessSeconds: stale.Seconds,
		Connected: len(n.host.Network().Peers()), Height: st.Height, QueuedJobs: st.QueuedJobs,
		StateHash: hash, Heads: []string{}, Peers: []api.PeerInfo{}, Models: []api.ModelSummary{},
		StateDigest: stale.StateDigest, Diverged: append([]string{}, stale.Diverged...),
	}
	for _, h := range st.Heads {
		s.Heads = append(s.Heads, h.String())
	}
	for _, p := range stale.Peers {
		pi := api.PeerInfo{ID: p.ID, LastHeard: p.LastHeard.UTC(), Reachable: p.Reachable, FreshUpTo: p.FreshUpTo.UTC(),
			LagSeconds: p.LagSeconds, Height: p.Height,
			Heads: append([]string{}, p.HeadCIDs...), StateDigest: p.StateDigest, Agreement: p.Agreement}
		if id, err := libp2ppeer.Decode(p.ID); err == nil {
			pi.Connected = n.host.Network().Connectedness(id) == network.Connected
		}
		s.Peers = append(s.Peers, pi)
	}
	if all, err := n.registry.Models(ctx); err == nil {
		for _, st := range all {
			s.Models = append(s.Models, lifecycle.Summary(n.life.Info(ctx, st)))
		}
	}
	s.Progress = n.progress(ctx)
	s.Inference = n.inferenceStatus()
	s.Runtime = api.RuntimeStatus{ONNXRuntime: s.Inference.ONNXRuntime, Library: s.Inference.Library, Device: s.Inference.Device, Error: s.Inference.Error}
	return s, nil
}

// progress lists the artifact pulls and index builds under way.
func (n *Node) progress(ctx context.Context) []api.Progress {
	out := []api.Progress{}
	seen := map[string]int{}
	if all, err := n.artifacts.All(ctx); err == nil {
		for _, a := range all {
			if a.State != artifacts.StateFetching {
				continue
			}
			p := api.Progress{Kind: api.ProgressArtifactPull, Name: a.Ref, Done: a.Fetched, Total: a.Size, Unit: "bytes", UpdatedAt: a.UpdatedAt}
			if i, ok := seen[a.Ref]; ok {
				out[i] = p // the live entry comes last
				continue
			}
			seen[a.Ref] = len(out)
			out = append(out, p)
		}
	}
	for _, b := range n.rag.Building() {
		out = append(out, api.Progress{Kind: api.ProgressIndexBuild, Name: b.Collection, Done: b.Done, Total: b.Total, Unit: "documents", UpdatedAt: time.Now().UTC()})
	}
	return out
}

// InferenceDevice says where this peer's sessions run, cpu or cuda, and on
// cpu why not CUDA ("" when CUDA was not asked for); without onnxruntime
// device is "" and why says what failed.
func (n *Node) InferenceDevice() (device, why string) {
	if n.engine != nil {
		return n.engine.Device(), n.engine.DeviceReason()
	}
	if n.engineErr != nil {
		return "", n.engineErr.Error()
	}
	return "", ""
}

func (n *Node) inferenceStatus() api.InferenceStatus {
	st := api.InferenceStatus{Loaded: []api.LoadedSession{}, Running: n.serving.Running(), Slots: n.serving.Slots()}
	for _, l := range n.pool.Loaded() {
		st.Loaded = append(st.Loaded, api.LoadedSession{Model: l.Model, Version: l.Version, CID: l.CID, Current: l.Current, Device: l.Device})
	}
	if e := n.engine; e != nil {
		st.Available, st.ONNXRuntime, st.Library, st.Device, st.WhyNotCUDA = true, e.Version(), e.Library(), e.Device(), e.DeviceReason()
	} else if n.engineErr != nil {
		st.Error = n.engineErr.Error()
	}
	if bad := n.life.Bad(); len(bad) > 0 {
		st.Bad = bad
	}
	if n.cache != nil {
		cs := n.cache.Stats()
		st.Cache = &api.CacheStats{Entries: cs.Entries, Bytes: cs.Bytes, Evictions: cs.Evictions, StoreHits: cs.StoreHits, StoreErrors: cs.StoreErrors}
	}
	return st
}
