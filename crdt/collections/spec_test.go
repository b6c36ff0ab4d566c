package collections

import (
	"errors"
	"testing"
)

// TestSpecVectors: int8 vectors are a cosine option; float32 is the
// default and is stored as the empty value; anything else is refused.
func TestSpecVectors(t *testing.T) {
	for _, c := range []struct {
		metric, vectors, want string
		ok                    bool
	}{
		{"", "", "", true},
		{"cosine", "float32", "", true},
		{"cosine", "int8", "int8", true},
		{"", "int8", "int8", true},
		{"l2", "int8", "", false},
		{"dot", "int8", "", false},
		{"cosine", "int4", "", false},
	} {
		s := Spec{Name: "c", Embedder: "m@v1", Dimension: 8, Metric: c.metric, Vectors: c.vectors}
		err := s.Validate()
		if (err == nil) != c.ok || err != nil && !errors.Is(err, ErrBadSpec) {
			t.Errorf("%s/%s: err %v, want ok %v (ErrBadSpec when not)", c.metric, c.vectors, err, c.ok)
		}
		if err == nil && s.Vectors != c.want {
			t.Errorf("%s/%s: vectors %q, want %q", c.metric, c.vectors, s.Vectors, c.want)
		}
	}
}
