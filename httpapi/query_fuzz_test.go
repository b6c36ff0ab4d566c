package httpapi

import (
	"github.com/shoal-mesh/shoal/api"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/crdt/collections"
)

// FuzzParseQuery: any body either parses into a query the handler can run
// (exactly one of text and vector, k in range, bounded text) or fails with
// an error the catalogue answers with a 4xx status — never a panic,
// never a 5xx.
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
			if _, info := bodyOf(err); info.Status < 400 || info.Status >= 500 {
				t.Fatalf("error %v answers %d (%s), not a 4xx", err, info.Status, info.Code)
			}
			return
		}
		if (req.Text == "") == (req.Vector == nil) {
			t.Fatalf("accepted a query with text %q and vector %v", req.Text, req.Vector)
		}
		if k < 1 || k > api.MaxQueryK {
			t.Fatalf("accepted k %d", k)
		}
		if len(req.Text) > collections.MaxTextBytes {
			t.Fatalf("accepted %d bytes of text", len(req.Text))
		}
	})
}
