package peer

import (
	"bytes"
	"context"
	"io"
	"os"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
)

// DefaultModel is a model a peer publishes (and activates) by itself when
// the mesh has none of that name: the out-of-the-box demo that makes a
// fresh `shoal run` answer inference requests.
type DefaultModel struct {
	Name    string
	Version string
	Path    string // the artifact, or
	Data    []byte // its bytes
	// MediaType defaults to models.MediaTypeONNX.
	MediaType string
	// NoActivate publishes without activating (companion artifacts).
	NoActivate bool
}

// DemoRAG is the retrieval demo a fresh peer sets up: an embedder with its
// tokenizer and a small collection, unless the mesh already has them.
type DemoRAG struct {
	Embedder   DefaultModel
	Tokenizer  DefaultModel
	Collection string
	Docs       []api.DocRequest
}

// waitSynced waits (bounded) for the first sync with the mesh: a new peer
// must not publish defaults over a fleet that already moved on.
func (n *Node) waitSynced(ctx context.Context) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st := n.replica.Staleness()
		connected := len(n.host.Network().Peers()) > 0
		if time.Since(n.started) > 3*time.Second && !connected {
			return // alone: nothing to sync with
		}
		reachable := 0
		for _, p := range st.Peers {
			if p.Reachable {
				reachable++
			}
		}
		if connected && reachable > 0 && st.Seconds < 2 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// publishDefault publishes (and activates) d unless the mesh knows a
// version of d.Name. It reports whether d is now available.
func (n *Node) publishDefault(ctx context.Context, d DefaultModel) bool {
	if st, err := n.registry.State(ctx, d.Name); err == nil && len(st.Versions) > 0 {
		n.log.Info("default model already in the mesh; not publishing it", "model", d.Name)
		return true
	}
	var r io.Reader = bytes.NewReader(d.Data)
	if d.Path != "" {
		f, err := os.Open(d.Path)
		if err != nil {
			n.log.Warn("default model unavailable", "path", d.Path, "err", err)
			return false
		}
		defer f.Close()
		r = f
	}
	if d.MediaType == "" {
		d.MediaType = models.MediaTypeONNX
	}
	if _, _, err := n.life.Push(ctx, r, models.Manifest{Model: d.Name, Version: d.Version, MediaType: d.MediaType}); err != nil {
		n.log.Error("default model publish failed", "model", d.Name, "err", err)
		return false
	}
	if !d.NoActivate {
		if _, _, err := n.registry.Activate(ctx, d.Name, d.Version); err != nil {
			n.log.Error("default model activation failed", "model", d.Name, "err", err)
			return false
		}
	}
	n.log.Info("published the default model", "model", d.Name, "version", d.Version, "activated", !d.NoActivate)
	return true
}

// publishDefaults sets up the configured defaults once synced.
func (n *Node) publishDefaults(ctx context.Context) {
	n.waitSynced(ctx)
	if d := n.cfg.DefaultModel; d != nil {
		n.publishDefault(ctx, *d)
	}
	demo := n.cfg.DemoRAG
	if demo == nil || !n.publishDefault(ctx, demo.Embedder) || !n.publishDefault(ctx, demo.Tokenizer) {
		return
	}
	if _, err := n.rag.Spec(ctx, demo.Collection); err == nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := n.createDemoCollection(wctx, demo); err != nil {
		n.log.Error("demo collection", "collection", demo.Collection, "err", err)
	}
}

func (n *Node) createDemoCollection(ctx context.Context, demo *DemoRAG) error {
	ref := demo.Embedder.Name + "@" + demo.Embedder.Version
	vecs, _, _, err := n.rag.Embed(ctx, ref, []string{"dimension probe"})
	if err != nil {
		return err
	}
	if _, _, err := n.rag.CreateCollection(ctx, collections.Spec{Name: demo.Collection, Embedder: ref, Dimension: len(vecs[0]), Metric: collections.MetricCosine}); err != nil {
		return err
	}
	docs, _, err := n.rag.PrepareDocs(ctx, demo.Collection, demo.Docs)
	if err != nil {
		return err
	}
	if _, err := n.rag.PutDocs(ctx, demo.Collection, docs); err != nil {
		return err
	}
	n.log.Info("created the demo collection", "collection", demo.Collection, "documents", len(docs), "embedder", ref)
	return nil
}
