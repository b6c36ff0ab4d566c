package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-mesh/shoal/peer"
)

// apiURL turns an address or URL into a base URL.
func apiURL(s string) string {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return strings.TrimRight(s, "/")
}

// getJSON fetches url into v, turning the API's JSON errors into errors.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the peer's API: %w (is `shoal run` running? use --api)", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return answerError(resp, body)
	}
	if raw, ok := v.(*json.RawMessage); ok {
		*raw = body
		return nil
	}
	return json.Unmarshal(body, v)
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	addr := fs.String("api", envString("API", peer.DefaultAPIAddr), "the peer's API address or URL (env SHOAL_API)")
	asJSON := fs.Bool("json", false, "print the raw JSON of /v1/status")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := apiURL(*addr) + "/v1/status"
	if *asJSON {
		var raw json.RawMessage
		if err := getJSON(ctx, url, &raw); err != nil {
			return err
		}
		_, err := stdout.Write(raw)
		return err
	}
	var st api.Status
	if err := getJSON(ctx, url, &st); err != nil {
		return err
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "peer\t%s\n", st.PeerID)
	fmt.Fprintf(tw, "mesh\t%s\n", st.Mesh)
	fmt.Fprintf(tw, "version\t%s (up %s)\n", st.Version, time.Since(st.StartedAt).Round(time.Second))
	fmt.Fprintf(tw, "staleness\t%.3fs\n", st.StalenessSeconds)
	fmt.Fprintf(tw, "state\t%s (%d heads, height %d, %d queued)\n", short(st.StateHash, 16), len(st.Heads), st.Height, st.QueuedJobs)
	switch {
	case st.Runtime.ONNXRuntime != "":
		fmt.Fprintf(tw, "onnxruntime\t%s on %s\n", st.Runtime.ONNXRuntime, st.Runtime.Device)
		if c := st.Inference.Cache; c != nil {
			fmt.Fprintf(tw, "result cache\t%d entries, %d bytes, %d evicted\n", c.Entries, c.Bytes, c.Evictions)
		}
		for ref, why := range st.Inference.Bad {
			fmt.Fprintf(tw, "bad version\t%s: %s\n", ref, why)
		}
	case st.Runtime.Error != "":
		fmt.Fprintf(tw, "onnxruntime\tunavailable: %s\n", st.Runtime.Error)
	}
	for _, a := range st.Addrs {
		fmt.Fprintf(tw, "addr\t%s\n", a)
	}
	tw.Flush()
	if len(st.Models) > 0 {
		fmt.Fprintf(w, "\nmodels\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAME\tCURRENT\tSERVING\tLAG\tLOCAL\tBAD")
		for _, m := range st.Models {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%.3fs\t%d\t%d\n", m.Name, orDash(m.Current), orDash(m.Serving), m.LagSeconds, m.Local, m.Bad)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\npeers (%d known, %d connected)\n", len(st.Peers), st.Connected)
	if len(st.Peers) == 0 {
		return
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSTATE\tLAST HEARD\tLAG\tHEIGHT")
	for _, p := range st.Peers {
		state := "reachable"
		if !p.Reachable {
			state = "UNREACHABLE"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s ago\t%.3fs\t%d\n", p.ID, state, time.Since(p.LastHeard).Round(100*time.Millisecond), p.LagSeconds, p.Height)
	}
	tw.Flush()
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
