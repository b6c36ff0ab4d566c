package crdt

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkFold measures a fold of a state of 2,000 keys holding 4 KB
// records, about a retrieval document with a 384-d vector: local writes
// wait for the whole of it (Fold holds the write lock), so its cost per
// key is how long a fold of a big state stalls them.
//
//	go test -run '^$' -bench Fold -benchtime 5x ./crdt/
func BenchmarkFold(b *testing.B) {
	const keys, batch = 2000, 100
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := openNode(b, ctx, b.TempDir(), nodeOpts{config: noAutoFold})
	defer n.close()
	body := strings.Repeat("x", 4000)
	for first := 0; first < keys; first += batch {
		var ops []Op
		for k := first; k < first+batch; k++ {
			ops = append(ops, Op{Key: fmt.Sprintf("/docs/d%05d", k), Kind: "unit.kv", Body: body})
		}
		if _, err := n.r.PutBatch(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	settled(b, n.r)
	var took time.Duration
	b.ResetTimer()
	for b.Loop() {
		rep, err := n.r.Fold(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Keys != keys {
			b.Fatalf("folded %d keys, want %d", rep.Keys, keys)
		}
		took += rep.Took
		b.StopTimer()
		settled(b, n.r) // the events of the fold records are not the fold's cost
		b.StartTimer()
	}
	b.ReportMetric(float64(took.Microseconds())/float64(b.N*keys), "µs/key")
}
