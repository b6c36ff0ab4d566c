package serving

// Warm-peer routing (design §4, seed 003). A request pinned to a version
// this peer has not loaded would wait for the artifact's fetch, the
// session's creation and its warm-up. When both this peer and the request
// opt in (--warm-routing, Shoal-Route: warm), the request goes instead over
// a libp2p stream to a reachable peer whose heartbeat announces that
// version as loaded, while this peer loads it for the next request. The
// answer names the peer that computed it (Shoal-Routed-To). The staleness
// bound and read-your-writes token are checked here before forwarding and
// sent along, so the remote peer checks them too: routing never answers
// from a view staler than the caller allowed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/inference"
)

// HeaderForwardedBy marks a request that arrived over the routing stream;
// it is never forwarded again.
const HeaderForwardedBy = "Shoal-Forwarded-By"

// ForwardedHeaders are the request headers that travel with a forwarded
// request.
var ForwardedHeaders = []string{"Content-Type", inference.HeaderInferenceHeaderLength,
	api.HeaderMaxStaleness, api.HeaderStalenessPolicy, api.HeaderAfter, api.HeaderTimeout}

// returnedHeaders are the response headers brought back.
var returnedHeaders = []string{"Content-Type", inference.HeaderInferenceHeaderLength, api.HeaderModelVersion, api.HeaderCache, "Retry-After"}

// forwardTimeout bounds one forwarded request end to end.
const forwardTimeout = 2 * time.Minute

var pinnedInferPath = regexp.MustCompile(`^/v2/models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/versions/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/infer$`)

// Router forwards pinned calls to warm peers and serves the calls other
// peers forward here.
type Router struct {
	host host.Host
	// staleness lists the mesh peers with the versions they announced.
	staleness func() crdt.Staleness
	proto     protocol.ID
	log       *slog.Logger
	metrics   *metrics     // set by New(Config{Router: r})
	handler   http.Handler // serves forwarded calls; set by Serve
	ctx       context.Context
}

// NewRouter returns a Router for the mesh's routing protocol.
func NewRouter(h host.Host, mesh string, staleness func() crdt.Staleness, log *slog.Logger) *Router {
	return &Router{host: h, staleness: staleness, proto: protocol.ID("/shoal/" + mesh + "/infer/1.0.0"), log: log}
}

// Serve answers forwarded calls through handler — the peer's own HTTP
// API, so a forwarded call gets every check a local one gets — until ctx
// ends.
func (r *Router) Serve(ctx context.Context, handler http.Handler) {
	r.ctx, r.handler = ctx, handler
	r.host.SetStreamHandler(r.proto, r.handleStream)
}

// HasWarmPeer reports whether some peer can take a call for ref.
func (r *Router) HasWarmPeer(ref string) bool {
	_, ok := r.warmPeer(ref)
	return ok
}

// warmPeer picks a reachable, connected peer that announced ref as loaded.
func (r *Router) warmPeer(ref string) (libp2ppeer.ID, bool) {
	var cands []libp2ppeer.ID
	for _, p := range r.staleness().Peers {
		if !p.Reachable || !slices.Contains(p.Loaded, ref) {
			continue
		}
		id, err := libp2ppeer.Decode(p.ID)
		if err != nil || r.host.Network().Connectedness(id) != network.Connected {
			continue
		}
		cands = append(cands, id)
	}
	if len(cands) == 0 {
		return "", false
	}
	return cands[rand.IntN(len(cands))], true
}

type routeRequest struct {
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers"`
	BodyLen int64             `json:"body_len"`
}

type routeResponse struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	BodyLen int64             `json:"body_len"`
}

// Frames: a 4-byte big-endian length, a JSON header, then the body.
const maxRouteHeader = 64 << 10

func writeFrame(w io.Writer, hdr any, body []byte) error {
	b, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	if _, err := w.Write(l[:]); err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

func readFrameHeader(r io.Reader, hdr any) error {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(l[:])
	if size > maxRouteHeader {
		return fmt.Errorf("routing frame header of %d bytes", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, hdr)
}

// Forward sends c to a warm peer and returns its answer. ok is false when
// there is none, the stream fails or the warm peer answers 5xx (its own
// staleness, a load failure): then this peer serves c itself.
func (r *Router) Forward(ctx context.Context, c Call) (a Answer, ok bool) {
	pid, found := r.warmPeer(c.Model + "@" + c.Version)
	if !found {
		return a, false
	}
	a, err := r.forward(ctx, pid, c)
	if err != nil {
		r.metrics.forwarded.WithLabelValues("out", "failed").Inc()
		r.log.Debug("warm routing failed; serving locally", "to", pid.String(), "err", err)
		return Answer{}, false
	}
	r.metrics.forwarded.WithLabelValues("out", "ok").Inc()
	return a, true
}

func (r *Router) forward(ctx context.Context, pid libp2ppeer.ID, c Call) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	s, err := r.host.NewStream(network.WithAllowLimitedConn(ctx, "warm routing"), pid, r.proto)
	if err != nil {
		return Answer{}, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	path := "/v2/models/" + c.Model + "/versions/" + c.Version + "/infer"
	req := routeRequest{Path: path, Headers: c.Headers, BodyLen: int64(len(c.Body))}
	if req.Headers == nil {
		req.Headers = map[string]string{}
	}
	if err := writeFrame(s, req, c.Body); err != nil {
		s.Reset()
		return Answer{}, err
	}
	s.CloseWrite()
	a, err := readAnswer(bufio.NewReader(s))
	if err != nil {
		s.Reset()
		return Answer{}, err
	}
	a.RoutedTo = pid.String()
	return a, nil
}

func readAnswer(rd io.Reader) (Answer, error) {
	var resp routeResponse
	if err := readFrameHeader(rd, &resp); err != nil {
		return Answer{}, err
	}
	if resp.BodyLen < 0 || resp.BodyLen > api.MaxInferBodyBytes {
		return Answer{}, fmt.Errorf("answer of %d bytes", resp.BodyLen)
	}
	if resp.Status >= 500 {
		return Answer{}, fmt.Errorf("warm peer answered %d", resp.Status)
	}
	body := make([]byte, resp.BodyLen)
	if _, err := io.ReadFull(rd, body); err != nil {
		return Answer{}, err
	}
	h := resp.Headers
	a := Answer{Status: resp.Status, Version: h[api.HeaderModelVersion], Cache: h[api.HeaderCache],
		ContentType: h["Content-Type"], RetryAfter: h["Retry-After"], HeaderLen: -1, Body: body}
	if v, ok := h[inference.HeaderInferenceHeaderLength]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			a.HeaderLen = n
		}
	}
	return a, nil
}

// handleStream serves a forwarded call through the peer's HTTP handler.
func (r *Router) handleStream(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(forwardTimeout))
	rd := bufio.NewReader(s)
	reply := func(code int, hdr map[string]string, body []byte) {
		if err := writeFrame(s, routeResponse{Status: code, Headers: hdr, BodyLen: int64(len(body))}, body); err != nil {
			s.Reset()
		}
	}
	var req routeRequest
	if err := readFrameHeader(rd, &req); err != nil {
		s.Reset()
		return
	}
	if !pinnedInferPath.MatchString(req.Path) || req.BodyLen < 0 || req.BodyLen > api.MaxInferBodyBytes {
		r.metrics.forwarded.WithLabelValues("in", "refused").Inc()
		b, _ := json.Marshal(api.Error{Message: "warm routing carries pinned inference requests only", Code: api.CodeRouteUnknown})
		reply(http.StatusBadRequest, map[string]string{"Content-Type": "application/json"}, b)
		return
	}
	body := make([]byte, req.BodyLen)
	if _, err := io.ReadFull(rd, body); err != nil {
		s.Reset()
		return
	}
	code, hdr, out := r.serveLocally(s.Conn().RemotePeer(), req, body)
	outcome := "ok"
	if code >= 400 {
		outcome = "error"
	}
	r.metrics.forwarded.WithLabelValues("in", outcome).Inc()
	reply(code, hdr, out)
}

// serveLocally runs a forwarded request through the peer's HTTP handler
// and returns the status, the headers that go back and the body.
func (r *Router) serveLocally(from libp2ppeer.ID, req routeRequest, body []byte) (int, map[string]string, []byte) {
	ctx, cancel := context.WithTimeout(r.ctx, forwardTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, req.Path, bytes.NewReader(body))
	if err != nil {
		return http.StatusBadRequest, map[string]string{}, nil
	}
	for _, h := range ForwardedHeaders {
		if v, ok := req.Headers[h]; ok {
			hr.Header.Set(h, v)
		}
	}
	hr.Header.Set(HeaderForwardedBy, from.String())
	hr.ContentLength = int64(len(body))
	rec := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
	r.handler.ServeHTTP(rec, hr)
	hdr := map[string]string{}
	for _, h := range returnedHeaders {
		if v := rec.header.Get(h); v != "" {
			hdr[h] = v
		}
	}
	return rec.code, hdr, rec.body.Bytes()
}

// bufferedResponse is a minimal in-memory http.ResponseWriter.
type bufferedResponse struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (r *bufferedResponse) Header() http.Header { return r.header }
func (r *bufferedResponse) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}
func (r *bufferedResponse) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
