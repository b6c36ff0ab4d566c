package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/sessions"
)

const sessionUsage = `Usage:
  shoal session new [--ttl 5m] [--metadata JSON] [--site-only]
                                  start a session with a random id; prints the id and a token
  shoal session get ID [--after TOKEN] [--max-staleness D] [--timeout 10s] [--json]
                                  its turns as "role: text" lines
  shoal session append ID --text TEXT [--role user] [--metadata JSON] [--after TOKEN]
                                  add a turn; prints the token to read it back with
  shoal session put ID [--ttl D] [--metadata JSON] [--site-only]
                                  create or change a session under an id of your own
  shoal session rm ID
All take --api URL (env SHOAL_API, default 127.0.0.1:7480) and --api-token T
(env SHOAL_API_TOKEN): a peer with a token wants it on every session request,
reads too. A token from one command, passed as --after to the next, makes that
one see the write on any peer.
`

func cmdSession(args []string, stdout, stderr io.Writer) error {
	verbs := map[string]func([]string, io.Writer, io.Writer) error{
		"new": cmdSessionNew, "get": cmdSessionGet, "append": cmdSessionAppend,
		"put": cmdSessionPut, "rm": cmdSessionRm,
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, sessionUsage)
		return &exitError{code: 2, err: errHelpShown}
	}
	if f, ok := verbs[args[0]]; ok {
		return f(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, sessionUsage)
	return usageError("unknown session command %q", args[0])
}

// sessionClient is what every session command shares: the peer's API and
// the token its session requests need.
type sessionClient struct {
	fs          *flag.FlagSet
	addr, token *string
}

func newSessionClient(name string) *sessionClient {
	fs := flag.NewFlagSet("session "+name, flag.ContinueOnError)
	return &sessionClient{fs: fs, addr: apiFlag(fs),
		token: fs.String("api-token", envString("API_TOKEN", ""), "the peer's API token (env SHOAL_API_TOKEN)")}
}

// parse parses args and checks that they hold nargs session ids, with the
// peer's own rule, so a mistyped id is a usage error before any request.
func (c *sessionClient) parse(args []string, stderr io.Writer, nargs int, usage string) ([]string, error) {
	pos, err := interleave(c.fs, args, stderr)
	if err != nil {
		return nil, err
	}
	if len(pos) != nargs {
		return nil, usageError("usage: shoal session %s", usage)
	}
	for _, id := range pos {
		if err := sessions.CheckID(id); err != nil {
			return nil, usageError("%v", err)
		}
	}
	return pos, nil
}

// do sends one session request and decodes its JSON answer into out. It
// sets Authorization itself, not through callH, which would let
// $SHOAL_API_TOKEN override an explicit --api-token.
func (c *sessionClient) do(ctx context.Context, method, path string, hdr http.Header, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, apiURL(*c.addr)+path, rd)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if *c.token != "" {
		req.Header.Set("Authorization", "Bearer "+*c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the peer's API: %w (is `shoal run` running? use --api)", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return answerError(resp, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// write sends a session write and returns its answer (id and token).
func (c *sessionClient) write(method, path string, hdr http.Header, body any) (api.SessionWrite, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res api.SessionWrite
	err := c.do(ctx, method, path, hdr, body, &res)
	return res, err
}

func sessionPath(id string) string { return "/v1/sessions/" + url.PathEscape(id) }

// sessionBody reads the flags that new and put share.
func sessionBody(ttl time.Duration, metadata string, siteOnly bool) (api.SessionRequest, error) {
	req := api.SessionRequest{TTLSeconds: ttl.Seconds(), SiteOnly: siteOnly}
	if ttl < 0 || ttl > sessions.MaxTTL {
		return req, usageError("--ttl %s: use up to %s (0: the peer's default, %s)", ttl, sessions.MaxTTL, sessions.DefaultTTL)
	}
	var err error
	req.Metadata, err = metadataFlag(metadata)
	return req, err
}

// metadataFlag checks --metadata here: the peer takes only a JSON object,
// and a shell quoting slip is better told as a usage error than a 400.
func metadataFlag(s string) (json.RawMessage, error) {
	if s == "" {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil || obj == nil {
		return nil, usageError("--metadata %q: use a JSON object, e.g. '{\"lang\":\"en\"}'", s)
	}
	return json.RawMessage(s), nil
}

func cmdSessionNew(args []string, stdout, stderr io.Writer) error {
	c := newSessionClient("new")
	ttl := c.fs.Duration("ttl", 0, "lifetime after the last write (0: the peer's default, 5m)")
	metadata := c.fs.String("metadata", "", "the session's metadata, a JSON object")
	siteOnly := c.fs.Bool("site-only", false, "keep the session on this peer's site")
	if _, err := c.parse(args, stderr, 0, "new [--ttl 5m] [--metadata JSON] [--site-only]"); err != nil {
		return err
	}
	req, err := sessionBody(*ttl, *metadata, *siteOnly)
	if err != nil {
		return err
	}
	res, err := c.write(http.MethodPost, "/v1/sessions", nil, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "session %s\ntoken %s\n", res.ID, res.Token)
	return nil
}

func cmdSessionPut(args []string, stdout, stderr io.Writer) error {
	c := newSessionClient("put")
	ttl := c.fs.Duration("ttl", 0, "lifetime after the last write (0: keep the session's, or the peer's default)")
	metadata := c.fs.String("metadata", "", "replace the session's metadata with this JSON object")
	siteOnly := c.fs.Bool("site-only", false, "for a new session: keep it on this peer's site")
	pos, err := c.parse(args, stderr, 1, "put ID [--ttl D] [--metadata JSON] [--site-only]")
	if err != nil {
		return err
	}
	req, err := sessionBody(*ttl, *metadata, *siteOnly)
	if err != nil {
		return err
	}
	res, err := c.write(http.MethodPut, sessionPath(pos[0]), nil, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "session %s\ntoken %s\n", res.ID, res.Token)
	return nil
}

func cmdSessionRm(args []string, stdout, stderr io.Writer) error {
	c := newSessionClient("rm")
	pos, err := c.parse(args, stderr, 1, "rm ID")
	if err != nil {
		return err
	}
	res, err := c.write(http.MethodDelete, sessionPath(pos[0]), nil, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "deleted session %s\ntoken %s\n", res.ID, res.Token)
	return nil
}

// waitHeaders are the demands of a command that may wait for a token:
// the client's own deadline leaves the peer time to answer that it gave
// up (token.not_reached, with its hint) rather than cutting it off.
func waitHeaders(after string, timeout time.Duration) (http.Header, time.Duration) {
	hdr := http.Header{}
	if after != "" {
		hdr.Set(api.HeaderAfter, after)
	}
	hdr.Set(api.HeaderTimeout, timeout.String())
	return hdr, timeout + 5*time.Second
}

func cmdSessionAppend(args []string, stdout, stderr io.Writer) error {
	c := newSessionClient("append")
	role := c.fs.String("role", "user", "user, assistant, system or tool")
	text := c.fs.String("text", "", "the turn's text (required)")
	metadata := c.fs.String("metadata", "", "the turn's metadata, a JSON object")
	after := c.fs.String("after", "", "the token of the conversation's last write: the peer holds it first, so this turn is ordered after it")
	timeout := c.fs.Duration("timeout", api.DefaultWait, "how long the peer may wait for --after")
	pos, err := c.parse(args, stderr, 1, "append ID --text TEXT [--role user] [--metadata JSON] [--after TOKEN]")
	if err != nil {
		return err
	}
	if *text == "" {
		return usageError("session append: --text is required")
	}
	md, err := metadataFlag(*metadata)
	if err != nil {
		return err
	}
	hdr, limit := waitHeaders(*after, *timeout)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var res api.SessionWrite
	if err := c.do(ctx, http.MethodPost, sessionPath(pos[0])+"/turns", hdr, api.TurnRequest{Role: *role, Text: *text, Metadata: md}, &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token %s\n", res.Token)
	return nil
}

func cmdSessionGet(args []string, stdout, stderr io.Writer) error {
	c := newSessionClient("get")
	after := c.fs.String("after", "", "a token from new, put or append: wait until this peer holds that write")
	maxStale := c.fs.String("max-staleness", "", "refuse an answer from a view staler than this, e.g. 5s")
	timeout := c.fs.Duration("timeout", api.DefaultWait, "how long the peer may wait for --after")
	asJSON := c.fs.Bool("json", false, "print the API's JSON")
	pos, err := c.parse(args, stderr, 1, "get ID [--after TOKEN] [--max-staleness D] [--timeout 10s] [--json]")
	if err != nil {
		return err
	}
	hdr, limit := waitHeaders(*after, *timeout)
	if *maxStale != "" {
		hdr.Set(api.HeaderMaxStaleness, *maxStale)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, sessionPath(pos[0]), hdr, nil, &raw); err != nil {
		return err
	}
	if *asJSON {
		printJSON(stdout, raw)
		return nil
	}
	var s api.Session
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	for _, t := range s.Turns {
		fmt.Fprintf(stdout, "%s: %s\n", t.Role, t.Text)
	}
	fmt.Fprintf(stderr, "%d turns, expires %s\n", len(s.Turns), s.ExpiresAt.Format(time.RFC3339))
	return nil
}
