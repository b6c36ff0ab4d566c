package rag

import "testing"

func TestSumsRoundTrip(t *testing.T) {
	sums := map[string]recordSum{"a": sumOf([]byte("x")), "doc-2": sumOf([]byte("y")), "": sumOf(nil)}
	got := decodeSums(encodeSums(sums))
	if len(got) != len(sums) {
		t.Fatalf("decoded %d sums of %d", len(got), len(sums))
	}
	for id, s := range sums {
		if got[id] != s {
			t.Errorf("sum of %q changed", id)
		}
	}
	if decodeSums("not base64!") != nil || decodeSums("AQ==") != nil {
		t.Error("garbage decoded as sums")
	}
}
