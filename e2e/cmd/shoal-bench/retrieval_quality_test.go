package main

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
)

func TestRankOfCountsTiesAgainstTheRelevantDocument(t *testing.T) {
	for _, tc := range []struct {
		scores []float64
		rel    int
		want   int
	}{
		{[]float64{0.9, 0.5, 0.1}, 0, 1},
		{[]float64{0.9, 0.5, 0.1}, 1, 2},
		{[]float64{0.9, 0.5, 0.1}, 2, 3},
		{[]float64{0.5, 0.5, 0.1}, 0, 2}, // tied with one other
		{[]float64{0, 0, 0, 0}, 2, 4},    // cannot tell them apart: last
		{[]float64{0.2, 0.7, 0.7, 0.9}, 1, 3},
	} {
		if got := rankOf(tc.scores, tc.rel); got != tc.want {
			t.Errorf("rankOf(%v, %d) = %d, want %d", tc.scores, tc.rel, got, tc.want)
		}
	}
}

func TestSummariseRecallAndMRR(t *testing.T) {
	m := summarise([]int{1, 2, 5, 6, 10})
	if m.queries != 5 {
		t.Errorf("queries %d", m.queries)
	}
	if m.recall1 != 0.2 {
		t.Errorf("recall@1 %v, want 0.2", m.recall1)
	}
	if m.recall5 != 0.6 {
		t.Errorf("recall@5 %v, want 0.6 (ranks 1, 2, 5)", m.recall5)
	}
	want := (1 + 1.0/2 + 1.0/5 + 1.0/6 + 1.0/10) / 5
	if math.Abs(m.mrr-want) > 1e-12 {
		t.Errorf("MRR %v, want %v", m.mrr, want)
	}
	if m.medianRank != 5 {
		t.Errorf("median rank %d, want 5", m.medianRank)
	}
	if m := summarise([]int{1, 1, 1}); m.recall1 != 1 || m.recall5 != 1 || m.mrr != 1 {
		t.Errorf("all first: %+v", m)
	}
	if m := summarise(nil); m.queries != 0 || m.mrr != 0 {
		t.Errorf("empty: %+v", m)
	}
}

func TestWordsLowercasesAndSplitsOnPunctuation(t *testing.T) {
	got := words("The PLC's scan-cycle: 4-20 mA, OK?")
	want := []string{"the", "plc", "s", "scan", "cycle", "4", "20", "ma", "ok"}
	if !slices.Equal(got, want) {
		t.Errorf("words = %q, want %q", got, want)
	}
}

func TestBM25RanksTheDocumentSharingRareTermsFirst(t *testing.T) {
	docs := []string{
		"the pump and the motor and the belt",
		"the conveyor belt drifts to the side",
		"the bearing needs grease",
		"the the the the the the",
		"a pump seal leaks",
	}
	m := newBM25(docs, 1.2, 0.75)
	// "the" is in four documents (low idf); "drifts" and "conveyor" are
	// rare and only in document 1.
	s := m.scores("why the conveyor drifts")
	if r := rankOf(s, 1); r != 1 {
		t.Errorf("conveyor document ranks %d, scores %v", r, s)
	}
	// A word in no document adds nothing; all-unknown queries score 0.
	for i, v := range m.scores("zebra quantum") {
		if v != 0 {
			t.Errorf("doc %d scores %v for unknown words", i, v)
		}
	}
	// "pump" is in two documents; the shorter one wins (length
	// normalisation, b = 0.75), and both beat the rest.
	s = m.scores("pump")
	if rankOf(s, 4) != 1 || rankOf(s, 0) != 2 {
		t.Errorf("pump: scores %v", s)
	}
	// Rarer words weigh more.
	if m.idf("grease") <= m.idf("pump") || m.idf("pump") <= m.idf("the") {
		t.Errorf("idf grease %v, pump %v, the %v", m.idf("grease"), m.idf("pump"), m.idf("the"))
	}
	if m.idf("the") < 0 {
		t.Errorf("idf must not be negative, got %v", m.idf("the"))
	}
	// Term frequency saturates: k1 bounds one word's contribution by
	// idf·(k1+1).
	one := newBM25([]string{"x y", strings.Repeat("x ", 50)}, 1.2, 0)
	if s := one.scores("x"); s[1] >= one.idf("x")*2.2 || s[1] <= s[0] {
		t.Errorf("saturation: scores %v, bound %v", s, one.idf("x")*2.2)
	}
}

func TestCosinesIsTheDotProduct(t *testing.T) {
	got := cosines([]float32{1, 0}, [][]float32{{1, 0}, {0, 1}, {0.6, 0.8}})
	want := []float64{1, 0, 0.6}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-6 {
			t.Errorf("cosines = %v, want %v", got, want)
		}
	}
}

func TestRetrievalEvalSetIsWellFormed(t *testing.T) {
	s, err := loadEvalSet(testmesh.RepoFile(qualitySetPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Documents) < 500 {
		t.Errorf("%d documents, want ≥ 500", len(s.Documents))
	}
	if len(s.Queries) < 100 {
		t.Errorf("%d queries, want ≥ 100", len(s.Queries))
	}
	docs := map[string]string{}
	for _, d := range s.Documents {
		docs[d.ID] = d.Text
	}
	labelled := map[string]bool{}
	for _, q := range s.Queries {
		if labelled[q.Relevant] {
			t.Errorf("document %s is the answer to two queries", q.Relevant)
		}
		labelled[q.Relevant] = true
		if strings.Contains(strings.ToLower(docs[q.Relevant]), strings.ToLower(q.Text)) {
			t.Errorf("query %s is a substring of its document", q.ID)
		}
	}
	if shared, mean := contentOverlap(s); len(shared) != len(s.Queries) || mean > 0.25 {
		t.Errorf("queries share %.0f %% of their content words with their documents: paraphrases should share few", 100*mean)
	}
}

func TestLoadEvalSetRejectsBadLabels(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"missing label": `{"origin":"o","license":"l","documents":[{"id":"a","text":"x"}],"queries":[{"id":"q","text":"y","relevant":"b"}]}`,
		"duplicate doc": `{"origin":"o","license":"l","documents":[{"id":"a","text":"x"},{"id":"a","text":"z"}],"queries":[]}`,
		"duplicate q":   `{"origin":"o","license":"l","documents":[{"id":"a","text":"x"}],"queries":[{"id":"q","text":"y","relevant":"a"},{"id":"q","text":"w","relevant":"a"}]}`,
		"no origin":     `{"license":"l","documents":[{"id":"a","text":"x"}],"queries":[]}`,
		"unknown field": `{"origin":"o","license":"l","docs":[]}`,
	} {
		p := filepath.Join(dir, "set.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadEvalSet(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := filepath.Join(dir, "ok.json")
	os.WriteFile(p, []byte(`{"origin":"o","license":"l","documents":[{"id":"a","text":"x"}],"queries":[{"id":"q","text":"y","relevant":"a"}]}`), 0o600)
	if _, err := loadEvalSet(p); err != nil {
		t.Errorf("good set: %v", err)
	}
}
