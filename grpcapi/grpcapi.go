// Package grpcapi is a Shoal peer's Open Inference Protocol v2 over gRPC:
// KServe's GRPCInferenceService (inferencepb), the service Triton's and
// KServe's standard clients speak, beside the REST half in httpapi.
//
// It serves the same peer with the same semantics: the consistency
// demands travel as request metadata under the HTTP header names
// (shoal-after, shoal-max-staleness, shoal-staleness-policy,
// shoal-timeout) and are applied by httpapi.Demands; the answers' figures
// come back as response metadata (shoal-staleness, shoal-stale,
// shoal-model-version, shoal-cache); errors carry the error catalogue's
// stable code (httpapi.Describe) in a google.rpc.ErrorInfo detail and in
// the shoal-error-code trailer, under the gRPC status that matches the
// HTTP one. Inference goes through serving.Server like a REST request,
// so the result cache, pinning and inference slots are shared.
//
// peer.New assembles it; the handlers are written against the small
// interfaces below, which the lifecycle, the serving path and the replica
// implement.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/grpcapi/inferencepb"
	"github.com/shoal-mesh/shoal/httpapi"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/serving"
)

// Models is the model registry as this peer serves it (the lifecycle).
type Models interface {
	Ready(ctx context.Context) (bool, string)
	ModelReady(ctx context.Context, model, version string) (lifecycle.ModelReadiness, error)
	Metadata(ctx context.Context, model, version string) (inference.ModelMetadata, string, error)
}

// Inference is the serving path.
type Inference interface {
	Infer(ctx context.Context, c serving.Call) (serving.Answer, error)
	Record(model, version, outcome string)
}

// Config assembles the gRPC API.
type Config struct {
	Consistency httpapi.Consistency
	Models      Models
	Inference   Inference
	// Version is this peer's build, for server metadata.
	Version string
	Logger  *slog.Logger
}

// Server is the gRPC API of one peer.
type Server struct {
	inferencepb.UnimplementedGRPCInferenceServiceServer
	cfg      Config
	log      *slog.Logger
	srv      *grpc.Server
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// maxMessage bounds a request or an answer: the REST API's inference
// body limit, so one request is refused, or taken, alike on both edges.
const maxMessage = api.MaxInferBodyBytes

// New builds the gRPC API.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_grpc_requests_total", Help: "gRPC API requests by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_grpc_request_duration_seconds", Help: "gRPC API request latency by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
	}
	s.srv = grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage),
		grpc.ChainUnaryInterceptor(s.intercept))
	inferencepb.RegisterGRPCInferenceServiceServer(s.srv, s)
	return s
}

// Serve serves on ln until Stop.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop lets calls in flight finish until ctx ends, then cuts them off.
func (s *Server) Stop(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.srv.Stop()
		<-done
	}
}

// Collectors are the API's metrics, for the peer's registry.
func (s *Server) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.requests, s.duration}
}

// intercept applies to every call: a panic becomes a logged Internal
// error, the staleness is answered, and the call is counted.
func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic in gRPC handler", "method", method, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		s.requests.WithLabelValues(method, status.Code(err).String()).Inc()
		s.duration.WithLabelValues(method).Observe(time.Since(start).Seconds())
	}()
	if s.cfg.Consistency != nil {
		grpc.SetHeader(ctx, metadata.Pairs(key(api.HeaderStaleness), httpapi.FormatStaleness(s.cfg.Consistency.Staleness())))
	}
	return next(ctx, req)
}

// key is a Shoal header's name as gRPC metadata carries it.
func key(header string) string { return strings.ToLower(header) }

// demands applies the caller's consistency demands from the request
// metadata, answering the staleness figures as response metadata.
func (s *Server) demands(ctx context.Context) (context.Context, context.CancelFunc, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	get := func(h string) string {
		if v := md.Get(key(h)); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	set := func(h, v string) { grpc.SetHeader(ctx, metadata.Pairs(key(h), v)) }
	return httpapi.Demands(ctx, s.cfg.Consistency, get, set)
}

// setHeader answers one Shoal header as response metadata, when it has a
// value.
func setHeader(ctx context.Context, h, v string) {
	if v != "" {
		grpc.SetHeader(ctx, metadata.Pairs(key(h), v))
	}
}

func (s *Server) ServerLive(context.Context, *inferencepb.ServerLiveRequest) (*inferencepb.ServerLiveResponse, error) {
	return &inferencepb.ServerLiveResponse{Live: true}, nil
}

// ServerReady answers ready=false (not an error) while a current ONNX
// model is not loaded, as Triton does; the reason is in the
// shoal-not-ready metadata.
func (s *Server) ServerReady(ctx context.Context, _ *inferencepb.ServerReadyRequest) (*inferencepb.ServerReadyResponse, error) {
	ready, why := s.cfg.Models.Ready(ctx)
	setHeader(ctx, "shoal-not-ready", why)
	return &inferencepb.ServerReadyResponse{Ready: ready}, nil
}

func (s *Server) ServerMetadata(context.Context, *inferencepb.ServerMetadataRequest) (*inferencepb.ServerMetadataResponse, error) {
	return &inferencepb.ServerMetadataResponse{Name: "shoal", Version: s.cfg.Version,
		Extensions: []string{"shoal_consistency", "shoal_result_cache"}}, nil
}

// ModelReady: an unknown model is NotFound; a known one that is not
// loaded (yet, or because its load failed) is ready=false with the
// reason in the shoal-not-ready metadata.
func (s *Server) ModelReady(ctx context.Context, req *inferencepb.ModelReadyRequest) (*inferencepb.ModelReadyResponse, error) {
	dctx, cancel, err := s.demands(ctx)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	defer cancel()
	ctx = dctx
	rd, err := s.cfg.Models.ModelReady(ctx, req.Name, req.Version)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	setHeader(ctx, api.HeaderModelVersion, rd.Version)
	setHeader(ctx, "shoal-not-ready", rd.Reason)
	return &inferencepb.ModelReadyResponse{Ready: rd.Ready}, nil
}

func (s *Server) ModelMetadata(ctx context.Context, req *inferencepb.ModelMetadataRequest) (*inferencepb.ModelMetadataResponse, error) {
	dctx, cancel, err := s.demands(ctx)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	defer cancel()
	ctx = dctx
	md, version, err := s.cfg.Models.Metadata(ctx, req.Name, req.Version)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	setHeader(ctx, api.HeaderModelVersion, version)
	resp := &inferencepb.ModelMetadataResponse{Name: md.Name, Versions: md.Versions, Platform: md.Platform}
	for _, t := range md.Inputs {
		resp.Inputs = append(resp.Inputs, &inferencepb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape})
	}
	for _, t := range md.Outputs {
		resp.Outputs = append(resp.Outputs, &inferencepb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape})
	}
	return resp, nil
}

// ModelInfer runs an inference through the serving path, as a REST
// request would: same result cache, pinning and inference slots.
func (s *Server) ModelInfer(ctx context.Context, req *inferencepb.ModelInferRequest) (*inferencepb.ModelInferResponse, error) {
	model, version := req.ModelName, req.ModelVersion
	dctx, cancel, err := s.demands(ctx)
	if err != nil {
		s.cfg.Inference.Record(model, version, serving.OutcomeError)
		return nil, statusOf(ctx, err)
	}
	defer cancel()
	ctx = dctx
	ir, err := decodeRequest(req)
	if err != nil {
		s.cfg.Inference.Record(model, version, serving.OutcomeBadRequest)
		return nil, statusOf(ctx, err)
	}
	ans, err := s.cfg.Inference.Infer(ctx, serving.Call{Model: model, Version: version, HeaderLen: -1, Request: ir, Decoded: true})
	setHeader(ctx, api.HeaderModelVersion, ans.Version)
	setHeader(ctx, api.HeaderCache, ans.Cache)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	resp, err := encodeResponse(ans.Response)
	if err != nil {
		return nil, statusOf(ctx, err)
	}
	return resp, nil
}
