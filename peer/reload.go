package peer

import (
	"fmt"
	"net"
)

// Reloadable are the settings a running peer can change without a
// restart (`shoal run` applies them on SIGHUP). Everything else — data
// directory, addresses, mesh, keys, device — is fixed for the life of the
// process.
type Reloadable struct {
	// Trusted publishers, as in Config.Trusted: whose records the replica
	// admits and whose manifests the registry accepts.
	Trusted []string
	// APIToken, as in Config.APIToken. It may not become empty while the
	// API listens on a non-loopback address.
	APIToken string
}

// Reload applies r. On error nothing changes.
func (n *Node) Reload(r Reloadable) error {
	ids, err := parseTrusted(r.Trusted)
	if err != nil {
		return err
	}
	if r.APIToken == "" {
		for _, addr := range []string{n.cfg.APIAddr, n.cfg.GRPCAddr} {
			host, _, _ := net.SplitHostPort(addr)
			if addr != "" && !loopbackHost(host) {
				return fmt.Errorf("%w: the API listens on %s: its token cannot be removed", ErrBadConfig, addr)
			}
		}
	}
	n.registry.SetTrusted(ids)
	n.trust.Set(append(ids, n.pub.ID())...)
	n.apiToken.Store(&r.APIToken)
	n.log.Info("configuration reloaded", "trusted", len(ids), "api_token", r.APIToken != "")
	return nil
}

func (n *Node) token() string {
	if t := n.apiToken.Load(); t != nil {
		return *t
	}
	return ""
}
