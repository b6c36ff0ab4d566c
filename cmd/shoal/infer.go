package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// cmdInfer sends one OIP v2 inference request and prints the response.
func cmdInfer(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("infer", flag.ContinueOnError)
	addr := apiFlag(fs)
	input := fs.String("input", "", "OIP v2 inference request body (JSON file; - for stdin) (required)")
	maxStale := fs.String("max-staleness", "", "refuse (or with --flag-stale, flag) answers from a view staler than this, e.g. 5s")
	flagStale := fs.Bool("flag-stale", false, "with --max-staleness: answer anyway and report the staleness instead of refusing")
	after := fs.String("after", "", "read-your-writes token (from `shoal model push|activate`): wait until the peer has seen that write")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	pos, err := interleave(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *input == "" {
		return usageError("usage: shoal infer MODEL[@VERSION] --input REQUEST.json [--api URL] [--max-staleness 5s] [--after TOKEN]")
	}
	model, version, _ := strings.Cut(pos[0], "@")
	if model == "" || strings.Contains(pos[0], "@") && version == "" {
		return usageError("model %q: use MODEL or MODEL@VERSION", pos[0])
	}
	var body []byte
	if *input == "-" {
		body, err = io.ReadAll(io.LimitReader(os.Stdin, api.MaxInferBodyBytes+1))
	} else {
		body, err = os.ReadFile(*input)
	}
	if err != nil {
		return fmt.Errorf("--input: %w", err)
	}
	if !json.Valid(body) {
		return fmt.Errorf("--input: %s is not JSON", *input)
	}
	path := "/v2/models/" + url.PathEscape(model)
	if version != "" {
		path += "/versions/" + url.PathEscape(version)
	}
	path += "/infer"
	hdr := http.Header{"Content-Type": {"application/json"}}
	if *maxStale != "" {
		hdr.Set(api.HeaderMaxStaleness, *maxStale)
		if *flagStale {
			hdr.Set(api.HeaderStalenessPolicy, "flag")
		}
	}
	if *after != "" {
		hdr.Set(api.HeaderAfter, *after)
	}
	hdr.Set(api.HeaderTimeout, fmt.Sprintf("%.0f", min(timeout.Seconds(), 120)))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var resp json.RawMessage
	h, err := callH(ctx, http.MethodPost, apiURL(*addr)+path, hdr, bytes.NewReader(body), &resp)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if json.Indent(&out, resp, "", "  ") != nil {
		out.Write(resp)
	}
	fmt.Fprintln(stdout, out.String())
	fmt.Fprintf(stderr, "answered by %s@%s (cache %s, staleness %s)\n", model, h.Get(api.HeaderModelVersion), h.Get(api.HeaderCache), h.Get(api.HeaderStaleness))
	if h.Get(api.HeaderStale) != "" {
		fmt.Fprintf(stderr, "warning: the answer is staler than %s\n", *maxStale)
	}
	return nil
}

// cmdCache handles `shoal cache flush [MODEL]`.
func cmdCache(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "flush" {
		return usageError("usage: shoal cache flush [MODEL] [--api URL]")
	}
	fs := flag.NewFlagSet("cache flush", flag.ContinueOnError)
	addr := apiFlag(fs)
	pos, err := interleave(fs, args[1:], stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError("usage: shoal cache flush [MODEL] [--api URL]")
	}
	q := ""
	what := "every model"
	if len(pos) == 1 {
		q = "?model=" + url.QueryEscape(pos[0])
		what = pos[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res struct {
		Flush api.CacheFlush `json:"flush"`
		Token string         `json:"token"`
	}
	if _, err := call(ctx, http.MethodPost, apiURL(*addr)+"/v1/cache/flush"+q, nil, &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "flushed cached results of %s on every peer (as of %s)\ntoken %s\n", what, time.Unix(0, res.Flush.HLC.Wall).UTC().Format(time.RFC3339Nano), res.Token)
	return nil
}
