package crdt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	cid "github.com/ipfs/go-cid"
)

// ErrBadToken is returned for a read-your-writes token that does not parse.
var ErrBadToken = errors.New("malformed read-your-writes token")

// ErrNotCaughtUp is returned when a token's heads were not all processed in
// time.
var ErrNotCaughtUp = errors.New("write not yet replicated to this peer")

// maxTokenLen bounds a token we are willing to parse (it arrives in an
// HTTP header).
const maxTokenLen = 8 << 10

// Token is a read-your-writes token: the HLC and writer of a write and the
// heads of the writer's replica right after it. A peer that has processed
// all of those heads holds the write and everything the writer held then.
type Token struct {
	V     int      `json:"v"`
	HLC   HLC      `json:"hlc"`
	Peer  string   `json:"peer"`
	Heads []string `json:"heads"`
}

// Token encodes the write as an opaque, URL-safe token.
func (w Write) Token() string {
	t := Token{V: 1, HLC: w.HLC, Peer: w.Peer}
	for _, h := range w.Heads {
		t.Heads = append(t.Heads, h.String())
	}
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes a token written by Write.Token.
func ParseToken(s string) (Token, []cid.Cid, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxTokenLen {
		return Token{}, nil, fmt.Errorf("%w: empty or too long", ErrBadToken)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Token{}, nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	var t Token
	if err := json.Unmarshal(b, &t); err != nil || t.V != 1 || t.Peer == "" || t.HLC.Wall <= 0 {
		return Token{}, nil, fmt.Errorf("%w: not a v1 token", ErrBadToken)
	}
	heads, err := parseCIDs(t.Heads)
	if err != nil {
		return Token{}, nil, fmt.Errorf("%w: head %v", ErrBadToken, err)
	}
	return t, heads, nil
}

// Position returns a Write describing this replica's state now, for
// responses to requests that wrote nothing new.
func (r *Replica) Position(ctx context.Context) Write {
	return r.written(ctx, r.clock.Now())
}

// WaitFor blocks until this replica has merged every head of the token
// and everything below it (Merged: a head merged over a hole does not
// count — its writer's earlier writes may be the ones missing), or ctx ends; then the error wraps ErrNotCaughtUp and names what is
// missing. Missing heads are handed to the CRDT at once, so a peer that
// missed the broadcast does not wait for the next one.
func (r *Replica) WaitFor(ctx context.Context, heads []cid.Cid) error {
	injected := false
	for {
		var missing []string
		var missingC []cid.Cid
		for _, c := range heads {
			ok, err := r.Merged(ctx, c)
			if err != nil && ctx.Err() == nil {
				return err
			}
			if !ok {
				missing = append(missing, c.String())
				missingC = append(missingC, c)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if !injected {
			r.bc.Inject(missingC)
			injected = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: missing heads %s", ErrNotCaughtUp, strings.Join(missing, ", "))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
