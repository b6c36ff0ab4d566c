package crdt

import (
	"errors"
	"testing"

	cid "github.com/ipfs/go-cid"
)

func TestTokenRoundTrip(t *testing.T) {
	w := Write{HLC: HLC{Wall: 42, Logical: 3, Peer: "p"}, Peer: "p", Heads: []cid.Cid{testCID(t, "a"), testCID(t, "b")}}
	tok, heads, err := ParseToken(w.Token())
	if err != nil {
		t.Fatal(err)
	}
	if tok.HLC != w.HLC || tok.Peer != "p" || len(heads) != 2 || heads[0] != w.Heads[0] || heads[1] != w.Heads[1] {
		t.Errorf("round trip = %+v %v", tok, heads)
	}
	for _, bad := range []string{"", "!!!", "e30", "eyJ2IjoxfQ"} { // "", junk, "{}", {"v":1}
		if _, _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) err = %v, want ErrBadToken", bad, err)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	w := Write{HLC: HLC{Wall: 42, Peer: "p"}, Peer: "p"}
	f.Add(w.Token())
	f.Add("eyJ2IjoxLCJobGMiOnsid2FsbCI6MSwicGVlciI6InAifSwicGVlciI6InAiLCJoZWFkcyI6WyJ4Il19")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, heads, err := ParseToken(s)
		if err != nil {
			return
		}
		if len(heads) != len(tok.Heads) || tok.Peer == "" {
			t.Fatalf("accepted an inconsistent token %+v", tok)
		}
	})
}
