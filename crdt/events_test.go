package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// next returns the next event of sub, failing t if none comes in time.
func next(t *testing.T, sub *Subscription) Event {
	t.Helper()
	select {
	case ev := <-sub.C():
		return ev
	case <-sub.Done():
		t.Fatal("subscription ended")
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return Event{}
}

// TestDeleteHookOverASurvivingValueKeepsItsSeq: a delete hook that fires
// while the key still holds a value (go-ds-crdt does that when an older
// value survives a delete) is reported as a put of that value, and it
// must keep its Seq: rag's CaughtUp compares Delivered and Dispatched
// with EventSeq, and a zero there would leave it waiting.
func TestDeleteHookOverASurvivingValueKeepsItsSeq(t *testing.T) {
	r := openReplica(t)
	sub := r.Subscribe("/unit/", 8)
	if _, err := r.Put(context.Background(), "/unit/survivor", "unit.kv", "v"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, sub); ev.Type != EventPut || ev.Seq != 1 {
		t.Fatalf("first event %+v, want the put with Seq 1", ev)
	}
	r.deleteHook(ds.NewKey("/unit/survivor"))
	ev := next(t, sub)
	want := r.EventSeq()
	if ev.Type != EventPut || ev.Key != "/unit/survivor" {
		t.Fatalf("event after a delete hook over a surviving value: %+v, want a put of it", ev)
	}
	if ev.Seq != want || want != 2 {
		t.Fatalf("the rebuilt put carries Seq %d, want %d (EventSeq)", ev.Seq, want)
	}
	poll.Until(t, 10*time.Second, "the rebuilt put counted as dispatched and delivered", func() error {
		if d, got := r.Dispatched(), sub.Delivered(); d != want || got != want {
			return fmt.Errorf("Dispatched %d, Delivered %d, want %d", d, got, want)
		}
		return nil
	})
}
