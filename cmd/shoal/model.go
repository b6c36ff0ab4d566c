package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/peer"
)

const modelUsage = `Usage:
  shoal model push FILE --name M --version V [--activate] [--prefetch]
  shoal model activate M V
  shoal model rollback M
  shoal model ls [--json]
  shoal model pull M[@V]          fetch and verify a version here now, with progress
All take --api URL (env SHOAL_API, default 127.0.0.1:7480).
`

func cmdModel(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, modelUsage)
		return &exitError{code: 2, err: errHelpShown}
	}
	switch args[0] {
	case "push":
		return cmdModelPush(args[1:], stdout, stderr)
	case "activate":
		return cmdModelActivate(args[1:], stdout, stderr)
	case "rollback":
		return cmdModelRollback(args[1:], stdout, stderr)
	case "ls", "list":
		return cmdModelLs(args[1:], stdout, stderr)
	case "pull":
		return cmdModelPull(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, modelUsage)
	return usageError("unknown model command %q", args[0])
}

// interleave lets flags come after positional arguments
// ("push FILE --name m"), as operators type them.
func interleave(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlagsAllowArgs(fs, args, stderr); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func parseFlagsAllowArgs(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0, err: errHelpShown}
		}
		return &exitError{code: 2, err: errHelpShown}
	}
	return nil
}

func apiFlag(fs *flag.FlagSet) *string {
	return fs.String("api", envString("API", peer.DefaultAPIAddr), "the peer's API address or URL (env SHOAL_API)")
}

// call sends a request to the API and decodes a JSON answer into out.
func call(ctx context.Context, method, u string, body io.Reader, out any) (http.Header, error) {
	return callH(ctx, method, u, nil, body, out)
}

// callH is call with request headers.
func callH(ctx context.Context, method, u string, hdr http.Header, body io.Reader, out any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if tok := os.Getenv("SHOAL_API_TOKEN"); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the peer's API: %w (is `shoal run` running? use --api)", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return resp.Header, answerError(resp, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.Header, fmt.Errorf("decode answer: %w", err)
		}
	}
	return resp.Header, nil
}

// progressReader reports upload progress on stderr when it is a terminal.
type progressReader struct {
	r           io.Reader
	total, done int64
	w           io.Writer
	last        time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.w != nil && (time.Since(p.last) > 200*time.Millisecond || err == io.EOF) {
		p.last = time.Now()
		fmt.Fprintf(p.w, "\ruploading %5.1f%% (%d/%d bytes)", 100*float64(p.done)/float64(max(p.total, 1)), p.done, p.total)
		if err == io.EOF {
			fmt.Fprintln(p.w)
		}
	}
	return n, err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func cmdModelPush(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model push", flag.ContinueOnError)
	addr := apiFlag(fs)
	name := fs.String("name", "", "model name (required)")
	version := fs.String("version", "", "version (required)")
	activate := fs.Bool("activate", false, "make it the current version right away")
	prefetch := fs.Bool("prefetch", false, "ask every peer to fetch and verify it before activation")
	mediaType := fs.String("media-type", "", "media type of the artifact (default "+models.MediaTypeONNX+" for *.onnx files, which peers serve for inference, else application/octet-stream)")
	noCache := fs.Bool("no-cache", false, "keep this model's results out of the result cache (non-deterministic outputs)")
	warmup := fs.String("warmup", "", "OIP v2 inference request (JSON file) that peers run before serving the version (default: zeros of guessed sizes)")
	maxBatch := fs.Int("max-batch", 0, fmt.Sprintf("dynamic batching: run requests that arrive together as one inference of at most N rows (dimension 0; 0: off, at most %d)", models.MaxBatchSizeLimit))
	maxDelay := fs.Duration("max-queue-delay", 0, "with --max-batch: how long a queued request may wait for others to fill its batch (e.g. 500us; at most 1s)")
	pos, err := interleave(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *name == "" || *version == "" {
		return usageError("usage: shoal model push FILE --name M --version V [--activate] [--prefetch] [--no-cache] [--warmup REQUEST.json] [--max-batch N [--max-queue-delay DUR]]")
	}
	if *maxDelay%time.Microsecond != 0 {
		return usageError("--max-queue-delay %s: use whole microseconds", *maxDelay)
	}
	if *mediaType == "" {
		*mediaType = "application/octet-stream"
		if strings.HasSuffix(strings.ToLower(pos[0]), ".onnx") {
			*mediaType = models.MediaTypeONNX
		}
	}
	hdr := http.Header{}
	if *warmup != "" {
		b, err := os.ReadFile(*warmup)
		if err != nil {
			return fmt.Errorf("--warmup: %w", err)
		}
		if !json.Valid(b) {
			return fmt.Errorf("--warmup: %s is not JSON", *warmup)
		}
		hdr.Set(api.HeaderWarmup, base64.StdEncoding.EncodeToString(b))
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("artifact: %s is a directory", pos[0])
	}
	q := url.Values{"media_type": {*mediaType}}
	if *activate {
		q.Set("activate", "true")
	}
	if *prefetch {
		q.Set("prefetch", "true")
	}
	if *noCache {
		q.Set("no_cache", "true")
	}
	// Ranges are the peer's to check (it names the manifest key).
	if *maxBatch != 0 {
		q.Set("max_batch_size", fmt.Sprint(*maxBatch))
	}
	if *maxDelay != 0 {
		q.Set("max_queue_delay_us", fmt.Sprint(maxDelay.Microseconds()))
	}
	pr := &progressReader{r: f, total: fi.Size()}
	if isTerminal(stderr) {
		pr.w = stderr
	}
	u := fmt.Sprintf("%s/v1/models/%s/versions/%s?%s", apiURL(*addr), url.PathEscape(*name), url.PathEscape(*version), q.Encode())
	var res struct {
		Manifest   models.Manifest    `json:"manifest"`
		Activation *models.Activation `json:"activation"`
		Token      string             `json:"token"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if _, err := callH(ctx, http.MethodPut, u, hdr, pr, &res); err != nil {
		return err
	}
	m := res.Manifest
	fmt.Fprintf(stdout, "published %s (%d bytes)\n  cid     %s\n  sha256  %s\n", m.Ref(), m.Size, m.CID, m.SHA256)
	if res.Activation != nil {
		fmt.Fprintf(stdout, "activated %s@%s\n", res.Activation.Model, res.Activation.Version)
	}
	fmt.Fprintf(stdout, "token %s\n", res.Token)
	return nil
}

func activationCmd(name string, nargs int, path func(pos []string) string, body func(pos []string) []byte) func([]string, io.Writer, io.Writer) error {
	return func(args []string, stdout, stderr io.Writer) error {
		fs := flag.NewFlagSet("model "+name, flag.ContinueOnError)
		addr := apiFlag(fs)
		pos, err := interleave(fs, args, stderr)
		if err != nil {
			return err
		}
		if len(pos) != nargs {
			return usageError("usage: shoal model %s", map[string]string{"activate": "activate M V", "rollback": "rollback M"}[name])
		}
		var res struct {
			Activation models.Activation `json:"activation"`
			Token      string            `json:"token"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := call(ctx, http.MethodPost, apiURL(*addr)+path(pos), bytes.NewReader(body(pos)), &res); err != nil {
			return err
		}
		a := res.Activation
		fmt.Fprintf(stdout, "activated %s@%s (previous %s)\ntoken %s\n", a.Model, a.Version, orDash(a.Previous), res.Token)
		return nil
	}
}

var (
	cmdModelActivate = activationCmd("activate", 2,
		func(p []string) string { return "/v1/models/" + url.PathEscape(p[0]) + "/activate" },
		func(p []string) []byte { b, _ := json.Marshal(map[string]string{"version": p[1]}); return b })
	cmdModelRollback = activationCmd("rollback", 1,
		func(p []string) string { return "/v1/models/" + url.PathEscape(p[0]) + "/rollback" },
		func([]string) []byte { return nil })
)

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdModelLs(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model ls", flag.ContinueOnError)
	addr := apiFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON of /v1/models")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var raw json.RawMessage
	if err := getJSON(ctx, apiURL(*addr)+"/v1/models", &raw); err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(raw)
		return err
	}
	var res struct {
		Models []api.ModelInfo `json:"models"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	if len(res.Models) == 0 {
		fmt.Fprintln(stdout, "no models")
		return nil
	}
	for _, m := range res.Models {
		cur, serving := "-", "-"
		if m.Current != nil {
			cur = m.Current.Version
		}
		if m.Serving != nil {
			serving = fmt.Sprintf("%s (lag %.3fs)", m.Serving.Version, m.Serving.LagSeconds)
		}
		fmt.Fprintf(stdout, "%s\n  current  %s — %s\n  serving  %s\n", m.Name, cur, m.Why, serving)
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  VERSION\tSIZE\tLOCAL\tPUBLISHED\tCID")
		for _, v := range m.Versions {
			local := "-"
			if v.Local != nil {
				local = v.Local.State
				if v.Local.Reason != "" {
					local += ": " + v.Local.Reason
				}
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", v.Version, v.Size, local, v.HLC.Time().UTC().Format(time.RFC3339), v.CID)
			for _, c := range v.Conflicts {
				fmt.Fprintf(tw, "  %s\t%d\tCONFLICT (lost)\t%s\t%s by %s\n", v.Version, c.Size, c.HLC.Time().UTC().Format(time.RFC3339), c.CID, strings.TrimPrefix(string(c.Publisher), "ed25519:")[:12])
			}
		}
		tw.Flush()
	}
	return nil
}
