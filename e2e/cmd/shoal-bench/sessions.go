package main

// The session read: one peer holds a conversation and reads it back, in
// process (sessions.Service.Get) and over its HTTP API on loopback, beside
// Redis HGETALL of a hash holding the same turns — the store a gateway
// would otherwise keep conversation state in.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/sessions"
)

// sessionBudget is the goal for a session read on the peer that holds it,
// at p99: the seeds' 2 ms budget.
const sessionBudget = 2 * time.Millisecond

// sessionReader is one way of reading the session; read fails unless it
// got the whole session.
type sessionReader struct {
	name, short string
	read        func() error
	// rounds holds each round's sorted latencies.
	rounds [][]time.Duration
}

// runSessions seeds a session of turns turns (~200 bytes each) on one
// in-process peer and times reads of it: in rounds rounds, each reader
// does reads reads in turn, the readers' order rotating from round to
// round so that no reader always inherits the same one's heap and caches.
func runSessions(turns, reads, rounds int, out string) error {
	dir, err := testmesh.TempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: 1, Dir: dir, Sync: true})
	if err != nil {
		return err
	}
	defer m.Close()
	n := m.Node(0)
	id, view, err := seedSession(ctx, n.Sessions(), turns)
	if err != nil {
		return err
	}
	rh, err := startRedisHash(view.Turns)
	if err != nil {
		return err
	}
	defer rh.close()
	httpRead, bodyBytes, err := httpSessionReader("http://"+n.APIAddr()+"/v1/sessions/"+id, turns)
	if err != nil {
		return err
	}
	readers := []*sessionReader{
		{name: "Shoal, in process (`sessions.Service.Get`)", short: "in process", read: func() error {
			v, err := n.Sessions().Get(ctx, id, nil)
			if err == nil && len(v.Turns) != turns {
				err = fmt.Errorf("in-process read: %d turns, want %d", len(v.Turns), turns)
			}
			return err
		}},
		{name: "Shoal, HTTP GET /v1/sessions/{id} (keep-alive)", short: "over HTTP", read: httpRead},
		{name: "Redis HGETALL (RESP, one connection)", short: "Redis", read: rh.read},
	}
	if err := timeReads(readers, reads, rounds); err != nil {
		return err
	}
	table := renderSessions(readers, sessionSetup{turns: turns, reads: reads, rounds: rounds, bodyBytes: bodyBytes, redis: redisVersion()})
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "sessions", table)
}

// seedSession writes a session of n turns, user and assistant in turn,
// each about 200 bytes of text, and returns it as the peer reads it.
func seedSession(ctx context.Context, s *sessions.Service, n int) (string, sessions.View, error) {
	id := sessions.NewID()
	if _, err := s.Put(ctx, id, time.Hour, json.RawMessage(`{"bench":"sessions"}`), false); err != nil {
		return "", sessions.View{}, err
	}
	const filler = "The pump on line 3 lost pressure after the seal was replaced; the valve reads 40 Nm and the camera shows no leak. "
	for i := 0; i < n; i++ {
		role := []string{"user", "assistant"}[i%2]
		text := fmt.Sprintf("turn %02d: %s", i, strings.Repeat(filler, 2))[:200]
		if _, err := s.Append(ctx, id, role, text, nil); err != nil {
			return "", sessions.View{}, err
		}
	}
	v, err := s.Get(ctx, id, nil)
	return id, v, err
}

// httpSessionReader reads the session over one kept-alive connection; the
// body is read whole but not decoded (the Redis reader does not decode
// its turns either). It returns the body's size.
func httpSessionReader(url string, turns int) (func() error, int, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	var buf bytes.Buffer
	get := func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		buf.Reset()
		if _, err := buf.ReadFrom(resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, buf.Bytes())
		}
		return nil
	}
	if err := get(); err != nil {
		return nil, 0, err
	}
	var s api.Session
	if err := json.Unmarshal(buf.Bytes(), &s); err != nil || len(s.Turns) != turns {
		return nil, 0, fmt.Errorf("GET %s: %d turns (%v), want %d", url, len(s.Turns), err, turns)
	}
	size := buf.Len()
	return func() error {
		if err := get(); err != nil {
			return err
		}
		if buf.Len() != size {
			return fmt.Errorf("GET %s: %d bytes, the first read had %d", url, buf.Len(), size)
		}
		return nil
	}, size, nil
}

// redisHash is a redis-server holding the session's turns in one hash,
// field i the JSON of turn i, and the connection that reads it.
type redisHash struct {
	srv   *server
	conn  net.Conn
	rd    *bufio.Reader
	turns int
}

func startRedisHash(turns []sessions.Turn) (*redisHash, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	srv, err := startServer(fmt.Sprintf("127.0.0.1:%d", port), "redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err != nil {
		return nil, err
	}
	r := &redisHash{srv: srv, turns: len(turns)}
	if r.conn, err = net.Dial("tcp", srv.addr); err != nil {
		srv.stop()
		return nil, err
	}
	r.rd = bufio.NewReader(r.conn)
	args := []string{"HSET", "session"}
	for i, t := range turns {
		b, _ := json.Marshal(t)
		args = append(args, fmt.Sprintf("%03d", i), string(b))
	}
	if _, err = r.conn.Write(respCommand(args...)); err == nil {
		_, err = readRESP(r.rd)
	}
	if err == nil {
		err = r.read()
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("redis hash: %w", err)
	}
	return r, nil
}

var hgetall = respCommand("HGETALL", "session")

func (r *redisHash) read() error {
	if _, err := r.conn.Write(hgetall); err != nil {
		return err
	}
	v, err := readRESP(r.rd)
	if err != nil {
		return err
	}
	if a, ok := v.([]any); !ok || len(a) != 2*r.turns {
		return fmt.Errorf("redis HGETALL: %v fields, want %d", v, 2*r.turns)
	}
	return nil
}

func (r *redisHash) close() {
	if r.conn != nil {
		r.conn.Close()
	}
	r.srv.stop()
}

// timeReads warms every reader up, then times reads reads per reader per
// round. A collection before each reader's block keeps one reader's
// garbage from being collected on another's time.
func timeReads(readers []*sessionReader, reads, rounds int) error {
	for _, r := range readers {
		for i := 0; i < reads/10; i++ {
			if err := r.read(); err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
		}
	}
	for round := 0; round < rounds; round++ {
		for k := range readers {
			r := readers[(round+k)%len(readers)]
			runtime.GC()
			lat := make([]time.Duration, reads)
			for i := range lat {
				start := time.Now()
				if err := r.read(); err != nil {
					return fmt.Errorf("%s: %w", r.name, err)
				}
				lat[i] = time.Since(start)
			}
			slices.Sort(lat)
			r.rounds = append(r.rounds, lat)
		}
		fmt.Fprintf(os.Stderr, "sessions: round %d of %d done\n", round+1, rounds)
	}
	return nil
}

// stat is a reader's figure: the median over rounds of each round's p-th
// percentile, with the rounds' lowest and highest.
func (r *sessionReader) stat(p float64) (median, lo, hi time.Duration) {
	var per []time.Duration
	for _, lat := range r.rounds {
		per = append(per, testmesh.Percentile(lat, p))
	}
	slices.Sort(per)
	return testmesh.Percentile(per, 50), per[0], per[len(per)-1]
}

type sessionSetup struct {
	turns, reads, rounds, bodyBytes int
	redis                           string
}

func renderSessions(readers []*sessionReader, s sessionSetup) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Session read on the peer that holds it, against Redis HGETALL (in-process peer, loopback)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s; %s. One peer holds a session of %d turns of 200 bytes\n", time.Now().UTC().Format("2006-01-02"), machine(), s.redis, s.turns)
	fmt.Fprintf(&b, "(%d bytes as JSON over HTTP); Redis holds the same turns, one hash field each. %d rounds; in each, every reader makes\n", s.bodyBytes, s.rounds)
	fmt.Fprintf(&b, "%d reads back to back, the readers' order rotating by round. Figures are the median of the rounds' percentiles\n", s.reads)
	fmt.Fprintf(&b, "(lowest–highest round in brackets). The HTTP and Redis clients read the whole answer and do not decode it; client,\n")
	fmt.Fprintf(&b, "peer and redis-server share the machine's cores.\n\n")
	fmt.Fprintln(&b, "| read | p50 | p99 | p99 ÷ Redis p99 |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|")
	redis, _, _ := readers[len(readers)-1].stat(99)
	for _, r := range readers {
		p50, lo50, hi50 := r.stat(50)
		p99, lo99, hi99 := r.stat(99)
		fmt.Fprintf(&b, "| %s | %s (%s) | %s (%s) | %.1f× |\n", r.name, ms3(p50), span(lo50, hi50),
			ms3(p99), span(lo99, hi99), float64(p99)/float64(max(redis, 1)))
	}
	fmt.Fprintf(&b, "\nGoal: a session read on the peer that holds it within the seeds' %g ms budget at p99, in process and over loopback HTTP: %s.\n\n",
		float64(sessionBudget.Microseconds())/1000, sessionVerdict(readers[:2]))
	return b.String()
}

// sessionVerdict says, per reader, whether its p99 is within the budget.
func sessionVerdict(readers []*sessionReader) string {
	var parts []string
	for _, r := range readers {
		p99, _, _ := r.stat(99)
		word := "**met**"
		if p99 > sessionBudget {
			word = "**missed**"
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", r.short, word, ms3(p99)))
	}
	return strings.Join(parts, ", ")
}

// ms3 is ms to the microsecond: ms's tenths would round a 0.06 ms read to
// 0.1 ms and hide the difference between the readers.
func ms3(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Nanoseconds())/1e6) }

func span(lo, hi time.Duration) string {
	return fmt.Sprintf("%.3f–%.3f", float64(lo.Nanoseconds())/1e6, float64(hi.Nanoseconds())/1e6)
}

// redisVersion is "Redis 7.0.15" out of redis-server's long version line.
func redisVersion() string {
	line := commandVersion("redis-server", "--version")
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return "Redis " + v
		}
	}
	return line
}
