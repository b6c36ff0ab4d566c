package peer

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

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// HeaderWarmup carries a version's warm-up request (base64 of OIP v2
// JSON) on PUT /v1/models/{m}/versions/{v}.
const HeaderWarmup = "Shoal-Warmup"

// MaxArtifactBytes bounds an artifact uploaded through the API.
const MaxArtifactBytes = 4 << 30

// uploadTimeout bounds reading one uploaded artifact.
const uploadTimeout = time.Hour

// ModelInfo is one model in GET /v1/models and `shoal model ls --json`.
type ModelInfo struct {
	Name        string              `json:"name"`
	Current     *models.Activation  `json:"current,omitempty"`
	Why         string              `json:"why"`
	Serving     *ServingInfo        `json:"serving,omitempty"`
	Versions    []VersionInfo       `json:"versions"`
	Activations []models.Activation `json:"activations"`
}

// ServingInfo is the version this peer serves.
type ServingInfo struct {
	Version    string    `json:"version"`
	CID        string    `json:"cid"`
	Since      time.Time `json:"since"`
	LagSeconds float64   `json:"lag_seconds"`
}

// VersionInfo is one version of a model with its local state here.
type VersionInfo struct {
	models.Manifest
	Local *artifacts.Status `json:"local,omitempty"`
	// LoadError says why a verified ONNX version does not load here.
	LoadError string            `json:"load_error,omitempty"`
	Conflicts []models.Manifest `json:"conflicts,omitempty"`
}

func (n *Node) modelInfo(ctx context.Context, st models.ModelState) ModelInfo {
	mi := ModelInfo{Name: st.Name, Current: st.Current, Why: st.Why(), Activations: st.Activations, Versions: []VersionInfo{}}
	if s, ok := n.life.Serving(st.Name); ok {
		mi.Serving = &ServingInfo{Version: s.Version, CID: s.CID, Since: s.Since.UTC(), LagSeconds: s.LagSecond}
	}
	for _, vs := range st.Versions {
		vi := VersionInfo{Manifest: vs.Manifest, Conflicts: vs.Conflicts, LoadError: n.badReason(vs.Manifest.Ref())}
		if ls, ok := n.artifacts.Status(ctx, vs.Manifest.Ref()); ok && ls.CID == vs.Manifest.CID {
			vi.Local = &ls
		}
		mi.Versions = append(mi.Versions, vi)
	}
	return mi
}

// modelErr maps registry and artifact errors to API errors.
func modelErr(err error) error {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, models.ErrBadName), errors.Is(err, crdt.ErrBadRecord):
		code = http.StatusBadRequest
	case errors.Is(err, models.ErrUnknownModel), errors.Is(err, models.ErrUnknownVersion):
		code = http.StatusNotFound
	case errors.Is(err, models.ErrDuplicate), errors.Is(err, models.ErrNoPrevious), errors.Is(err, artifacts.ErrBad):
		code = http.StatusConflict
	case errors.Is(err, artifacts.ErrIncomplete), errors.Is(err, artifacts.ErrNotLocal),
		errors.Is(err, context.DeadlineExceeded):
		// Not available within the request's time (Shoal-Timeout): the
		// caller may retry; the fetch or load goes on.
		return &apiError{code: http.StatusServiceUnavailable, msg: err.Error(), retry: 5 * time.Second}
	}
	return &apiError{code: code, msg: err.Error()}
}

func (n *Node) handleModels(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	all, err := n.registry.Models(ctx)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	out := []ModelInfo{}
	for _, st := range all {
		out = append(out, n.modelInfo(ctx, st))
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": out, "publisher": n.registry.Publisher().ID(), "trusted": n.registry.Trusted()})
}

func (n *Node) handleModel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	st, err := n.registry.State(ctx, r.PathValue("model"))
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	writeJSON(w, http.StatusOK, n.modelInfo(ctx, st))
}

// writeResult answers a write with its read-your-writes token.
func writeResult(w http.ResponseWriter, code int, wr crdt.Write, body map[string]any) {
	tok := wr.Token()
	w.Header().Set(HeaderToken, tok)
	body["token"] = tok
	writeJSON(w, code, body)
}

// handlePush imports an uploaded artifact, publishes its signed manifest
// and optionally activates it: PUT /v1/models/{model}/versions/{version}
// [?activate=true][&prefetch=true][&media_type=...].
func (n *Node) handlePush(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	model, version := r.PathValue("model"), r.PathValue("version")
	for kind, s := range map[string]string{"model": model, "version": version} {
		if err := models.CheckName(kind, s); err != nil {
			writeAPIError(w, modelErr(err))
			return
		}
	}
	q := r.URL.Query()
	activate, prefetch := q.Get("activate") == "true", q.Get("prefetch") == "true"
	mediaType := q.Get("media_type")
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	noCache := q.Get("no_cache") == "true"
	var warmup json.RawMessage
	if h := r.Header.Get(HeaderWarmup); h != "" {
		b, err := base64.StdEncoding.DecodeString(h)
		if err != nil {
			writeError(w, http.StatusBadRequest, HeaderWarmup+": not base64: "+err.Error())
			return
		}
		var req inference.InferRequest
		if err := json.Unmarshal(b, &req); err != nil || len(req.Inputs) == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: not an OIP v2 inference request with inputs (%v)", HeaderWarmup, err))
			return
		}
		if len(b) > models.MaxWarmup {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %d bytes, at most %d", HeaderWarmup, len(b), models.MaxWarmup))
			return
		}
		warmup = b
	}
	// A large artifact over a gateway's uplink takes longer than the
	// server's general read timeout; give the upload its own.
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadTimeout))
	c, sum, size, err := n.artifacts.Import(ctx, r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("artifact larger than %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the artifact: "+err.Error())
		return
	}
	if size == 0 {
		n.discard(ctx, c)
		writeError(w, http.StatusBadRequest, "empty artifact")
		return
	}
	m := models.Manifest{Model: model, Version: version, CID: c.String(), SHA256: sum, Size: size, MediaType: mediaType, Prefetch: prefetch, NoCache: noCache, Warmup: warmup}
	m, wr, err := n.registry.Publish(ctx, m)
	if err != nil {
		if errors.Is(err, models.ErrDuplicate) {
			n.discard(ctx, c)
		}
		writeAPIError(w, modelErr(err))
		return
	}
	if err := n.artifacts.MarkVerified(ctx, artifacts.Spec{Ref: m.Ref(), CID: c, SHA256: sum, Size: size}); err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	body := map[string]any{"manifest": m}
	if activate {
		a, awr, err := n.registry.Activate(ctx, model, version)
		if err != nil {
			writeAPIError(w, modelErr(err))
			return
		}
		body["activation"] = a
		wr = awr
	}
	writeResult(w, http.StatusCreated, wr, body)
}

// discard drops the blocks of an import that was refused, keeping any
// block shared with a verified artifact.
func (n *Node) discard(ctx context.Context, c cid.Cid) {
	var keep []cid.Cid
	if all, err := n.artifacts.All(ctx); err == nil {
		for _, st := range all {
			if k, err := cid.Decode(st.CID); err == nil && st.State == artifacts.StateVerified {
				keep = append(keep, k)
			}
		}
	}
	n.artifacts.Remove(ctx, []artifacts.Spec{{Ref: "refused@" + c.String(), CID: c}}, keep)
}

func (n *Node) handleActivate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Version == "" {
		writeError(w, http.StatusBadRequest, `body must be {"version": "..."}`)
		return
	}
	a, wr, err := n.registry.Activate(r.Context(), r.PathValue("model"), req.Version)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"activation": a})
}

func (n *Node) handleRollback(w http.ResponseWriter, r *http.Request) {
	a, wr, err := n.registry.Rollback(r.Context(), r.PathValue("model"))
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"activation": a})
}

// handleArtifact serves exactly the bytes of a version: the pinned one in
// the URL, or the version this peer serves for the model. It never serves
// another version than the one it names in Shoal-Model-Version.
func (n *Node) handleArtifact(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	model, version := r.PathValue("model"), r.PathValue("version")
	if version == "" {
		s, ok := n.life.Serving(model)
		if !ok {
			if _, err := n.registry.State(ctx, model); err != nil {
				writeAPIError(w, modelErr(err))
				return
			}
			writeAPIError(w, &apiError{code: http.StatusServiceUnavailable, retry: 5 * time.Second,
				msg: fmt.Sprintf("no verified version of %s on this peer yet", model)})
			return
		}
		version = s.Version
	}
	m, err := n.registry.Manifest(ctx, model, version)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	spec, err := specOf(m)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	// Known but not local: fetch it, bounded by the request's deadline.
	if _, err := n.artifacts.Ensure(ctx, spec); err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	rd, err := n.artifacts.Open(r.Context(), spec)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	defer rd.Close()
	h := w.Header()
	h.Set(HeaderModelVersion, m.Version)
	h.Set("ETag", `"`+m.CID+`"`)
	h.Set("Content-Type", m.MediaType)
	h.Set("Content-Length", strconv.FormatInt(m.Size, 10))
	h.Set("Shoal-Artifact-Sha256", m.SHA256)
	if match := r.Header.Get("If-None-Match"); match == `"`+m.CID+`"` {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	written, _ := io.Copy(w, rd)
	n.artifactBytesOut.Add(uint64(written))
}

// handlePull starts fetching and verifying a version in the background
// (prefetch by hand): 202 with the artifact's local status, which GET
// /v1/models/{m} then reports as it progresses (fetched_bytes of size).
func (n *Node) handlePull(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	m, err := n.registry.Manifest(ctx, r.PathValue("model"), r.PathValue("version"))
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	spec, err := specOf(m)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	if st, ok := n.artifacts.Status(ctx, m.Ref()); ok && st.CID == m.CID && st.State == artifacts.StateVerified {
		writeJSON(w, http.StatusOK, map[string]any{"ref": m.Ref(), "local": st})
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		pctx, cancel := context.WithTimeout(n.ctx, time.Hour)
		defer cancel()
		if _, err := n.artifacts.Ensure(pctx, spec); err != nil && pctx.Err() == nil {
			n.log.Warn("pull failed", "ref", m.Ref(), "err", err)
		}
	}()
	st, _ := n.artifacts.Status(ctx, m.Ref())
	writeJSON(w, http.StatusAccepted, map[string]any{"ref": m.Ref(), "local": st, "size": m.Size})
}
