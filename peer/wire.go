package peer

import (
	"strings"

	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// wireBytes counts what this peer sends and receives over libp2p streams,
// by protocol family, for shoal_p2p_bytes_total: what replication and
// fan-out cost a gateway's link, which bitswap's own counters (blocks
// only) and the OS (every process on the box) cannot say. The counts are
// stream payload: TCP/QUIC, Noise and yamux framing come on top.
type wireBytes struct {
	counter *metrics.BandwidthCounter
}

func newWireBytes() *wireBytes { return &wireBytes{counter: metrics.NewBandwidthCounter()} }

// wireFamilies are the label values of shoal_p2p_bytes_total's protocol.
var wireFamilies = []string{"gossipsub", "bitswap", "artifact", "dht", "other"}

// family groups a protocol id: gossipsub carries heartbeats and record
// broadcasts, bitswap delta blocks and the artifact blocks the swarm did
// not bring, artifact the swarm's (store/artifacts), the DHT discovery across
// sites; identify, ping, hole punching and Shoal's inference forwarding
// are "other".
func family(p protocol.ID) string {
	s := string(p)
	switch {
	case strings.HasPrefix(s, "/meshsub/"), strings.HasPrefix(s, "/floodsub/"):
		return "gossipsub"
	case strings.HasPrefix(s, "/ipfs/bitswap"):
		return "bitswap"
	case strings.HasPrefix(s, "/shoal/") && strings.HasSuffix(s, "/artifact/1"):
		return "artifact"
	case strings.Contains(s, "/kad/"):
		return "dht"
	}
	return "other"
}

// bytes returns the bytes moved in direction ("in" or "out") by protocol
// family.
func (w *wireBytes) bytes(direction string) map[string]uint64 {
	out := make(map[string]uint64, len(wireFamilies))
	for _, f := range wireFamilies {
		out[f] = 0
	}
	if w == nil {
		return out
	}
	for p, st := range w.counter.GetBandwidthByProtocol() {
		n := st.TotalOut
		if direction == "in" {
			n = st.TotalIn
		}
		out[family(p)] += uint64(n)
	}
	return out
}
