package crdt

import (
	"bytes"
	"context"
	"testing"
)

// Pauses overlap: a prune pauses the walks before it waits for the write
// lock a fold or a rebuild holds, and that one paused too. The first to
// resume must not let walks through while the other still counts on them
// being held.
func TestOverlappingPausesHoldWalksUntilTheLastResume(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := &broadcaster{ctx: ctx, in: make(chan []byte, 1)}
	held := func() bool {
		b.pauseMu.Lock()
		ch := b.resumed
		b.pauseMu.Unlock()
		if ch == nil {
			return false
		}
		select {
		case <-ch:
			return false
		default:
			return true
		}
	}

	if err := b.pause(ctx); err != nil { // the prune
		t.Fatal(err)
	}
	if err := b.pause(ctx); err != nil { // the rebuild
		t.Fatal(err)
	}
	b.resume() // the rebuild is done
	if !held() {
		t.Fatal("walks resumed while the prune's pause was still on")
	}
	b.resume() // the prune is done
	if held() {
		t.Fatal("walks still held after every pauser resumed")
	}

	b.in <- []byte("heads")
	got, err := b.Next(ctx)
	if err != nil || !bytes.Equal(got, []byte("heads")) {
		t.Fatalf("Next after the last resume = %q, %v", got, err)
	}
}
