package peer

// Warm-peer routing (design §4, seed 003). A request pinned to a version
// this peer has not loaded would wait for the artifact's fetch, the
// session's creation and its warm-up. When both this peer and the request
// opt in (--warm-routing, Shoal-Route: warm), the request goes instead over a
// libp2p stream to a reachable peer whose heartbeat announces that version
// as loaded, while this peer loads it for the next request. The answer
// names the peer that computed it (Shoal-Routed-To). The staleness bound and
// read-your-writes token are checked here before forwarding and sent along,
// so the remote peer checks them too: routing never answers from a view
// staler than the caller allowed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"

	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-mesh/shoal/inference"
)

const (
	// HeaderRoute: "warm" lets this request be forwarded to a peer that
	// has the pinned version loaded.
	HeaderRoute = "Shoal-Route"
	// HeaderRoutedTo names the peer that computed a forwarded answer.
	HeaderRoutedTo = "Shoal-Routed-To"
	// headerForwardedBy marks a request that arrived over the routing
	// stream; it is never forwarded again.
	headerForwardedBy = "Shoal-Forwarded-By"
)

// forwardedHeaders are the request headers that travel with a forwarded
// request.
var forwardedHeaders = []string{"Content-Type", inference.HeaderInferenceHeaderLength,
	HeaderMaxStaleness, HeaderStalenessPolicy, HeaderAfter, HeaderTimeout}

// returnedHeaders are the response headers brought back.
var returnedHeaders = []string{"Content-Type", inference.HeaderInferenceHeaderLength, HeaderModelVersion, HeaderCache, "Retry-After"}

// forwardTimeout bounds one forwarded request end to end.
const forwardTimeout = 2 * time.Minute

var pinnedInferPath = regexp.MustCompile(`^/v2/models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/versions/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/infer$`)

func (n *Node) routeProtocol() protocol.ID {
	return protocol.ID("/shoal/" + n.cfg.Mesh + "/infer/1.0.0")
}

// loadedRefs is what this peer announces in its heartbeats: the versions
// it has loaded, when it accepts forwarded requests.
func (n *Node) loadedRefs() []string {
	// Heartbeats start before inference is set up.
	if !n.cfg.WarmRouting || !n.infReady.Load() {
		return nil
	}
	var out []string
	for _, l := range n.inf.pool.Loaded() {
		out = append(out, l.Model+"@"+l.Version)
	}
	return out
}

// warmPeer picks a reachable, connected peer that announced ref as loaded.
func (n *Node) warmPeer(ref string) (libp2ppeer.ID, bool) {
	var cands []libp2ppeer.ID
	for _, p := range n.replica.Staleness().Peers {
		if !p.Reachable || !slices.Contains(p.Loaded, ref) {
			continue
		}
		id, err := libp2ppeer.Decode(p.ID)
		if err != nil || n.host.Network().Connectedness(id) != network.Connected {
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

// forward sends a pinned inference request to peer pid and copies the
// answer to w. It returns false, having written nothing, when the stream
// fails or the warm peer answers 5xx, so the caller serves locally.
func (n *Node) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, pid libp2ppeer.ID, body []byte) bool {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	fail := func(err error) bool {
		n.inf.stats.addForward("out", "failed")
		n.log.Debug("warm routing failed; serving locally", "to", pid.String(), "err", err)
		return false
	}
	s, err := n.host.NewStream(network.WithAllowLimitedConn(ctx, "warm routing"), pid, n.routeProtocol())
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	req := routeRequest{Path: r.URL.Path, Headers: map[string]string{}, BodyLen: int64(len(body))}
	for _, h := range forwardedHeaders {
		if v := r.Header.Get(h); v != "" {
			req.Headers[h] = v
		}
	}
	if err := writeFrame(s, req, body); err != nil {
		s.Reset()
		return fail(err)
	}
	s.CloseWrite()
	rd := bufio.NewReader(s)
	var resp routeResponse
	if err := readFrameHeader(rd, &resp); err != nil {
		s.Reset()
		return fail(err)
	}
	if resp.BodyLen < 0 || resp.BodyLen > MaxInferBodyBytes {
		s.Reset()
		return fail(fmt.Errorf("answer of %d bytes", resp.BodyLen))
	}
	if resp.Status >= 500 {
		// The warm peer cannot serve it now (its own staleness, a load
		// failure): this peer still may.
		s.Reset()
		return fail(fmt.Errorf("warm peer answered %d", resp.Status))
	}
	out := make([]byte, resp.BodyLen)
	if _, err := io.ReadFull(rd, out); err != nil {
		s.Reset()
		return fail(err)
	}
	for _, h := range returnedHeaders {
		if v, ok := resp.Headers[h]; ok {
			w.Header().Set(h, v)
		}
	}
	w.Header().Set(HeaderRoutedTo, pid.String())
	w.WriteHeader(resp.Status)
	w.Write(out)
	n.inf.stats.addForward("out", "ok")
	return true
}

// handleRouteStream serves a forwarded request through this peer's own
// HTTP handler, so it gets every check a local request gets.
func (n *Node) handleRouteStream(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(forwardTimeout))
	rd := bufio.NewReader(s)
	var req routeRequest
	reply := func(code int, hdr map[string]string, body []byte) {
		if hdr == nil {
			hdr = map[string]string{}
		}
		if err := writeFrame(s, routeResponse{Status: code, Headers: hdr, BodyLen: int64(len(body))}, body); err != nil {
			s.Reset()
		}
	}
	if err := readFrameHeader(rd, &req); err != nil {
		s.Reset()
		return
	}
	if !pinnedInferPath.MatchString(req.Path) || req.BodyLen < 0 || req.BodyLen > MaxInferBodyBytes {
		n.inf.stats.addForward("in", "refused")
		b, _ := json.Marshal(map[string]string{"error": "warm routing carries pinned inference requests only"})
		reply(http.StatusBadRequest, map[string]string{"Content-Type": "application/json"}, b)
		return
	}
	body := make([]byte, req.BodyLen)
	if _, err := io.ReadFull(rd, body); err != nil {
		s.Reset()
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, forwardTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, req.Path, bytes.NewReader(body))
	if err != nil {
		s.Reset()
		return
	}
	for _, h := range forwardedHeaders {
		if v, ok := req.Headers[h]; ok {
			hr.Header.Set(h, v)
		}
	}
	hr.Header.Set(headerForwardedBy, s.Conn().RemotePeer().String())
	hr.ContentLength = int64(len(body))
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	n.api.Handler.ServeHTTP(rec, hr)
	hdr := map[string]string{}
	for _, h := range returnedHeaders {
		if v := rec.header.Get(h); v != "" {
			hdr[h] = v
		}
	}
	outcome := "ok"
	if rec.code >= 400 {
		outcome = "error"
	}
	n.inf.stats.addForward("in", outcome)
	reply(rec.code, hdr, rec.body.Bytes())
}

// recorder is a minimal in-memory http.ResponseWriter.
type recorder struct {
	header http.Header
	code   int
	wrote  bool
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
