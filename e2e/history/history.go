// Package history records what clients did and what they were told during
// a fault scenario, and checks it afterwards against Shoal's promises, in
// the manner of Jepsen's checkers (Elle for its data model) but written for
// Shoal's: documents under keys, each write of a key with a value of its
// own, reads
// that carry the answering peer's staleness and may name a write's token
// in Shoal-After. It is imported by the fault scenarios in e2e, which feed
// it every write and read they make; it knows nothing of processes or
// networks, so its own tests feed it histories by hand.
//
// The checks:
//   - lost: every acknowledged write is on every peer at the end (the
//     peer holds that write or one that is not older: a write of the same
//     key that had not finished when it began);
//   - converged: every peer ends with the same state hash;
//   - read-your-writes: a read that named a write's token and was answered
//     saw that write or a later one;
//   - honest staleness: a read answered with staleness s at time t claims
//     the peer holds everything written before t − s; a write acknowledged
//     before that instant that the read did not see is a violation.
package history

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Write is one client write of a key.
type Write struct {
	Peer  int
	Key   string
	Value string // what was written; unique per key (reads echo it)
	Token string // the write's read-your-writes token
	Start time.Time
	End   time.Time // when the answer arrived
	Acked bool      // the API answered 2xx
}

// Read is one client read of a key.
type Read struct {
	Peer  int
	Key   string
	After string // the token sent in Shoal-After, if any
	Start time.Time
	End   time.Time
	// Answered: the peer answered with the key's state (200 or 404), as
	// opposed to refusing (503 for a staleness bound or a token not
	// reached) or failing. Only answered reads are checked.
	Answered  bool
	Found     bool
	Value     string  // the value read, when Found
	Staleness float64 // the Shoal-Staleness the peer answered with
}

// Final is one peer's state at the end of a scenario.
type Final struct {
	Peer      int
	StateHash string
	// Keys maps every key the scenario wrote to the value the peer holds
	// (absent: the peer does not have the key).
	Keys map[string]string
}

// History collects operations from any number of goroutines.
type History struct {
	mu     sync.Mutex
	writes []Write
	reads  []Read
}

// AddWrite records a write (acknowledged or not).
func (h *History) AddWrite(w Write) {
	h.mu.Lock()
	h.writes = append(h.writes, w)
	h.mu.Unlock()
}

// AddRead records a read.
func (h *History) AddRead(r Read) {
	h.mu.Lock()
	h.reads = append(h.reads, r)
	h.mu.Unlock()
}

// Acked returns the acknowledged writes, in the order they were answered.
func (h *History) Acked() []Write {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Write
	for _, w := range h.writes {
		if w.Acked {
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].End.Before(out[j].End) })
	return out
}

// Keys returns every key written.
func (h *History) Keys() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, w := range h.writes {
		if !seen[w.Key] {
			seen[w.Key] = true
			out = append(out, w.Key)
		}
	}
	sort.Strings(out)
	return out
}

// Report is the checker's verdict.
type Report struct {
	Acked, Reads, Answered int
	// Lost counts (key, peer) pairs where an acknowledged write is
	// missing at the end.
	Lost      int
	Converged bool
	// Violations describes every broken promise (capped at 20 in the
	// text; Count has them all).
	Violations []string
	Count      int
}

// OK reports a history without violations, losses or divergence.
func (r Report) OK() bool { return r.Count == 0 && r.Lost == 0 && r.Converged }

func (r Report) String() string {
	s := fmt.Sprintf("%d writes acked, %d lost; %d reads (%d answered); converged %v; %d violations",
		r.Acked, r.Lost, r.Reads, r.Answered, r.Converged, r.Count)
	for _, v := range r.Violations {
		s += "\n  " + v
	}
	return s
}

// short keeps a value readable in a report.
func short(v string) string {
	if len(v) > 24 {
		return v[:24] + "…"
	}
	return v
}

func (r *Report) violate(format string, args ...any) {
	r.Count++
	if len(r.Violations) < 20 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	}
}

// covers reports whether holding value satisfies write w: value is w's,
// or that of a write of the same key that had not finished when w began
// (concurrent or later: the CRDT may keep either).
func covers(writes map[string][]Write, value string, w Write) bool {
	for _, x := range writes[w.Key] {
		if x.Value == value && (x.Value == w.Value || !x.End.Before(w.Start)) {
			return true
		}
	}
	return false
}

// staleMargin absorbs the millisecond rounding of Shoal-Staleness.
const staleMargin = 2 * time.Millisecond

// Check judges the history against the peers' final states.
func (h *History) Check(finals []Final) Report {
	h.mu.Lock()
	writes := append([]Write(nil), h.writes...)
	reads := append([]Read(nil), h.reads...)
	h.mu.Unlock()

	var rep Report
	byToken := map[string]Write{}
	byKey := map[string][]Write{} // every attempted write, acked or not
	var acked []Write
	for _, w := range writes {
		byKey[w.Key] = append(byKey[w.Key], w)
		if !w.Acked {
			continue
		}
		rep.Acked++
		acked = append(acked, w)
		if w.Token != "" {
			byToken[w.Token] = w
		}
	}

	hashes := map[string][]int{}
	for _, f := range finals {
		hashes[f.StateHash] = append(hashes[f.StateHash], f.Peer)
		for _, w := range acked {
			v, ok := f.Keys[w.Key]
			if !ok || !covers(byKey, v, w) {
				rep.Lost++
				rep.violate("lost: peer %d ends without %s=%s (acked by peer %d at %s), holds %q",
					f.Peer, w.Key, short(w.Value), w.Peer, w.End.Format("15:04:05.000"), short(v))
			}
		}
	}
	rep.Converged = len(hashes) == 1
	if !rep.Converged {
		rep.violate("diverged: state hashes by peer %v", hashes)
	}

	for _, r := range reads {
		rep.Reads++
		if !r.Answered {
			continue
		}
		rep.Answered++
		if r.After != "" {
			if w, ok := byToken[r.After]; ok && w.Key == r.Key && (!r.Found || !covers(byKey, r.Value, w)) {
				rep.violate("read-your-writes: peer %d answered %s after the token of %s=%s with %v %s",
					r.Peer, r.Key, r.Key, w.Value, r.Found, r.Value)
			}
		}
		// The peer claimed to hold everything written before horizon.
		horizon := r.Start.Add(-time.Duration(r.Staleness*float64(time.Second)) - staleMargin)
		for _, w := range writes {
			if !w.Acked || w.Key != r.Key || !w.End.Before(horizon) {
				continue
			}
			if !r.Found || !covers(byKey, r.Value, w) {
				rep.violate("dishonest staleness: peer %d answered %s at %s claiming staleness %.3fs (fresh up to %s) without %s=%s acked at %s",
					r.Peer, r.Key, r.Start.Format("15:04:05.000"), r.Staleness, horizon.Format("15:04:05.000"),
					w.Key, short(w.Value), w.End.Format("15:04:05.000"))
				break
			}
		}
	}
	return rep
}
