package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/peer"
)

// cleanEnv empties every variable parseRun reads (empty counts as unset),
// so that a test sees only what it sets.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, r := range runSettings {
		t.Setenv(r.envName(), "")
	}
	t.Setenv("SHOAL_CONFIG", "")
}

// configFile writes text to a TOML file in a test directory.
func configFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shoal.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// parseWithFile parses args after --config with a file holding text.
func parseWithFile(t *testing.T, text string, args ...string) (*settings, error) {
	t.Helper()
	return parseRun(append([]string{"--config", configFile(t, text)}, args...), io.Discard)
}

// usageMessage is err's message, failing unless err is a usage error
// (exit code 2).
func usageMessage(t *testing.T, err error) string {
	t.Helper()
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Fatalf("err = %v, want a usage error (exit 2)", err)
	}
	return err.Error()
}

func TestConfigFileUnknownKeyNamesKeyAndLine(t *testing.T) {
	cleanEnv(t)
	for _, c := range []struct {
		name, text, key string
		line            int
	}{
		{"typo", "mesh = \"m\"\n\n# a comment\nmax_inflite = 2\n", "max_inflite", 4},
		{"typo spelt like a flag", "mesh = \"m\"\nmax-inflite = 2\n", "max-inflite", 2},
		{"table", "mesh = \"m\"\n[server]\nport = 1\n", "server", 2},
		{"dotted key", "mdns = false\ncache.mb = 1\n", "cache.mb", 2},
		{"in a table", "mdns = false\n[cache]\n\nmb = 1\n", "cache", 2},
		{"quoted key", "mesh = \"m\"\n\"bo gus\" = 1\n", "bo gus", 2},
		{"the config flag itself", "config = \"other.toml\"\n", "config", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseWithFile(t, c.text)
			want := fmt.Sprintf("unknown key %q at line %d", c.key, c.line)
			if msg := usageMessage(t, err); !strings.Contains(msg, want) || !strings.Contains(msg, "shoal.toml") {
				t.Errorf("error %q does not say %q and name the file", msg, want)
			}
		})
	}
}

func TestConfigFileWrongTypeNamesKeyAndLine(t *testing.T) {
	cleanEnv(t)
	for _, c := range []struct {
		name, text, key string
		line            int
	}{
		{"string for an int", "mesh = \"m\"\nmax_inflight = \"four\"\n", "max_inflight", 2},
		{"string for an int, flag spelling", "mesh = \"m\"\n\nmax-inflight = \"four\"\n", "max-inflight", 3},
		{"int for a bool", "mdns = 1\n", "mdns", 1},
		{"bool for a string", "mesh = true\n", "mesh", 1},
		{"string for a list", "\nlisten = \"/ip4/127.0.0.1/tcp/0\"\n", "listen", 2},
		{"number in a list", "trust = [\"ed25519:aa\", 7]\n", "trust", 1},
		{"duration without a unit", "mesh = \"m\"\ncache_ttl = 600\n", "cache_ttl", 2},
		{"not a duration", "cache_ttl = \"ten minutes\"\n", "cache_ttl", 1},
		{"table for an int", "[keep_versions]\nn = 2\n", "keep_versions", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseWithFile(t, c.text)
			msg := usageMessage(t, err)
			for _, want := range []string{fmt.Sprintf("%q", c.key), fmt.Sprintf("line %d", c.line)} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %s", msg, want)
				}
			}
		})
	}
}

// TestConfigFileTakesFlagSpellings: a key may be spelt as its flag is
// ('-' for '_'), as before the file was typed; not both ways at once.
func TestConfigFileTakesFlagSpellings(t *testing.T) {
	cleanEnv(t)
	s, err := parseWithFile(t, "max-inflight = 3\nrelay-service = true\ncache-ttl = \"90s\"\nkeep_versions = 5\n")
	if err != nil {
		t.Fatal(err)
	}
	if s.MaxInflight != 3 || !s.RelayService || s.CacheTTL != duration(90*time.Second) || s.KeepVersions != 5 {
		t.Errorf("settings %+v", s)
	}
	_, err = parseWithFile(t, "mesh = \"m\"\nmax-inflight = 3\nmax_inflight = 4\n")
	if msg := usageMessage(t, err); !strings.Contains(msg, "max-inflight (line 2) and max_inflight name one setting") {
		t.Errorf("both spellings: %q", msg)
	}
}

// TestPrecedence: built-in defaults < config file < environment < flags,
// for a setting of each type.
func TestPrecedence(t *testing.T) {
	for _, c := range []struct {
		key       string // also the flag ('-' for '_') and $SHOAL_<KEY>
		file      string // the TOML value in the file
		env, flag string // as written in the variable and after --flag=
		want      [4]string
	}{
		{"mesh", `"from-file"`, "from-env", "from-flag", [4]string{`"shoal"`, `"from-file"`, `"from-env"`, `"from-flag"`}},
		{"max_inflight", "1", "2", "3", [4]string{"0", "1", "2", "3"}},
		{"mdns", "false", "true", "false", [4]string{"true", "false", "true", "false"}},
		{"cache_ttl", `"1m"`, "2m", "3m", [4]string{`"10m0s"`, `"1m0s"`, `"2m0s"`, `"3m0s"`}},
		{"trust", `["ed25519:aa"]`, "ed25519:bb, ed25519:cc", "ed25519:dd",
			[4]string{`[]`, `["ed25519:aa"]`, `["ed25519:bb", "ed25519:cc"]`, `["ed25519:dd"]`}},
	} {
		t.Run(c.key, func(t *testing.T) {
			cleanEnv(t)
			r, _ := settingByKey(c.key)
			file := configFile(t, c.key+" = "+c.file+"\n")
			layers := []func() []string{
				func() []string { return nil },
				func() []string { return []string{"--config", file} },
				func() []string { t.Setenv(r.envName(), c.env); return []string{"--config", file} },
				func() []string { return []string{"--config", file, "--" + r.flagName() + "=" + c.flag} },
			}
			for i, layer := range layers {
				s, err := parseRun(layer(), io.Discard)
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if got := tomlValue(r.get(s)); got != c.want[i] {
					t.Errorf("%s with %d layers = %s, want %s", c.key, i+1, got, c.want[i])
				}
			}
		})
	}
}

// TestListFlagsRepeat: the first --trust replaces the list from the file
// and the environment; the next ones add to it.
func TestListFlagsRepeat(t *testing.T) {
	cleanEnv(t)
	t.Setenv("SHOAL_TRUST", "ed25519:bb")
	s, err := parseWithFile(t, "trust = [\"ed25519:aa\"]\n", "--trust", "ed25519:cc", "--trust", "ed25519:dd")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Trust, []string{"ed25519:cc", "ed25519:dd"}) {
		t.Errorf("trust = %q", s.Trust)
	}
}

func TestValidationNamesKeyFlagAndEnv(t *testing.T) {
	for _, c := range []struct {
		name, file, env, val string // env=val when env is set
		args                 []string
		want                 string
	}{
		{name: "flag", args: []string{"--max-inflight", "-1"},
			want: "max_inflight = -1 (flag --max-inflight, env SHOAL_MAX_INFLIGHT): use 0 (unbounded) or more"},
		{name: "env", env: "SHOAL_INTRA_OP_THREADS", val: "-2",
			want: "intra_op_threads = -2 (flag --intra-op-threads, env SHOAL_INTRA_OP_THREADS): use 0 (one per core) or more"},
		{name: "file", file: "device = \"tpu\"\n",
			want: `device = "tpu" (flag --device, env SHOAL_DEVICE): use auto, cpu or cuda`},
		{name: "file, flag spelling", file: "log-level = \"loud\"\n",
			want: `log_level = "loud" (flag --log-level, env SHOAL_LOG_LEVEL): use debug, info, warn or error`},
		{name: "below -1", args: []string{"--min-free-mb=-2"},
			want: "min_free_mb = -2 (flag --min-free-mb, env SHOAL_MIN_FREE_MB): use -1 (no reserve) or more"},
		{name: "env not a number", env: "SHOAL_KEEP_VERSIONS", val: "many",
			want: `SHOAL_KEEP_VERSIONS="many": not an integer (key keep_versions, flag --keep-versions)`},
		{name: "env not a boolean", env: "SHOAL_MDNS", val: "maybe",
			want: `SHOAL_MDNS="maybe": not a boolean (use true or false) (key mdns, flag --mdns)`},
		{name: "pprof off loopback", args: []string{"--pprof", "0.0.0.0:6060"},
			want: `pprof = "0.0.0.0:6060" (flag --pprof, env SHOAL_PPROF): use a loopback host:port such as 127.0.0.1:6060`},
		{name: "env not a duration", env: "SHOAL_CACHE_TTL", val: "600",
			want: `SHOAL_CACHE_TTL="600": time: missing unit in duration "600" (key cache_ttl, flag --cache-ttl)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cleanEnv(t)
			if c.env != "" {
				t.Setenv(c.env, c.val)
			}
			_, err := parseWithFile(t, c.file, c.args...)
			if msg := usageMessage(t, err); msg != c.want {
				t.Errorf("error\n %s\nwant\n %s", msg, c.want)
			}
		})
	}
	cleanEnv(t)
	if _, err := parseRun([]string{"--min-free-mb=-1", "--cache-mb=0", "--log-format=JSON"}, io.Discard); err != nil {
		t.Errorf("documented values refused: %v", err)
	}
}

// everyRowArgs set every setting but the API token to something other
// than its default, with a path that TOML must quote and escape.
var everyRowArgs = []string{
	"--data", "/srv/shoal \"edge\"\tdata é", "--api", "127.0.0.1:0", "--grpc", "off", "--mesh", "m-1", "--site", "north",
	"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1",
	"--bootstrap", "/ip4/10.0.0.1/tcp/4010/p2p/12D3KooWGzBkGMe6Yo6Rk1oGpGFmTn4ZgZ4M5jK2nJ3p1qv6WqXY",
	"--mdns=false", "--dht=false", "--nat", "--relay-service", "--trust", "ed25519:aa",
	"--psk", "/etc/shoal/swarm.key", "--encrypt-key-file", "/etc/shoal/data.key", "--min-free-mb", "-1",
	"--keep-versions", "5", "--fold-after", "500", "--fold-prune-delay", "30s", "--ort-lib", "/opt/ort.so", "--device", "cpu", "--intra-op-threads", "2",
	"--max-inflight", "4", "--warm-routing", "--artifact-swarm=false", "--cache-mb", "0", "--cache-ttl", "90s", "--cache-persist",
	"--default-model", "none", "--demo-rag=false", "--log-level", "debug", "--log-format", "json",
	"--pprof", "127.0.0.1:6061",
}

// TestConfigPrintRoundTrip: what `shoal config print` writes, given back
// as --config, makes the same effective settings.
func TestConfigPrintRoundTrip(t *testing.T) {
	cleanEnv(t)
	for _, args := range [][]string{nil, everyRowArgs} {
		s1, err := parseRun(args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		var out1, out2 strings.Builder
		printSettings(&out1, s1)
		s2, err := parseWithFile(t, out1.String())
		if err != nil {
			t.Fatalf("the printed settings do not load: %v\n%s", err, out1.String())
		}
		printSettings(&out2, s2)
		if out2.String() != out1.String() {
			t.Errorf("printed\n%s\nthen, from that file,\n%s", out1.String(), out2.String())
		}
		if args != nil && !reflect.DeepEqual(s1, s2) {
			t.Errorf("settings %+v, from the printed file %+v", s1, s2)
		}
	}
	// The round trip covers every row (a new row needs a flag in everyRowArgs).
	s, _ := parseRun(everyRowArgs, io.Discard)
	for _, r := range runSettings {
		if !r.secret && tomlValue(r.get(s)) == tomlValue(r.get(defaultSettings())) {
			t.Errorf("everyRowArgs leave %s at its default", r.key)
		}
	}
}

func TestConfigPrintMasksSecrets(t *testing.T) {
	cleanEnv(t)
	s, err := parseRun([]string{"--api-token", "hunter2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printSettings(&out, s)
	if !strings.Contains(out.String(), "api_token = \"********\" # masked\n") || strings.Contains(out.String(), "hunter2") {
		t.Errorf("printed:\n%s", out.String())
	}
}

// TestSettingsLandInPeerConfig: each setting reaches its peer.Config field.
func TestSettingsLandInPeerConfig(t *testing.T) {
	cleanEnv(t)
	s, err := parseRun(everyRowArgs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := peer.Config{
		DataDir: "/srv/shoal \"edge\"\tdata é", APIAddr: "127.0.0.1:0", GRPCAddr: "", Mesh: "m-1", Site: "north", // --grpc off
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		Bootstrap:   []string{"/ip4/10.0.0.1/tcp/4010/p2p/12D3KooWGzBkGMe6Yo6Rk1oGpGFmTn4ZgZ4M5jK2nJ3p1qv6WqXY"},
		NAT:         true, RelayService: true, Trusted: []string{"ed25519:aa"},
		PSKFile: "/etc/shoal/swarm.key", EncryptKeyFile: "/etc/shoal/data.key", MinFreeBytes: -1 << 20,
		KeepVersions: 5, FoldAfter: 500, FoldPruneDelay: 30 * time.Second, ORTLibrary: "/opt/ort.so", Device: "cpu", IntraOpThreads: 2, MaxInflight: 4, WarmRouting: true, NoArtifactSwarm: true,
		CacheBytes: -1, CacheTTL: 90 * time.Second, CachePersist: true, Version: buildVersion(),
	}
	if got := s.peerConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("peer config\n%+v\nwant\n%+v", got, want)
	}
	if s.DefaultModel != "none" || s.DemoRAG || s.LogLevel != "debug" || s.LogFormat != "json" {
		t.Errorf("run's own settings: %+v", s)
	}
}

// TestReloadNeedsRestartFor: SIGHUP applies log level, trust and API
// token; a change to anything else waits for a restart.
func TestReloadNeedsRestartFor(t *testing.T) {
	cleanEnv(t)
	old, err := parseWithFile(t, "mesh = \"a\"\n")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := parseWithFile(t, "mesh = \"b\"\napi_token = \"t\"\nlog_level = \"debug\"\ntrust = [\"ed25519:aa\"]\nmax-inflight = 2\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := needRestart(old, cur); !reflect.DeepEqual(got, []string{"mesh", "max-inflight"}) {
		t.Errorf("needRestart = %q", got)
	}
}
