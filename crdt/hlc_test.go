package crdt

import (
	"errors"
	"testing"
	"time"
)

func TestClockMonotonicUnderFrozenTime(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewClock("a", func() time.Time { return now })
	prev := c.Now()
	for i := 0; i < 100; i++ {
		h := c.Now()
		if h.Compare(prev) <= 0 {
			t.Fatalf("%v not after %v", h, prev)
		}
		prev = h
	}
	if prev.Wall != now.UnixNano() || prev.Logical != 100 {
		t.Errorf("frozen clock: got %v, want wall %d logical 100", prev, now.UnixNano())
	}
}

func TestClockObserveKeepsCausality(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewClock("a", func() time.Time { return now })
	remote := HLC{Wall: now.Add(30 * time.Second).UnixNano(), Logical: 7, Peer: "b"}
	if !c.Observe(remote, time.Minute) {
		t.Fatal("a remote 30s ahead was refused with a 1m skew bound")
	}
	if h := c.Now(); h.Compare(remote) <= 0 {
		t.Errorf("Now() = %v after observing %v", h, remote)
	}
	// A runaway clock an hour ahead must not drag this one along.
	far := HLC{Wall: now.Add(time.Hour).UnixNano(), Peer: "evil"}
	if c.Observe(far, time.Minute) {
		t.Error("accepted a timestamp an hour in the future")
	}
	if h := c.Now(); h.Wall >= far.Wall {
		t.Errorf("clock jumped to the runaway peer's time: %v", h)
	}
}

func TestHLCCompareAndString(t *testing.T) {
	a := HLC{Wall: 5, Logical: 1, Peer: "a"}
	cases := []struct {
		b    HLC
		want int
	}{
		{HLC{Wall: 6, Peer: "a"}, -1},
		{HLC{Wall: 5, Logical: 2, Peer: "a"}, -1},
		{HLC{Wall: 5, Logical: 1, Peer: "b"}, -1},
		{HLC{Wall: 5, Logical: 1, Peer: "a"}, 0},
		{HLC{Wall: 4, Logical: 9, Peer: "z"}, 1},
	}
	for _, c := range cases {
		if got := a.Compare(c.b); got != c.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", a, c.b, got, c.want)
		}
	}
	h := HLC{Wall: 1732492800123456789, Logical: 42, Peer: "12D3KooWpeer"}
	back, err := ParseHLC(h.String())
	if err != nil || back != h {
		t.Errorf("round trip %q -> %v, %v", h.String(), back, err)
	}
	for _, bad := range []string{"", "123", "1.2", "x.1@p", "1.x@p", "-5.1@p", "1.99999999999@p"} {
		if _, err := ParseHLC(bad); !errors.Is(err, ErrBadHLC) {
			t.Errorf("ParseHLC(%q) err = %v, want ErrBadHLC", bad, err)
		}
	}
}
