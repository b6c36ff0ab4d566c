package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// TestDigestFollowsTheState: the digest kept up from events equals one
// computed from a full read of the state, after puts, overwrites, deletes
// and batches, and is independent of the order keys changed in.
func TestDigestFollowsTheState(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := r.Put(ctx, fmt.Sprintf("/d/%02d", i%7), "unit.kv", i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Delete(ctx, "/d/03"); err != nil {
		t.Fatal(err)
	}
	ops := []Op{{Key: "/d/10", Kind: "unit.kv", Body: "x"}, {Key: "/d/01", Delete: true}, {Key: "/d/11", Kind: "unit.kv", Body: "y"}}
	if _, err := r.PutBatch(ctx, ops); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the running digest equals a digest read from the state", func() error {
		if r.Dispatched() != r.EventSeq() {
			return fmt.Errorf("events still queued")
		}
		want := newStateDigest()
		if err := want.load(ctx, r); err != nil {
			return err
		}
		if got := r.digest.value(); got != want.value() {
			return fmt.Errorf("running %s, from the state %s", got, want.value())
		}
		return nil
	})
	a, b := newStateDigest(), newStateDigest()
	a.ready, b.ready = true, true
	a.set("/x", []byte("1"))
	a.set("/y", []byte("2"))
	b.set("/y", []byte("2"))
	b.set("/x", []byte("0"))
	b.set("/x", []byte("1"))
	if a.value() != b.value() {
		t.Errorf("order changed the digest: %s vs %s", a.value(), b.value())
	}
	b.set("/y", nil)
	if a.value() == b.value() {
		t.Error("a delete left the digest unchanged")
	}
}
