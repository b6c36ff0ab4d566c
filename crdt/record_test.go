package crdt

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	r := Record{Kind: "test.kv", HLC: HLC{Wall: 10, Peer: "p"}, Writer: "p", Body: json.RawMessage(`{"x":1}`)}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.V != RecordVersion || got.Kind != r.Kind || got.HLC != r.HLC || string(got.Body) != `{"x":1}` {
		t.Errorf("round trip = %+v", got)
	}
	var body struct{ X int }
	if err := got.DecodeBody(&body); err != nil || body.X != 1 {
		t.Errorf("DecodeBody = %+v, %v", body, err)
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	big := `{"v":1,"kind":"k","hlc":{"wall":1,"peer":"p"},"writer":"p","body":"` + strings.Repeat("x", MaxRecordSize) + `"}`
	cases := map[string]struct {
		in   string
		want error
	}{
		"not json":        {`{`, ErrBadRecord},
		"bare string":     {`"hello"`, ErrBadRecord},
		"unknown version": {`{"v":2,"kind":"k","hlc":{"wall":1,"peer":"p"},"writer":"p"}`, ErrBadRecord},
		"no kind":         {`{"v":1,"hlc":{"wall":1,"peer":"p"},"writer":"p"}`, ErrBadRecord},
		"no hlc":          {`{"v":1,"kind":"k","writer":"p"}`, ErrBadRecord},
		"no writer":       {`{"v":1,"kind":"k","hlc":{"wall":1,"peer":"p"}}`, ErrBadRecord},
		"too large":       {big, ErrRecordTooLarge},
	}
	for name, c := range cases {
		if _, err := DecodeRecord([]byte(c.in)); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
	if _, err := (Record{Kind: "k", Body: json.RawMessage(`"` + strings.Repeat("y", MaxRecordSize) + `"`)}).Encode(); !errors.Is(err, ErrRecordTooLarge) {
		t.Errorf("Encode of an oversized record: err = %v", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"kind":"k","hlc":{"wall":1,"logical":0,"peer":"p"},"writer":"p","body":{"a":[1,2]}}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same record.
		out, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		r2, err := DecodeRecord(out)
		if err != nil || r2.Kind != r.Kind || r2.HLC != r.HLC || r2.Writer != r.Writer {
			t.Fatalf("re-decode = %+v, %v", r2, err)
		}
	})
}
