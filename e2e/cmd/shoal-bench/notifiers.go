package main

// The systems an operator would otherwise use to tell gateways that the
// current model version changed: etcd watches, Redis pub/sub and NATS
// subjects. Each runs as its real server (Debian's etcd-server,
// redis-server and nats-server) on loopback; the subscribers and the
// publisher speak each server's wire protocol directly (RESP, the NATS text
// protocol, etcd's JSON gRPC gateway), one TCP connection per subscriber,
// so no client library sits between the measurement and the server.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/internal/poll"
)

// notifier delivers a change notice from one publisher to subscribers.
type notifier interface {
	Name() string
	// Version is the server's own version string.
	Version() string
	// Subscribe opens n subscribers; got is called with the subscriber's
	// index and each notice it receives.
	Subscribe(n int, got func(sub int, notice string)) error
	Publish(notice string) error
	Close()
}

// server is a child process listening on a loopback port.
type server struct {
	cmd  *exec.Cmd
	addr string
	dir  string
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startServer(addr string, name string, args ...string) (*server, error) {
	if _, err := exec.LookPath(name); err != nil {
		return nil, fmt.Errorf("%s not installed (scripts/setup-bench.sh installs it): %w", name, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, addr: addr}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := poll.Wait(ctx, 50*time.Millisecond, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	}); err != nil {
		s.stop()
		return nil, fmt.Errorf("%s did not listen on %s: %w", name, addr, err)
	}
	return s, nil
}

func (s *server) stop() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

func commandVersion(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// --- Redis pub/sub -------------------------------------------------------

// wireConns are a server process and the raw connections a notifier
// speaks its protocol over: one publisher, one per subscriber.
type wireConns struct {
	srv  *server
	subs []net.Conn
	pub  net.Conn
	wg   sync.WaitGroup // the subscribers' readers
}

// Close closes every connection, waits for the readers and stops the
// server.
func (w *wireConns) Close() {
	for _, c := range w.subs {
		c.Close()
	}
	w.pub.Close()
	w.wg.Wait()
	w.srv.stop()
}

type redisNotifier struct {
	wireConns
	pubRd *bufio.Reader
}

func newRedis() (notifier, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	srv, err := startServer(fmt.Sprintf("127.0.0.1:%d", port), "redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "1000")
	if err != nil {
		return nil, err
	}
	r := &redisNotifier{wireConns: wireConns{srv: srv}}
	if r.pub, err = net.Dial("tcp", srv.addr); err != nil {
		srv.stop()
		return nil, err
	}
	r.pubRd = bufio.NewReader(r.pub)
	return r, nil
}

func (r *redisNotifier) Name() string { return "Redis pub/sub" }
func (r *redisNotifier) Version() string {
	return commandVersion("redis-server", "--version")
}

func respCommand(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// readRESP reads one RESP value: arrays become []any, bulk and simple
// strings string, integers int64.
func readRESP(rd *bufio.Reader) (any, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		out := make([]any, 0, max(n, 0))
		for i := 0; i < n; i++ {
			v, err := readRESP(rd)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP %q", line)
}

func (r *redisNotifier) Subscribe(n int, got func(int, string)) error {
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", r.srv.addr)
		if err != nil {
			return err
		}
		r.subs = append(r.subs, c)
		rd := bufio.NewReader(c)
		if _, err := c.Write(respCommand("SUBSCRIBE", "model-current")); err != nil {
			return err
		}
		if _, err := readRESP(rd); err != nil { // the subscribe confirmation
			return err
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for {
				v, err := readRESP(rd)
				if err != nil {
					return
				}
				if a, ok := v.([]any); ok && len(a) == 3 && a[0] == "message" {
					got(i, a[2].(string))
				}
			}
		}()
	}
	return nil
}

func (r *redisNotifier) Publish(notice string) error {
	if _, err := r.pub.Write(respCommand("PUBLISH", "model-current", notice)); err != nil {
		return err
	}
	_, err := readRESP(r.pubRd)
	return err
}

// --- NATS ----------------------------------------------------------------

type natsNotifier struct {
	wireConns
	mu sync.Mutex
}

func newNATS() (notifier, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	srv, err := startServer(fmt.Sprintf("127.0.0.1:%d", port), "nats-server", "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	n := &natsNotifier{wireConns: wireConns{srv: srv}}
	if n.pub, _, err = natsConnect(srv.addr); err != nil {
		srv.stop()
		return nil, err
	}
	return n, nil
}

func (n *natsNotifier) Name() string    { return "NATS" }
func (n *natsNotifier) Version() string { return commandVersion("nats-server", "--version") }

// natsConnect opens a connection and handshakes (natsHandshake).
func natsConnect(addr string, extra ...string) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	rd, err := natsHandshake(c, extra...)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, rd, nil
}

// natsHandshake reads INFO, sends CONNECT and extra (SUB lines), and waits
// for the PONG that says the server has processed them.
func natsHandshake(c net.Conn, extra ...string) (*bufio.Reader, error) {
	rd := bufio.NewReader(c)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO") {
		return nil, fmt.Errorf("NATS greeting %q: %v", line, err)
	}
	msg := "CONNECT {\"verbose\":false,\"pedantic\":false}\r\n" + strings.Join(extra, "") + "PING\r\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return nil, err
	}
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(line, "PONG") {
			return rd, nil
		}
		if strings.HasPrefix(line, "-ERR") {
			return nil, errors.New(strings.TrimSpace(line))
		}
	}
}

// natsReceive hands got the payload of every MSG until the connection
// ends, answering the server's PINGs.
func natsReceive(c net.Conn, rd *bufio.Reader, got func(payload string)) {
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return
		}
		switch {
		case strings.HasPrefix(line, "MSG "):
			f := strings.Fields(line)
			size, _ := strconv.Atoi(f[len(f)-1])
			buf := make([]byte, size+2)
			if _, err := io.ReadFull(rd, buf); err != nil {
				return
			}
			got(string(buf[:size]))
		case strings.HasPrefix(line, "PING"):
			c.Write([]byte("PONG\r\n"))
		}
	}
}

func (n *natsNotifier) Subscribe(count int, got func(int, string)) error {
	for i := 0; i < count; i++ {
		c, rd, err := natsConnect(n.srv.addr, "SUB model.current 1\r\n")
		if err != nil {
			return err
		}
		n.subs = append(n.subs, c)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			natsReceive(c, rd, func(p string) { got(i, p) })
		}()
	}
	return nil
}

func (n *natsNotifier) Publish(notice string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, err := fmt.Fprintf(n.pub, "PUB model.current %d\r\n%s\r\n", len(notice), notice)
	return err
}

// --- etcd watch ------------------------------------------------------------

type etcdNotifier struct {
	srv    *server
	url    string
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	client *http.Client
}

func newEtcd() (notifier, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "shoal-bench-etcd-*")
	if err != nil {
		return nil, err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", port)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	srv, err := startServer(fmt.Sprintf("127.0.0.1:%d", port), "etcd", "--name", "bench", "--data-dir", dir,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "bench="+peerURL)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	srv.dir = dir
	ctx, cancel := context.WithCancel(context.Background())
	e := &etcdNotifier{srv: srv, url: client, ctx: ctx, cancel: cancel,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}}
	// The gateway answers once the member is ready.
	readyCtx, readyCancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer readyCancel()
	if err := poll.Wait(readyCtx, 100*time.Millisecond, func() error { return e.Publish("ready") }); err != nil {
		e.Close()
		return nil, fmt.Errorf("etcd not ready: %w", err)
	}
	return e, nil
}

func (e *etcdNotifier) Name() string    { return "etcd watch" }
func (e *etcdNotifier) Version() string { return commandVersion("etcd", "--version") }

var etcdKey = base64.StdEncoding.EncodeToString([]byte("/models/detector/current"))

func (e *etcdNotifier) Subscribe(n int, got func(int, string)) error {
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"create_request":{"key":%q}}`, etcdKey)
		req, err := http.NewRequestWithContext(e.ctx, "POST", e.url+"/v3/watch", strings.NewReader(body))
		if err != nil {
			return err
		}
		// One connection per watcher, as separate gateways would have.
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		if res.StatusCode != 200 {
			res.Body.Close()
			return fmt.Errorf("etcd watch: %s", res.Status)
		}
		dec := json.NewDecoder(res.Body)
		var first struct {
			Result struct {
				Created bool `json:"created"`
			} `json:"result"`
		}
		if err := dec.Decode(&first); err != nil || !first.Result.Created {
			res.Body.Close()
			return fmt.Errorf("etcd watch not created: %v", err)
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer res.Body.Close()
			for {
				var msg struct {
					Result struct {
						Events []struct {
							KV struct {
								Value string `json:"value"`
							} `json:"kv"`
						} `json:"events"`
					} `json:"result"`
				}
				if err := dec.Decode(&msg); err != nil {
					return
				}
				for _, ev := range msg.Result.Events {
					if v, err := base64.StdEncoding.DecodeString(ev.KV.Value); err == nil {
						got(i, string(v))
					}
				}
			}
		}()
	}
	return nil
}

func (e *etcdNotifier) Publish(notice string) error {
	body := fmt.Sprintf(`{"key":%q,"value":%q}`, etcdKey, base64.StdEncoding.EncodeToString([]byte(notice)))
	res, err := e.client.Post(e.url+"/v3/kv/put", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		return fmt.Errorf("etcd put: %s", res.Status)
	}
	return nil
}

func (e *etcdNotifier) Close() {
	e.cancel()
	e.srv.stop()
	e.wg.Wait()
}
