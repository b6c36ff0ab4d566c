package peer

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/crdt/collections"
)

// FuzzParseQuery: any body either parses into a query the handler can run
// (exactly one of text and vector, k in range, bounded text) or fails with
// an apiError carrying a 4xx status — never a panic, never a 5xx.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		`{"text":"gearbox noise","k":3}`,
		`{"vector":[0.1,0.2,0.3],"filter":{"site":"a"}}`,
		`{"text":"x","vector":[1]}`,
		`{"k":0,"text":"x"}`,
		`{"k":100000,"text":"x"}`,
		`{"text":""}`,
		`{"vector":[1e999]}`,
		`{"unknown":1}`,
		`[]`,
		`{"text":"a"} trailing`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, k, err := ParseQuery(strings.NewReader(string(body)))
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.code < 400 || ae.code >= 500 {
				t.Fatalf("error %v is not a 4xx apiError", err)
			}
			return
		}
		if (req.Text == "") == (req.Vector == nil) {
			t.Fatalf("accepted a query with text %q and vector %v", req.Text, req.Vector)
		}
		if k < 1 || k > MaxQueryK {
			t.Fatalf("accepted k %d", k)
		}
		if len(req.Text) > collections.MaxTextBytes {
			t.Fatalf("accepted %d bytes of text", len(req.Text))
		}
	})
}
