// Command shoal runs and operates a Shoal peer.
//
//	shoal run        start a peer (no flags needed)
//	shoal status     show a running peer's mesh, staleness and state
//	shoal version    print the version
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// exitError carries the exit code of a failed command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks mistakes in how the command was called (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

const usage = `shoal — leaderless ML state for edge gateways

Usage:
  shoal run [flags]               start a peer (defaults: data ./shoal-data, API 127.0.0.1:7480,
                                  libp2p TCP+QUIC on 4010, mDNS on)
  shoal config print [flags]      the effective settings (flags > $SHOAL_* > --config TOML > defaults)
  shoal status [--api URL] [--json]
                                  show a running peer's peers, staleness and state
  shoal model push FILE --name M --version V [--activate] [--prefetch] [--no-cache] [--warmup REQ.json] [--max-batch N [--max-queue-delay DUR]]
  shoal model activate M V | rollback M | ls [--json]
                                  publish, activate and inspect model versions
  shoal infer M[@V] --input REQUEST.json [--max-staleness 5s] [--after TOKEN]
                                  run one inference (Open Inference Protocol v2 request body)
  shoal cache flush [M]           drop cached inference results of M (or all) on every peer
  shoal collection create C --embedder M@V | ls
  shoal doc add C FILE... | rm C ID | query C TEXT [-k 5] [--filter key=value]
                                  retrieval collections and their documents
  shoal session new | get ID | append ID --text T | put ID | rm ID
                                  conversation sessions (--api-token or $SHOAL_API_TOKEN)
  shoal key new|show [--data DIR] this peer's publisher identity (ed25519)
  shoal key psk FILE              a private-network key for --psk
  shoal key encryption FILE       a data-at-rest key for --encrypt-key-file
  shoal version                   print the version

Run 'shoal COMMAND -h' for the flags of a command. Every flag of 'run' can also
be set with a SHOAL_* environment variable (see docs/operations.md).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	case "model":
		err = cmdModel(args[1:], stdout, stderr)
	case "infer":
		err = cmdInfer(args[1:], stdout, stderr)
	case "cache":
		err = cmdCache(args[1:], stdout, stderr)
	case "config":
		err = cmdConfig(args[1:], stdout, stderr)
	case "collection":
		err = cmdCollection(args[1:], stdout, stderr)
	case "doc":
		err = cmdDoc(args[1:], stdout, stderr)
	case "session":
		err = cmdSession(args[1:], stdout, stderr)
	case "key":
		err = cmdKey(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "shoal", buildVersion())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "shoal: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && !errors.Is(ee.err, errHelpShown) {
			fmt.Fprintln(stderr, "shoal:", describe(ee.err))
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "shoal:", describe(err))
	return 1
}

var errHelpShown = errors.New("help shown")
