package models

import (
	"encoding/json"
	"testing"
)

func TestSignaturesVerifyAndTamperingIsCaughtAfterCaching(t *testing.T) {
	pub, err := NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	m := Manifest{Model: "cls", Version: "v1", CID: "bafy", SHA256: "00", Size: 3, MediaType: MediaTypeONNX,
		Warmup: json.RawMessage(`{"inputs":[]}`)}
	m.Sign(pub)
	for i := 0; i < 2; i++ { // the second check is answered from the memo
		if err := m.Verify(); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	for name, tamper := range map[string]func(*Manifest){
		"cid":      func(m *Manifest) { m.CID = "bafz" },
		"no_cache": func(m *Manifest) { m.NoCache = true },
		"warmup":   func(m *Manifest) { m.Warmup = json.RawMessage(`{"inputs":[{}]}`) },
		"media":    func(m *Manifest) { m.MediaType = "application/octet-stream" },
	} {
		bad := m
		tamper(&bad)
		if err := bad.Verify(); err == nil {
			t.Errorf("tampered %s verifies", name)
		}
	}
	other, err := NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	forged := m
	forged.Publisher = other.ID()
	if err := forged.Verify(); err == nil {
		t.Error("a signature verifies under another publisher's key")
	}
	if !m.IsONNX() {
		t.Error("IsONNX false for " + MediaTypeONNX)
	}
}
