package peer

import (
	"context"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// httpMetrics are the API's own request counters.
type httpMetrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	fetchSeconds prometheus.Histogram
	inferSeconds *prometheus.HistogramVec
}

func (m *httpMetrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}

// registerMetrics puts every metric of the node on reg. Each node has its
// own registry, so several peers can live in one process (tests).
func registerMetrics(reg *prometheus.Registry, n *Node) *httpMetrics {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&nodeCollector{n: n})
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_requests_total", Help: "HTTP API requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_http_request_duration_seconds", Help: "HTTP API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
	}
	m.fetchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "shoal_artifact_fetch_seconds", Help: "Time to fetch and verify one artifact from the mesh.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
	})
	m.inferSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "shoal_inference_run_seconds", Help: "onnxruntime run time of one inference (cache misses), by model.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	}, []string{"model"})
	reg.MustRegister(m.requests, m.duration, m.fetchSeconds, m.inferSeconds)
	return m
}

var (
	descBuild         = prometheus.NewDesc("shoal_build_info", "Build and runtime of this peer (always 1).", []string{"version", "go_version", "mesh", "peer_id"}, nil)
	descRunning       = prometheus.NewDesc("shoal_inference_running", "Inferences running on this peer now.", nil, nil)
	descSlots         = prometheus.NewDesc("shoal_inference_slots", "Inferences this peer runs at once at most (--max-inflight; 0 = unbounded).", nil, nil)
	descSaturated     = prometheus.NewDesc("shoal_inference_saturated_total", "Inference requests that found every slot taken, by what became of them: waited (then ran here), forwarded (to a warm peer), refused (503).", []string{"outcome"}, nil)
	descForwarded     = prometheus.NewDesc("shoal_inference_forwarded_total", "Pinned inference requests routed to a warm peer (out) or served for one (in), by outcome.", []string{"direction", "outcome"}, nil)
	descDiscovered    = prometheus.NewDesc("shoal_discovered_peers_total", "Connections made to peers found by each discovery source (bootstrap, mdns, heartbeat, dht).", []string{"source"}, nil)
	descDiskFree      = prometheus.NewDesc("shoal_disk_free_bytes", "Free space on the data directory's file system; writes are refused (507) below the reserve.", nil, nil)
	descDiskReserve   = prometheus.NewDesc("shoal_disk_reserve_bytes", "Free space the peer keeps in reserve (writes that would cut into it are refused).", nil, nil)
	descStaleness     = prometheus.NewDesc("shoal_staleness_seconds", "How far behind the freshest replicated state this peer can prove it has seen.", nil, nil)
	descPeerLag       = prometheus.NewDesc("shoal_peer_staleness_seconds", "This peer's staleness with respect to one mesh peer.", []string{"peer"}, nil)
	descPeers         = prometheus.NewDesc("shoal_peers", "Mesh peers known from heartbeats, by state.", []string{"state"}, nil)
	descConnected     = prometheus.NewDesc("shoal_peers_connected", "libp2p connections open.", nil, nil)
	descHeads         = prometheus.NewDesc("shoal_crdt_heads", "Heads of the local Merkle-CRDT DAG.", nil, nil)
	descHeight        = prometheus.NewDesc("shoal_crdt_height", "Max height of the local Merkle-CRDT DAG.", nil, nil)
	descQueued        = prometheus.NewDesc("shoal_crdt_queued_jobs", "DAG-walking jobs waiting for a worker.", nil, nil)
	descEvents        = prometheus.NewDesc("shoal_crdt_events_total", "Replicated state changes applied, by type.", []string{"type"}, nil)
	descRejected      = prometheus.NewDesc("shoal_rejected_records_total", "Replicated records kept out of the state, by reason.", []string{"reason"}, nil)
	descHeartbeats    = prometheus.NewDesc("shoal_heartbeats_total", "Heartbeats sent and received.", []string{"direction"}, nil)
	descInjected      = prometheus.NewDesc("shoal_crdt_injected_heads_total", "Heads learned from heartbeats and handed to the CRDT.", nil, nil)
	descInline        = prometheus.NewDesc("shoal_crdt_inline_blocks_total", "Head blocks received inside broadcasts, by result.", []string{"result"}, nil)
	descBlocks        = prometheus.NewDesc("shoal_bitswap_blocks_total", "Blocks moved by bitswap.", []string{"direction"}, nil)
	descBlockBytes    = prometheus.NewDesc("shoal_bitswap_bytes_total", "Bytes moved by bitswap.", []string{"direction"}, nil)
	descUptime        = prometheus.NewDesc("shoal_uptime_seconds", "Seconds since this peer started.", nil, nil)
	descModelsLocal   = prometheus.NewDesc("shoal_models_local", "Artifacts verified and stored on this peer.", nil, nil)
	descModelLag      = prometheus.NewDesc("shoal_model_version_lag_seconds", "Time from a version's activation (its HLC) to this peer serving it.", []string{"model"}, nil)
	descModelServing  = prometheus.NewDesc("shoal_model_serving", "The version of each model this peer serves (always 1).", []string{"model", "version"}, nil)
	descConflicts     = prometheus.NewDesc("shoal_model_conflicts", "Versions published more than once with different content.", []string{"model"}, nil)
	descFetchStalls   = prometheus.NewDesc("shoal_artifact_fetch_stalls_total", "Artifact fetch batches that went 15 s without a block and were asked for again through a fresh bitswap session.", nil, nil)
	descArtifactBytes = prometheus.NewDesc("shoal_artifact_bytes_total", "Artifact bytes moved, by direction and source.", []string{"direction", "source"}, nil)
	descRuntimeInfo   = prometheus.NewDesc("shoal_onnxruntime_available", "1 when the onnxruntime library loaded.", []string{"version"}, nil)
	descDevice        = prometheus.NewDesc("shoal_inference_device", "The device inference runs on (always 1).", []string{"device"}, nil)
	descInferRequests = prometheus.NewDesc("shoal_inference_requests_total", "Inference requests by model, the version that answered, and outcome.", []string{"model", "version", "outcome"}, nil)
	descCacheRequests = prometheus.NewDesc("shoal_cache_requests_total", "Result-cache lookups by model, version and result (hit, miss, cold_miss: first lookups of a version).", []string{"model", "version", "result"}, nil)
	descCacheBytes    = prometheus.NewDesc("shoal_cache_bytes", "Bytes held by the in-memory result cache.", nil, nil)
	descCacheEntries  = prometheus.NewDesc("shoal_cache_entries", "Entries in the in-memory result cache.", nil, nil)
	descCacheEvicted  = prometheus.NewDesc("shoal_cache_evictions_total", "Result-cache entries evicted to stay within the byte bound.", nil, nil)
	descSessions      = prometheus.NewDesc("shoal_inference_sessions", "Loaded onnxruntime sessions, by model, version and role (current or pinned).", []string{"model", "version", "role"}, nil)
	descRAGDocs       = prometheus.NewDesc("shoal_rag_documents", "Documents in a collection's local index.", []string{"collection"}, nil)
	descRAGUpdated    = prometheus.NewDesc("shoal_rag_index_updated_timestamp_seconds", "When a collection's index last applied a change (Unix time).", []string{"collection"}, nil)
	descRAGPending    = prometheus.NewDesc("shoal_rag_pending_events", "Replicated changes not yet applied to the retrieval indexes.", nil, nil)
	descRAGApplied    = prometheus.NewDesc("shoal_rag_events_applied_total", "Document changes applied to the indexes.", nil, nil)
	descRAGBuild      = prometheus.NewDesc("shoal_rag_index_build_seconds_total", "Time spent building indexes from stored documents (start-up).", nil, nil)
	descRAGUpdate     = prometheus.NewDesc("shoal_rag_index_update_seconds_total", "Time spent applying document changes to indexes.", nil, nil)
	descRAGQuery      = prometheus.NewDesc("shoal_rag_query_duration_seconds", "Retrieval query latency (embedding included).", nil, nil)
	descEmbedCache    = prometheus.NewDesc("shoal_embedding_cache_requests_total", "Embedding cache lookups by result.", []string{"result"}, nil)
	descEmbedded      = prometheus.NewDesc("shoal_embeddings_computed_total", "Texts embedded on this peer (cache misses).", nil, nil)
	descLoadFailures  = prometheus.NewDesc("shoal_model_load_failures_total", "Verified versions that failed to load or warm up here, by model.", []string{"model"}, nil)
)

// nodeCollector reads the node's state at scrape time, so metrics never
// drift from what /v1/status shows.
type nodeCollector struct{ n *Node }

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descRunning, descSlots, descSaturated, descForwarded, descDiscovered, descDiskFree, descDiskReserve, descStaleness, descPeerLag, descPeers, descConnected, descHeads, descHeight,
		descQueued, descEvents, descRejected, descHeartbeats, descInjected, descInline, descBlocks, descBlockBytes, descUptime, descRuntimeInfo,
		descModelsLocal, descModelLag, descModelServing, descConflicts, descArtifactBytes, descFetchStalls,
		descRAGDocs, descRAGUpdated, descRAGPending, descRAGApplied, descRAGBuild, descRAGUpdate, descRAGQuery, descEmbedCache, descEmbedded,
		descDevice, descInferRequests, descCacheRequests, descCacheBytes, descCacheEntries, descCacheEvicted, descSessions, descLoadFailures} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge(descBuild, 1, n.cfg.Version, runtime.Version(), n.cfg.Mesh, n.host.ID().String())
	gauge(descUptime, time.Since(n.started).Seconds())
	if free, err := n.store.FreeBytes(); err == nil {
		gauge(descDiskFree, float64(free))
	}
	gauge(descDiskReserve, float64(max(n.store.MinFree(), 0)))
	for _, src := range discoverySources {
		counter(descDiscovered, n.discovered(src), src)
	}

	stale := n.replica.Staleness()
	gauge(descStaleness, stale.Seconds)
	reachable := 0
	for _, p := range stale.Peers {
		gauge(descPeerLag, p.LagSeconds, p.ID)
		if p.Reachable {
			reachable++
		}
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

	cnt := n.replica.Counters()
	counter(descEvents, cnt.Puts, "put")
	counter(descEvents, cnt.Deletes, "delete")
	rejected := n.registry.Rejected()
	rejected[models.ReasonMalformed] += cnt.BadRecords
	rejected[models.ReasonOversize] += cnt.OversizeRecords
	for _, reason := range models.Reasons {
		counter(descRejected, rejected[reason], reason)
	}
	counter(descHeartbeats, cnt.HeartbeatsIn, "in")
	counter(descHeartbeats, cnt.HeartbeatsOut, "out")
	counter(descInjected, cnt.InjectedHeads)
	counter(descInline, cnt.InlineBlocks, "stored")
	counter(descInline, cnt.InlineRejected, "rejected")

	bs := n.blocks.Stats()
	counter(descBlocks, bs.BlocksReceived, "in")
	counter(descBlocks, bs.BlocksSent, "out")
	counter(descBlockBytes, bs.BytesReceived, "in")
	counter(descBlockBytes, bs.BytesSent, "out")

	counter(descArtifactBytes, n.artifacts.BytesFetched(), "in", "bitswap")
	counter(descFetchStalls, n.artifacts.Stalls())
	counter(descArtifactBytes, bs.BytesSent, "out", "bitswap")
	counter(descArtifactBytes, n.artifactBytesOut.Load(), "out", "api")
	local := 0
	if all, err := n.artifacts.All(ctx); err == nil {
		for _, st := range all {
			if st.State == artifacts.StateVerified {
				local++
			}
		}
	}
	gauge(descModelsLocal, float64(local))
	for model, s := range n.life.all() {
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

	if n.ortVersion != "" {
		gauge(descRuntimeInfo, 1, n.ortVersion)
	} else {
		gauge(descRuntimeInfo, 0, "")
	}
	inf := n.inf
	if inf.engine != nil {
		gauge(descDevice, 1, inf.engine.Device())
	}
	gauge(descRunning, float64(inf.running.Load()))
	gauge(descSlots, float64(cap(inf.slots)))
	for _, s := range inf.pool.Loaded() {
		role := "pinned"
		if s.Current {
			role = "current"
		}
		gauge(descSessions, 1, s.Model, s.Version, role)
	}
	inf.stats.mu.Lock()
	for k, v := range inf.stats.requests {
		counter(descInferRequests, v, k[0], k[1], k[2])
	}
	for k, v := range inf.stats.cache {
		counter(descCacheRequests, v, k[0], k[1], k[2])
	}
	for model, v := range inf.stats.loadFailures {
		counter(descLoadFailures, v, model)
	}
	for k, v := range inf.stats.forwarded {
		counter(descForwarded, v, k[0], k[1])
	}
	for k, v := range inf.stats.saturated {
		counter(descSaturated, v, k)
	}
	inf.stats.mu.Unlock()
	if r := n.rag; r != nil {
		for _, ci := range r.m.Collections() {
			gauge(descRAGDocs, float64(ci.Freshness.Documents), ci.Name)
			gauge(descRAGUpdated, float64(ci.Freshness.LastApplied.UnixNano())/1e9, ci.Name)
		}
		gauge(descRAGPending, float64(r.m.Pending()))
		rs := r.m.Stats()
		counter(descRAGApplied, rs.Applied)
		ch <- prometheus.MustNewConstMetric(descRAGBuild, prometheus.CounterValue, rs.RebuildTime.Seconds())
		ch <- prometheus.MustNewConstMetric(descRAGUpdate, prometheus.CounterValue, rs.UpdateTime.Seconds())
		r.queryHist.mu.Lock()
		buckets := map[float64]uint64{}
		for i, b := range r.queryHist.buckets {
			buckets[b] = r.queryHist.counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(descRAGQuery, r.queryHist.count, r.queryHist.sum, buckets)
		r.queryHist.mu.Unlock()
		counter(descEmbedCache, r.cacheHits.Load(), "hit")
		counter(descEmbedCache, r.cacheMisses.Load(), "miss")
		counter(descEmbedded, r.embedded.Load())
	}
	if inf.cache != nil {
		cs := inf.cache.Stats()
		gauge(descCacheBytes, float64(cs.Bytes))
		gauge(descCacheEntries, float64(cs.Entries))
		counter(descCacheEvicted, cs.Evictions)
	}
}
