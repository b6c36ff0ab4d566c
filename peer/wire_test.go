package peer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoal-mesh/shoal/internal/poll"
)

func TestWireFamilies(t *testing.T) {
	for p, want := range map[string]string{
		"/meshsub/1.1.0": "gossipsub", "/meshsub/1.2.0": "gossipsub", "/floodsub/1.0.0": "gossipsub",
		"/ipfs/bitswap/1.2.0": "bitswap", "/ipfs/kad/1.0.0": "dht", "/shoal/lan/kad/1.0.0": "dht",
		"/shoal/lan/artifact/1": "artifact", "/shoal/lan/infer/1.0.0": "other",
		"/ipfs/id/1.0.0": "other", "": "other",
	} {
		if got := family(protocol.ID(p)); got != want {
			t.Errorf("family(%q) = %s, want %s", p, got, want)
		}
	}
}

// TestWireBytesAreCounted: two peers heartbeating to each other show
// gossipsub bytes both ways on /metrics, the figure an operator reads a
// gateway link's replication cost from.
func TestWireBytesAreCounted(t *testing.T) {
	cfg := func(boot ...string) Config {
		return Config{DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
			Mesh: "wiretest", NoSync: true, Bootstrap: boot, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	a, err := New(context.Background(), cfg())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(context.Background(), cfg(fmt.Sprintf("%s/p2p/%s", a.host.Addrs()[0], a.host.ID())))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	poll.Until(t, 30*time.Second, "gossipsub bytes counted both ways on both peers", poll.True(
		func() bool {
			return a.wire.bytes("in")["gossipsub"] > 0 && a.wire.bytes("out")["gossipsub"] > 0 &&
				b.wire.bytes("in")["gossipsub"] > 0 && b.wire.bytes("out")["gossipsub"] > 0
		},
		func() string { return fmt.Sprintf("a in %v out %v", a.wire.bytes("in"), a.wire.bytes("out")) }))
	_, body := get(t, "http://"+b.APIAddr()+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]float64{}
	for _, m := range fams["shoal_p2p_bytes_total"].GetMetric() {
		var dir, proto string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "direction":
				dir = l.GetValue()
			case "protocol":
				proto = l.GetValue()
			}
		}
		seen[dir+"/"+proto] = m.GetCounter().GetValue()
	}
	if len(seen) != 2*len(wireFamilies) || seen["out/gossipsub"] <= 0 || seen["in/gossipsub"] <= 0 {
		t.Errorf("shoal_p2p_bytes_total = %v", seen)
	}
}
