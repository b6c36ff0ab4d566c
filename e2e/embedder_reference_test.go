package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/peer"
	"github.com/shoal-mesh/shoal/rag"
)

// publishDefaultEmbedder pushes the default embedder `make setup` fetched
// (all-MiniLM-L6-v2, int8 ONNX) and its tokenizer as name@v1.
func publishDefaultEmbedder(t *testing.T, n *peer.Node, name string) string {
	t.Helper()
	model, err := os.ReadFile(testmesh.RepoFile("deps/models/minilm-l6-v2-q.onnx"))
	if err != nil {
		t.Fatalf("default embedder missing (%v): run `make setup`", err)
	}
	tok, err := os.ReadFile(testmesh.RepoFile("deps/models/minilm-tokenizer.json"))
	if err != nil {
		t.Fatalf("tokenizer missing (%v): run `make setup`", err)
	}
	push(t, n, name, "v1", model, onnxQuery+"&activate=true")
	return push(t, n, name+api.TokenizerSuffix, "v1", tok, "media_type="+url.QueryEscape(api.MediaTypeTokenizer))
}

// referenceSentences are ≥ 50 varied texts: plain, questions, numbers,
// punctuation, accents and other scripts, emoji, whitespace oddities, and
// texts past the model's 256-token limit (truncated as its card says).
func referenceSentences() []string {
	s := []string{
		"The cat sits on the mat.",
		"How stale can a peer be?",
		"Edge gateways replicate model versions without a leader.",
		"Quarterly revenue grew by 10.5% to $3,200,000 in Q3 2026.",
		"Ünïcödé, punctuation — and MIXED case: tokenizers differ here first!",
		"Ça coûte 3 € — un café naïf à la crème brûlée.",
		"Straße, Größe, Fußgängerübergang: deutsche Wörter.",
		"¿Dónde está la estación de tren más cercana?",
		"Москва — столица России.",
		"東京は日本の首都です。",
		"北京欢迎你",
		"서울은 한국의 수도입니다.",
		"مرحبا بالعالم",
		"שלום עולם",
		"Γειά σου κόσμε, αυτό είναι ένα τεστ.",
		"हिन्दी में एक वाक्य।",
		"Emoji 🚀🔥 are tokens too 👍🏽.",
		"tabs\tand\nnewlines\r\nin one text",
		"   leading and trailing spaces   ",
		"ALL CAPS SHOUTING ABOUT THE CONVEYOR BELT",
		"e-mail: ops@example.com, url: https://example.com/a?b=c&d=e",
		"C++, C#, F#, and Go 1.26 — languages.",
		"(parentheses) [brackets] {braces} <angles>",
		"\"quoted\" 'single' `backticks` «guillemets»",
		"ellipsis… dash – em-dash — hyphen-ated",
		"3.14159 2.71828 1.41421 1e-9 -42 +7",
		"The temperature is -18°C in the cold store.",
		"x = y² + z³ ≤ ∞",
		"Versions v1.2.3-rc.1+build.5 and ocr-cls@ppocr-v2.0.",
		"A",
		"?",
		"don't won't can't shouldn't y'all",
		"The quick brown fox jumps over the lazy dog.",
		"Inference runs on the gateway's GPU, or its CPU when there is none.",
		"Documents replicate together with their embeddings.",
		"A new model version is warmed up and swapped in without dropping a request.",
		"mDNS finds peers on a LAN; bootstrap peers join sites.",
		"Publishers sign manifests with ed25519 keys.",
		"The forklift battery reported 12% charge at 14:05.",
		"Vibration on line 3 exceeded the threshold twice.",
		"Camera 7 lost frames between 02:00 and 02:15 UTC.",
		"Please restart the inverter after the firmware update.",
		"Is the result cache invalidated when a new version is activated?",
		"What happens when the disk is full?",
		"Rollback to the previous verified version.",
		"naïve coöperation résumé façade jalapeño",
		"İstanbul ve Ankara şehirleri.",
		"Ølstykke, Århus, Æbeltoft.",
		"Ĳssel and ǅ digraphs.",
		"ﬁnance ﬂow (ligatures)",
		"full-width ＡＢＣ１２３",
		"zero​width​spaces and soft­hyphens",
	}
	long := strings.Repeat("The maintenance manual says to check the belt tension, the bearing temperature and the motor current every shift. ", 20)
	s = append(s, long, strings.Repeat("word ", 600), strings.Repeat("édition spéciale ", 200))
	return s
}

// TestDefaultEmbedderMatchesThePythonReference: the peer's /v1/embeddings
// with the default embedder (sugarme/tokenizer, Shoal's pooling and
// truncation, onnxruntime through onnxruntime_go) against Hugging Face's
// `tokenizers` and onnxruntime's Python binding from PyPI computing the
// same model as its card says (e2e/testdata/reference_embed.py): cosine ≥
// 0.999 for every one of the ≥ 50 texts.
func TestDefaultEmbedderMatchesThePythonReference(t *testing.T) {
	python := testmesh.RepoFile("deps/python/bin/python3")
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("the reference's Python is missing (%v): run `make setup`", err)
	}
	texts := referenceSentences()
	if len(texts) < 50 {
		t.Fatalf("%d texts, want ≥ 50", len(texts))
	}
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	tok := publishDefaultEmbedder(t, n, "minilm")

	in, _ := json.Marshal(texts)
	cmd := exec.Command(python, testmesh.RepoFile("e2e/testdata/reference_embed.py"),
		testmesh.RepoFile("deps/models/minilm-l6-v2-q.onnx"), testmesh.RepoFile("deps/models/minilm-tokenizer.json"), fmt.Sprint(rag.MaxTokens))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference: %v\n%s", err, stderr.String())
	}
	var ref []struct {
		IDs       []int     `json:"ids"`
		Embedding []float64 `json:"embedding"`
	}
	if err := json.Unmarshal(out, &ref); err != nil || len(ref) != len(texts) {
		t.Fatalf("reference output: %v %s", err, truncate(out))
	}
	got := embedAll(t, n, "minilm@v1", texts, tok)
	long := 0
	for i := range texts {
		if len(ref[i].IDs) == rag.MaxTokens {
			long++
		}
		if cos := cosine(got[i], ref[i].Embedding); cos < 0.999 {
			t.Errorf("text %d %q (%d reference tokens): cosine with the reference %.5f < 0.999", i, truncate([]byte(texts[i])), len(ref[i].IDs), cos)
		}
	}
	if long < 3 {
		t.Errorf("only %d texts reached the %d-token limit; the truncation path is not exercised", long, rag.MaxTokens)
	}
}

// embedAll embeds texts through /v1/embeddings, in batches the API takes.
func embedAll(t *testing.T, n *peer.Node, model string, texts []string, tok string) [][]float64 {
	t.Helper()
	var out [][]float64
	for start := 0; start < len(texts); start += 16 {
		batch := texts[start:min(start+16, len(texts))]
		body, _ := json.Marshal(map[string]any{"model": model, "input": batch})
		res := do(t, http.MethodPost, baseURL(n)+"/v1/embeddings", body, api.HeaderAfter, tok, api.HeaderTimeout, "60s")
		var got struct {
			Data []struct {
				Index     int       `json:"index"`
				Embedding []float64 `json:"embedding"`
			} `json:"data"`
		}
		if res.code != http.StatusOK {
			t.Fatalf("embeddings: %d %s", res.code, truncate(res.body))
		}
		res.json(t, &got)
		if len(got.Data) != len(batch) {
			t.Fatalf("%d embeddings for %d texts", len(got.Data), len(batch))
		}
		for i, d := range got.Data {
			if d.Index != i {
				t.Fatalf("embedding %d has index %d", i, d.Index)
			}
			out = append(out, d.Embedding)
		}
	}
	return out
}

func cosine(a, b []float64) float64 {
	if len(a) != len(b) {
		return -2
	}
	var dot, na, nb float64
	for i := range a {
		dot, na, nb = dot+a[i]*b[i], na+a[i]*a[i], nb+b[i]*b[i]
	}
	return dot / (math.Sqrt(na) * math.Sqrt(nb))
}

// TestOpenAIPythonClientGetsEmbeddings points the official openai package
// from PyPI (pinned in scripts/python-requirements.txt) at a peer serving
// the default embedder: the client's own base64 decoding, float vectors,
// usage, a semantic neighbour, and an error it reports with our code.
func TestOpenAIPythonClientGetsEmbeddings(t *testing.T) {
	python := testmesh.RepoFile("deps/python/bin/python3")
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("the tests' Python is missing (%v): run `make setup`", err)
	}
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	tok := publishDefaultEmbedder(t, n, "minilm")
	do(t, "GET", baseURL(n)+"/v1/models/minilm", nil, api.HeaderAfter, tok)
	var stderr bytes.Buffer
	cmd := exec.Command(python, testmesh.RepoFile("e2e/testdata/openai_embeddings.py"), "http://"+n.APIAddr(), "minilm@v1")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, stderr.String())
	}
	var got struct {
		Model   string
		N       int
		Dim     int
		Indexes []int
		Usage   int
		First   []float64
		Float   []float64
		Sims    []float64
		Error   *struct {
			Status  int
			Code    string
			Message string
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Model != "minilm@v1" || got.N != 3 || got.Dim != 384 || got.Usage == 0 || fmt.Sprint(got.Indexes) != "[0 1 2]" {
		t.Errorf("the python client saw %+v", got)
	}
	for i := range got.First {
		if d := got.First[i] - got.Float[i]; d > 1e-6 || d < -1e-6 {
			t.Errorf("base64 and float encodings differ: %v vs %v", got.First, got.Float)
		}
	}
	if got.Sims[0] <= got.Sims[1]+0.2 {
		t.Errorf("the question's paraphrase (%.3f) is not clearly closer than an unrelated text (%.3f)", got.Sims[0], got.Sims[1])
	}
	if got.Error == nil || got.Error.Status != http.StatusNotFound || got.Error.Code != api.CodeModelUnknown || got.Error.Message == "" {
		t.Errorf("unknown model: the client saw %+v, want 404 %s", got.Error, api.CodeModelUnknown)
	}
}
