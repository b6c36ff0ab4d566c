// Package poll is the one way Shoal's tests (and its test harnesses) wait
// for something to happen: check a condition until it holds or a deadline
// passes, then say what the condition last reported. Fixed sleeps and
// hand-written deadline loops are not used as synchronisation anywhere
// else. It imports only the standard library, so every package's tests
// may use it — peer, cmd/shoal, inference, e2e and its harnesses.
package poll

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = 20 * time.Millisecond

// Wait calls cond every interval until it returns nil or ctx ends. The
// error then wraps ctx's and carries cond's last report.
func Wait(ctx context.Context, interval time.Duration, cond func() error) error {
	var last error
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		if last = cond(); last == nil {
			return nil
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// Until fails t (Fatal) unless cond returns nil within timeout; the
// failure names what was awaited and cond's last report.
func Until(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := Wait(ctx, Interval, cond); err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, err)
	}
}

// True adapts a boolean condition for Wait and Until: when ok reports
// false, the error is why (formatted lazily, at each check).
func True(ok func() bool, why func() string) func() error {
	return func() error {
		if ok() {
			return nil
		}
		return fmt.Errorf("%s", why())
	}
}
