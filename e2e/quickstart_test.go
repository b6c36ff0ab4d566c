package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// quickStart returns the README's first-screen command that runs a peer
// and the shell block that follows "In another terminal:", line by line.
func quickStart(t *testing.T) (string, []string) {
	t.Helper()
	f, err := os.Open(testmesh.RepoFile("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var run string
	var block []string
	state := 0 // 0: before the block, 1: waiting for its fence, 2: inside, 3: done
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if run == "" && strings.HasPrefix(line, "make run") {
			run, _, _ = strings.Cut(line, "#")
			run = strings.TrimSpace(run)
		}
		switch {
		case state == 0 && strings.Contains(line, "In another terminal:"):
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(line, "```"):
			state = 3
		case state == 2 && strings.TrimSpace(line) != "":
			block = append(block, line)
		}
	}
	if run == "" || len(block) == 0 {
		t.Fatalf("README has no quick start to run (make run: %q, %d commands)", run, len(block))
	}
	return run, block
}

// TestReadmeQuickStart runs the README's quick start literally — `make
// run`, then every command of the block that follows — in a network
// namespace of its own (so its fixed port 127.0.0.1:7480 is free) on a
// fresh data directory, and expects an inference and a retrieval answer.
func TestReadmeQuickStart(t *testing.T) {
	run, cmds := quickStart(t)
	nw := netsim.Require(t, "shoal-readme")
	h, err := nw.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	start := h.Command("sh", "-c", run)
	start.Dir = testmesh.RepoFile(".")
	start.Env = append(os.Environ(), "SHOAL_DATA="+data)
	start.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(data + ".log")
	if err != nil {
		t.Fatal(err)
	}
	start.Stdout, start.Stderr = logf, logf
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A clean stop: SIGTERM to make and the peer, which must then leave
		// the namespace empty (shut down) within a bound.
		syscall.Kill(-start.Process.Pid, syscall.SIGTERM)
		go start.Wait()
		var pids []string
		inNamespace := func() error {
			out, _ := exec.Command("ip", "netns", "pids", h.Name).Output()
			if pids = strings.Fields(string(out)); len(pids) > 0 {
				return fmt.Errorf("processes %v in the namespace", pids)
			}
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if poll.Wait(ctx, 200*time.Millisecond, inNamespace) != nil {
			stuck := pids
			for _, p := range stuck {
				if pid, err := strconv.Atoi(p); err == nil {
					syscall.Kill(pid, syscall.SIGQUIT) // goroutine dump into the log
				}
			}
			// A Go process exits once it has written its dump: wait for
			// that (up to 5 s; it was a fixed 1 s), then kill what is left.
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = poll.Wait(dctx, 200*time.Millisecond, inNamespace)
			dcancel()
			for _, p := range pids { // those still there
				if pid, err := strconv.Atoi(p); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			t.Errorf("processes %v still running 30 s after SIGTERM", stuck)
		}
		if t.Failed() {
			b, _ := os.ReadFile(data + ".log")
			t.Logf("%s log:\n%s", run, tail(string(b), 200))
		}
	})
	// `make run` builds first; wait until the default model answers.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := poll.Wait(ctx, 500*time.Millisecond, func() error {
		if _, err := h.Command("curl", "-sf", "127.0.0.1:7480/v2/models/ocr-cls/ready").CombinedOutput(); err != nil {
			return fmt.Errorf("ocr-cls not ready: %v", err)
		}
		st, err := h.Command("curl", "-sf", "127.0.0.1:7480/v1/collections/demo").CombinedOutput()
		if err != nil {
			return fmt.Errorf("demo collection: %v", err)
		}
		if !strings.Contains(string(st), `"documents"`) {
			return fmt.Errorf("demo collection without documents: %s", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("the peer of %q never served the default model and the demo collection: %v", run, err)
	}
	var sawInference, sawRetrieval bool
	for _, c := range cmds {
		cmd := h.Command("sh", "-c", c)
		cmd.Dir = testmesh.RepoFile(".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README command %q: %v\n%s", c, err, out)
			continue
		}
		t.Logf("$ %s\n%s", c, tail(string(out), 8))
		switch {
		case strings.Contains(c, "/infer") || strings.Contains(c, "shoal infer"):
			if !strings.Contains(string(out), "outputs") && !strings.Contains(string(out), "softmax") {
				t.Errorf("README command %q printed no inference outputs:\n%s", c, out)
			}
			sawInference = true
		case strings.Contains(c, "doc query"):
			if len(strings.TrimSpace(string(out))) == 0 || strings.Contains(string(out), "no results") {
				t.Errorf("README command %q found nothing:\n%s", c, out)
			}
			// With a real sentence embedder the question finds the
			// staleness fact first, though it shares few words with it
			// (the lexical stand-in ranked it nowhere in the top 3).
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); strings.Contains(c, "how stale") &&
				(len(lines) < 2 || !strings.Contains(lines[1], "fact-04")) {
				t.Errorf("README command %q: the staleness fact (fact-04) is not the first answer:\n%s", c, out)
			}
			sawRetrieval = true
		}
	}
	if !sawInference || !sawRetrieval {
		t.Errorf("the quick start lacks an inference (%v) or a retrieval query (%v)", sawInference, sawRetrieval)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
