package crdt

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// TestPutEventsFollowTheirCommit: a subscriber that reads the key back on
// a put event reads that event's value, never the one before it —
// go-ds-crdt calls the put hook before its batch is committed.
func TestPutEventsFollowTheirCommit(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	sub := r.Subscribe("/commit/", 64)
	var mu sync.Mutex
	seen := 0
	var wrong []string
	go func() {
		for {
			select {
			case ev := <-sub.C():
				if ev.Type != EventPut {
					continue
				}
				rec, err := r.Get(ctx, ev.Key)
				mu.Lock()
				seen++
				if err != nil || rec.HLC != ev.Record.HLC {
					wrong = append(wrong, fmt.Sprintf("%s: event %v, Get %v (err %v)", ev.Key, ev.Record.HLC, rec.HLC, err))
				}
				mu.Unlock()
			case <-sub.Done():
				return
			}
		}
	}()
	pad := strings.Repeat("x", 300)
	want := 0
	awaitAll := func(what string) {
		t.Helper()
		poll.Until(t, 30*time.Second, what, func() error {
			mu.Lock()
			defer mu.Unlock()
			if seen != want {
				return fmt.Errorf("%d of %d put events read", seen, want)
			}
			return nil
		})
	}
	const single, batch = 50, 2000
	for i := range single {
		if _, err := r.Put(ctx, fmt.Sprintf("/commit/p/%d", i), "unit.kv", pad); err != nil {
			t.Fatal(err)
		}
	}
	want += single
	for round := range 2 {
		ops := make([]Op, batch)
		for i := range ops {
			ops[i] = Op{Key: fmt.Sprintf("/commit/b/%d", i), Kind: "unit.kv", Body: fmt.Sprint(round, pad)}
		}
		if _, err := r.PutBatch(ctx, ops); err != nil {
			t.Fatal(err)
		}
		want += batch
		// Each round waits for the last to be read, so that a Get can
		// only see the event's own value or an older one.
		awaitAll(fmt.Sprintf("round %d read", round))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(wrong) > 0 {
		t.Fatalf("%d of %d put events read back another value, first: %s", len(wrong), seen, wrong[0])
	}
}

// TestCommitTrackerWaitsForOpenBatches: an event waits for the batches
// open when it was pushed, not for later ones, and not forever for one
// that is never committed.
func TestCommitTrackerWaitsForOpenBatches(t *testing.T) {
	ctx := context.Background()
	var ct commitTracker
	first := ct.begin()
	barrier := ct.newest()
	later := ct.begin()
	returned := make(chan int, 1)
	go func() {
		n, _ := ct.await(ctx, barrier)
		returned <- n
	}()
	select {
	case <-returned:
		t.Fatal("await returned while the batch open at its barrier was still open")
	case <-time.After(50 * time.Millisecond): // a negative check: it must not return
	}
	ct.end(first)
	select {
	case n := <-returned:
		if n != 0 {
			t.Errorf("%d batches taken as abandoned, want 0", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("await still waiting after its batch committed (batch %d, opened later, is still open)", later)
	}

	// A batch never committed stops holding events up after abandonAfter.
	ct.abandonAfter = 20 * time.Millisecond
	if n, ok := ct.await(ctx, ct.newest()); !ok || n != 1 {
		t.Errorf("await over a batch never committed: %d abandoned, ok %v; want 1, true", n, ok)
	}
	cctx, cancel := context.WithCancel(ctx)
	ct.begin()
	ct.abandonAfter = time.Hour
	cancel()
	if _, ok := ct.await(cctx, ct.newest()); ok {
		t.Error("await did not give up when its context ended")
	}
}
