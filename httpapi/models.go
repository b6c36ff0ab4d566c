package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
)

// uploadTimeout bounds reading one uploaded artifact.
const uploadTimeout = time.Hour

func (a *API) routesModels(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/models", a.handleModels)
	mux.HandleFunc("GET /v1/models/{model}", a.handleModel)
	mux.HandleFunc("GET /v1/models/{model}/watch", a.handleWatch)
	mux.HandleFunc("PUT /v1/models/{model}/versions/{version}", a.handlePush)
	mux.HandleFunc("POST /v1/models/{model}/activate", a.handleActivate)
	mux.HandleFunc("POST /v1/models/{model}/rollback", a.handleRollback)
	mux.HandleFunc("POST /v1/models/{model}/versions/{version}/pull", a.handlePull)
	mux.HandleFunc("GET /v1/models/{model}/artifact", a.handleArtifact)
	mux.HandleFunc("GET /v1/models/{model}/versions/{version}/artifact", a.handleArtifact)
}

// read wraps a read handler in the caller's consistency demands: h runs
// with the request's bounded context, and its error is answered from the
// catalogue.
func (a *API) read(w http.ResponseWriter, r *http.Request, h func(ctx context.Context) error) {
	ctx, cancel, err := a.consistent(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer cancel()
	if err := h(ctx); err != nil {
		writeError(w, err)
	}
}

func (a *API) handleModels(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		list, err := a.cfg.Models.List(ctx)
		if err == nil {
			writeJSON(w, http.StatusOK, list)
		}
		return err
	})
}

func (a *API) handleModel(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		mi, err := a.cfg.Models.Model(ctx, r.PathValue("model"))
		if err == nil {
			writeJSON(w, http.StatusOK, mi)
		}
		return err
	})
}

// handlePush imports an uploaded artifact, publishes its signed manifest
// and optionally activates it: PUT /v1/models/{model}/versions/{version}
// [?activate=true][&prefetch=true][&media_type=...][&no_cache=true]
// [&max_batch_size=N][&max_queue_delay_us=N].
func (a *API) handlePush(w http.ResponseWriter, r *http.Request) {
	m, err := pushManifest(r)
	if err != nil {
		writeError(w, err)
		return
	}
	// A large artifact over a gateway's uplink takes longer than the
	// server's general read timeout; give the upload its own.
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadTimeout))
	ctx := r.Context()
	m, wr, err := a.cfg.Models.Push(ctx, r.Body, m)
	if err != nil {
		writeError(w, err)
		return
	}
	body := map[string]any{"manifest": m}
	if r.URL.Query().Get("activate") == "true" {
		act, awr, err := a.cfg.Models.Activate(ctx, m.Model, m.Version)
		if err != nil {
			writeError(w, err)
			return
		}
		body["activation"], wr = act, awr
	}
	writeResult(w, http.StatusCreated, wr, body)
}

// pushManifest is the manifest a push asks for, before the artifact is
// imported.
func pushManifest(r *http.Request) (models.Manifest, error) {
	model, version := r.PathValue("model"), r.PathValue("version")
	for _, n := range [][2]string{{"model", model}, {"version", version}} {
		if err := models.CheckName(n[0], n[1]); err != nil {
			return models.Manifest{}, err
		}
	}
	q := r.URL.Query()
	m := models.Manifest{Model: model, Version: version, MediaType: q.Get("media_type"),
		Prefetch: q.Get("prefetch") == "true", NoCache: q.Get("no_cache") == "true"}
	if m.MediaType == "" {
		m.MediaType = "application/octet-stream"
	}
	for _, f := range []struct {
		key string
		v   *int
	}{{"max_batch_size", &m.MaxBatchSize}, {"max_queue_delay_us", &m.MaxQueueDelayUS}} {
		if s := q.Get(f.key); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				return m, fmt.Errorf("%w: %s %q: not an integer", models.ErrBadSetting, f.key, s)
			}
			*f.v = n
		}
	}
	warmup, err := parseWarmup(r.Header.Get(api.HeaderWarmup))
	m.Warmup = warmup
	if err != nil {
		return m, err
	}
	// Refused before the upload rather than after it.
	return m, m.Validate()
}

// parseWarmup checks a Shoal-Warmup header: base64 of an OIP v2 request
// with inputs, at most models.MaxWarmup bytes.
func parseWarmup(h string) (json.RawMessage, error) {
	if h == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not base64: %v", errBadWarmup, api.HeaderWarmup, err)
	}
	var req inference.InferRequest
	if err := json.Unmarshal(b, &req); err != nil || len(req.Inputs) == 0 {
		return nil, fmt.Errorf("%w: %s: not an OIP v2 inference request with inputs (%v)", errBadWarmup, api.HeaderWarmup, err)
	}
	if len(b) > models.MaxWarmup {
		return nil, fmt.Errorf("%w: %s: %d bytes, at most %d", errBadWarmup, api.HeaderWarmup, len(b), models.MaxWarmup)
	}
	return b, nil
}

func (a *API) handleActivate(w http.ResponseWriter, r *http.Request) {
	var req api.ActivateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Version == "" {
		// A body past the limit is 413, not a malformed one.
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, err)
			return
		}
		writeError(w, fmt.Errorf(`%w: body must be {"version": "..."}`, errBadBody))
		return
	}
	act, wr, err := a.cfg.Models.Activate(r.Context(), r.PathValue("model"), req.Version)
	if err != nil {
		writeError(w, err)
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"activation": act})
}

func (a *API) handleRollback(w http.ResponseWriter, r *http.Request) {
	act, wr, err := a.cfg.Models.Rollback(r.Context(), r.PathValue("model"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"activation": act})
}

// handleArtifact serves exactly the bytes of a version: the pinned one in
// the URL, or the version this peer serves for the model. It never serves
// another version than the one it names in Shoal-Model-Version.
func (a *API) handleArtifact(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		m, rd, err := a.cfg.Models.Artifact(ctx, r.PathValue("model"), r.PathValue("version"))
		if err != nil {
			return err
		}
		defer rd.Close()
		h := w.Header()
		h.Set(api.HeaderModelVersion, m.Version)
		h.Set("ETag", `"`+m.CID+`"`)
		h.Set("Content-Type", m.MediaType)
		h.Set("Content-Length", strconv.FormatInt(m.Size, 10))
		h.Set(api.HeaderArtifactSHA256, m.SHA256)
		if match := r.Header.Get("If-None-Match"); match == `"`+m.CID+`"` {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			n, _ := io.Copy(w, rd)
			a.artifactBytesOut.Add(uint64(n))
		}
		return nil
	})
}

// handlePull starts fetching and verifying a version in the background
// (prefetch by hand): 202 with the artifact's local status, which GET
// /v1/models/{m} then reports as it progresses (fetched_bytes of size);
// 200 when it is local already.
func (a *API) handlePull(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		res, started, err := a.cfg.Models.StartPull(ctx, r.PathValue("model"), r.PathValue("version"))
		if err != nil {
			return err
		}
		code := http.StatusOK
		if started {
			code = http.StatusAccepted
		}
		writeJSON(w, code, res)
		return nil
	})
}
