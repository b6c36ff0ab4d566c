package history

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func final(peer int, hash string, kv map[string]string) Final {
	return Final{Peer: peer, StateHash: hash, Keys: kv}
}

func TestCleanHistoryPasses(t *testing.T) {
	var h History
	h.AddWrite(Write{Peer: 0, Key: "a", Value: "1", Token: "t1", Start: at(0), End: at(5), Acked: true})
	h.AddWrite(Write{Peer: 1, Key: "a", Value: "2", Token: "t2", Start: at(10), End: at(15), Acked: true})
	h.AddWrite(Write{Peer: 1, Key: "b", Value: "x", Start: at(20), End: at(25)}) // not acked: may be anywhere
	// A stale read that says so, a fresh one, a read-your-writes read.
	h.AddRead(Read{Peer: 2, Key: "a", Start: at(100), End: at(101), Answered: true, Found: true, Value: "1", Staleness: 0.2})
	h.AddRead(Read{Peer: 2, Key: "a", Start: at(200), End: at(201), Answered: true, Found: true, Value: "2", Staleness: 0})
	h.AddRead(Read{Peer: 2, Key: "a", After: "t2", Start: at(16), End: at(30), Answered: true, Found: true, Value: "2"})
	h.AddRead(Read{Peer: 2, Key: "a", After: "t2", Start: at(16), End: at(30), Answered: false}) // refused: not judged
	v := map[string]string{"a": "2"}
	rep := h.Check([]Final{final(0, "h", v), final(1, "h", v), final(2, "h", v)})
	if !rep.OK() {
		t.Fatalf("a clean history failed: %s", rep)
	}
	if rep.Acked != 2 || rep.Reads != 4 || rep.Answered != 3 {
		t.Errorf("counts: %s", rep)
	}
}

// TestEachViolationIsCaught: every promise the checker stands for, broken
// once, is reported as what it is.
func TestEachViolationIsCaught(t *testing.T) {
	w := Write{Peer: 0, Key: "a", Value: "1", Token: "t1", Start: at(0), End: at(5), Acked: true}
	good := map[string]string{"a": "1"}
	cases := []struct {
		name   string
		reads  []Read
		finals []Final
		want   string
	}{
		{"lost", nil, []Final{final(0, "h", good), final(1, "h", map[string]string{})}, "lost: peer 1"},
		{"lost to a value never written", nil, []Final{final(0, "h", good), final(1, "h", map[string]string{"a": "0"})}, "lost: peer 1"},
		{"diverged", nil, []Final{final(0, "h1", good), final(1, "h2", good)}, "diverged"},
		{"read-your-writes", []Read{{Peer: 1, Key: "a", After: "t1", Start: at(6), End: at(7), Answered: true}},
			[]Final{final(0, "h", good), final(1, "h", good)}, "read-your-writes: peer 1"},
		{"dishonest staleness", []Read{{Peer: 1, Key: "a", Start: at(1000), End: at(1001), Answered: true, Staleness: 0.5}},
			[]Final{final(0, "h", good), final(1, "h", good)}, "dishonest staleness: peer 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var h History
			h.AddWrite(w)
			for _, r := range c.reads {
				h.AddRead(r)
			}
			rep := h.Check(c.finals)
			if rep.OK() || !strings.Contains(rep.String(), c.want) {
				t.Errorf("want a %q violation, got: %s", c.want, rep)
			}
		})
	}
	// Honest: the same miss, with a staleness reaching back before the
	// write's acknowledgement, is no violation.
	var h History
	h.AddWrite(w)
	h.AddRead(Read{Peer: 1, Key: "a", Start: at(1000), End: at(1001), Answered: true, Staleness: 1.0})
	if rep := h.Check([]Final{final(0, "h", good), final(1, "h", good)}); !rep.OK() {
		t.Errorf("an honest stale read was flagged: %s", rep)
	}
}

// TestOlderValueIsALoss: a peer ending with a value whose write finished
// before an acknowledged write of the same key began has lost that write.
func TestOlderValueIsALoss(t *testing.T) {
	var h History
	h.AddWrite(Write{Peer: 0, Key: "a", Value: "1", Start: at(0), End: at(5), Acked: true})
	h.AddWrite(Write{Peer: 1, Key: "a", Value: "2", Start: at(10), End: at(15), Acked: true})
	rep := h.Check([]Final{final(0, "h", map[string]string{"a": "2"}), final(1, "h", map[string]string{"a": "1"})})
	if rep.Lost != 1 || !strings.Contains(rep.String(), "lost: peer 1 ends without a=2") {
		t.Errorf("want peer 1's loss of a=2: %s", rep)
	}
}
