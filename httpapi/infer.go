package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/serving"
)

// routesV2 are the Open Inference Protocol v2 endpoints.
func (a *API) routesV2(mux *http.ServeMux) {
	mux.HandleFunc("GET /v2", a.handleServerMetadata)
	mux.HandleFunc("GET /v2/health/live", a.handleLive)
	mux.HandleFunc("GET /v2/health/ready", a.handleReady)
	mux.HandleFunc("GET /v2/models/{model}", a.handleModelMetadata)
	mux.HandleFunc("GET /v2/models/{model}/versions/{version}", a.handleModelMetadata)
	mux.HandleFunc("GET /v2/models/{model}/ready", a.handleModelReady)
	mux.HandleFunc("GET /v2/models/{model}/versions/{version}/ready", a.handleModelReady)
	mux.HandleFunc("POST /v2/models/{model}/infer", a.handleInfer)
	mux.HandleFunc("POST /v2/models/{model}/versions/{version}/infer", a.handleInfer)
}

func (a *API) handleServerMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, inference.ServerMetadata{Name: "shoal", Version: a.cfg.Version,
		Extensions: []string{"shoal_consistency", "shoal_result_cache"}})
}

func (a *API) handleLive(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"live": true})
}

// handleReady: the server is ready when inference works here and every
// ONNX model with a current version has a loaded session.
func (a *API) handleReady(w http.ResponseWriter, r *http.Request) {
	ready, why := a.cfg.Models.Ready(r.Context())
	if !ready {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": why, "code": api.CodeModelNotLoaded})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

func (a *API) handleModelMetadata(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		md, version, err := a.cfg.Models.Metadata(ctx, r.PathValue("model"), r.PathValue("version"))
		if err != nil {
			return err
		}
		w.Header().Set(api.HeaderModelVersion, version)
		writeJSON(w, http.StatusOK, md)
		return nil
	})
}

func (a *API) handleModelReady(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		model, version := r.PathValue("model"), r.PathValue("version")
		rd, err := a.cfg.Models.ModelReady(ctx, model, version)
		if err != nil {
			return err
		}
		body := map[string]any{"name": model, "ready": rd.Ready}
		if rd.Version != "" {
			body["version"] = rd.Version
		}
		if rd.Reason != "" {
			body["error"] = rd.Reason
		}
		if !rd.Ready {
			body["code"] = api.CodeModelNotLoaded
			if rd.Reason != "" {
				body["code"] = api.CodeModelLoadFailed
			}
			w.Header().Set("Retry-After", "5")
			writeJSON(w, http.StatusServiceUnavailable, body)
			return nil
		}
		if version == "" {
			w.Header().Set(api.HeaderModelVersion, rd.Version)
		}
		writeJSON(w, http.StatusOK, body)
		return nil
	})
}

// handleInfer turns an OIP v2 request into a serving.Call and writes the
// answer; everything between is the serving path's.
func (a *API) handleInfer(w http.ResponseWriter, r *http.Request) {
	model, version := r.PathValue("model"), r.PathValue("version")
	ctx, cancel, err := a.consistent(w, r)
	if err != nil {
		a.cfg.Inference.Record(model, version, serving.OutcomeError)
		writeError(w, err)
		return
	}
	defer cancel()
	// Request bodies are the bulk of an inference's garbage; they are
	// read into pooled buffers, sized by Content-Length when there is one.
	// Decoded inputs alias the buffer, so it goes back only once the
	// response is written.
	bufp := bodyPool.Get().(*[]byte)
	defer func() {
		if cap(*bufp) <= maxPooledBody {
			bodyPool.Put(bufp)
		}
	}()
	c, err := inferCall(r, bufp)
	if err != nil {
		a.cfg.Inference.Record(model, version, serving.OutcomeBadRequest)
		writeError(w, err)
		return
	}
	ans, err := a.cfg.Inference.Infer(ctx, c)
	if err != nil {
		if ans.Version != "" {
			w.Header().Set(api.HeaderModelVersion, ans.Version)
		}
		writeError(w, err)
		return
	}
	writeAnswer(w, ans)
}

// inferCall reads r into a serving.Call.
func inferCall(r *http.Request, bufp *[]byte) (serving.Call, error) {
	c := serving.Call{Model: r.PathValue("model"), Version: r.PathValue("version"), HeaderLen: -1,
		Route:     r.Header.Get(api.HeaderRoute) == api.RouteWarm,
		Forwarded: r.Header.Get(serving.HeaderForwardedBy) != "", Headers: map[string]string{}}
	body, err := readBody(r, bufp)
	if err != nil {
		return c, fmt.Errorf("%w: reading the request: %w", errBadBody, err)
	}
	c.Body = body
	if v := r.Header.Get(inference.HeaderInferenceHeaderLength); v != "" {
		if c.HeaderLen, err = strconv.Atoi(v); err != nil || c.HeaderLen < 0 {
			return c, fmt.Errorf("%w: %s: not a byte count", serving.ErrBadInput, inference.HeaderInferenceHeaderLength)
		}
	}
	for _, h := range serving.ForwardedHeaders {
		if v := r.Header.Get(h); v != "" {
			c.Headers[h] = v
		}
	}
	return c, nil
}

// writeAnswer writes an inference answer: JSON, or JSON plus binary
// outputs (binary tensor data extension), or a warm peer's answer as it
// came.
func writeAnswer(w http.ResponseWriter, ans serving.Answer) {
	h := w.Header()
	for k, v := range map[string]string{api.HeaderModelVersion: ans.Version, api.HeaderCache: ans.Cache,
		api.HeaderRoutedTo: ans.RoutedTo, "Content-Type": ans.ContentType, "Retry-After": ans.RetryAfter} {
		if v != "" {
			h.Set(k, v)
		}
	}
	if ans.HeaderLen >= 0 {
		h.Set(inference.HeaderInferenceHeaderLength, strconv.Itoa(ans.HeaderLen))
	}
	h.Set("Content-Length", strconv.Itoa(len(ans.Body)))
	w.WriteHeader(ans.Status)
	w.Write(ans.Body)
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxPooledBody keeps rare huge buffers out of the pool.
const maxPooledBody = 8 << 20

func readBody(r *http.Request, bufp *[]byte) ([]byte, error) {
	buf := (*bufp)[:0]
	if n := r.ContentLength; n > 0 && n <= api.MaxInferBodyBytes && int64(cap(buf)) < n+1 {
		buf = make([]byte, 0, n+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			*bufp = buf
			return buf, nil
		}
		if err != nil {
			*bufp = buf
			return nil, err
		}
	}
}
