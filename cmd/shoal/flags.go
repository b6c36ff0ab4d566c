package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// listFlag is a repeatable string flag. Values from the environment are
// replaced, not extended, by the first value given on the command line.
type listFlag struct {
	vals    []string
	fromEnv bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }
func (l *listFlag) Set(s string) error {
	if l.fromEnv {
		l.vals, l.fromEnv = nil, false
	}
	l.vals = append(l.vals, s)
	return nil
}

// fileSettings holds the --config file's values by environment name
// (DATA, KEEP_VERSIONS, ...): they sit under the environment and the
// flags, above the built-in defaults.
var fileSettings = map[string]string{}

// lookup finds a setting: $SHOAL_<name>, then the config file. from names
// where it came from, for error messages.
func lookup(name string) (val, from string, ok bool) {
	if v, ok := os.LookupEnv("SHOAL_" + name); ok && v != "" {
		return v, "SHOAL_" + name, true
	}
	if v, ok := fileSettings[name]; ok {
		return v, "config key " + strings.ToLower(name), true
	}
	return "", "", false
}

// envString returns the setting name (environment, then config file) or def.
func envString(name, def string) string {
	if v, _, ok := lookup(name); ok {
		return v
	}
	return def
}

// envBool returns the setting parsed as a bool, or def.
func envBool(name string, def bool) (bool, error) {
	v, from, ok := lookup(name)
	if !ok {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("%s=%q is not a boolean", from, v)
	}
	return b, nil
}

// envInt returns the setting parsed as a non-negative int, or def.
func envInt(name string, def int) (int, error) {
	v, from, ok := lookup(name)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return def, fmt.Errorf("%s=%q is not a number", from, v)
	}
	return n, nil
}

// envList returns the setting split on commas, or def.
func envList(name string, def []string) *listFlag {
	if v, _, ok := lookup(name); ok {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return &listFlag{vals: out, fromEnv: true}
	}
	return &listFlag{vals: def, fromEnv: true}
}

// loadConfigFile reads a TOML file of `shoal run` settings. Keys are the
// flag names (with - or _); lists are TOML arrays. Unknown keys are an
// error: a typo must not silently fall back to a default.
func loadConfigFile(path string, known map[string]bool) error {
	var raw map[string]any
	if _, err := toml.DecodeFile(path, &raw); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	for key, v := range raw {
		name := strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
		if !known[name] {
			return fmt.Errorf("--config %s: unknown key %q", path, key)
		}
		switch x := v.(type) {
		case string:
			fileSettings[name] = x
		case bool:
			fileSettings[name] = strconv.FormatBool(x)
		case int64:
			fileSettings[name] = strconv.FormatInt(x, 10)
		case []any:
			var parts []string
			for _, e := range x {
				str, ok := e.(string)
				if !ok {
					return fmt.Errorf("--config %s: %s: list of strings expected", path, key)
				}
				parts = append(parts, str)
			}
			fileSettings[name] = strings.Join(parts, ",")
		default:
			return fmt.Errorf("--config %s: %s: unsupported value %v", path, key, v)
		}
	}
	return nil
}

// configPath finds --config in args (before flags are parsed: the file
// supplies the flags' defaults), then $SHOAL_CONFIG.
func configPath(args []string) string {
	for i, a := range args {
		for _, p := range []string{"--config=", "-config="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v
			}
		}
		if (a == "--config" || a == "-config") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return os.Getenv("SHOAL_CONFIG")
}

// parseFlags parses args, turning -h and flag errors into exit codes.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0, err: errHelpShown}
		}
		return &exitError{code: 2, err: errHelpShown}
	}
	if fs.NArg() > 0 {
		return usageError("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}
