package sign

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
)

func TestVerifyAndTrust(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := IDOf(pub)
	if _, parsed, err := ParseID(string(id)[len("ed25519:"):]); err != nil || parsed != id {
		t.Fatalf("ParseID without prefix = %v, %v", parsed, err)
	}
	if _, _, err := ParseID("ed25519:00"); !errors.Is(err, ErrBadKey) {
		t.Errorf("short id: err = %v, want ErrBadKey", err)
	}
	msg := []byte("record")
	sig := ed25519.Sign(priv, msg)
	for i := 0; i < 2; i++ { // the second check is answered from the memo
		if err := Verify(id, msg, sig); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if err := Verify(id, []byte("other"), sig); !errors.Is(err, ErrSignature) {
		t.Errorf("signature over other bytes: err = %v", err)
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := Verify(IDOf(otherPub), msg, sig); !errors.Is(err, ErrSignature) {
		t.Errorf("signature under another key: err = %v", err)
	}
	if err := Verify("ed25519:zz", msg, sig); !errors.Is(err, ErrBadKey) {
		t.Errorf("bad id: err = %v", err)
	}

	ts := NewTrustSet(id)
	if !ts.Trusts(id) || ts.Trusts(IDOf(otherPub)) {
		t.Fatal("trust set does not hold exactly its ids")
	}
	ts.Set(IDOf(otherPub))
	if ts.Trusts(id) || !ts.Trusts(IDOf(otherPub)) || len(ts.IDs()) != 1 {
		t.Errorf("after Set: ids = %v", ts.IDs())
	}
}
