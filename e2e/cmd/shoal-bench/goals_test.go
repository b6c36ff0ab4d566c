package main

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

func TestVerdictStatesHowFarAGoalIsMissed(t *testing.T) {
	for _, c := range []struct {
		ratio, bound float64
		want         string
	}{
		{0.8, 1, "**met**"},
		{1, 1, "**met**"},
		{1.9, 1, "**missed**, 1.9× the goal"},
		{12.6, 2, "**missed**, 6.3× the goal"},
	} {
		if got := verdict(c.ratio, c.bound); got != c.want {
			t.Errorf("verdict(%v, %v) = %q, want %q", c.ratio, c.bound, got, c.want)
		}
	}
}

// TestGoalsComeFromTheRowsOfTheRun renders the section from rows the
// way the scenarios leave them and checks each goal's figures and verdict.
func TestGoalsComeFromTheRowsOfTheRun(t *testing.T) {
	rec := func(n int, p50, p99 time.Duration, idle float64) procRow {
		return procRow{lagStats: lagStats{system: "Shoal: activation record", subscribers: n, p50: p50, p99: p99}, processes: n + 1, idleCPU: idle, hasCost: true}
	}
	etcd := func(n int, p99 time.Duration) procRow {
		return procRow{lagStats: lagStats{system: "etcd watch", subscribers: n, p50: p99 / 2, p99: p99}}
	}
	g := &goalRun{
		propRan: true, fanRan: true, lossyRan: true,
		prop: []procRow{
			rec(2, 5*time.Millisecond, 10*time.Millisecond, 20),
			rec(9, 18*time.Millisecond, 30*time.Millisecond, 20), etcd(9, 32*time.Millisecond),
			{lagStats: lagStats{system: "Shoal: activation → serving a 20 MiB model", subscribers: 9, p50: 900 * time.Millisecond, p99: 1150 * time.Millisecond}},
			rec(24, 60*time.Millisecond, 150*time.Millisecond, 20), etcd(24, 12*time.Millisecond),
			rec(49, 160*time.Millisecond, 730600*time.Microsecond, 20),
		},
		fan: []fanRow{
			{mib: 100, swarm: true, shoalRatio: 1.05, httpRatio: 10, shoalTook: 7 * time.Second, httpTook: time.Second},
			{mib: 100, swarm: false, shoalRatio: 3.9, httpRatio: 10, shoalTook: 11 * time.Second, httpTook: time.Second},
		},
		lossy: []lossyResult{{"Shoal: swarm, then bitswap", 10 * time.Second, 1.03}, {"one HTTP origin", 21 * time.Second, 10}},
	}
	if !g.complete() {
		t.Fatal("a run with all three scenarios is not complete")
	}
	out := renderGoals(g)
	for _, want := range []string{
		"| 10 peers: activation record p99 ≤ etcd watch p99 | 30.0 ms against 32.0 ms (0.9×",
		"| **met** |",
		"25 peers: activation record p99 ≤ 2× etcd watch p99 | 150.0 ms against 12.0 ms (12.5×",
		"**missed**, 6.2× the goal",
		"p99 1.15 s (p50 0.90 s) | **missed**, 2.3× the goal",
		"| 1.05× (one HTTP origin: 10.00×) | **met** |",
		"7.00 s against 1.00 s (7.0×) | **missed**, 2.3× the goal",
		"10.00 s against 21.00 s (0.48×) | **met** |",
		"3 → 50 processes: p99 10.0 ms → 730.6 ms",
		"**missed**: linear or worse",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("goals section lacks %q:\n%s", want, out)
		}
	}
	g.lossySkip = "needs root"
	if out := renderGoals(g); !strings.Contains(out, "not measured: needs root") {
		t.Errorf("a skipped namespaces row is not said:\n%s", out)
	}
}

// TestProfilesAreSplitByPart takes a real CPU profile of this process
// hashing and checks the split accounts for all of it.
func TestProfilesAreSplitByPart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		sha256.Sum256(buf)
	}
	pprof.StopCPUProfile()
	f.Close()
	c, err := readCPUProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.total <= 0 {
		t.Fatal("no CPU in a profile of 300 ms of hashing")
	}
	var sum time.Duration
	for _, d := range c.by {
		sum += d
	}
	if sum != c.total {
		t.Fatalf("parts sum to %v of %v", sum, c.total)
	}
	if c.share("other") < 0.5 {
		t.Fatalf("hashing in this test is not under \"other\": %v", c.by)
	}
	g := &goalRun{profiled: 9, profiles: map[string]string{"busy": path, "idle": path}}
	if out := g.renderProfiles(); !strings.Contains(out, "| all |") {
		t.Fatalf("no profile table:\n%s", out)
	}
}
