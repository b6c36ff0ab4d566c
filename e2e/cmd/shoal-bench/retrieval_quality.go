package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/rag"
)

// qualitySetPath is the labelled retrieval set, relative to the repository root.
const qualitySetPath = "e2e/testdata/retrieval-eval.json"

// evalSet is a labelled retrieval set: documents, and queries that each
// name the one document that answers them.
type evalSet struct {
	Name      string      `json:"name"`
	Origin    string      `json:"origin"`
	License   string      `json:"license"`
	Documents []evalDoc   `json:"documents"`
	Queries   []evalQuery `json:"queries"`
}

type evalDoc struct {
	ID   string `json:"id"`
	Text string `json:"text"`
}

type evalQuery struct {
	ID       string `json:"id"`
	Text     string `json:"text"`
	Relevant string `json:"relevant"`
}

// loadEvalSet reads and checks a labelled set.
func loadEvalSet(path string) (*evalSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s evalSet
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

// check: ids unique and non-empty, texts non-empty, every label a document.
func (s *evalSet) check() error {
	if s.Origin == "" || s.License == "" {
		return fmt.Errorf("origin and license must be stated")
	}
	docs := map[string]bool{}
	for _, d := range s.Documents {
		if d.ID == "" || strings.TrimSpace(d.Text) == "" {
			return fmt.Errorf("document %q: empty id or text", d.ID)
		}
		if docs[d.ID] {
			return fmt.Errorf("document id %q twice", d.ID)
		}
		docs[d.ID] = true
	}
	qs := map[string]bool{}
	for _, q := range s.Queries {
		if q.ID == "" || strings.TrimSpace(q.Text) == "" {
			return fmt.Errorf("query %q: empty id or text", q.ID)
		}
		if qs[q.ID] {
			return fmt.Errorf("query id %q twice", q.ID)
		}
		qs[q.ID] = true
		if !docs[q.Relevant] {
			return fmt.Errorf("query %s: relevant document %q does not exist", q.ID, q.Relevant)
		}
	}
	return nil
}

// rankOf is the 1-based rank of document rel when documents are sorted by
// score, highest first. Ties count against it: every other document with
// the same score ranks ahead, so a scorer that cannot tell documents apart
// gets no credit for the order they happen to be stored in.
func rankOf(scores []float64, rel int) int {
	r := 1
	for i, s := range scores {
		if i != rel && s >= scores[rel] {
			r++
		}
	}
	return r
}

// qualityMetrics summarises the ranks of the relevant documents.
type qualityMetrics struct {
	queries       int
	recall1       float64 // share of queries whose document ranks first
	recall5       float64 // … in the first five
	mrr           float64 // mean of 1/rank over the full ranking
	medianRank    int
	embedPerText  time.Duration // mean embedding time per text (embedders only)
	tokensPerText float64
	embeddedTexts int
	name          string
}

func summarise(ranks []int) qualityMetrics {
	m := qualityMetrics{queries: len(ranks)}
	if len(ranks) == 0 {
		return m
	}
	for _, r := range ranks {
		if r <= 1 {
			m.recall1++
		}
		if r <= 5 {
			m.recall5++
		}
		m.mrr += 1 / float64(r)
	}
	n := float64(len(ranks))
	m.recall1 /= n
	m.recall5 /= n
	m.mrr /= n
	sorted := slices.Sorted(slices.Values(ranks))
	m.medianRank = sorted[(len(sorted)-1)/2]
	return m
}

// words splits text into lowercased runs of letters and digits.
func words(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// bm25 is Okapi BM25 over lowercased word tokens (no stemming, no stop
// words): score(q, d) = Σ over the query's words t of
// idf(t) · tf(t,d)·(k1+1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl)),
// with idf(t) = ln(1 + (N − df(t) + 0.5)/(df(t) + 0.5)) (never negative).
type bm25 struct {
	k1, b float64
	tf    []map[string]int
	len   []float64
	avgdl float64
	df    map[string]int
}

func newBM25(docs []string, k1, b float64) *bm25 {
	m := &bm25{k1: k1, b: b, df: map[string]int{}}
	total := 0.0
	for _, d := range docs {
		tf := map[string]int{}
		ws := words(d)
		for _, w := range ws {
			tf[w]++
		}
		for w := range tf {
			m.df[w]++
		}
		m.tf = append(m.tf, tf)
		m.len = append(m.len, float64(len(ws)))
		total += float64(len(ws))
	}
	if len(docs) > 0 {
		m.avgdl = total / float64(len(docs))
	}
	return m
}

func (m *bm25) idf(w string) float64 {
	n, df := float64(len(m.tf)), float64(m.df[w])
	return math.Log(1 + (n-df+0.5)/(df+0.5))
}

// scores is the score of every document for the query.
func (m *bm25) scores(query string) []float64 {
	out := make([]float64, len(m.tf))
	for _, w := range words(query) {
		if m.df[w] == 0 {
			continue
		}
		idf := m.idf(w)
		for i, tf := range m.tf {
			f := float64(tf[w])
			if f == 0 {
				continue
			}
			out[i] += idf * f * (m.k1 + 1) / (f + m.k1*(1-m.b+m.b*m.len[i]/m.avgdl))
		}
	}
	return out
}

// cosines is the dot product of q with every document vector (all unit
// vectors, so the cosine): exact search, no index.
func cosines(q []float32, docs [][]float32) []float64 {
	out := make([]float64, len(docs))
	for i, d := range docs {
		var s float64
		for j := range q {
			s += float64(q[j]) * float64(d[j])
		}
		out[i] = s
	}
	return out
}

// stopWords are left out of the overlap figure only (not out of BM25).
var stopWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`a an the of to in on for and or is are be by it its at as with from that this
		what which why how do does did can i my we our me you your when where who will would should must have has
		if so not no into after before than more most less up out over only same each every any all one been was
		were there their they them he his she her while about s`) {
		stopWords[w] = true
	}
}

// contentOverlap is, for each query, how many of its distinct content
// words (not stop words) occur in its document, and the mean over queries
// of the share of its content words that do.
func contentOverlap(s *evalSet) (shared []int, mean float64) {
	byID := map[string]string{}
	for _, d := range s.Documents {
		byID[d.ID] = d.Text
	}
	shared = make([]int, len(s.Queries))
	for i, q := range s.Queries {
		dw := map[string]bool{}
		for _, w := range words(byID[q.Relevant]) {
			dw[w] = true
		}
		qw := map[string]bool{}
		for _, w := range words(q.Text) {
			if !stopWords[w] {
				qw[w] = true
			}
		}
		for w := range qw {
			if dw[w] {
				shared[i]++
			}
		}
		if len(qw) > 0 {
			mean += float64(shared[i]) / float64(len(qw))
		}
	}
	return shared, mean / float64(len(s.Queries))
}

// embedRanks embeds every document and query with one model (each text
// on its own, as rag.Embedder does) and ranks by exact cosine.
func embedRanks(ctx context.Context, eng *inference.Engine, s *evalSet, ref inference.Ref, model, tokenizer []byte) ([]int, qualityMetrics, error) {
	var m qualityMetrics
	sess, err := eng.Load(ctx, ref, model, nil)
	if err != nil {
		return nil, m, err
	}
	defer sess.Retire()
	e, err := rag.NewEmbedder(ref.String(), sess, tokenizer)
	if err != nil {
		return nil, m, err
	}
	docTexts := make([]string, len(s.Documents))
	for i, d := range s.Documents {
		docTexts[i] = d.Text
	}
	qTexts := make([]string, len(s.Queries))
	for i, q := range s.Queries {
		qTexts[i] = q.Text
	}
	// One text first, outside the timing: the first runs of a session are slower.
	if _, _, err := e.Embed(ctx, sess, qTexts[:1]); err != nil {
		return nil, m, err
	}
	start := time.Now()
	docVecs, dt, err := e.Embed(ctx, sess, docTexts)
	if err != nil {
		return nil, m, err
	}
	qVecs, qt, err := e.Embed(ctx, sess, qTexts)
	if err != nil {
		return nil, m, err
	}
	elapsed := time.Since(start)
	n := len(docTexts) + len(qTexts)
	m.embedPerText = elapsed / time.Duration(n)
	m.tokensPerText = float64(dt+qt) / float64(n)
	m.embeddedTexts = n
	ranks := make([]int, len(s.Queries))
	idx := docIndex(s)
	for i, q := range s.Queries {
		ranks[i] = rankOf(cosines(qVecs[i], docVecs), idx[q.Relevant])
	}
	return ranks, m, nil
}

func docIndex(s *evalSet) map[string]int {
	idx := map[string]int{}
	for i, d := range s.Documents {
		idx[d.ID] = i
	}
	return idx
}

func bm25Ranks(s *evalSet) []int {
	texts := make([]string, len(s.Documents))
	for i, d := range s.Documents {
		texts[i] = d.Text
	}
	m := newBM25(texts, 1.2, 0.75)
	idx := docIndex(s)
	ranks := make([]int, len(s.Queries))
	for i, q := range s.Queries {
		ranks[i] = rankOf(m.scores(q.Text), idx[q.Relevant])
	}
	return ranks
}

// runQuality measures retrieval quality on the labelled set: the default
// embedder, the hash embedder and BM25, each ranking every document for
// every query.
func runQuality(setPath, out string) error {
	if setPath == "" {
		setPath = testmesh.RepoFile(qualitySetPath)
	}
	set, err := loadEvalSet(setPath)
	if err != nil {
		return err
	}
	minilm, err := testmesh.Model("minilm-l6-v2-q.onnx")
	if err != nil {
		return err
	}
	tok, err := testmesh.Model("minilm-tokenizer.json")
	if err != nil {
		return err
	}
	eng, err := inference.Open(inference.Config{
		Library: testmesh.RepoFile("deps/onnxruntime/libonnxruntime.so"),
		Device:  inference.DeviceCPU,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	defer eng.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	var rows []qualityMetrics
	var allRanks [][]int
	fmt.Fprintf(os.Stderr, "quality: %d documents, %d queries; embedding with all-MiniLM-L6-v2...\n", len(set.Documents), len(set.Queries))
	ranks, em, err := embedRanks(ctx, eng, set, inference.Ref{Model: "minilm-l6-v2-q", Version: "v1"}, minilm, tok)
	if err != nil {
		return fmt.Errorf("default embedder: %w", err)
	}
	allRanks = append(allRanks, ranks)
	r := summarise(ranks)
	r.name = "default embedder: all-MiniLM-L6-v2, int8 ONNX (384 dims), exact cosine"
	r.embedPerText, r.tokensPerText, r.embeddedTexts = em.embedPerText, em.tokensPerText, em.embeddedTexts
	rows = append(rows, r)

	fmt.Fprintf(os.Stderr, "quality: embedding with the hash embedder...\n")
	ranks, em, err = embedRanks(ctx, eng, set, inference.Ref{Model: "hash-embedder", Version: "v1"}, onnxmodel.HashEmbedder(8192, 384, 1), tok)
	if err != nil {
		return fmt.Errorf("hash embedder: %w", err)
	}
	allRanks = append(allRanks, ranks)
	r = summarise(ranks)
	r.name = "hash embedder: onnxmodel.HashEmbedder(8192, 384, 1), same tokenizer, exact cosine"
	r.embedPerText, r.tokensPerText, r.embeddedTexts = em.embedPerText, em.tokensPerText, em.embeddedTexts
	rows = append(rows, r)

	ranks = bm25Ranks(set)
	allRanks = append(allRanks, ranks)
	r = summarise(ranks)
	r.name = "BM25 (Okapi, k1 1.2, b 0.75, lowercased words)"
	rows = append(rows, r)

	// The same scorers on the queries that share at least one content word
	// with their document: where a lexical scorer has something to match.
	shared, overlap := contentOverlap(set)
	var lexical []qualityMetrics
	for i, ranks := range allRanks {
		var sub []int
		for q, r := range ranks {
			if shared[q] > 0 {
				sub = append(sub, r)
			}
		}
		m := summarise(sub)
		m.name = rows[i].name
		lexical = append(lexical, m)
	}
	table := renderQuality(set, rows, lexical, overlap)
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "quality", table)
}

func renderQuality(set *evalSet, rows, lexical []qualityMetrics, overlap float64) string {
	none := len(set.Queries)
	if len(lexical) > 0 {
		none -= lexical[0].queries
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Retrieval quality: labelled paraphrase queries, embedders against BM25\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. Data set `%s`: %d one-sentence documents and %d queries, written by hand\n",
		time.Now().UTC().Format("2006-01-02"), machine(), qualitySetPath, len(set.Documents), len(set.Queries))
	fmt.Fprintf(&b, "for Shoal (28 topics, 17 of them industrial, edge or IT operations, 11 general; 19 documents per topic, 5 with a query).\n")
	fmt.Fprintf(&b, "Each query has exactly one relevant document and paraphrases it in other words (question form, synonyms): on average\n")
	fmt.Fprintf(&b, "%.1f %% of a query's content words (stop words aside) occur in its document, and %d of the %d queries share none.\n", 100*overlap, none, len(set.Queries))
	fmt.Fprintf(&b, "Every scorer ranks all %d documents for every query (embedders: exact cosine, no index). recall@k = share of queries whose\n", len(set.Documents))
	fmt.Fprintf(&b, "document ranks in the first k; MRR = mean of 1/rank over the full ranking (not cut at 10); ties rank against the relevant\n")
	fmt.Fprintf(&b, "document. Embedding time = mean wall time per text over all documents and queries, each text run alone (as the peer\n")
	fmt.Fprintf(&b, "does), onnxruntime on the CPU with its default intra-op threads.\n\n")
	fmt.Fprintln(&b, "| scorer | recall@1 | recall@5 | MRR | median rank | embedding time / text | tokens / text |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		t, tok := "—", "—"
		if r.embeddedTexts > 0 {
			t = fmt.Sprintf("%.2f ms", float64(r.embedPerText.Microseconds())/1000)
			tok = fmt.Sprintf("%.1f", r.tokensPerText)
		}
		fmt.Fprintf(&b, "| %s | %.3f | %.3f | %.3f | %d | %s | %s |\n", r.name, r.recall1, r.recall5, r.mrr, r.medianRank, t, tok)
	}
	if len(lexical) > 0 && lexical[0].queries > 0 {
		fmt.Fprintf(&b, "\nThe same rankings, on the %d queries that share at least one content word with their document:\n\n", lexical[0].queries)
		fmt.Fprintln(&b, "| scorer | recall@1 | recall@5 | MRR | median rank |")
		fmt.Fprintln(&b, "|---|---:|---:|---:|---:|")
		for _, r := range lexical {
			fmt.Fprintf(&b, "| %s | %.3f | %.3f | %.3f | %d |\n", r.name, r.recall1, r.recall5, r.mrr, r.medianRank)
		}
	}
	return b.String() + "\n"
}
