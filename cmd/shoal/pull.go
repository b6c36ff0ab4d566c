package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/shoal-mesh/shoal/store/artifacts"
)

// cmdModelPull fetches and verifies a version on the peer now (the
// current one when no version is given), showing progress until it is
// verified or refused.
func cmdModelPull(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model pull", flag.ContinueOnError)
	addr := apiFlag(fs)
	timeout := fs.Duration("timeout", time.Hour, "give up after this long")
	pos, err := interleave(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("usage: shoal model pull MODEL[@VERSION]")
	}
	model, version, _ := strings.Cut(pos[0], "@")
	base := apiURL(*addr)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	info := func() (api.ModelInfo, error) {
		var mi api.ModelInfo
		_, err := call(ctx, http.MethodGet, base+"/v1/models/"+url.PathEscape(model), nil, &mi)
		return mi, err
	}
	if version == "" {
		mi, err := info()
		if err != nil {
			return err
		}
		if mi.Current == nil {
			return fmt.Errorf("%s has no current version: name one (%s@VERSION)", model, model)
		}
		version = mi.Current.Version
	}
	pull := func() error {
		_, err := call(ctx, http.MethodPost, base+"/v1/models/"+url.PathEscape(model)+"/versions/"+url.PathEscape(version)+"/pull", nil, nil)
		return err
	}
	if err := pull(); err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	last, pulled := time.Time{}, time.Now()
	for {
		mi, err := info()
		if err != nil {
			return err
		}
		var vi *api.VersionInfo
		for i := range mi.Versions {
			if mi.Versions[i].Version == version {
				vi = &mi.Versions[i]
			}
		}
		if vi == nil {
			return fmt.Errorf("%s@%s vanished from the registry", model, version)
		}
		var st artifacts.Status
		if vi.Local != nil {
			st = *vi.Local
		}
		if isTerminal(stderr) {
			if bar == nil {
				bar = progressbar.NewOptions64(vi.Size, progressbar.OptionSetWriter(stderr), progressbar.OptionShowBytes(true),
					progressbar.OptionSetDescription(model+"@"+version), progressbar.OptionClearOnFinish())
			}
			bar.Set64(st.Fetched)
		} else if time.Since(last) > 2*time.Second {
			last = time.Now()
			fmt.Fprintf(stderr, "%s@%s: %s, %d of %d bytes\n", model, version, orDash(st.State), st.Fetched, vi.Size)
		}
		switch st.State {
		case artifacts.StateVerified:
			if bar != nil {
				bar.Finish()
			}
			fmt.Fprintf(stdout, "%s@%s verified here (%d bytes, sha256 %s)\n", model, version, vi.Size, vi.SHA256)
			return nil
		case artifacts.StateBad:
			return fmt.Errorf("%s@%s is bad: %s", model, version, st.Reason)
		case artifacts.StateFailed:
			// The fetch stopped (no peer had the blocks in time): ask again.
			if time.Since(pulled) > 5*time.Second {
				pulled = time.Now()
				fmt.Fprintf(stderr, "%s@%s: %s; retrying\n", model, version, st.Reason)
				if err := pull(); err != nil {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s@%s not verified within %s (%d of %d bytes)", model, version, *timeout, st.Fetched, vi.Size)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
