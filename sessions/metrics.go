package sessions

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	live     prometheus.Gauge
	ops      *prometheus.CounterVec
	rejected *prometheus.CounterVec
	acks     *prometheus.CounterVec
	drops    prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		live: prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_sessions_live",
			Help: "Sessions held here that have not expired (tombstones included), at the last sweep."}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_session_ops_total",
			Help: "Session changes merged here, by kind (turn, meta, delete) and origin (local, remote)."}, []string{"kind", "origin"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_session_rejected_total",
			Help: "Replicated session changes refused, by reason."}, []string{"reason"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_session_write_acks_total",
			Help: "Session writes by how they were acknowledged: peer (another peer held it) or local (none answered within the ack timeout, or none was there)."}, []string{"by"}),
		drops: prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_session_store_drops_total",
			Help: "Times the session database's files were dropped because no session was left."}),
	}
}

func (m metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.live, m.ops, m.rejected, m.acks, m.drops}
}
