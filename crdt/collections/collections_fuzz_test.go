package collections

import (
	"encoding/json"
	"testing"
)

// FuzzDocumentRecords feeds arbitrary document bodies, as a peer receives
// them from the mesh, through decoding and validation: nothing panics, and
// a vector that passes CheckVector round-trips exactly.
func FuzzDocumentRecords(f *testing.F) {
	f.Add([]byte(`{"id":"a","text":"hello","vector":"AACAPwAAAEA=","embedder":"e@v1"}`), 2)
	f.Add([]byte(`{"id":"../x","text":"","metadata":{"k":"v"},"vector":"!!"}`), 3)
	f.Add([]byte(`{"id":"b","text":"t","vector":"AADAfw=="}`), 1)
	f.Fuzz(func(t *testing.T, body []byte, dim int) {
		var d Doc
		if json.Unmarshal(body, &d) != nil {
			return
		}
		_ = CheckDoc(d.ID, d.Text, d.Metadata)
		v, err := DecodeVector(d.Vector)
		if err != nil {
			return
		}
		if dim < 1 || dim > MaxDimension {
			dim = len(v)
		}
		if CheckVector(v, dim) != nil {
			return
		}
		back, err := DecodeVector(EncodeVector(v))
		if err != nil || len(back) != len(v) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range v {
			if back[i] != v[i] {
				t.Fatalf("component %d: %v != %v", i, back[i], v[i])
			}
		}
		if _, _, err := ParseKey(DocKey("c", d.ID)); err != nil && CheckName("document id", d.ID) == nil {
			t.Fatalf("valid id %q makes an unparsable key: %v", d.ID, err)
		}
	})
}
