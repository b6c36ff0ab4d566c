package lifecycle

import (
	"context"
	"fmt"
	"strings"

	"github.com/shoal-mesh/shoal/inference"
)

// Readiness in the Open Inference Protocol's sense.

// Ready reports whether inference works here and every ONNX model with a
// current version has a loaded session; why says what is missing.
func (l *Manager) Ready(ctx context.Context) (ready bool, why string) {
	if l.cfg.Engine == nil {
		return false, fmt.Sprintf("inference unavailable: %v", l.cfg.EngineErr)
	}
	states, err := l.cfg.Registry.Models(ctx)
	if err != nil {
		return false, err.Error()
	}
	var waiting []string
	for _, st := range states {
		if st.Current == nil {
			continue
		}
		vs, ok := st.Version(st.Current.Version)
		if !ok || !vs.Manifest.IsONNX() {
			continue
		}
		if _, ok := l.cfg.Pool.Current(st.Name); !ok {
			waiting = append(waiting, st.Name)
		}
	}
	if len(waiting) > 0 {
		return false, "no version loaded yet for " + strings.Join(waiting, ", ")
	}
	return true, ""
}

// ModelReadiness is a model's (or version's) readiness here.
type ModelReadiness struct {
	Ready   bool
	Version string // the version that is (or was asked to be) ready
	Reason  string // why a pinned version does not load here
}

// ModelReady reports whether model (version "") or model@version can
// answer here now; an unknown model or version is an error.
func (l *Manager) ModelReady(ctx context.Context, model, version string) (ModelReadiness, error) {
	if version != "" {
		if _, err := l.cfg.Registry.Manifest(ctx, model, version); err != nil {
			return ModelReadiness{}, err
		}
		r := ModelReadiness{Version: version, Ready: l.cfg.Pool.Has(model, version)}
		if !r.Ready {
			r.Reason = l.BadReason(model + "@" + version)
		}
		return r, nil
	}
	if _, err := l.cfg.Registry.State(ctx, model); err != nil {
		return ModelReadiness{}, err
	}
	if ref, ok := l.cfg.Pool.Current(model); ok {
		return ModelReadiness{Ready: true, Version: ref.Version}, nil
	}
	return ModelReadiness{}, nil
}

// Metadata is the OIP v2 metadata of model[@version] and the version it
// describes; for an unpinned request it lists every known version.
func (l *Manager) Metadata(ctx context.Context, model, version string) (inference.ModelMetadata, string, error) {
	s, _, err := l.Session(ctx, model, version)
	if err != nil {
		return inference.ModelMetadata{}, "", err
	}
	md := s.Metadata()
	s.Release()
	if st, err := l.cfg.Registry.State(ctx, model); err == nil && version == "" {
		md.Versions = md.Versions[:0]
		for _, v := range st.Versions {
			md.Versions = append(md.Versions, v.Manifest.Version)
		}
	}
	return md, s.Version, nil
}
