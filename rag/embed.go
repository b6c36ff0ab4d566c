package rag

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"unicode"

	"github.com/sugarme/tokenizer"
	"github.com/sugarme/tokenizer/pretrained"
	"golang.org/x/text/unicode/norm"

	"github.com/shoal-mesh/shoal/inference"
)

// ErrNotEmbedder means a model does not have the interface of a text
// embedding export.
var ErrNotEmbedder = errors.New("not a text-embedding model")

// MaxTokens is where texts are truncated (BERT-style exports take 512;
// 256 keeps a gateway's memory and latency bounded).
const MaxTokens = 256

// Embedder turns texts into unit vectors with an ONNX text-embedding export
// (sentence-transformers style: input_ids, attention_mask and optionally
// token_type_ids in; token states or a pooled embedding out) and its
// tokenizer (Hugging Face tokenizer.json, read by github.com/sugarme/tokenizer).
// Token states are mean-pooled over the attention mask; every vector is
// L2-normalised.
type Embedder struct {
	ref     string
	idType  string // INT64 or INT32
	inputs  map[string]bool
	output  string
	pooled  bool
	dim     int
	tokMu   sync.Mutex
	tok     *tokenizer.Tokenizer
	special bool
	// stripAccents: the tokenizer file's BertNormalizer strips accents
	// (strip_accents true, or null with lowercase, as Hugging Face reads
	// it), which sugarme/tokenizer v0.3.0 does not do for null; done here.
	stripAccents bool
}

// NewEmbedder checks that s has an embedder's interface and loads the
// tokenizer. The session is only inspected; Embed takes one per call, so
// hot swaps and pinned versions work as for any model.
func NewEmbedder(ref string, s *inference.Session, tokenizerJSON []byte) (*Embedder, error) {
	tok, err := pretrained.FromReader(bytes.NewReader(tokenizerJSON))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: tokenizer: %v", ErrNotEmbedder, ref, err)
	}
	// Tokenizer files may fix a truncation and a padding of their own
	// (all-MiniLM-L6-v2's: 128 tokens, padded to 128); the model card's
	// limit is applied here instead (MaxTokens), and nothing is padded.
	tok.WithTruncation(nil)
	tok.WithPadding(nil)
	e := &Embedder{ref: ref, tok: tok, inputs: map[string]bool{}, special: true, stripAccents: stripsAccents(tokenizerJSON)}
	for _, in := range s.Inputs() {
		e.inputs[in.Name] = true
		if in.Name == "input_ids" {
			e.idType = in.Datatype
		}
		if len(in.Shape) != 2 {
			return nil, fmt.Errorf("%w: %s: input %s has shape %v, want [batch, sequence]", ErrNotEmbedder, ref, in.Name, in.Shape)
		}
	}
	if e.idType != "INT64" && e.idType != "INT32" {
		return nil, fmt.Errorf("%w: %s: no INT64/INT32 input_ids input (inputs %v)", ErrNotEmbedder, ref, s.Inputs())
	}
	for name := range e.inputs {
		if name != "input_ids" && name != "attention_mask" && name != "token_type_ids" {
			return nil, fmt.Errorf("%w: %s: unexpected input %q", ErrNotEmbedder, ref, name)
		}
	}
	// A pooled output ([batch, dim]) wins over token states.
	for _, o := range s.Outputs() {
		if o.Datatype == "FP32" && len(o.Shape) == 2 {
			e.output, e.pooled, e.dim = o.Name, true, int(o.Shape[1])
			break
		}
	}
	if e.output == "" {
		for _, o := range s.Outputs() {
			if o.Datatype == "FP32" && len(o.Shape) == 3 {
				e.output, e.dim = o.Name, int(o.Shape[2])
				break
			}
		}
	}
	if e.output == "" {
		return nil, fmt.Errorf("%w: %s: no FP32 output of shape [batch, dim] or [batch, sequence, dim]", ErrNotEmbedder, ref)
	}
	if e.dim <= 0 {
		e.dim = 0 // learnt on the first run
	}
	return e, nil
}

// Ref is the embedder's model@version.
func (e *Embedder) Ref() string { return e.ref }

// Dim is the vector dimension (0 until known for models with a dynamic
// hidden size).
func (e *Embedder) Dim() int { return e.dim }

// Embedding is what embedding some texts made.
type Embedding struct {
	// Vectors holds one unit vector per text.
	Vectors [][]float32
	// Truncated says, per text, whether it was cut at MaxTokens before it
	// was embedded (its vector stands for its first MaxTokens tokens only).
	Truncated []bool
	// Tokens is the number of tokens read (after truncation).
	Tokens int
	// Embedder is the model@version that embedded them.
	Embedder string
}

// Embed returns one unit vector per text and the number of tokens used.
// s must be a session of this embedder's model version, acquired.
func (e *Embedder) Embed(ctx context.Context, s *inference.Session, texts []string) ([][]float32, int, error) {
	em, err := e.EmbedTexts(ctx, s, texts)
	return em.Vectors, em.Tokens, err
}

// EmbedTexts is Embed that also reports which texts were truncated.
//
// Each text runs on its own, unpadded: a text's vector must not depend on
// the texts it happens to share a request with. Quantised exports (the
// default embedder among them) quantise activations with one scale per
// tensor, so a batch — its other texts, its padding — would shift every
// vector in it, and the embedding cache, keyed by text, would keep
// whichever batch came first.
func (e *Embedder) EmbedTexts(ctx context.Context, s *inference.Session, texts []string) (Embedding, error) {
	em := Embedding{Vectors: make([][]float32, len(texts)), Truncated: make([]bool, len(texts)), Embedder: e.ref}
	for i, t := range texts {
		ids, types, cut, err := e.tokenize(t)
		if err != nil {
			return Embedding{}, fmt.Errorf("tokenize text %d: %w", i, err)
		}
		if em.Vectors[i], err = e.run(ctx, s, ids, types); err != nil {
			return Embedding{}, err
		}
		em.Truncated[i] = cut
		em.Tokens += len(ids)
	}
	return em, nil
}

// tokenize returns a text's token ids and type ids, truncated to
// MaxTokens as sentence-transformers does: the [CLS] … [SEP] frame kept,
// the text cut before the final special token; cut says it was.
func (e *Embedder) tokenize(text string) (ids, types []int, cut bool, err error) {
	if e.stripAccents {
		text = removeAccents(text)
	}
	e.tokMu.Lock()
	enc, err := e.tok.EncodeSingle(text, e.special)
	e.tokMu.Unlock()
	if err != nil {
		return nil, nil, false, err
	}
	ids, types = enc.Ids, enc.TypeIds
	if len(ids) > MaxTokens {
		last := ids[len(ids)-1]
		ids = append(ids[:MaxTokens-1:MaxTokens-1], last)
		types = types[:min(MaxTokens, len(types))]
		cut = true
	}
	if len(ids) == 0 {
		return nil, nil, false, fmt.Errorf("the text produces no tokens")
	}
	return ids, types, cut, nil
}

// run embeds one tokenised text: the pooled output, or its token states
// mean-pooled; L2-normalised.
func (e *Embedder) run(ctx context.Context, s *inference.Session, ids, types []int) ([]float32, error) {
	n := len(ids)
	idData, maskData, typeData := make([]int64, n), make([]int64, n), make([]int64, n)
	for j, id := range ids {
		idData[j], maskData[j] = int64(id), 1
		if j < len(types) {
			typeData[j] = int64(types[j])
		}
	}
	shape := []int64{1, int64(n)}
	req := &inference.InferRequest{Outputs: []inference.RequestOutput{{Name: e.output}}}
	add := func(name string, data []int64) {
		if e.inputs[name] {
			raw, _ := json.Marshal(data)
			req.Inputs = append(req.Inputs, inference.RequestInput{Name: name, Shape: shape, Datatype: e.idType, Data: raw})
		}
	}
	add("input_ids", idData)
	add("attention_mask", maskData)
	add("token_type_ids", typeData)
	p, err := s.Prepare(req)
	if err != nil {
		return nil, err
	}
	outs, err := s.Run(ctx, p)
	if err != nil {
		return nil, err
	}
	data, ok := outs[0].Data.([]float32)
	if !ok {
		return nil, fmt.Errorf("%s: output %s is %T, want FP32", e.ref, e.output, outs[0].Data)
	}
	dim := int(outs[0].Shape[len(outs[0].Shape)-1])
	v := make([]float32, dim)
	if e.pooled {
		copy(v, data[:dim])
	} else {
		// Mean over the tokens (all of them: nothing is padded).
		for j := 0; j < n; j++ {
			row := data[j*dim : (j+1)*dim]
			for d := range v {
				v[d] += row[d]
			}
		}
		for d := range v {
			v[d] /= float32(n)
		}
	}
	normalize(v)
	e.dim = dim
	return v, nil
}

func stripsAccents(tokenizerJSON []byte) bool {
	var cfg struct {
		Normalizer *struct {
			Type         string `json:"type"`
			StripAccents *bool  `json:"strip_accents"`
			Lowercase    bool   `json:"lowercase"`
		} `json:"normalizer"`
	}
	if json.Unmarshal(tokenizerJSON, &cfg) != nil || cfg.Normalizer == nil || cfg.Normalizer.Type != "BertNormalizer" {
		return false
	}
	if cfg.Normalizer.StripAccents != nil {
		return *cfg.Normalizer.StripAccents
	}
	return cfg.Normalizer.Lowercase
}

// removeAccents decomposes text (NFD) and drops the combining marks, as
// BERT's normalizer does.
func removeAccents(s string) string {
	d := norm.NFD.String(s)
	b := make([]rune, 0, len(d))
	for _, r := range d {
		if !unicode.Is(unicode.Mn, r) {
			b = append(b, r)
		}
	}
	return string(b)
}

func normalize(v []float32) {
	var s float64
	for _, f := range v {
		s += float64(f) * float64(f)
	}
	if s == 0 {
		return
	}
	inv := float32(1 / math.Sqrt(s))
	for i := range v {
		v[i] *= inv
	}
}
