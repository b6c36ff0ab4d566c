package testmesh

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
)

// MeasurePropagation writes `writes` records on peer 0, one every gap, and
// returns for each write the time until every other running peer had
// applied it (the moment its event was delivered there).
func (m *Mesh) MeasurePropagation(ctx context.Context, writes int, gap time.Duration) ([]time.Duration, error) {
	nodes := m.Nodes()
	if len(nodes) < 2 {
		return nil, fmt.Errorf("need at least 2 peers")
	}
	prefix := fmt.Sprintf("/bench/%d/", time.Now().UnixNano())
	type arrival struct {
		key string
		at  time.Time
	}
	arrivals := make(chan arrival, writes*len(nodes))
	for _, n := range nodes[1:] {
		sub := n.Replica().Subscribe(prefix, writes)
		defer sub.Close()
		go func() {
			for {
				select {
				case ev := <-sub.C():
					if ev.Type == crdt.EventPut {
						arrivals <- arrival{ev.Key, time.Now()}
					}
				case <-sub.Done():
					return
				}
			}
		}()
	}
	started := make(map[string]time.Time, writes)
	last := make(map[string]time.Time, writes)
	seen := make(map[string]int, writes)
	for i := 0; i < writes; i++ {
		key := fmt.Sprintf("%s%06d", prefix, i)
		started[key] = time.Now()
		if _, err := nodes[0].Replica().Put(ctx, key, "bench.kv", map[string]int{"i": i}); err != nil {
			return nil, err
		}
		time.Sleep(gap) // paces the writes (the load), not synchronisation
	}
	want := len(nodes) - 1
	complete := 0
	for complete < writes {
		select {
		case a := <-arrivals:
			seen[a.key]++
			if a.at.After(last[a.key]) {
				last[a.key] = a.at
			}
			if seen[a.key] == want {
				complete++
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d writes reached every peer: %w", complete, writes, ctx.Err())
		}
	}
	out := make([]time.Duration, 0, writes)
	for k, t0 := range started {
		out = append(out, last[k].Sub(t0))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Percentile returns the p-th percentile (0..100) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p/100 + 0.5)
	return sorted[i]
}
