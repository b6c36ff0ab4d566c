package lifecycle

import (
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// pending reports whether ch holds a signal, taking it.
func pending(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestWatchCoalescesAndNeverBlocks: signals to a watcher that does not
// read coalesce into one pending signal, and notify returns although
// nobody reads; every watcher gets its own signal.
func TestWatchCoalescesAndNeverBlocks(t *testing.T) {
	l := New(Config{})
	a, stopA := l.Watch()
	defer stopA()
	b, stopB := l.Watch()
	defer stopB()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			l.notify()
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("notify blocked on watchers that do not read")
	}
	for name, ch := range map[string]<-chan struct{}{"a": a, "b": b} {
		if len(ch) != 1 || !pending(ch) {
			t.Errorf("watcher %s: want exactly one pending signal after 1000 notifications", name)
		}
		if pending(ch) {
			t.Errorf("watcher %s: a second signal after taking the first", name)
		}
	}
	// Taken signals make room for the next one.
	l.notify()
	if !pending(a) || !pending(b) {
		t.Error("a notification after the signals were taken did not arrive")
	}
}

// TestWatchStopIsIdempotent: stop removes the watcher, once or twice,
// leaves the others, and a stopped watcher gets no more signals.
func TestWatchStopIsIdempotent(t *testing.T) {
	l := New(Config{})
	a, stopA := l.Watch()
	b, stopB := l.Watch()
	defer stopB()
	if n := l.watching(); n != 2 {
		t.Fatalf("%d watchers, want 2", n)
	}
	stopA()
	stopA()
	if n := l.watching(); n != 1 {
		t.Fatalf("%d watchers after stopping one twice, want 1", n)
	}
	l.notify()
	if pending(a) {
		t.Error("a stopped watcher was signalled")
	}
	if !pending(b) {
		t.Error("stopping one watcher silenced the other")
	}
}

// TestWatchSignalsRegistryChanges: a change from the registry wakes the
// watchers, also one (a version without prefetch) the lifecycle itself
// does nothing about.
func TestWatchSignalsRegistryChanges(t *testing.T) {
	l := New(Config{})
	ch, stop := l.Watch()
	defer stop()
	changes := make(chan models.Change)
	l.Start(changes)
	defer l.Close()
	m := models.Manifest{Model: "m", Version: "v1"}
	changes <- models.Change{Type: models.VersionAdded, Model: "m", Version: "v1", Manifest: &m}
	poll.Until(t, 10*time.Second, "the watcher is signalled", poll.True(func() bool { return len(ch) == 1 },
		func() string { return "no signal pending" }))
}
