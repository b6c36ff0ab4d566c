// Package sessions keeps conversation state that follows a user between
// gateways: a session is a short-lived, replicated list of turns with a
// TTL (default five minutes, refreshed by every write).
//
// Sessions churn, so they are kept out of the Merkle-CRDT, whose DAG would
// keep every version of every session forever. Each change is an Op,
// signed by its writer's publisher key like every replicated record, sent
// over the mesh (gossipsub, and pushed to the topic's peers directly so a
// write is acknowledged once another peer holds it), and merged into a
// state that converges whatever the order of arrival: turns are a set
// ordered by their HLC, metadata is last-writer-wins, a delete hides what
// came before it. Every op expires with its session: the state lives in
// its own expiring Badger database (store.Expiring) under the session's
// TTL, tombstones included, so an expired session leaves nothing behind.
//
// peer.New assembles a Service; httpapi serves it under /v1/sessions.
package sessions

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/sign"
)

// Errors callers test with errors.Is.
var (
	// ErrUnknown: no live session with that id here (nor, within the
	// request, on the peers asked).
	ErrUnknown = errors.New("unknown session")
	// ErrBadID: not a session id (22 to 128 of A-Z a-z 0-9 - _).
	ErrBadID = errors.New("bad session id")
	// ErrBadOp: a turn or metadata that is not acceptable (role, TTL,
	// metadata that is not a JSON object).
	ErrBadOp = errors.New("bad session change")
	// ErrTooLarge: a turn or metadata past its cap.
	ErrTooLarge = errors.New("session change too large")
	// ErrRejected: a replicated op refused (unsigned, forged, untrusted,
	// expired, for another site, malformed); counted by reason.
	ErrRejected = errors.New("session op rejected")
)

// Limits.
const (
	// DefaultTTL is a session's lifetime after its last write unless
	// the session sets its own.
	DefaultTTL = 5 * time.Minute
	// MaxTTL bounds a session's TTL.
	MaxTTL = 24 * time.Hour
	// MaxTurnBytes caps one turn's text plus metadata.
	MaxTurnBytes = 64 << 10
	// MaxMetadataBytes caps a session's metadata.
	MaxMetadataBytes = 16 << 10
	// MaxTurns and MaxSessionBytes bound a session: past them its oldest
	// turns are dropped, the same ones on every peer (the order is the
	// same everywhere).
	MaxTurns        = 512
	MaxSessionBytes = 1 << 20
	// MaxOpBytes bounds an op on the wire.
	MaxOpBytes = MaxTurnBytes + 4<<10
)

// Op kinds.
const (
	KindTurn   = "turn"
	KindMeta   = "meta"
	KindDelete = "delete"
)

// Op is one change to a session, as replicated.
type Op struct {
	V       int      `json:"v"`
	Session string   `json:"session"`
	Site    string   `json:"site,omitempty"` // "": the whole mesh
	Kind    string   `json:"kind"`
	HLC     crdt.HLC `json:"hlc"`
	// TTLMs is the session's TTL from this op on: it expires TTLMs after
	// its newest op.
	TTLMs    int64           `json:"ttl_ms"`
	Role     string          `json:"role,omitempty"`
	Text     string          `json:"text,omitempty"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
	Signer   sign.ID         `json:"signer"`
	Sig      []byte          `json:"sig,omitempty"`
}

// signingBytes are what the signature covers: the op without its
// signature, bound to the mesh (an op cannot be replayed into another).
func (o Op) signingBytes(mesh string) []byte {
	o.Sig = nil
	b, _ := json.Marshal(o)
	return append([]byte("shoal-session-op\x00"+mesh+"\x00"), b...)
}

// Expires is when the session expires if this op is its newest.
func (o Op) Expires() time.Time { return o.HLC.Time().Add(time.Duration(o.TTLMs) * time.Millisecond) }

func (o Op) size() int { return len(o.Text) + len(o.Metadata) + len(o.Role) }

// Turn is one turn of a conversation as readers see it.
type Turn = api.SessionTurn

// Roles a turn may have.
var roles = map[string]bool{"user": true, "assistant": true, "system": true, "tool": true}

// NewID returns an unguessable session id (128 random bits).
func NewID() string {
	b := make([]byte, 16)
	for {
		rand.Read(b)
		// Never a leading '-' (one id in 64): the CLI takes an id as an
		// argument, and its flag parser would read such an id as a flag
		// (TestSessionCommands failed so in CI).
		if id := base64.RawURLEncoding.EncodeToString(b); id[0] != '-' {
			return id
		}
	}
}

// CheckID checks a session id: 22 to 128 characters of A-Z a-z 0-9 - _,
// so that an id a client makes up is long enough to be unguessable when
// it is random (NewID's are 22).
func CheckID(id string) error {
	if len(id) < 22 || len(id) > 128 {
		return fmt.Errorf("%w: %d characters, use 22 to 128 (e.g. 16 random bytes in base64url)", ErrBadID, len(id))
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%w: %q: use A-Z a-z 0-9 - _", ErrBadID, id)
		}
	}
	return nil
}

// checkShape checks what a writer controls, for local writes and replicated
// ops alike.
func (o Op) checkShape() error {
	if err := CheckID(o.Session); err != nil {
		return err
	}
	if o.TTLMs <= 0 || time.Duration(o.TTLMs)*time.Millisecond > MaxTTL {
		return fmt.Errorf("%w: ttl %d ms: use 1 ms to %s", ErrBadOp, o.TTLMs, MaxTTL)
	}
	if len(o.Metadata) > 0 && !isObject(o.Metadata) {
		return fmt.Errorf("%w: metadata must be a JSON object", ErrBadOp)
	}
	switch o.Kind {
	case KindTurn:
		if !roles[o.Role] {
			return fmt.Errorf("%w: role %q: use user, assistant, system or tool", ErrBadOp, o.Role)
		}
		if o.size() > MaxTurnBytes {
			return fmt.Errorf("%w: a turn of %d bytes (text and metadata), at most %d", ErrTooLarge, o.size(), MaxTurnBytes)
		}
	case KindMeta:
		if len(o.Metadata) > MaxMetadataBytes {
			return fmt.Errorf("%w: metadata of %d bytes, at most %d", ErrTooLarge, len(o.Metadata), MaxMetadataBytes)
		}
	case KindDelete:
	default:
		return fmt.Errorf("%w: kind %q", ErrBadOp, o.Kind)
	}
	return nil
}

func isObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil
}

// state is a session as stored: the signed ops that make it, so that a
// peer can hand them on and the receiver can check every one.
type state struct {
	ID      string `json:"id"`
	Site    string `json:"site,omitempty"`
	Turns   []Op   `json:"turns,omitempty"` // ordered by HLC
	Meta    *Op    `json:"meta,omitempty"`
	Deleted *Op    `json:"deleted,omitempty"`
}

// expires is when the state expires: its newest op's TTL after that op.
// The newest op's TTL rules, so a write can shorten a session's life as
// well as extend it.
func (s *state) expires() time.Time {
	n := s.newest()
	if n == nil {
		return time.Time{}
	}
	return n.Expires()
}

// longest is when the last of the state's ops would expire on its own
// TTL: until then an op of it may still be handed on by a peer that
// missed a later write.
func (s *state) longest() time.Time {
	var t time.Time
	for _, o := range s.ops() {
		if e := o.Expires(); e.After(t) {
			t = e
		}
	}
	return t
}

func (s *state) newest() *Op {
	var newest *Op
	for _, o := range s.ops() {
		if newest == nil || o.HLC.Compare(newest.HLC) > 0 {
			o := o
			newest = &o
		}
	}
	return newest
}

func (s *state) ops() []Op {
	out := append([]Op(nil), s.Turns...)
	if s.Meta != nil {
		out = append(out, *s.Meta)
	}
	if s.Deleted != nil {
		out = append(out, *s.Deleted)
	}
	return out
}

// live reports whether readers see the session: something written after
// any delete.
func (s *state) live() bool { return len(s.Turns) > 0 || s.Meta != nil }

// has reports whether the state holds the op written at h (or a delete
// that supersedes it).
func (s *state) has(h crdt.HLC) bool {
	if s.Deleted != nil && h.Compare(s.Deleted.HLC) <= 0 {
		return true
	}
	if s.Meta != nil && s.Meta.HLC.Compare(h) == 0 {
		return true
	}
	i := sort.Search(len(s.Turns), func(i int) bool { return s.Turns[i].HLC.Compare(h) >= 0 })
	return i < len(s.Turns) && s.Turns[i].HLC.Compare(h) == 0
}

// merge adds o, reporting whether it changed anything. The result does
// not depend on the order ops arrive in: turns are a set ordered by HLC
// (unique per writer), metadata and deletes keep the newest, and a delete
// drops every op at or before it.
func (s *state) merge(o Op) bool {
	if s.has(o.HLC) {
		return false
	}
	switch o.Kind {
	case KindDelete:
		s.Deleted = &o
		keep := s.Turns[:0]
		for _, t := range s.Turns {
			if t.HLC.Compare(o.HLC) > 0 {
				keep = append(keep, t)
			}
		}
		s.Turns = keep
		if s.Meta != nil && s.Meta.HLC.Compare(o.HLC) <= 0 {
			s.Meta = nil
		}
	case KindMeta:
		if s.Meta != nil && s.Meta.HLC.Compare(o.HLC) > 0 {
			return false
		}
		s.Meta = &o
	case KindTurn:
		i := sort.Search(len(s.Turns), func(i int) bool { return s.Turns[i].HLC.Compare(o.HLC) >= 0 })
		s.Turns = append(s.Turns, Op{})
		copy(s.Turns[i+1:], s.Turns[i:])
		s.Turns[i] = o
		s.trim()
	}
	return true
}

// trim drops the oldest turns past MaxTurns or MaxSessionBytes: the same
// turns on every peer that holds the same ops.
func (s *state) trim() {
	total := 0
	for _, t := range s.Turns {
		total += t.size()
	}
	drop := 0
	for len(s.Turns)-drop > MaxTurns || total > MaxSessionBytes {
		total -= s.Turns[drop].size()
		drop++
	}
	s.Turns = s.Turns[drop:]
}

// ttl is the session's current TTL: that of its newest op.
func (s *state) ttl() time.Duration {
	newest := s.newest()
	if newest == nil {
		return DefaultTTL
	}
	return time.Duration(newest.TTLMs) * time.Millisecond
}
