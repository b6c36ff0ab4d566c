package lifecycle

import (
	"context"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// Info describes a model as this peer sees it: the registry's effective
// state, what is served here, and each version's local state.
func (l *Manager) Info(ctx context.Context, st models.ModelState) api.ModelInfo {
	mi := api.ModelInfo{Name: st.Name, Current: st.Current, Why: st.Why(), Activations: st.Activations, Versions: []api.VersionInfo{}}
	if s, ok := l.Serving(st.Name); ok {
		mi.Serving = &api.ServingInfo{Version: s.Version, CID: s.CID, Since: s.Since.UTC(), LagSeconds: s.LagSecond}
	}
	for _, vs := range st.Versions {
		vi := api.VersionInfo{Manifest: vs.Manifest, Conflicts: vs.Conflicts, LoadError: l.BadReason(vs.Manifest.Ref())}
		if ls, ok := l.cfg.Artifacts.Status(ctx, vs.Manifest.Ref()); ok && ls.CID == vs.Manifest.CID {
			vi.Local = &ls
		}
		mi.Versions = append(mi.Versions, vi)
	}
	return mi
}

// Summary is a model's line in the peer's status.
func Summary(mi api.ModelInfo) api.ModelSummary {
	ms := api.ModelSummary{Name: mi.Name}
	if mi.Current != nil {
		ms.Current = mi.Current.Version
	}
	if mi.Serving != nil {
		ms.Serving, ms.LagSeconds = mi.Serving.Version, mi.Serving.LagSeconds
	}
	for _, v := range mi.Versions {
		switch {
		case v.Local == nil:
		case v.Local.State == artifacts.StateVerified && v.LoadError == "":
			ms.Local++
		case v.Local.State == artifacts.StateBad, v.LoadError != "":
			ms.Bad++
		}
	}
	return ms
}
