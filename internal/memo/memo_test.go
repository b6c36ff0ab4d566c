package memo

import "testing"

// TestMapAnswersOnlyForTheSameKeys: a value is found for exactly the keys
// it was put under; any other keys — also ones that share its slot —
// find nothing.
func TestMapAnswersOnlyForTheSameKeys(t *testing.T) {
	m := New[int](0, 0)
	m.Put("mesh", "/k", []byte("value"), 7, 0)
	if v, ok := m.Get("mesh", "/k", []byte("value")); !ok || v != 7 {
		t.Fatalf("Get = %v, %v; want 7", v, ok)
	}
	h := m.hash("mesh", "/k", []byte("value"))
	for _, k := range [][3]string{{"other", "/k", "value"}, {"mesh", "/j", "value"}, {"mesh", "/k", "valuE"}, {"mes", "h/k", "value"}} {
		if _, ok := m.Get(k[0], k[1], []byte(k[2])); ok {
			t.Errorf("Get%q found a value", k)
		}
		// As if the hash collided: the entry's own keys still decide.
		e := m.m[h]
		m.m[m.hash(k[0], k[1], []byte(k[2]))] = e
		if _, ok := m.Get(k[0], k[1], []byte(k[2])); ok {
			t.Errorf("Get%q found the value of another entry in its slot", k)
		}
		delete(m.m, m.hash(k[0], k[1], []byte(k[2])))
	}
}

// TestMapBounds: past either bound the map starts again.
func TestMapBounds(t *testing.T) {
	byCount := New[int](2, 0)
	byCount.Put("a", "", nil, 1, 0)
	byCount.Put("b", "", nil, 2, 0)
	byCount.Put("c", "", nil, 3, 0)
	if _, ok := byCount.Get("a", "", nil); ok || len(byCount.m) != 1 {
		t.Errorf("count bound 2: %d entries, the first still there: %v", len(byCount.m), ok)
	}
	byBytes := New[int](0, 10)
	byBytes.Put("a", "", []byte("12345"), 1, 0) // 6 bytes
	byBytes.Put("b", "", []byte("1234"), 2, 0)  // 5 more: over 10
	if _, ok := byBytes.Get("a", "", []byte("12345")); ok || len(byBytes.m) != 1 {
		t.Errorf("byte bound 10: %d entries, the first still there: %v", len(byBytes.m), ok)
	}
	if v, ok := byBytes.Get("b", "", []byte("1234")); !ok || v != 2 {
		t.Errorf("the entry that overflowed the bound is not kept: %v, %v", v, ok)
	}
}
