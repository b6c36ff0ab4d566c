// Package netsim gives tests real network hosts on one Linux machine and
// full control over the wire between them.
//
// Each Host is a network namespace (`ip netns`) whose only link is a TUN
// device. One switch, running in the test process, reads every IPv4 packet a
// host sends and writes it into the destination host's TUN device. The
// switch is where faults live:
//
//   - partitions: hosts in different groups cannot exchange a packet;
//   - delay and loss per packet, netem-style (done here in user space: the
//     kernels these tests run on, Firecracker VMs among them, often ship
//     without sch_netem, and a test that silently loses its fault injection
//     would prove nothing);
//   - sites: multicast (mDNS) reaches only hosts of the same site, while
//     unicast is routed between sites, as a router joining two LANs would.
//
// The processes under test are ordinary programs started with `ip netns
// exec`; their sockets, loopback included, are their namespace's own. The
// test reaches a host's loopback-only HTTP API with Host.DialContext, which
// opens the socket inside the namespace, so nothing listens outside.
//
// Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and
// /dev/net/tun. Available reports whether this machine can; tests skip when
// it cannot, except under CI=true, where they must fail loudly instead.
package netsim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// MTU of every host's link.
const MTU = 1500

// ifName is the TUN device's name inside every namespace.
const ifName = "shoal0"

// Available reports nil when this process can create namespaces and TUN
// devices, else why not.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("netsim needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netsim needs iproute2's ip: %w", err)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("netsim needs /dev/net/tun: %w", err)
	}
	f.Close()
	return nil
}

// Link is the impairment applied to every packet between two hosts.
type Link struct {
	// Delay is added to every packet, one way.
	Delay time.Duration
	// Loss is the probability (0–1) that a packet is dropped.
	Loss float64
	// Rate caps what each host sends, in bytes per second: its uplink, as
	// a site's is. A host's packets leave one after another at that rate;
	// a packet that would wait more than UplinkQueue behind the others is
	// dropped, as a router's full queue drops. 0: no cap.
	Rate int64
}

// UplinkQueue is the most a packet waits for a capped uplink (Link.Rate).
const UplinkQueue = 100 * time.Millisecond

// Stats counts what the switch did.
type Stats struct {
	Forwarded      uint64 // packets delivered
	Bytes          uint64 // bytes delivered
	DroppedLoss    uint64 // dropped by the Loss setting
	DroppedCut     uint64 // dropped by a partition
	DroppedNoRoute uint64 // addressed to no host
}

// Net is a set of hosts and the switch between them.
type Net struct {
	prefix string
	seq    atomic.Uint32

	mu     sync.RWMutex
	hosts  []*Host
	byIP   map[netip.Addr]*Host
	group  map[*Host]int // partition group; all 0 when healed
	link   Link
	closed bool

	forwarded, bytes, lost, cut, noRoute atomic.Uint64
	wg                                   sync.WaitGroup
}

// New returns an empty network. Namespaces are named prefix-<n>; New
// removes leftovers of a crashed earlier run with the same prefix.
func New(prefix string) (*Net, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if prefix == "" {
		prefix = "shoalnet"
	}
	n := &Net{prefix: prefix, byIP: map[netip.Addr]*Host{}, group: map[*Host]int{}}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
				_ = exec.Command("ip", "netns", "del", f[0]).Run()
			}
		}
	}
	return n, nil
}

// Host is one network namespace on the switch.
type Host struct {
	Name string     // namespace name
	Site int        // multicast stays within a site
	IP   netip.Addr // the address on its link

	net *Net
	tun *os.File
	out chan packet
	// uplinkFree is when the host's uplink is next free (Link.Rate); only
	// the host's own read loop, which routes what it sends, touches it.
	uplinkFree time.Time
}

type packet struct {
	due  time.Time
	data []byte
}

// AddHost creates a namespace on site (1–250) with the next free address
// 10.77.<site>.<n>/16 and starts switching its packets.
func (n *Net) AddHost(site int) (*Host, error) {
	if site < 1 || site > 250 {
		return nil, fmt.Errorf("netsim: site %d out of 1–250", site)
	}
	idx := n.seq.Add(1)
	if idx > 250 {
		return nil, errors.New("netsim: too many hosts")
	}
	h := &Host{
		Name: fmt.Sprintf("%s-%d", n.prefix, idx),
		Site: site,
		IP:   netip.AddrFrom4([4]byte{10, 77, byte(site), byte(idx)}),
		net:  n,
		out:  make(chan packet, 4096),
	}
	if err := run("ip", "netns", "add", h.Name); err != nil {
		return nil, err
	}
	fail := func(err error) (*Host, error) {
		_ = exec.Command("ip", "netns", "del", h.Name).Run()
		return nil, err
	}
	if err := h.Do(func() error {
		var err error
		h.tun, err = openTUN(ifName)
		return err
	}); err != nil {
		return fail(err)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", h.IP.String() + "/16", "dev", ifName},
		{"link", "set", ifName, "mtu", fmt.Sprint(MTU), "multicast", "on", "up"},
	} {
		if err := run("ip", append([]string{"-n", h.Name}, args...)...); err != nil {
			h.tun.Close()
			return fail(err)
		}
	}
	n.mu.Lock()
	n.hosts = append(n.hosts, h)
	n.byIP[h.IP] = h
	n.mu.Unlock()
	n.wg.Add(2)
	go h.readLoop()
	go h.writeLoop()
	return h, nil
}

// Hosts returns the hosts in the order they were added.
func (n *Net) Hosts() []*Host {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return append([]*Host(nil), n.hosts...)
}

// SetLink sets the impairment of every link.
func (n *Net) SetLink(l Link) {
	n.mu.Lock()
	n.link = l
	n.mu.Unlock()
}

// Partition splits the network: hosts in different groups can no longer
// exchange packets; hosts named in no group keep talking to everyone.
// Connections across the cut are not reset; they time out, as on a real
// network that loses a link.
func (n *Net) Partition(groups ...[]*Host) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = map[*Host]int{}
	for i, g := range groups {
		for _, h := range g {
			n.group[h] = i + 1
		}
	}
}

// Heal removes every partition.
func (n *Net) Heal() { n.Partition() }

// Stats returns the switch's counters.
func (n *Net) Stats() Stats {
	return Stats{Forwarded: n.forwarded.Load(), Bytes: n.bytes.Load(), DroppedLoss: n.lost.Load(),
		DroppedCut: n.cut.Load(), DroppedNoRoute: n.noRoute.Load()}
}

// Close stops the switch and deletes every namespace. Processes still
// running in them lose their network; callers stop them first.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	hosts := n.hosts
	n.mu.Unlock()
	var errs []error
	for _, h := range hosts {
		h.tun.Close()
		close(h.out)
	}
	n.wg.Wait()
	for _, h := range hosts {
		if err := run("ip", "netns", "del", h.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h *Host) readLoop() {
	defer h.net.wg.Done()
	buf := make([]byte, MTU+64)
	for {
		k, err := h.tun.Read(buf)
		if err != nil {
			return
		}
		if k < 20 || buf[0]>>4 != 4 {
			continue // IPv4 only; IPv6 router solicitations and the like are dropped
		}
		dst := netip.AddrFrom4([4]byte(buf[16:20]))
		h.net.route(h, dst, buf[:k])
	}
}

func (n *Net) route(src *Host, dst netip.Addr, pkt []byte) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		return
	}
	if dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		for _, h := range n.hosts {
			if h != src && h.Site == src.Site {
				n.deliver(src, h, pkt)
			}
		}
		return
	}
	h, ok := n.byIP[dst]
	if !ok {
		n.noRoute.Add(1)
		return
	}
	n.deliver(src, h, pkt)
}

// deliver runs with n.mu read-locked.
func (n *Net) deliver(src, dst *Host, pkt []byte) {
	if g1, g2 := n.group[src], n.group[dst]; g1 != 0 && g2 != 0 && g1 != g2 {
		n.cut.Add(1)
		return
	}
	if n.link.Loss > 0 && rand.Float64() < n.link.Loss {
		n.lost.Add(1)
		return
	}
	sent := time.Now()
	if n.link.Rate > 0 {
		start := sent
		if src.uplinkFree.After(start) {
			start = src.uplinkFree
		}
		if start.Sub(sent) > UplinkQueue {
			n.lost.Add(1) // the uplink's queue is full
			return
		}
		src.uplinkFree = start.Add(time.Duration(len(pkt)) * time.Second / time.Duration(n.link.Rate))
		sent = src.uplinkFree
	}
	p := packet{due: sent.Add(n.link.Delay), data: append([]byte(nil), pkt...)}
	select {
	case dst.out <- p:
	default:
		n.lost.Add(1) // a full queue drops, as a router's would
	}
}

func (h *Host) writeLoop() {
	defer h.net.wg.Done()
	for p := range h.out {
		if d := time.Until(p.due); d > 0 {
			time.Sleep(d) // the simulated link delay itself, not synchronisation
		}
		if _, err := h.tun.Write(p.data); err == nil {
			h.net.forwarded.Add(1)
			h.net.bytes.Add(uint64(len(p.data)))
		}
	}
}

// Do runs fn on an OS thread switched into the host's namespace. Sockets
// fn creates belong to the namespace and keep working after Do returns.
func (h *Host) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + h.Name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netsim: enter %s: %w", h.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and dies with this goroutine rather than
		// run other goroutines in the wrong namespace.
		return fmt.Errorf("netsim: leave %s: %w", h.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// DialContext dials from inside the host's namespace; use it as an
// http.Transport's DialContext to reach a host's loopback API.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command returns a command that runs inside the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netsim: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netsim: TUNSETIFF: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netsim: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
