package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/peer"
)

func cmdKey(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "psk" || args[0] == "encryption") {
		return cmdKeyFile(args[0], args[1:], stdout, stderr)
	}
	if len(args) == 0 || (args[0] != "new" && args[0] != "show") {
		return usageError("usage: shoal key new|show [--data DIR] | shoal key psk FILE | shoal key encryption FILE")
	}
	fs := flag.NewFlagSet("key "+args[0], flag.ContinueOnError)
	dataDir := fs.String("data", envString("DATA", peer.DefaultDataDir), "data directory holding publisher.key (env SHOAL_DATA)")
	force := false
	if args[0] == "new" {
		fs.BoolVar(&force, "force", false, "replace an existing key (peers that trusted the old key will not trust the new one)")
	}
	if err := parseFlags(fs, args[1:], stderr); err != nil {
		return err
	}
	var p *models.Publisher
	var err error
	if args[0] == "new" {
		p, err = models.NewPublisherKey(*dataDir, force)
		if errors.Is(err, models.ErrKeyExists) {
			return fmt.Errorf("%w (use --force to replace it)", err)
		}
	} else {
		p, err = models.LoadPublisherKey(*dataDir)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no publisher key in %s (create one with `shoal key new`, or start `shoal run` once)", *dataDir)
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, p.ID())
	return nil
}

// cmdKeyFile writes a new secret: a private-network key (psk; every peer
// of a private mesh runs with --psk pointing at a copy of it) or a
// data-at-rest key (encryption; one per peer, for --encrypt-key-file).
func cmdKeyFile(kind string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("key "+kind, flag.ContinueOnError)
	force := fs.Bool("force", false, "overwrite an existing file")
	pos, err := interleave(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("usage: shoal key %s FILE [--force]", kind)
	}
	newKey, flagName, what := peer.NewPSK, "--psk", "a private-network key"
	if kind == "encryption" {
		newKey, flagName, what = peer.NewEncryptionKey, "--encrypt-key-file", "a data-at-rest encryption key"
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if *force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(pos[0], flags, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s to %s; start the peer with %s %s\n", what, pos[0], flagName, pos[0])
	return nil
}
