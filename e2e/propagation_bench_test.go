package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
)

// BenchmarkPropagation measures one writer → all peers lag; b.N records
// are written. `make bench` prints the same measurement as a table.
func BenchmarkPropagation(b *testing.B) {
	for _, n := range []int{3, 10} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			m, err := testmesh.Start(ctx, testmesh.Options{N: n, Dir: b.TempDir(), Sync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			b.ResetTimer()
			lags, err := m.MeasurePropagation(ctx, b.N, 5*time.Millisecond)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(testmesh.Percentile(lags, 50).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(testmesh.Percentile(lags, 99).Microseconds())/1000, "p99-ms")
		})
	}
}
