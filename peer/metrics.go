package peer

import (
	"context"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// registerMetrics puts every metric of the node on its own registry, so
// several peers can live in one process (tests). Counters and histograms
// are client_golang's: the components' own vectors, and CounterFuncs
// over the counters the replica, bitswap and the indexes keep. The
// nodeCollector reads the gauges at scrape time, so they never drift from
// what /v1/status shows.
func (n *Node) registerMetrics() error {
	cs := []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &nodeCollector{n: n}}
	cs = append(cs, n.api.Collectors()...)
	cs = append(cs, n.grpc.Collectors()...)
	cs = append(cs, n.serving.Collectors()...)
	cs = append(cs, n.life.Collectors()...)
	cs = append(cs, n.rag.Collectors()...)
	cs = append(cs, n.sess.Collectors()...)
	fetch := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "shoal_artifact_fetch_seconds", Help: "Time to fetch and verify one artifact from the mesh.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
	})
	n.artifacts.OnFetch(fetch.Observe)
	cs = append(cs, fetch)
	cs = append(cs, n.counterFuncs()...)
	for _, c := range cs {
		if err := n.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// counter is one series of a counter read from a component at scrape time.
type counter struct {
	name, help string
	labels     prometheus.Labels
	read       func() float64
}

func (n *Node) counterFuncs() []prometheus.Collector {
	var out []prometheus.Collector
	for _, c := range n.counters() {
		out = append(out, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help, ConstLabels: c.labels}, c.read))
	}
	return out
}

func u(f func() uint64) func() float64 { return func() float64 { return float64(f()) } }

func (n *Node) counters() []counter {
	l := func(kv ...string) prometheus.Labels {
		m := prometheus.Labels{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const (
		events   = "Replicated state changes applied, by type."
		beats    = "Heartbeats sent and received."
		inline   = "Head blocks received inside broadcasts, by result."
		blocks   = "Blocks moved by bitswap."
		bytes    = "Bytes moved by bitswap."
		artBytes = "Artifact bytes moved, by direction and source."
		found    = "Connections made to peers found by each discovery source (bootstrap, mdns, heartbeat, dht)."
		rejected = "Replicated records kept out of the state, by reason."
		graphs   = "Collection graphs at start-up, by how: reopened from their save beside Badger, or built (no save, or a stale or torn one)."
	)
	rc := n.replica.Counters
	bs := n.blocks.Stats
	out := []counter{
		{"shoal_crdt_events_total", events, l("type", "put"), u(func() uint64 { return rc().Puts })},
		{"shoal_crdt_events_total", events, l("type", "delete"), u(func() uint64 { return rc().Deletes })},
		{"shoal_heartbeats_total", beats, l("direction", "in"), u(func() uint64 { return rc().HeartbeatsIn })},
		{"shoal_heartbeats_total", beats, l("direction", "out"), u(func() uint64 { return rc().HeartbeatsOut })},
		{"shoal_crdt_injected_heads_total", "Heads learned from heartbeats and handed to the CRDT.", nil, u(func() uint64 { return rc().InjectedHeads })},
		{"shoal_crdt_healed_branches_total", "Branches merged over a missing ancestor and walked again (the tip was processed, its parent never arrived).", nil, u(func() uint64 { return rc().HealedBranches })},
		{"shoal_crdt_slow_subscribers_total", "Subscriptions ended because they fell too far behind (their owner subscribes again and resyncs from the state).", nil, u(func() uint64 { return rc().SlowSubscribers })},
		{"shoal_rag_resyncs_total", "Times the retrieval indexes lost their subscription and resynced from the stored documents.", nil, u(func() uint64 { return n.rag.Stats().Resyncs })},
		{"shoal_crdt_folds_total", "Folds of the replicated history this peer wrote (the live state written again so the history below can be pruned).", nil, u(func() uint64 { return rc().Folds })},
		{"shoal_crdt_folds_pruned_total", "Folds (this peer's or others') under which this peer pruned the covered history.", nil, u(func() uint64 { return rc().FoldsPruned })},
		{"shoal_crdt_pruned_blocks_total", "Delta blocks of folded history deleted from this peer.", nil, u(func() uint64 { return rc().PrunedBlocks })},
		{"shoal_state_rebuilds_total", "Rebuilds of the replicated state from the DAG after it diverged from a peer's with the same heads.", nil, u(func() uint64 { return rc().StateRebuilds })},
		{"shoal_crdt_inline_blocks_total", inline, l("result", "stored"), u(func() uint64 { return rc().InlineBlocks })},
		{"shoal_crdt_inline_blocks_total", inline, l("result", "rejected"), u(func() uint64 { return rc().InlineRejected })},
		{"shoal_bitswap_blocks_total", blocks, l("direction", "in"), u(func() uint64 { return bs().BlocksReceived })},
		{"shoal_bitswap_blocks_total", blocks, l("direction", "out"), u(func() uint64 { return bs().BlocksSent })},
		{"shoal_bitswap_bytes_total", bytes, l("direction", "in"), u(func() uint64 { return bs().BytesReceived })},
		{"shoal_bitswap_bytes_total", bytes, l("direction", "out"), u(func() uint64 { return bs().BytesSent })},
		{"shoal_artifact_bytes_total", artBytes, l("direction", "in", "source", "bitswap"), u(n.artifacts.BytesFetched)},
		{"shoal_artifact_bytes_total", artBytes, l("direction", "out", "source", "bitswap"), u(func() uint64 { return bs().BytesSent })},
		{"shoal_artifact_bytes_total", artBytes, l("direction", "out", "source", "api"), u(n.api.ArtifactBytesSent)},
		{"shoal_artifact_bytes_total", artBytes, l("direction", "in", "source", "swarm"), u(func() uint64 { return n.artifacts.SwarmStats().BytesReceived })},
		{"shoal_artifact_bytes_total", artBytes, l("direction", "out", "source", "swarm"), u(func() uint64 { return n.artifacts.SwarmStats().BytesSent })},
		{"shoal_artifact_bad_blocks_total", "Artifact blocks a peer served over the swarm that did not hash to their CID (the peer is not asked again during that fetch).", nil, u(func() uint64 { return n.artifacts.SwarmStats().BadBlocks })},
		{"shoal_artifact_fetch_stalls_total", "Artifact fetch batches that went 15 s without a block and were asked for again through a fresh bitswap session.", nil, u(n.artifacts.Stalls)},
		{"shoal_rag_events_applied_total", "Document changes applied to the indexes.", nil, u(func() uint64 { return n.rag.Stats().Applied })},
		{"shoal_rag_index_build_seconds_total", "Time spent building indexes from stored documents (start-up).", nil, func() float64 { return n.rag.Stats().RebuildTime.Seconds() }},
		{"shoal_rag_index_update_seconds_total", "Time spent applying document changes to indexes.", nil, func() float64 { return n.rag.Stats().UpdateTime.Seconds() }},
		{"shoal_rag_index_graphs_total", graphs, l("how", "reopened"), u(func() uint64 { return n.rag.Stats().GraphsLoaded })},
		{"shoal_rag_index_graphs_total", graphs, l("how", "built"), u(func() uint64 { return n.rag.Stats().GraphsBuilt })},
	}
	for _, dir := range []string{"in", "out"} {
		for _, fam := range wireFamilies {
			out = append(out, counter{"shoal_p2p_bytes_total", "Bytes this peer moved over libp2p streams, by direction and protocol family (gossipsub, bitswap, artifact, dht, other); stream payload, without transport, Noise and yamux framing.",
				l("direction", dir, "protocol", fam), u(func() uint64 { return n.wire.bytes(dir)[fam] })})
		}
	}
	for _, src := range discoverySources {
		out = append(out, counter{"shoal_discovered_peers_total", found, l("source", src), u(func() uint64 { return n.discovered(src) })})
	}
	for _, topic := range []string{"crdt", "heartbeat"} {
		for _, reason := range []string{crdt.MsgOversize, crdt.MsgMalformed, crdt.MsgMismatch, crdt.MsgAuthor, crdt.MsgVersion} {
			key := topic + "/" + reason
			out = append(out, counter{"shoal_pubsub_rejected_total", "Gossipsub messages refused by the topic validators (never relayed; each costs the sender peer score), by topic and reason.",
				l("topic", topic, "reason", reason), u(func() uint64 { return rc().RejectedMessages[key] })})
		}
	}
	for _, reason := range rejectReasons() {
		out = append(out, counter{"shoal_rejected_records_total", rejected, l("reason", reason), u(func() uint64 { return n.rejected(reason) })})
	}
	if n.cache != nil {
		out = append(out, counter{"shoal_cache_evictions_total", "Result-cache entries evicted to stay within the byte bound.", nil, u(func() uint64 { return n.cache.Stats().Evictions })})
	}
	return out
}

// rejectReasons are the label values of shoal_rejected_records_total: the
// replica's admission reasons (unsigned, forged, untrusted, future,
// replayed) and the registry's (bad_signature, key_mismatch, clock_skew,
// malformed, oversize, and untrusted too), one metric for every record
// kept out, whichever layer refused it.
func rejectReasons() []string {
	out := append([]string(nil), crdt.RejectReasons...)
	for _, r := range models.Reasons {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// rejected counts records kept out of the state for reason: the replica's
// admission, its decoding (undecodable, oversize) and the registry's
// verdicts on what admission let through.
func (n *Node) rejected(reason string) uint64 {
	v := n.registry.Rejected()[reason]
	cnt := n.replica.Counters()
	v += cnt.Rejected.Of(reason)
	switch reason {
	case models.ReasonMalformed:
		v += cnt.BadRecords
	case models.ReasonOversize:
		v += cnt.OversizeRecords
	}
	return v
}

var (
	descBuild        = prometheus.NewDesc("shoal_build_info", "Build and runtime of this peer (always 1).", []string{"version", "go_version", "mesh", "peer_id"}, nil)
	descRunning      = prometheus.NewDesc("shoal_inference_running", "Inferences running on this peer now.", nil, nil)
	descSlots        = prometheus.NewDesc("shoal_inference_slots", "Inferences this peer runs at once at most (--max-inflight; 0 = unbounded).", nil, nil)
	descDiskFree     = prometheus.NewDesc("shoal_disk_free_bytes", "Free space on the data directory's file system; writes are refused (507) below the reserve.", nil, nil)
	descDiskReserve  = prometheus.NewDesc("shoal_disk_reserve_bytes", "Free space the peer keeps in reserve (writes that would cut into it are refused).", nil, nil)
	descStaleness    = prometheus.NewDesc("shoal_staleness_seconds", "How far behind the freshest replicated state this peer can prove it has seen.", nil, nil)
	descPeerLag      = prometheus.NewDesc("shoal_peer_staleness_seconds", "This peer's staleness with respect to one mesh peer.", []string{"peer"}, nil)
	descPeers        = prometheus.NewDesc("shoal_peers", "Mesh peers known from heartbeats, by state.", []string{"state"}, nil)
	descDiverged     = prometheus.NewDesc("shoal_state_diverged", "1 while this peer's state differs from a reachable peer's with the same heads (it is then not fresh and rebuilds), else 0.", nil, nil)
	descDivergedPeer = prometheus.NewDesc("shoal_peer_state_diverged", "1 for each reachable peer whose state differs from this peer's at equal heads.", []string{"peer"}, nil)
	descConnected    = prometheus.NewDesc("shoal_peers_connected", "libp2p connections open.", nil, nil)
	descHeads        = prometheus.NewDesc("shoal_crdt_heads", "Heads of the local Merkle-CRDT DAG.", nil, nil)
	descHeight       = prometheus.NewDesc("shoal_crdt_height", "Max height of the local Merkle-CRDT DAG.", nil, nil)
	descQueued       = prometheus.NewDesc("shoal_crdt_queued_jobs", "DAG-walking jobs waiting for a worker.", nil, nil)
	descUnfolded     = prometheus.NewDesc("shoal_crdt_unfolded_records", "Records merged here since the newest fold (fold records left out).", nil, nil)
	descSuperseded   = prometheus.NewDesc("shoal_crdt_superseded_records", "Records merged here since the newest fold that replaced or deleted a value; this peer folds once they reach fold_after and the number of keys it holds.", nil, nil)
	descUptime       = prometheus.NewDesc("shoal_uptime_seconds", "Seconds since this peer started.", nil, nil)
	descModelsLocal  = prometheus.NewDesc("shoal_models_local", "Artifacts verified and stored on this peer.", nil, nil)
	descModelLag     = prometheus.NewDesc("shoal_model_version_lag_seconds", "Time from a version's activation (its HLC) to this peer serving it.", []string{"model"}, nil)
	descModelServing = prometheus.NewDesc("shoal_model_serving", "The version of each model this peer serves (always 1).", []string{"model", "version"}, nil)
	descConflicts    = prometheus.NewDesc("shoal_model_conflicts", "Versions published more than once with different content.", []string{"model"}, nil)
	descRuntimeInfo  = prometheus.NewDesc("shoal_onnxruntime_available", "1 when the onnxruntime library loaded.", []string{"version"}, nil)
	descDevice       = prometheus.NewDesc("shoal_inference_device", "The device inference runs on (always 1).", []string{"device"}, nil)
	descCacheBytes   = prometheus.NewDesc("shoal_cache_bytes", "Bytes held by the in-memory result cache.", nil, nil)
	descCacheEntries = prometheus.NewDesc("shoal_cache_entries", "Entries in the in-memory result cache.", nil, nil)
	descSessions     = prometheus.NewDesc("shoal_inference_sessions", "Loaded onnxruntime sessions, by model, version and role (current or pinned).", []string{"model", "version", "role"}, nil)
	descRAGDocs      = prometheus.NewDesc("shoal_rag_documents", "Documents in a collection's local index.", []string{"collection"}, nil)
	descRAGUpdated   = prometheus.NewDesc("shoal_rag_index_updated_timestamp_seconds", "When a collection's index last applied a change (Unix time).", []string{"collection"}, nil)
	descRAGPending   = prometheus.NewDesc("shoal_rag_pending_events", "Replicated changes not yet applied to the retrieval indexes.", nil, nil)
)

// nodeCollector reads the node's gauges at scrape time.
type nodeCollector struct{ n *Node }

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descRunning, descSlots, descDiskFree, descDiskReserve, descStaleness, descPeerLag, descDiverged, descDivergedPeer,
		descPeers, descConnected, descHeads, descHeight, descQueued, descUnfolded, descSuperseded, descUptime, descModelsLocal, descModelLag, descModelServing,
		descConflicts, descRuntimeInfo, descDevice, descCacheBytes, descCacheEntries, descSessions, descRAGDocs, descRAGUpdated, descRAGPending} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.peerGauges(gauge)
	c.modelGauges(ctx, gauge)
	c.servingGauges(gauge)
}

type gaugeFunc func(d *prometheus.Desc, v float64, l ...string)

func (c *nodeCollector) peerGauges(gauge gaugeFunc) {
	n := c.n
	gauge(descBuild, 1, n.cfg.Version, runtime.Version(), n.cfg.Mesh, n.host.ID().String())
	gauge(descUptime, time.Since(n.started).Seconds())
	if free, err := n.store.FreeBytes(); err == nil {
		gauge(descDiskFree, float64(free))
	}
	gauge(descDiskReserve, float64(max(n.store.MinFree(), 0)))
	stale := n.replica.Staleness()
	gauge(descStaleness, stale.Seconds)
	reachable := 0
	for _, p := range stale.Peers {
		gauge(descPeerLag, p.LagSeconds, p.ID)
		if p.Reachable {
			reachable++
		}
	}
	gauge(descDiverged, float64(min(len(stale.Diverged), 1)))
	for _, id := range stale.Diverged {
		gauge(descDivergedPeer, 1, id)
	}
	gauge(descPeers, float64(reachable), "reachable")
	gauge(descPeers, float64(len(stale.Peers)-reachable), "unreachable")
	gauge(descConnected, float64(len(n.host.Network().Peers())))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := n.replica.Stats(ctx)
	gauge(descHeads, float64(len(st.Heads)))
	gauge(descHeight, float64(st.Height))
	gauge(descQueued, float64(st.QueuedJobs))
	gauge(descUnfolded, float64(n.replica.UnfoldedRecords()))
	gauge(descSuperseded, float64(n.replica.SupersededRecords()))
}

func (c *nodeCollector) modelGauges(ctx context.Context, gauge gaugeFunc) {
	n := c.n
	local := 0
	if all, err := n.artifacts.All(ctx); err == nil {
		for _, st := range all {
			if st.State == artifacts.StateVerified {
				local++
			}
		}
	}
	gauge(descModelsLocal, float64(local))
	for model, s := range n.life.All() {
		gauge(descModelLag, s.LagSecond, model)
		gauge(descModelServing, 1, model, s.Version)
	}
	if all, err := n.registry.Models(ctx); err == nil {
		for _, st := range all {
			conflicts := 0
			for _, v := range st.Versions {
				conflicts += len(v.Conflicts)
			}
			gauge(descConflicts, float64(conflicts), st.Name)
		}
	}
	for _, ci := range n.rag.Collections() {
		gauge(descRAGDocs, float64(ci.Freshness.Documents), ci.Name)
		gauge(descRAGUpdated, float64(ci.Freshness.LastApplied.UnixNano())/1e9, ci.Name)
	}
	gauge(descRAGPending, float64(n.rag.Pending()))
}

func (c *nodeCollector) servingGauges(gauge gaugeFunc) {
	n := c.n
	if n.engine != nil {
		gauge(descRuntimeInfo, 1, n.engine.Version())
		gauge(descDevice, 1, n.engine.Device())
	} else {
		gauge(descRuntimeInfo, 0, "")
	}
	gauge(descRunning, float64(n.serving.Running()))
	gauge(descSlots, float64(n.serving.Slots()))
	for _, s := range n.pool.Loaded() {
		role := "pinned"
		if s.Current {
			role = "current"
		}
		gauge(descSessions, 1, s.Model, s.Version, role)
	}
	if n.cache != nil {
		cs := n.cache.Stats()
		gauge(descCacheBytes, float64(cs.Bytes))
		gauge(descCacheEntries, float64(cs.Entries))
	}
}
