package crdt

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HLC is a hybrid logical clock timestamp: physical wall time in
// nanoseconds since the Unix epoch, a logical counter that orders events
// sharing a wall time, and the id of the peer that issued it (the final
// tie-breaker, so two timestamps are never equal unless they are the same
// event).
//
// Gateways' clocks drift; an HLC keeps causality (a timestamp issued after
// seeing another is always larger) while staying close to wall time, so a
// reader can still tell roughly how old a record is.
type HLC struct {
	Wall    int64  `json:"wall"`
	Logical uint32 `json:"logical"`
	Peer    string `json:"peer"`
}

// ErrBadHLC is returned when an HLC string cannot be parsed.
var ErrBadHLC = errors.New("malformed HLC")

// IsZero reports whether h is the zero timestamp.
func (h HLC) IsZero() bool { return h.Wall == 0 && h.Logical == 0 && h.Peer == "" }

// Time returns the wall-clock part of h.
func (h HLC) Time() time.Time { return time.Unix(0, h.Wall) }

// Compare orders two timestamps: wall time, then logical counter, then peer
// id. It returns -1, 0 or +1.
func (h HLC) Compare(o HLC) int {
	switch {
	case h.Wall < o.Wall:
		return -1
	case h.Wall > o.Wall:
		return 1
	case h.Logical < o.Logical:
		return -1
	case h.Logical > o.Logical:
		return 1
	}
	return strings.Compare(h.Peer, o.Peer)
}

// String renders h as "<wall>.<logical>@<peer>", a form ParseHLC reads back.
func (h HLC) String() string {
	return strconv.FormatInt(h.Wall, 10) + "." + strconv.FormatUint(uint64(h.Logical), 10) + "@" + h.Peer
}

// ParseHLC reads the form written by HLC.String.
func ParseHLC(s string) (HLC, error) {
	ts, peer, ok := strings.Cut(s, "@")
	if !ok {
		return HLC{}, fmt.Errorf("%w: %q has no @peer", ErrBadHLC, s)
	}
	w, l, ok := strings.Cut(ts, ".")
	if !ok {
		return HLC{}, fmt.Errorf("%w: %q has no logical part", ErrBadHLC, s)
	}
	wall, err := strconv.ParseInt(w, 10, 64)
	if err != nil || wall < 0 {
		return HLC{}, fmt.Errorf("%w: wall time %q", ErrBadHLC, w)
	}
	logical, err := strconv.ParseUint(l, 10, 32)
	if err != nil {
		return HLC{}, fmt.Errorf("%w: logical %q", ErrBadHLC, l)
	}
	return HLC{Wall: wall, Logical: uint32(logical), Peer: peer}, nil
}

// Clock issues HLC timestamps for one peer. It is safe for concurrent use.
type Clock struct {
	peer string
	now  func() time.Time

	mu   sync.Mutex
	last HLC
}

// NewClock returns a clock for the given peer id. now may be nil, in which
// case time.Now is used.
func NewClock(peer string, now func() time.Time) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{peer: peer, now: now}
}

// Now issues a new timestamp, strictly larger than every timestamp this
// clock issued or observed before.
func (c *Clock) Now() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	pt := c.now().UnixNano()
	if pt > c.last.Wall {
		c.last = HLC{Wall: pt, Peer: c.peer}
	} else {
		c.last = HLC{Wall: c.last.Wall, Logical: c.last.Logical + 1, Peer: c.peer}
	}
	return c.last
}

// Peek returns the clock's current reading without issuing a timestamp:
// the larger of physical time and the last timestamp issued or observed.
func (c *Clock) Peek() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	pt := c.now().UnixNano()
	if pt > c.last.Wall {
		return HLC{Wall: pt, Peer: c.peer}
	}
	return HLC{Wall: c.last.Wall, Logical: c.last.Logical, Peer: c.peer}
}

// Observe merges a remote timestamp into the clock, so that every later
// Now is larger than it. Timestamps further than maxSkew ahead of the local
// physical clock are not merged (a peer with a runaway clock must not drag
// the whole mesh into the future); Observe reports whether it merged.
// maxSkew <= 0 means no bound.
func (c *Clock) Observe(remote HLC, maxSkew time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pt := c.now().UnixNano()
	if maxSkew > 0 && remote.Wall > pt+int64(maxSkew) {
		return false
	}
	switch {
	case remote.Wall > c.last.Wall:
		c.last = HLC{Wall: remote.Wall, Logical: remote.Logical, Peer: c.peer}
	case remote.Wall == c.last.Wall && remote.Logical > c.last.Logical:
		c.last.Logical = remote.Logical
	}
	return true
}
