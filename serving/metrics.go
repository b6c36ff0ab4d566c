package serving

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests   *prometheus.CounterVec // model, version, outcome
	cache      *prometheus.CounterVec // model, version, result
	saturated  *prometheus.CounterVec // outcome
	forwarded  *prometheus.CounterVec // direction, outcome
	runSeconds *prometheus.HistogramVec
	// Dynamic batching (batch.go), by model.
	batchRows      *prometheus.HistogramVec
	queueSeconds   *prometheus.HistogramVec
	batchFallbacks *prometheus.CounterVec // model, reason
}

func newMetrics() metrics {
	return metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_inference_requests_total", Help: "Inference requests by model, the version that answered, and outcome.",
		}, []string{"model", "version", "outcome"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_cache_requests_total", Help: "Result-cache lookups by model, version and result (hit, miss, cold_miss: first lookups of a version).",
		}, []string{"model", "version", "result"}),
		saturated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_inference_saturated_total", Help: "Inference requests that found every slot taken, by what became of them: waited (then ran here), forwarded (to a warm peer), refused (503).",
		}, []string{"outcome"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_inference_forwarded_total", Help: "Pinned inference requests routed to a warm peer (out) or served for one (in), by outcome.",
		}, []string{"direction", "outcome"}),
		runSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_inference_run_seconds", Help: "onnxruntime run time of one inference (cache misses), by model.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"model"}),
		batchRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_inference_batch_size", Help: "Rows per onnxruntime run of a model with dynamic batching (max_batch_size), by model.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}, []string{"model"}),
		queueSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_inference_queue_seconds", Help: "Time a request of a model with dynamic batching waited in its queue before its batch ran, by model.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 18),
		}, []string{"model"}),
		batchFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_inference_batch_fallbacks_total", Help: "Batches run again request by request, by model and reason: error (the joined run failed), not_splittable (outputs without one row per input row; the model is no longer batched).",
		}, []string{"model", "reason"}),
	}
}

// Collectors are the Server's metrics, for the peer's registry.
func (s *Server) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.m.requests, s.m.cache, s.m.saturated, s.m.forwarded, s.m.runSeconds,
		s.m.batchRows, s.m.queueSeconds, s.m.batchFallbacks}
}

// Outcomes of shoal_inference_requests_total.
const (
	OutcomeOK         = "ok"
	OutcomeForwarded  = "forwarded"
	OutcomeBadRequest = "bad_request"
	OutcomeBusy       = "busy"
	OutcomeTimeout    = "timeout"
	OutcomeError      = "error"
)

// Record counts one request for model (version "" when none answered).
// Infer records its own calls; the API records requests that failed
// before they became a call (a body too large, a consistency demand).
func (s *Server) Record(model, version, outcome string) {
	if version == "" {
		version = "-"
	}
	s.m.requests.WithLabelValues(model, version, outcome).Inc()
}

// outcome classifies an Infer result for the request counter.
func outcome(a Answer, err error) string {
	switch {
	case err == nil && a.RoutedTo != "":
		return OutcomeForwarded
	case err == nil:
		return OutcomeOK
	case errors.Is(err, ErrBadInput):
		return OutcomeBadRequest
	case errors.Is(err, ErrBusy):
		return OutcomeBusy
	case errors.Is(err, ErrTimeout):
		return OutcomeTimeout
	}
	return OutcomeError
}
