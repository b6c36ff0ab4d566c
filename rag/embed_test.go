package rag

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

func repoFile(t testing.TB, rel string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s missing (%v): run `make setup`", rel, err)
	}
	return p
}

func hashEmbedder(t testing.TB) (*Embedder, *inference.Session) {
	t.Helper()
	eng, err := inference.Open(inference.Config{Library: repoFile(t, inference.DefaultLibraryPath), Device: inference.DeviceCPU})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	s, err := eng.Load(context.Background(), inference.Ref{Model: "embed", Version: "v1"}, onnxmodel.HashEmbedder(8192, 384, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Retire)
	tok, err := os.ReadFile(repoFile(t, "deps/models/minilm-tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEmbedder("embed@v1", s, tok)
	if err != nil {
		t.Fatal(err)
	}
	return e, s
}

func dot(a, b []float32) float32 {
	var s float32
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func TestEmbedderPoolsTokenStatesIntoUnitVectors(t *testing.T) {
	e, s := hashEmbedder(t)
	if e.Dim() != 384 {
		t.Errorf("dim %d", e.Dim())
	}
	texts := []string{
		"Edge gateways replicate model versions without a leader.",
		"Gateways at the edge replicate model versions.",
		"Quarterly revenue grew by ten percent.",
	}
	batch, tokens, err := e.Embed(context.Background(), s, texts)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 3 || tokens < 15 {
		t.Fatalf("%d vectors, %d tokens", len(batch), tokens)
	}
	for i, v := range batch {
		if n := dot(v, v); n < 0.999 || n > 1.001 {
			t.Errorf("vector %d has squared norm %f", i, n)
		}
		// Padding does not change a text's vector: alone == in a batch.
		one, _, err := e.Embed(context.Background(), s, texts[i:i+1])
		if err != nil {
			t.Fatal(err)
		}
		if c := dot(one[0], v); c < 0.9999 {
			t.Errorf("text %d: cosine alone vs batched %f", i, c)
		}
	}
	if close, far := dot(batch[0], batch[1]), dot(batch[0], batch[2]); close <= far || far > 0.5 || close < 0.5 {
		t.Errorf("texts sharing words: cosine %.3f; unrelated texts: %.3f", close, far)
	}
	if _, err := NewEmbedder("ocr@1", mustLoad(t, "deps/models/ocr-cls.onnx"), nil); err == nil {
		t.Error("an image classifier accepted as an embedder")
	}
}

func mustLoad(t *testing.T, rel string) *inference.Session {
	eng, err := inference.Open(inference.Config{Library: repoFile(t, inference.DefaultLibraryPath), Device: inference.DeviceCPU})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	s, err := eng.LoadFile(context.Background(), inference.Ref{Model: "x", Version: "1"}, repoFile(t, rel), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Retire)
	return s
}

// TestDefaultEmbedderReportsTruncation: the default embedder
// (all-MiniLM-L6-v2, int8, as `make setup` fetches it) reports a 300-word
// text truncated at MaxTokens — its vector is that of its first 256
// tokens, so words past them change nothing — and shorter texts not, up
// to exactly MaxTokens tokens ([CLS] and [SEP] included).
func TestDefaultEmbedderReportsTruncation(t *testing.T) {
	s := mustLoad(t, "deps/models/minilm-l6-v2-q.onnx")
	tok, err := os.ReadFile(repoFile(t, "deps/models/minilm-tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEmbedder("all-minilm-l6-v2@int8-1", s, tok)
	if err != nil {
		t.Fatal(err)
	}
	sentence := "The pump bearing runs hot after the night shift. " // 10 words, 11 tokens
	texts := []string{
		strings.Repeat(sentence, 30),                    // 300 words
		"Check the belt tension every shift.",           // short
		strings.Repeat(sentence, 60),                    // 600 words: the same first 256 tokens
		strings.TrimSpace(strings.Repeat("pump ", 254)), // 254 + [CLS] + [SEP] = MaxTokens: fits
		strings.TrimSpace(strings.Repeat("pump ", 255)), // one token over
	}
	em, err := e.EmbedTexts(context.Background(), s, texts)
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, true, false, true}
	for i := range texts {
		if em.Truncated[i] != want[i] {
			t.Errorf("text %d (%d words): truncated %v, want %v", i, len(strings.Fields(texts[i])), em.Truncated[i], want[i])
		}
	}
	if c := dot(em.Vectors[0], em.Vectors[2]); c < 0.9999 {
		t.Errorf("300 and 600 words of one text, both cut at %d tokens: cosine %.5f, want 1", MaxTokens, c)
	}
	short, tokens, err := e.Embed(context.Background(), s, texts[1:2])
	if err != nil {
		t.Fatal(err)
	}
	if tokens >= MaxTokens || dot(short[0], em.Vectors[1]) < 0.9999 {
		t.Errorf("the short text alone: %d tokens, cosine %.5f with its vector in the batch", tokens, dot(short[0], em.Vectors[1]))
	}
	if em.Tokens != 4*MaxTokens+tokens {
		t.Errorf("%d tokens read, want %d (four texts at the limit and the short one)", em.Tokens, 4*MaxTokens+tokens)
	}
}
