package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
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

// envString returns $SHOAL_<name> or def.
func envString(name, def string) string {
	if v, ok := os.LookupEnv("SHOAL_" + name); ok && v != "" {
		return v
	}
	return def
}

// envBool returns $SHOAL_<name> parsed as a bool, or def.
func envBool(name string, def bool) (bool, error) {
	v, ok := os.LookupEnv("SHOAL_" + name)
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("SHOAL_%s=%q is not a boolean", name, v)
	}
	return b, nil
}

// envInt returns $SHOAL_<name> parsed as a positive int, or def.
func envInt(name string, def int) (int, error) {
	v, ok := os.LookupEnv("SHOAL_" + name)
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return def, fmt.Errorf("SHOAL_%s=%q is not a positive number", name, v)
	}
	return n, nil
}

// envList returns $SHOAL_<name> split on commas, or def.
func envList(name string, def []string) *listFlag {
	if v, ok := os.LookupEnv("SHOAL_" + name); ok && v != "" {
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
