package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/procmesh"
)

// TestDiscoveryAcrossSites (issue 8): two sites, each a LAN of three
// peers (multicast stays inside a site; unicast is routed between them).
// No peer is told any address but one: the first peer of site 1 gets the
// first peer of site 2 as its bootstrap. mDNS finds the peers of each
// site, and the DHT rendezvous and heartbeats find the rest: every peer
// ends connected to all five others, peers it was never told about
// across the router included, and a write anywhere reaches everyone.
func TestDiscoveryAcrossSites(t *testing.T) {
	_, m := faultMesh(t, "shoal-sites", []int{1, 1, 1, 2, 2, 2}, func(o *procmesh.Options) {
		o.NoBootstrap = true
		o.Args = func(i int, peers []*procmesh.Peer) []string {
			args := []string{"--mdns=true", "--dht=true"}
			if i == 0 {
				args = append(args, "--bootstrap", peers[3].Multiaddr())
			}
			return args
		}
		o.SkipWait = true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	if err := m.WaitConnected(ctx, m.Peers...); err != nil {
		t.Fatal(err)
	}
	t.Logf("all six peers connected to each other %v after start", time.Since(start).Round(100*time.Millisecond))
	sources := map[string]float64{}
	for _, p := range m.Peers {
		for _, src := range []string{"bootstrap", "mdns", "heartbeat", "dht"} {
			sources[src] += metric(t, ctx, p, fmt.Sprintf(`shoal_discovered_peers_total{source=%q}`, src))
		}
	}
	t.Logf("connections by discovery source: %v", sources)
	if sources["mdns"] == 0 {
		t.Error("no peer was found by mDNS inside a site")
	}
	// Peers 1, 2, 4 and 5 were told nothing, and no multicast crosses the
	// router: their links to the other site (checked by WaitConnected
	// above) were learned through the mesh — from DHT lookups (which
	// connect by themselves), the rendezvous, or heartbeats.
	createNotes(t, ctx, m.Peers[5])
	waitConverged(t, ctx, m.Peers)
}
