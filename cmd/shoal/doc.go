package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"
)

// cmdCollection handles `shoal collection create|ls`.
func cmdCollection(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("usage: shoal collection create NAME --embedder MODEL@VERSION [--metric cosine|dot|l2] [--vectors float32|int8] | shoal collection ls")
	}
	switch args[0] {
	case "create":
		fs := flag.NewFlagSet("collection create", flag.ContinueOnError)
		addr := apiFlag(fs)
		embedder := fs.String("embedder", "", "embedding model as MODEL@VERSION (required)")
		dim := fs.Int("dimension", 0, "vector dimension (default: what the embedder makes)")
		metric := fs.String("metric", "cosine", "cosine, dot or l2")
		vectors := fs.String("vectors", "float32", "how the index holds vectors: float32, or int8 (cosine only; a quarter of the memory)")
		pos, err := interleave(fs, args[1:], stderr)
		if err != nil {
			return err
		}
		if len(pos) != 1 || *embedder == "" {
			return usageError("usage: shoal collection create NAME --embedder MODEL@VERSION [--metric cosine|dot|l2] [--vectors float32|int8]")
		}
		body, _ := json.Marshal(api.CreateCollectionRequest{Name: pos[0], Embedder: *embedder, Dimension: *dim, Metric: *metric, Vectors: *vectors})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var res struct {
			Collection struct {
				Name      string `json:"name"`
				Embedder  string `json:"embedder"`
				Dimension int    `json:"dimension"`
				Metric    string `json:"metric"`
				Vectors   string `json:"vectors"`
			} `json:"collection"`
			Token string `json:"token"`
		}
		if _, err := call(ctx, http.MethodPost, apiURL(*addr)+"/v1/collections", bytes.NewReader(body), &res); err != nil {
			return err
		}
		c := res.Collection
		fmt.Fprintf(stdout, "collection %s: %s, dimension %d, %s, %s vectors\ntoken %s\n", c.Name, c.Embedder, c.Dimension, c.Metric, cmp.Or(c.Vectors, "float32"), res.Token)
		return nil
	case "ls":
		fs := flag.NewFlagSet("collection ls", flag.ContinueOnError)
		addr := apiFlag(fs)
		if err := parseFlags(fs, args[1:], stderr); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var res struct {
			Collections []struct {
				Name      string `json:"name"`
				Embedder  string `json:"embedder"`
				Dimension int    `json:"dimension"`
				Metric    string `json:"metric"`
				Index     struct {
					Documents   int       `json:"documents"`
					LastApplied time.Time `json:"last_applied"`
				} `json:"index"`
			} `json:"collections"`
		}
		if _, err := call(ctx, http.MethodGet, apiURL(*addr)+"/v1/collections", nil, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tEMBEDDER\tDIM\tMETRIC\tDOCS\tINDEX UPDATED")
		for _, c := range res.Collections {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", c.Name, c.Embedder, c.Dimension, c.Metric, c.Index.Documents, c.Index.LastApplied.Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return usageError("shoal collection: unknown subcommand %q (create, ls)", args[0])
}

// cmdDoc handles `shoal doc add|rm|query`.
func cmdDoc(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("usage: shoal doc add C FILE... | shoal doc rm C ID | shoal doc query C TEXT [-k 5]")
	}
	switch args[0] {
	case "add":
		return cmdDocAdd(args[1:], stdout, stderr)
	case "rm":
		fs := flag.NewFlagSet("doc rm", flag.ContinueOnError)
		addr := apiFlag(fs)
		pos, err := interleave(fs, args[1:], stderr)
		if err != nil {
			return err
		}
		if len(pos) != 2 {
			return usageError("usage: shoal doc rm COLLECTION ID")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var res struct{ Token string }
		if _, err := call(ctx, http.MethodDelete, apiURL(*addr)+"/v1/collections/"+url.PathEscape(pos[0])+"/docs/"+url.PathEscape(pos[1]), nil, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %s/%s\ntoken %s\n", pos[0], pos[1], res.Token)
		return nil
	case "query":
		fs := flag.NewFlagSet("doc query", flag.ContinueOnError)
		addr := apiFlag(fs)
		k := fs.Int("k", 5, "results")
		filter := fs.String("filter", "", "metadata filter key=value[,key=value]")
		asJSON := fs.Bool("json", false, "print the API's JSON")
		maxStale := fs.String("max-staleness", "", "refuse answers from a view staler than this, e.g. 5s")
		after := fs.String("after", "", "read-your-writes token")
		pos, err := interleave(fs, args[1:], stderr)
		if err != nil {
			return err
		}
		if len(pos) != 2 {
			return usageError("usage: shoal doc query COLLECTION TEXT [-k 5] [--filter key=value]")
		}
		req := api.QueryRequest{Text: pos[1], K: k}
		if *filter != "" {
			req.Filter = map[string]string{}
			for _, kv := range strings.Split(*filter, ",") {
				key, val, ok := strings.Cut(kv, "=")
				if !ok {
					return usageError("--filter %q: use key=value", kv)
				}
				req.Filter[key] = val
			}
		}
		body, _ := json.Marshal(req)
		hdr := http.Header{}
		if *maxStale != "" {
			hdr.Set(api.HeaderMaxStaleness, *maxStale)
		}
		if *after != "" {
			hdr.Set(api.HeaderAfter, *after)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var raw json.RawMessage
		if _, err := callH(ctx, http.MethodPost, apiURL(*addr)+"/v1/collections/"+url.PathEscape(pos[0])+"/query", hdr, bytes.NewReader(body), &raw); err != nil {
			return err
		}
		if *asJSON {
			printJSON(stdout, raw)
			return nil
		}
		var res api.QueryResponse
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SCORE\tID\tTEXT")
		for _, r := range res.Results {
			text := r.Text
			if len(text) > 90 {
				text = text[:87] + "..."
			}
			fmt.Fprintf(tw, "%.4f\t%s\t%s\n", r.Score, r.ID, text)
		}
		tw.Flush()
		fmt.Fprintf(stderr, "%d documents indexed, index updated %s, staleness %.3fs, embedder %s\n",
			res.Index.Documents, res.Index.LastApplied.Format(time.RFC3339), res.StalenessSeconds, res.Embedder)
		return nil
	}
	return usageError("shoal doc: unknown subcommand %q (add, rm, query)", args[0])
}

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// docID derives a document id from a file name.
func docID(path string) string {
	id := unsafeID.ReplaceAllString(strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)), "-")
	id = strings.Trim(id, "-.")
	if id == "" {
		id = "doc"
	}
	if len(id) > 128 {
		id = id[:128]
	}
	return id
}

// cmdDocAdd adds one document per file, or the lines of JSON-lines files
// ({"id", "text", "metadata"}), in batches, with progress.
func cmdDocAdd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("doc add", flag.ContinueOnError)
	addr := apiFlag(fs)
	batch := fs.Int("batch", 200, "documents per request")
	pos, err := interleave(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usageError("usage: shoal doc add COLLECTION FILE... (one document per file; *.jsonl: one {\"id\",\"text\",\"metadata\"} per line)")
	}
	c := pos[0]
	var docs []api.DocRequest
	for _, path := range pos[1:] {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, ".jsonl") {
			sc := bufio.NewScanner(bytes.NewReader(b))
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for line := 1; sc.Scan(); line++ {
				if strings.TrimSpace(sc.Text()) == "" {
					continue
				}
				var d api.DocRequest
				if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
					return fmt.Errorf("%s:%d: %w", path, line, err)
				}
				docs = append(docs, d)
			}
			if err := sc.Err(); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			continue
		}
		docs = append(docs, api.DocRequest{ID: docID(path), Text: string(b), Metadata: map[string]string{"file": filepath.Base(path)}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	var token string
	for start := 0; start < len(docs); start += *batch {
		end := min(start+*batch, len(docs))
		body, _ := json.Marshal(map[string]any{"docs": docs[start:end]})
		var res struct{ Token string }
		if _, err := call(ctx, http.MethodPost, apiURL(*addr)+"/v1/collections/"+url.PathEscape(c)+"/docs", bytes.NewReader(body), &res); err != nil {
			return fmt.Errorf("documents %d-%d: %w", start+1, end, err)
		}
		token = res.Token
		fmt.Fprintf(stderr, "\radded %d/%d documents", end, len(docs))
	}
	fmt.Fprintln(stderr)
	fmt.Fprintf(stdout, "added %d documents to %s\ntoken %s\n", len(docs), c, token)
	return nil
}

// printJSON writes an API answer indented, for --json.
func printJSON(w io.Writer, raw json.RawMessage) {
	var out bytes.Buffer
	json.Indent(&out, raw, "", "  ")
	fmt.Fprintln(w, out.String())
}
