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
	if len(args) == 0 || (args[0] != "new" && args[0] != "show") {
		return usageError("usage: shoal key new|show [--data DIR]")
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
