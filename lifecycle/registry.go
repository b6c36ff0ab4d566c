package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// The registry as this peer serves it: what the HTTP API's model routes
// and the CLI's `shoal model` verbs do.

// ErrEmptyArtifact: an upload with no bytes.
var ErrEmptyArtifact = errors.New("empty artifact")

// List describes every model the registry knows, as this peer sees it.
func (l *Manager) List(ctx context.Context) (api.ModelList, error) {
	all, err := l.cfg.Registry.Models(ctx)
	if err != nil {
		return api.ModelList{}, err
	}
	out := api.ModelList{Models: []api.ModelInfo{}, Publisher: l.cfg.Registry.Publisher().ID(), Trusted: l.cfg.Registry.Trusted()}
	for _, st := range all {
		out.Models = append(out.Models, l.Info(ctx, st))
	}
	return out, nil
}

// Model describes one model.
func (l *Manager) Model(ctx context.Context, name string) (api.ModelInfo, error) {
	st, err := l.cfg.Registry.State(ctx, name)
	if err != nil {
		return api.ModelInfo{}, err
	}
	return l.Info(ctx, st), nil
}

// CurrentServing returns a model's current activation (nil: none) and the
// version this peer serves ("": none) — what a watch stream reports on
// every change, without Model's per-version artifact states.
func (l *Manager) CurrentServing(ctx context.Context, name string) (*models.Activation, string, error) {
	st, err := l.cfg.Registry.State(ctx, name)
	if err != nil {
		return nil, "", err
	}
	serving := ""
	if s, ok := l.Serving(name); ok {
		serving = s.Version
	}
	return st.Current, serving, nil
}

// Push imports an artifact read from r, publishes its signed manifest
// (m without CID, sha256 and size, which the import fills in) and marks
// it verified here. Blocks of a refused import are dropped again.
func (l *Manager) Push(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error) {
	c, sum, size, err := l.cfg.Artifacts.Import(ctx, r)
	if err != nil {
		return m, crdt.Write{}, err
	}
	if size == 0 {
		l.discard(ctx, c)
		return m, crdt.Write{}, ErrEmptyArtifact
	}
	m.CID, m.SHA256, m.Size = c.String(), sum, size
	m, wr, err := l.cfg.Registry.Publish(ctx, m)
	if err != nil {
		if errors.Is(err, models.ErrDuplicate) {
			l.discard(ctx, c)
		}
		return m, wr, err
	}
	if err := l.cfg.Artifacts.MarkVerified(ctx, artifacts.Spec{Ref: m.Ref(), CID: c, SHA256: sum, Size: size}); err != nil {
		return m, wr, err
	}
	return m, wr, nil
}

// discard drops the blocks of an import that was refused, keeping any
// block shared with a verified artifact.
func (l *Manager) discard(ctx context.Context, c cid.Cid) {
	var keep []cid.Cid
	if all, err := l.cfg.Artifacts.All(ctx); err == nil {
		for _, st := range all {
			if k, err := cid.Decode(st.CID); err == nil && st.State == artifacts.StateVerified {
				keep = append(keep, k)
			}
		}
	}
	l.cfg.Artifacts.Remove(ctx, []artifacts.Spec{{Ref: "refused@" + c.String(), CID: c}}, keep)
}

// Activate makes model@version the current version (signed, replicated).
func (l *Manager) Activate(ctx context.Context, model, version string) (models.Activation, crdt.Write, error) {
	return l.cfg.Registry.Activate(ctx, model, version)
}

// Rollback re-activates the version activated before the current one.
func (l *Manager) Rollback(ctx context.Context, model string) (models.Activation, crdt.Write, error) {
	return l.cfg.Registry.Rollback(ctx, model)
}

// StartPull starts fetching and verifying model@version in the
// background (prefetch by hand) unless it is local already; started says
// which. The result is the artifact's local status now.
func (l *Manager) StartPull(ctx context.Context, model, version string) (api.PullResult, bool, error) {
	m, err := l.cfg.Registry.Manifest(ctx, model, version)
	if err != nil {
		return api.PullResult{}, false, err
	}
	if _, err := ArtifactSpec(m); err != nil {
		return api.PullResult{}, false, err
	}
	if st, ok := l.cfg.Artifacts.Status(ctx, m.Ref()); ok && st.CID == m.CID && st.State == artifacts.StateVerified {
		return api.PullResult{Ref: m.Ref(), Local: st}, false, nil
	}
	l.Pull(m)
	st, _ := l.cfg.Artifacts.Status(ctx, m.Ref())
	return api.PullResult{Ref: m.Ref(), Local: st, Size: m.Size}, true, nil
}

// ServingVersion is the version of model this peer serves. A known model
// with none served yet is ErrNotLoaded.
func (l *Manager) ServingVersion(ctx context.Context, model string) (string, error) {
	if s, ok := l.Serving(model); ok {
		return s.Version, nil
	}
	if _, err := l.cfg.Registry.State(ctx, model); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%w: no verified version of %s on this peer yet", ErrNotLoaded, model)
}

// Artifact opens exactly the bytes of model@version (version "": the one
// this peer serves), fetching them within ctx if they are not local.
func (l *Manager) Artifact(ctx context.Context, model, version string) (models.Manifest, io.ReadCloser, error) {
	if version == "" {
		v, err := l.ServingVersion(ctx, model)
		if err != nil {
			return models.Manifest{}, nil, err
		}
		version = v
	}
	m, err := l.cfg.Registry.Manifest(ctx, model, version)
	if err != nil {
		return m, nil, err
	}
	// Once the blocks are local, reading them must outlast the request's
	// wait deadline (a large artifact streams for longer).
	rd, err := l.open(ctx, m, context.WithoutCancel(ctx))
	if err != nil {
		return m, nil, err
	}
	return m, rd, nil
}
