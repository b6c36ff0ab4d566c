package netsim

import (
	"os"
	"testing"
)

// Require returns a Net or ends the test: skipped where namespaces cannot
// be made, failed under CI=true, where they must work.
func Require(t testing.TB, prefix string) *Net {
	t.Helper()
	n, err := New(prefix)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but network namespaces are unavailable: %v", err)
		}
		t.Skipf("network namespaces unavailable: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}
