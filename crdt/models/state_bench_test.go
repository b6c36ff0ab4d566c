package models

import (
	"context"
	"fmt"
	"testing"

	"github.com/shoal-mesh/shoal/internal/crdttest"
)

// BenchmarkReadState is what the registry pays on every change of a model
// (a record event re-reads the model's state): here a model with 60
// versions and 60 activations, read without the state cache.
func BenchmarkReadState(b *testing.B) {
	g := newTestRegistry(b, crdttest.OpenReplica(b, "bench"))
	ctx := context.Background()
	for i := range 60 {
		v := fmt.Sprintf("v%03d", i)
		m := Manifest{Model: "m", Version: v, CID: "cid-" + v, SHA256: "sha-" + v, Size: 1, MediaType: MediaTypeONNX}
		if _, _, err := g.Publish(ctx, m); err != nil {
			b.Fatal(err)
		}
		if _, _, err := g.Activate(ctx, "m", v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.readState(ctx, "m"); err != nil {
			b.Fatal(err)
		}
	}
}
