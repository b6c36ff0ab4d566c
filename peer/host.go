package peer

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/libp2p/go-libp2p"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// startHost starts the libp2p host: the peer's identity, Noise, TCP (and
// QUIC unless the mesh is private), and the optional NAT and relay help.
func (n *Node) startHost(p parsed) error {
	key, err := loadIdentity(n.cfg.DataDir)
	if err != nil {
		return err
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DefaultMuxers,
	}
	n.wire = newWireBytes()
	opts = append(opts, libp2p.BandwidthReporter(n.wire.counter))
	listen := p.listen
	if n.cfg.PSKFile != "" {
		psk, err := readPSK(n.cfg.PSKFile)
		if err != nil {
			return err
		}
		opts = append(opts, libp2p.PrivateNetwork(psk))
		if listen, err = n.privateListen(p.listen); err != nil {
			return err
		}
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	opts = append(opts, libp2p.ListenAddrs(listen...))
	if n.cfg.NAT {
		opts = append(opts, libp2p.NATPortMap(), libp2p.EnableHolePunching(), libp2p.EnableNATService())
	}
	if n.cfg.RelayService {
		opts = append(opts, libp2p.EnableRelayService())
	}
	if n.cfg.Gater != nil {
		opts = append(opts, libp2p.ConnectionGater(n.cfg.Gater))
	}
	if err := checkTCPPorts(listen); err != nil {
		return err
	}
	if n.host, err = libp2p.New(opts...); err != nil {
		return fmt.Errorf("libp2p listen on %v: %w", n.cfg.ListenAddrs, err)
	}
	n.log = n.log.With("peer", n.host.ID().String())
	return nil
}

// privateListen drops QUIC listen addresses: QUIC cannot run under a PSK.
func (n *Node) privateListen(all []ma.Multiaddr) ([]ma.Multiaddr, error) {
	var listen []ma.Multiaddr
	for _, a := range all {
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			continue
		}
		listen = append(listen, a)
	}
	if len(listen) == 0 {
		return nil, fmt.Errorf("%w: a private network (--psk) needs a TCP listen address; QUIC cannot run under a PSK", ErrBadConfig)
	}
	if len(listen) < len(all) {
		n.log.Info("private network: QUIC listen addresses dropped (QUIC cannot run under a PSK)")
	}
	return listen, nil
}

// checkTCPPorts tries each fixed TCP listen address before libp2p does:
// libp2p's swarm reports a taken port only as text, and an operator
// deserves ErrAddrInUse with the address.
func checkTCPPorts(listen []ma.Multiaddr) error {
	for _, a := range listen {
		port, err := a.ValueForProtocol(ma.P_TCP)
		if err != nil || port == "0" {
			continue
		}
		host, err := a.ValueForProtocol(ma.P_IP4)
		if err != nil {
			if host, err = a.ValueForProtocol(ma.P_IP6); err != nil {
				continue
			}
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
		if err != nil {
			return listenErr("libp2p", a.String(), err)
		}
		ln.Close()
	}
	return nil
}

func listenErr(what, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%s listen on %s: %w", what, addr, ErrAddrInUse)
	}
	return fmt.Errorf("%s listen on %s: %w", what, addr, err)
}
