package sessions

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/shoal-mesh/shoal/crdt"
)

// Token names one write to a session: a reader given it waits until it
// holds that write (read-your-writes across gateways), fetching it from
// the writer's peer if it has not arrived. Session writes do not go
// through the Merkle-CRDT, so their tokens are not crdt tokens; they
// start with tokenPrefix.
type Token struct {
	Session string   `json:"s"`
	HLC     crdt.HLC `json:"h"`
	// Peer is the libp2p id of the peer that took the write.
	Peer string `json:"p"`
}

const tokenPrefix = "s1."

// String is the token as Shoal-Token carries it.
func (t Token) String() string {
	b, _ := json.Marshal(t)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// IsToken reports whether s looks like a session token (rather than a
// crdt one).
func IsToken(s string) bool { return strings.HasPrefix(s, tokenPrefix) }

// ParseToken reads a token; errors wrap crdt.ErrBadToken.
func ParseToken(s string) (Token, error) {
	var t Token
	raw, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok || len(raw) > 1024 {
		return t, fmt.Errorf("%w: not a session token", crdt.ErrBadToken)
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return t, fmt.Errorf("%w: %v", crdt.ErrBadToken, err)
	}
	if err := json.Unmarshal(b, &t); err != nil || CheckID(t.Session) != nil || t.HLC.IsZero() {
		return t, fmt.Errorf("%w: not a session token", crdt.ErrBadToken)
	}
	return t, nil
}
