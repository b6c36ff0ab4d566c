package sessions

import "testing"

// TestNewIDNeverLooksLikeAFlag: one random id in 64 began with '-', which
// the CLI's flag parser took for a flag.
func TestNewIDNeverLooksLikeAFlag(t *testing.T) {
	for range 10000 {
		id := NewID()
		if id[0] == '-' {
			t.Fatalf("NewID() = %q", id)
		}
		if err := CheckID(id); err != nil {
			t.Fatal(err)
		}
	}
}
