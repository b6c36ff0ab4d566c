package crdt

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
		t.Fatalf("subscription ended: %v", sub.Err())
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

// TestSlowSubscriberDoesNotDelayOthers: a subscriber that never reads
// must not hold back one that does, and once it is further behind than
// its limits it is ended with ErrSlowSubscriber (counted), not left to
// lose events silently.
func TestSlowSubscriberDoesNotDelayOthers(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	r.SetSubscriberLimits(SubscriberLimits{Events: 16})
	slow := r.Subscribe("/unit/", 1) // never read
	r.SetSubscriberLimits(SubscriberLimits{})
	fast := r.Subscribe("/unit/", 1)
	const n = 100
	var mu sync.Mutex
	var got []string
	go func() {
		for {
			select {
			case ev := <-fast.C():
				mu.Lock()
				got = append(got, ev.Key)
				mu.Unlock()
			case <-fast.Done():
				return
			}
		}
	}()
	for i := range n {
		if _, err := r.Put(ctx, fmt.Sprintf("/unit/%03d", i), "unit.kv", i); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "the reading subscriber got every event in order", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) != n {
			return fmt.Errorf("%d of %d events", len(got), n)
		}
		for i, k := range got {
			if want := fmt.Sprintf("/unit/%03d", i); k != want {
				return fmt.Errorf("event %d is %s, want %s", i, k, want)
			}
		}
		return nil
	})
	select {
	case <-slow.Done():
	default:
		t.Fatal("the subscriber that never read is still open")
	}
	if err := slow.Err(); !errors.Is(err, ErrSlowSubscriber) {
		t.Errorf("the slow subscription ended with %v, want ErrSlowSubscriber", err)
	}
	if d := slow.Dispatched(); d >= uint64(n) {
		t.Errorf("the slow subscription reports every event dispatched to it (%d)", d)
	}
	if err := fast.Err(); err != nil {
		t.Errorf("the reading subscription: %v", err)
	}
	poll.Until(t, 10*time.Second, "the reading subscription dispatched up to EventSeq", func() error {
		if d, want := fast.Dispatched(), r.EventSeq(); d != want {
			return fmt.Errorf("Dispatched %d, want %d", d, want)
		}
		return nil
	})
	if c := r.Counters(); c.SlowSubscribers != 1 {
		t.Errorf("SlowSubscribers = %d, want 1", c.SlowSubscribers)
	}
	fast.Close()
	if err := fast.Err(); !errors.Is(err, ErrSubscriptionClosed) {
		t.Errorf("a closed subscription's Err is %v, want ErrSubscriptionClosed", err)
	}
}
