package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"strings"
)

// listFlag is the flag of a list setting, repeatable. Its first value on
// the command line replaces the list that the defaults, the file or the
// environment gave; later ones add to it.
type listFlag struct {
	p       *[]string
	started bool
}

func (l *listFlag) String() string {
	if l.p == nil { // the zero value flag.PrintDefaults makes
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *listFlag) Set(s string) error {
	if !l.started {
		*l.p, l.started = nil, true
	}
	*l.p = append(*l.p, s)
	return nil
}

// envString returns $SHOAL_<name>, or def when it is unset or empty: the
// commands other than run read their few settings from the environment.
func envString(name, def string) string {
	if v := os.Getenv("SHOAL_" + name); v != "" {
		return v
	}
	return def
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
