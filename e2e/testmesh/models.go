package testmesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// PublishAndActivate imports data on peer 0, publishes it as model@version
// and activates it, the way the API's push does.
func (m *Mesh) PublishAndActivate(ctx context.Context, model, version string, data []byte) error {
	n := m.Node(0)
	c, sum, size, err := n.Artifacts().Import(ctx, bytes.NewReader(data))
	if err != nil {
		return err
	}
	man, _, err := n.Registry().Publish(ctx, models.Manifest{Model: model, Version: version, CID: c.String(), SHA256: sum, Size: size, MediaType: "application/octet-stream"})
	if err != nil {
		return err
	}
	if err := n.Artifacts().MarkVerified(ctx, artifacts.Spec{Ref: man.Ref(), CID: c, SHA256: sum, Size: size}); err != nil {
		return err
	}
	_, _, err = n.Registry().Activate(ctx, model, version)
	return err
}

// WaitServing waits until every running peer serves model@version and
// returns, per peer other than 0, the time from start until it did.
func (m *Mesh) WaitServing(ctx context.Context, model, version string, start time.Time) ([]time.Duration, error) {
	nodes := m.Nodes()
	done := make([]time.Duration, len(nodes))
	remaining := len(nodes) - 1
	// A short interval: the times measured are propagation latencies.
	if err := poll.Wait(ctx, 2*time.Millisecond, func() error {
		for i, n := range nodes[1:] {
			if done[i+1] != 0 {
				continue
			}
			if v, ok := n.Serving(model); ok && v == version {
				done[i+1] = time.Since(start)
				remaining--
			}
		}
		if remaining > 0 {
			return fmt.Errorf("%d peers do not serve %s@%s", remaining, model, version)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := done[1:]
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// RandomBytes returns n random bytes.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
