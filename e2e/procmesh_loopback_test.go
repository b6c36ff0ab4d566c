package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// TestProcessesOnLoopback: procmesh without a netsim network runs each
// peer as its own `shoal run` process on loopback ports of the test's
// namespace (the multi-process benchmarks' setup, no root needed): the
// processes connect, and an activation on one becomes current on the
// other.
func TestProcessesOnLoopback(t *testing.T) {
	m := startProcMesh(t, procmesh.Options{Sites: []int{0, 0}, Dir: t.TempDir(), Mesh: "loopback",
		Args: func(int, []*procmesh.Peer) []string { return []string{"--dht=false", "--mdns=false"} }})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if m.Peers[0].APIAddr() == m.Peers[1].APIAddr() || m.Peers[0].Pid() == 0 || m.Peers[0].Host != nil {
		t.Fatalf("peers share an API address or have no process: %s %s pid %d", m.Peers[0].APIAddr(), m.Peers[1].APIAddr(), m.Peers[0].Pid())
	}
	r, err := m.Peers[0].Do(ctx, "PUT", "/v1/models/lo/versions/v1?activate=true", []byte("loopback artifact"))
	if err != nil || r.Code/100 != 2 {
		t.Fatalf("push: %v %v", r, err)
	}
	poll.Until(t, 60*time.Second, "v1 current on peer 1", func() error {
		mi, err := m.Peers[1].Model(ctx, "lo")
		if err != nil {
			return err
		}
		if mi.Current == nil || mi.Current.Version != "v1" {
			return fmt.Errorf("current %+v", mi.Current)
		}
		return nil
	})
}
