package poll

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestWaitReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	err := Wait(context.Background(), time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("err %v after %d calls, want nil after 3", err, calls)
	}
}

func TestWaitReportsTheLastErrorAtTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := Wait(ctx, time.Millisecond, func() error { return errors.New("still waiting") })
	if !errors.Is(err, context.DeadlineExceeded) || err.Error() != "context deadline exceeded: still waiting" {
		t.Fatalf("err = %v", err)
	}
}

// fakeTB records a Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestUntilFailsWithWhatWasAwaited(t *testing.T) {
	ft := &fakeTB{TB: t}
	n := 0
	Until(ft, 50*time.Millisecond, "the answer", True(func() bool { return false }, func() string { n++; return fmt.Sprint("checked ", n) }))
	if ft.failed == "" || n == 0 {
		t.Fatal("Until did not fail")
	}
	want := fmt.Sprintf("the answer: not within 50ms: context deadline exceeded: checked %d", n)
	if ft.failed != want {
		t.Fatalf("failure %q, want %q", ft.failed, want)
	}
	ok := &fakeTB{TB: t}
	Until(ok, time.Second, "x", func() error { return nil })
	if ok.failed != "" {
		t.Fatalf("Until failed on a condition that holds: %s", ok.failed)
	}
}
