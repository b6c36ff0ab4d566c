package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// An entry stays readable until its TTL has passed. Badger keeps expiry
// in whole seconds and its WithTTL rounds down, which hid an entry as soon
// as the clock reached the whole second before its deadline.
func TestExpiringKeepsAnEntryUntilItsTTL(t *testing.T) {
	e, err := OpenExpiring(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// A deadline 0.8 s past the next whole second S, read just after S.
	now := time.Now()
	next := now.Truncate(time.Second).Add(time.Second)
	if err := e.Put([]byte("k"), []byte("v"), next.Add(800*time.Millisecond).Sub(now)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the clock passes the whole second before the deadline", poll.True(
		func() bool { return !time.Now().Before(next) }, func() string { return time.Now().String() }))
	if v, err := e.Get([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("read %v ahead of its deadline: %q, %v", next.Add(800*time.Millisecond).Sub(time.Now()), v, err)
	}
	var keys []string
	e.ScanKeys(nil, func(k []byte) { keys = append(keys, string(k)) })
	if fmt.Sprint(keys) != "[k]" {
		t.Errorf("keys %v", keys)
	}
	poll.Until(t, 10*time.Second, "the entry expires", func() error {
		if _, err := e.Get([]byte("k")); !errors.Is(err, ErrExpiringNotFound) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
}
