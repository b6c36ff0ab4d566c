package artifacts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	cid "github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// The swarm is Shoal's own artifact exchange, beside bitswap. When a
// version is activated every peer fetches the same artifact at the same
// moment; bitswap then has each of them ask everyone for every block, and
// the origin, the only peer that has any block at first, uploads most of
// them several times (4.35× the artifact for 10 peers, docs/benchmarks.md)
// and the fetch crawls in rounds of wants. The swarm schedules instead:
//
//   - Every fetcher tells the others, on request (HAVE), which leaves of
//     the artifact it holds: all of them (a seed: it verified the artifact),
//     a bitmap (it is fetching), or none.
//   - A leaf a fellow fetcher holds is taken from a fellow, rarest first, so
//     blocks spread between fetchers instead of from the origin.
//   - A leaf only seeds hold is taken from a seed by one fetcher only: the
//     leaves are striped over the fetchers each knows of (leaf i belongs to
//     the i mod F-th fetcher in id order), each takes its own stripe from
//     the seeds and the rest from its fellows. When nothing has arrived
//     for a while (three times what a block has been taking, at least
//     80 ms) it takes any leaf from a seed, so a slow, departed or lying
//     fellow delays no one, and views of who fetches that disagree only
//     cost a few duplicate uploads.
//
// Every block is checked against its CID before it is stored, and the
// artifact's sha256 after, as for bitswap; a peer that serves a block that
// does not hash to its CID is not asked again. Whatever the swarm cannot
// get (no peer speaks it, or no block arrives for fetchStall) is left to
// the bitswap fetch that follows it.
//
// Wire format, one request after another on a stream, each answered in
// turn: a request is an op byte, then the CID as uvarint length and bytes.
// HAVE is answered by a state byte and, for a partial holder, the leaf
// count as a uvarint and a bitmap of (count+7)/8 bytes, leaf i in bit
// i%8 of byte i/8, leaves in the DAG's depth-first order. GET is answered
// by a status byte and, when found, the block as uvarint length and bytes.

const (
	opHave byte = 1
	opGet  byte = 2

	holdsNone    byte = 0
	holdsPartial byte = 1
	holdsAll     byte = 2

	blockFound   byte = 0
	blockMissing byte = 1

	// maxBlockSize is bitswap's limit too; Import makes 256 KiB leaves.
	maxBlockSize = 2 << 20
	// maxLeaves bounds a bitmap (1 TiB of 256 KiB leaves).
	maxLeaves = 1 << 22
	// maxCID bounds a CID on the wire.
	maxCID = 256
)

// Tuning of the swarm fetch.
var (
	// swarmWorkers is how many blocks one fetcher asks of one peer at once:
	// enough to keep a link busy across a round trip of a 256 KiB block.
	swarmWorkers = 4
	// havePoll is how often a fetcher asks each peer what it holds.
	havePoll = 40 * time.Millisecond
	// swarmRequestTimeout bounds one request's answer.
	swarmRequestTimeout = 30 * time.Second
	// swarmIdle is how long a served stream may wait for its next request.
	swarmIdle = time.Minute
	// endgameAfter is how long a leaf may be asked of one peer before it is
	// asked of another too, once nothing else is left to ask for; at least
	// blockWaits times the time a block has been taking (swarmFetch.patience).
	endgameAfter = time.Second
	// helpAfter is how long a fetcher waits without a block arriving before
	// it takes leaves of other fetchers' stripes, or leaves a fellow holds,
	// from a seed; at least blockWaits times the time a block has been
	// taking, so a slow link is not mistaken for a stalled fetcher.
	helpAfter                = 2 * havePoll
	blockWaits time.Duration = 3
	// idlePoll is how often a peer that holds nothing is asked again (a
	// peer that starts fetching says so itself by asking).
	idlePoll = 500 * time.Millisecond
	// startTimeout bounds the wait for a first peer that holds the artifact.
	startTimeout = 5 * time.Second
)

var (
	errNoHolders = errors.New("no peer holds the artifact")
	errStalled   = errors.New("no block arrived")
	errBadBlock  = errors.New("block does not hash to its CID")
)

// SwarmProtocol is the stream protocol of mesh's artifact swarm.
func SwarmProtocol(mesh string) protocol.ID {
	return protocol.ID("/shoal/" + mesh + "/artifact/1")
}

// swarm is a Manager's side of the exchange: what it answers about, and
// its counters.
type swarm struct {
	host  host.Host
	proto protocol.ID

	mu       sync.Mutex
	fetching map[cid.Cid]*swarmFetch // answered from the fetch's bitmap
	seeded   map[cid.Cid]bool        // verified here: answered as all
	loaded   bool                    // seeded holds every verified artifact

	sent, received, badBlocks atomic.Uint64
}

// SwarmStats are the swarm's counters: artifact bytes served to and taken
// from peers, and blocks refused because they did not hash to their CID.
type SwarmStats struct {
	BytesSent, BytesReceived, BadBlocks uint64
}

// SwarmStats returns the swarm's counters (zero without a host).
func (m *Manager) SwarmStats() SwarmStats {
	if m.sw == nil {
		return SwarmStats{}
	}
	return SwarmStats{m.sw.sent.Load(), m.sw.received.Load(), m.sw.badBlocks.Load()}
}

// Close stops serving the swarm and ends fetches from it.
func (m *Manager) Close() {
	m.cancel()
	if m.sw != nil {
		m.sw.host.RemoveStreamHandler(m.sw.proto)
	}
}

// seedChanged records whether root is verified here (Manager.put).
func (s *swarm) seedChanged(root cid.Cid, verified bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if verified {
		s.seeded[root] = true
	} else if s.seeded[root] {
		// Another ref may hold the same bytes: read the statuses again.
		delete(s.seeded, root)
		s.loaded = false
	}
}

// holds answers HAVE for root, asked by from.
func (m *Manager) holds(ctx context.Context, root cid.Cid, from peer.ID) (byte, []byte, int) {
	s := m.sw
	s.mu.Lock()
	if !s.loaded {
		s.mu.Unlock()
		all, err := m.All(ctx)
		s.mu.Lock()
		if err == nil && !s.loaded {
			for _, st := range all {
				if c, err := cid.Decode(st.CID); err == nil && st.State == StateVerified {
					s.seeded[c] = true
				}
			}
			s.loaded = true
		}
	}
	seeded, f := s.seeded[root], s.fetching[root]
	s.mu.Unlock()
	if f != nil {
		f.askedBy(from)
	}
	switch {
	case seeded:
		return holdsAll, nil, 0
	case f != nil:
		bits, n := f.bitmap()
		return holdsPartial, bits, n
	}
	return holdsNone, nil, 0
}

// serve answers one peer's requests on a stream until it closes or idles.
func (m *Manager) serve(st network.Stream) {
	defer st.Close()
	r := bufio.NewReader(st)
	w := bufio.NewWriter(st)
	for {
		st.SetReadDeadline(time.Now().Add(swarmIdle))
		op, c, err := readRequest(r)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				st.Reset()
			}
			return
		}
		st.SetWriteDeadline(time.Now().Add(swarmRequestTimeout))
		switch op {
		case opHave:
			state, bits, n := m.holds(m.ctx, c, st.Conn().RemotePeer())
			w.WriteByte(state)
			if state == holdsPartial {
				w.Write(binary.AppendUvarint(nil, uint64(n)))
				w.Write(bits)
			}
		case opGet:
			blk, err := m.blocks.Local().Get(m.ctx, c)
			if err != nil {
				w.WriteByte(blockMissing)
				break
			}
			w.WriteByte(blockFound)
			writeChunk(w, blk.RawData())
			m.sw.sent.Add(uint64(len(blk.RawData())))
		default:
			st.Reset()
			return
		}
		if err := w.Flush(); err != nil {
			st.Reset()
			return
		}
	}
}

func readRequest(r *bufio.Reader) (byte, cid.Cid, error) {
	op, err := r.ReadByte()
	if err != nil {
		return 0, cid.Undef, err
	}
	b, err := readChunk(r, maxCID)
	if err != nil {
		return 0, cid.Undef, err
	}
	_, c, err := cid.CidFromBytes(b)
	if err != nil {
		return 0, cid.Undef, fmt.Errorf("request: %w", err)
	}
	return op, c, nil
}

// writeChunk writes b as readChunk reads it: a uvarint length, then b.
func writeChunk(w *bufio.Writer, b []byte) {
	w.Write(binary.AppendUvarint(nil, uint64(len(b))))
	w.Write(b)
}

// readChunk reads a uvarint length, at most limit, and that many bytes.
func readChunk(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("chunk of %d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// swarmConn is one stream to a peer, used for one request at a time.
type swarmConn struct {
	st   network.Stream
	r    *bufio.Reader
	w    *bufio.Writer
	stop func() bool // ends the reset at ctx's end
}

// dial opens a stream to p that is reset when ctx ends, so no request
// outlives the fetch that made it.
func (m *Manager) dial(ctx context.Context, p peer.ID) (*swarmConn, error) {
	st, err := m.sw.host.NewStream(ctx, p, m.sw.proto)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	return &swarmConn{st: st, r: bufio.NewReader(st), w: bufio.NewWriter(st), stop: stop}, nil
}

func (c *swarmConn) request(op byte, id cid.Cid) error {
	c.st.SetDeadline(time.Now().Add(swarmRequestTimeout))
	c.w.WriteByte(op)
	writeChunk(c.w, id.Bytes())
	return c.w.Flush()
}

// have asks what the peer holds of root: its state and, when partial,
// its bitmap and leaf count.
func (c *swarmConn) have(root cid.Cid) (byte, []byte, int, error) {
	if err := c.request(opHave, root); err != nil {
		return 0, nil, 0, err
	}
	state, err := c.r.ReadByte()
	if err != nil || state != holdsPartial {
		return state, nil, 0, err
	}
	n, err := binary.ReadUvarint(c.r)
	if err != nil {
		return 0, nil, 0, err
	}
	if n > maxLeaves {
		return 0, nil, 0, fmt.Errorf("bitmap of %d leaves, limit %d", n, maxLeaves)
	}
	bits := make([]byte, (n+7)/8)
	if _, err := io.ReadFull(c.r, bits); err != nil {
		return 0, nil, 0, err
	}
	return state, bits, int(n), nil
}

// get fetches one block and checks it against its CID; nil, nil when the
// peer does not have it.
func (c *swarmConn) get(id cid.Cid) (blocks.Block, error) {
	if err := c.request(opGet, id); err != nil {
		return nil, err
	}
	status, err := c.r.ReadByte()
	if err != nil || status != blockFound {
		return nil, err
	}
	data, err := readChunk(c.r, maxBlockSize)
	if err != nil {
		return nil, err
	}
	sum, err := id.Prefix().Sum(data)
	if err != nil || !sum.Equals(id) {
		return nil, fmt.Errorf("%w: %s", errBadBlock, id)
	}
	return blocks.NewBlockWithCid(data, id)
}

func (c *swarmConn) close() {
	c.stop()
	c.st.Close()
}

// swarmPeers are the connected peers that speak the swarm protocol.
func (m *Manager) swarmPeers() []peer.ID {
	var out []peer.ID
	for _, p := range m.sw.host.Network().Peers() {
		if ok, err := m.sw.host.Peerstore().SupportsProtocols(p, m.sw.proto); err == nil && len(ok) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// fetchFromPeers fetches s's blocks through the swarm. It returns nil once
// every block is local, errNoHolders when no peer has any, and otherwise
// the reason it stopped; the caller's bitswap fetch then gets the rest.
func (m *Manager) fetchFromPeers(ctx context.Context, s Spec) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.ctx, cancel)
	defer stop()
	f := newSwarmFetch(m.sw.host.ID(), s.Ref)
	m.sw.mu.Lock()
	m.sw.fetching[s.CID] = f
	m.sw.mu.Unlock()
	defer func() {
		m.sw.mu.Lock()
		if m.sw.fetching[s.CID] == f { // two refs of one CID may fetch at once
			delete(m.sw.fetching, s.CID)
		}
		m.sw.mu.Unlock()
	}()

	peers := m.swarmPeers()
	var werr atomic.Pointer[error]
	fail := func(err error) {
		werr.CompareAndSwap(nil, &err)
		cancel()
	}
	answered := make(chan struct{}, len(peers))
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() { defer wg.Done(); m.follow(ctx, f, p, s, answered, fail) }()
	}
	defer wg.Wait()
	defer cancel()
	sctx, scancel := context.WithTimeout(ctx, startTimeout)
	found := f.waitHolder(sctx, answered, len(peers))
	scancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !found {
		return errNoHolders
	}
	leaves, err := m.structure(ctx, f, s.CID)
	if err != nil {
		return fmt.Errorf("artifact structure: %w", err)
	}
	local := m.blocks.Local()
	var had int64
	f.setLeaves(leaves, func(c cid.Cid) bool {
		if sz, err := local.GetSize(ctx, c); err == nil {
			had += int64(sz)
			return true
		}
		return false
	})
	m.progress(s.Ref, had)
	err = f.wait(ctx, fetchStall)
	cancel()
	wg.Wait()
	if e := werr.Load(); e != nil {
		return *e
	}
	return err
}

// follow asks p what it holds, says so on answered, then polls it and
// takes leaves from it until the fetch ends. Every peer is followed on
// its own, so one that hangs (cut off, but its connection not yet timed
// out) delays nothing but the leaves it was asked for.
func (m *Manager) follow(ctx context.Context, f *swarmFetch, p peer.ID, s Spec, answered chan<- struct{}, fail func(error)) {
	c, err := m.dial(ctx, p)
	if err == nil {
		var state byte
		var bits []byte
		var n int
		if state, bits, n, err = c.have(s.CID); err == nil {
			f.heard(p, state, bits, n)
		}
	}
	answered <- struct{}{}
	if err != nil {
		if c != nil {
			c.close()
		}
		return
	}
	var wg sync.WaitGroup
	wg.Add(1 + swarmWorkers)
	go func() { defer wg.Done(); defer c.close(); m.pollHolder(ctx, f, p, c, s.CID) }()
	for range swarmWorkers {
		go func() { defer wg.Done(); m.takeFrom(ctx, f, p, fail) }()
	}
	wg.Wait()
}

// structure fetches the artifact's non-leaf nodes (a 100 MiB artifact has
// four) from its holders and returns its leaves in depth-first order.
// Import makes raw leaves, so every dag-pb node is an inner node.
func (m *Manager) structure(ctx context.Context, f *swarmFetch, root cid.Cid) ([]cid.Cid, error) {
	var leaves []cid.Cid
	visits := 0
	var walk func(c cid.Cid, depth int) error
	walk = func(c cid.Cid, depth int) error {
		if visits++; visits > maxLeaves { // a DAG that links one node many times
			return fmt.Errorf("more than %d nodes", maxLeaves)
		}
		if c.Prefix().Codec == cid.Raw {
			if len(leaves) >= maxLeaves {
				return fmt.Errorf("more than %d leaves", maxLeaves)
			}
			leaves = append(leaves, c)
			return nil
		}
		if depth > 16 {
			return fmt.Errorf("DAG deeper than 16")
		}
		blk, err := m.innerNode(ctx, f, c)
		if err != nil {
			return err
		}
		nd, err := merkledag.DecodeProtobufBlock(blk)
		if err != nil {
			return fmt.Errorf("decode %s: %w", c, err)
		}
		for _, l := range nd.Links() {
			if err := walk(l.Cid, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return leaves, walk(root, 0)
}

// innerNode returns an inner node of the DAG, from the local blockstore or
// from a holder, which it is then stored into. Holders are asked one after
// another, the next once the others have not answered for endgameAfter
// (still waiting for them too), so a hung one costs a second, not the
// request timeout; the first block that hashes to c wins.
func (m *Manager) innerNode(ctx context.Context, f *swarmFetch, c cid.Cid) (blocks.Block, error) {
	local := m.blocks.Local()
	if blk, err := local.Get(ctx, c); err == nil {
		return blk, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan blocks.Block, 1)
	ask := func(p peer.ID) {
		var blk blocks.Block
		defer func() {
			select {
			case got <- blk:
			case <-ctx.Done():
			}
		}()
		conn, err := m.dial(ctx, p)
		if err != nil {
			return
		}
		defer conn.close()
		// Only a bad block counts against p here: the others' asks end in
		// an error once one of them answered.
		if blk, err = conn.get(c); errors.Is(err, errBadBlock) {
			m.failed(f, p, c, err)
		}
	}
	// Holders are looked up afresh each time: one heard after the first
	// (which may be the one that hangs) is asked too.
	asked := map[peer.ID]bool{}
	untried := func() (peer.ID, bool) {
		for _, p := range f.structureHolders() {
			if !asked[p] {
				return p, true
			}
		}
		return "", false
	}
	pending := 0
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if p, ok := untried(); ok {
				asked[p] = true
				pending++
				go ask(p)
			}
			t.Reset(endgameAfter)
		case blk := <-got:
			pending--
			if blk != nil {
				if err := local.Put(ctx, blk); err != nil {
					return nil, err
				}
				m.sw.received.Add(uint64(len(blk.RawData())))
				return blk, nil
			}
			t.Reset(0) // that one failed: ask the next at once
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if _, ok := untried(); pending == 0 && !ok {
			break
		}
	}
	return nil, fmt.Errorf("no peer served inner block %s", c)
}

// pollHolder asks p what it holds every havePoll until the fetch ends.
func (m *Manager) pollHolder(ctx context.Context, f *swarmFetch, p peer.ID, c *swarmConn, root cid.Cid) {
	t := time.NewTimer(havePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		state, bits, n, err := c.have(root)
		if err != nil {
			f.bad(p)
			return
		}
		if !f.heard(p, state, bits, n) || state == holdsAll {
			return // failed, or a seed, which stays one
		}
		if state == holdsNone {
			t.Reset(idlePoll)
		} else {
			t.Reset(havePoll)
		}
	}
}

// takeFrom fetches, over a stream of its own, the leaves the schedule
// gives it from p until the fetch ends or p fails.
func (m *Manager) takeFrom(ctx context.Context, f *swarmFetch, p peer.ID, fail func(error)) {
	var conn *swarmConn
	defer func() {
		if conn != nil {
			conn.close()
		}
	}()
	local := m.blocks.Local()
	for {
		i, ok := f.next(ctx, p)
		if !ok {
			return
		}
		c := f.leaves[i]
		var blk blocks.Block
		var err error
		if conn == nil {
			conn, err = m.dial(ctx, p)
		}
		if err == nil {
			blk, err = conn.get(c)
		}
		switch {
		case err != nil:
			f.release(i)
			m.failed(f, p, c, err)
			return
		case blk == nil:
			f.lacks(p, i)
			continue
		}
		if err := local.Put(ctx, blk); err != nil {
			f.release(i)
			fail(err)
			return
		}
		if n := len(blk.RawData()); f.got(i) {
			m.sw.received.Add(uint64(n))
			m.progress(f.ref, int64(n))
		}
	}
}

// failed records that asking p for block c failed with err: p is not asked
// again in this fetch, and a block that did not hash to c is counted.
func (m *Manager) failed(f *swarmFetch, p peer.ID, c cid.Cid, err error) {
	if errors.Is(err, errBadBlock) {
		m.sw.badBlocks.Add(1)
		m.log.Warn("peer served an artifact block that does not hash to its CID; not asking it again", "peer", p, "ref", f.ref, "block", c)
	}
	f.bad(p)
}

// swarmFetch is the schedule of one fetch: the leaves, which are here and
// which are asked for, and what every peer holds. Its methods lock mu;
// none calls out while holding it.
type swarmFetch struct {
	self peer.ID
	ref  string // for logs

	mu       sync.Mutex
	leaves   []cid.Cid
	have     []bool
	inflight []time.Time   // when each leaf was last asked for; zero: not asked
	askedOf  []peer.ID     // of whom
	took     time.Duration // moving average of a block's wait
	missing  int
	known    bool // leaves is set
	peers    map[peer.ID]*holding
	changed  chan struct{} // closed on every change, then replaced
	lastGot  time.Time
}

// holding is what a peer said it holds.
type holding struct {
	state byte
	bits  []byte
	n     int
	bad   bool // served a bad block, or failed: not asked again
}

func (h *holding) has(i int) bool {
	switch {
	case h.bad:
		return false
	case h.state == holdsAll:
		return true
	case h.state == holdsPartial && i < h.n:
		return h.bits[i/8]&(1<<(i%8)) != 0
	}
	return false
}

// knowsLeaves reports whether a fellow fetcher has the DAG's inner nodes:
// one that only asked (n 0) can serve nothing yet, not even those.
func (h *holding) knowsLeaves() bool { return h.state == holdsPartial && h.n > 0 }

func newSwarmFetch(self peer.ID, ref string) *swarmFetch {
	return &swarmFetch{self: self, ref: ref, peers: map[peer.ID]*holding{}, changed: make(chan struct{}), lastGot: time.Now()}
}

// signal wakes every waiter; mu held.
func (f *swarmFetch) signal() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// heard records what p answered to HAVE; false when p is not asked any
// more (bad).
func (f *swarmFetch) heard(p peer.ID, state byte, bits []byte, n int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.peers[p]
	if h == nil {
		h = &holding{}
		f.peers[p] = h
	}
	if h.bad {
		return false
	}
	if h.state == state && h.n == n && bytes.Equal(h.bits, bits) {
		return true // nothing new: wake no one
	}
	h.state, h.bits, h.n = state, bits, n
	f.signal()
	return true
}

// askedBy records that p asked what this peer holds: only a fetcher asks,
// so p takes a stripe from now on, even before this peer's next HAVE to
// it says so (fetchers that start together learn of each other at once).
func (f *swarmFetch) askedBy(p peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch h := f.peers[p]; {
	case h == nil:
		f.peers[p] = &holding{state: holdsPartial}
	case h.state == holdsNone:
		h.state = holdsPartial
	default:
		return
	}
	f.signal()
}

func (f *swarmFetch) bad(p peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h := f.peers[p]; h != nil {
		h.bad = true
	}
	f.signal()
}

func (f *swarmFetch) anyHolder() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.peers {
		if !h.bad && (h.state == holdsAll || h.knowsLeaves()) {
			return true
		}
	}
	return false
}

// waitHolder waits until some peer answered that it holds the artifact,
// or knows its leaves (true), or all n asked answered and none does
// (false).
func (f *swarmFetch) waitHolder(ctx context.Context, answered <-chan struct{}, n int) bool {
	for got := 0; got < n; got++ {
		if f.anyHolder() {
			return true
		}
		select {
		case <-answered:
		case <-ctx.Done():
			return false
		}
	}
	return f.anyHolder()
}

// structureHolders are the peers that can serve the DAG's inner nodes:
// seeds first, then fetchers that know the leaves (they fetched them).
func (f *swarmFetch) structureHolders() []peer.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	var seeds, fellows []peer.ID
	for p, h := range f.peers {
		switch {
		case h.bad:
		case h.state == holdsAll:
			seeds = append(seeds, p)
		case h.knowsLeaves():
			fellows = append(fellows, p)
		}
	}
	rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
	rand.Shuffle(len(fellows), func(i, j int) { fellows[i], fellows[j] = fellows[j], fellows[i] })
	return append(seeds, fellows...)
}

// setLeaves sets the leaves; local reports those already here.
func (f *swarmFetch) setLeaves(leaves []cid.Cid, local func(cid.Cid) bool) {
	have := make([]bool, len(leaves))
	missing := 0
	for i, c := range leaves {
		if have[i] = local(c); !have[i] {
			missing++
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leaves, f.have, f.inflight, f.missing, f.known = leaves, have, make([]time.Time, len(leaves)), missing, true
	f.askedOf = make([]peer.ID, len(leaves))
	f.lastGot = time.Now() // the stall clock starts with the leaves
	f.signal()
}

// bitmap is what this peer holds, as HAVE answers it.
func (f *swarmFetch) bitmap() ([]byte, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bits := make([]byte, (len(f.have)+7)/8)
	for i, ok := range f.have {
		if ok {
			bits[i/8] |= 1 << (i % 8)
		}
	}
	return bits, len(f.have)
}

// got records leaf i here; false when it was already (an endgame
// duplicate).
func (f *swarmFetch) got(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if !f.inflight[i].IsZero() {
		f.took += (now.Sub(f.inflight[i]) - f.took) / 8
	}
	f.inflight[i] = time.Time{}
	if f.have[i] {
		return false
	}
	f.have[i] = true
	f.missing--
	f.lastGot = now
	f.signal()
	return true
}

// patience is how long to wait for something before taking it as stuck:
// least, or blockWaits times the time a block has been taking; mu held.
func (f *swarmFetch) patience(least time.Duration) time.Duration {
	return max(least, blockWaits*f.took)
}

func (f *swarmFetch) release(i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inflight[i] = time.Time{}
	f.signal()
}

// lacks records that p answered it does not have leaf i after all.
func (f *swarmFetch) lacks(p peer.ID, i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inflight[i] = time.Time{}
	if h := f.peers[p]; h != nil {
		if h.state == holdsAll {
			h.state = holdsNone // a seed that lost a block is no seed
		} else if i < h.n {
			h.bits[i/8] &^= 1 << (i % 8)
		}
	}
	f.signal()
}

// wait returns nil once every leaf is here, errStalled when none arrived
// for stall, or ctx's error.
func (f *swarmFetch) wait(ctx context.Context, stall time.Duration) error {
	t := time.NewTicker(stall / 10)
	defer t.Stop()
	for {
		f.mu.Lock()
		done, quiet, ch := f.known && f.missing == 0, time.Since(f.lastGot), f.changed
		f.mu.Unlock()
		switch {
		case done:
			return nil
		case quiet > stall:
			return fmt.Errorf("%w for %v", errStalled, stall)
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// next waits for a leaf to ask p for and marks it asked; false when the
// fetch is over.
func (f *swarmFetch) next(ctx context.Context, p peer.ID) (int, bool) {
	for {
		f.mu.Lock()
		if f.known && f.missing == 0 {
			f.mu.Unlock()
			return 0, false
		}
		if i := f.choose(p); i >= 0 {
			f.inflight[i], f.askedOf[i] = time.Now(), p
			f.mu.Unlock()
			return i, true
		}
		ch, wait := f.changed, f.patience(helpAfter)
		f.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C: // choose depends on the time since the last block
		case <-ctx.Done():
			t.Stop()
			return 0, false
		}
		t.Stop()
	}
}

// choose picks the leaf to ask p for next, or -1; mu held. From a fellow
// fetcher: the rarest leaf it has. From a seed: only leaves of this peer's
// own stripe that no fellow has — until nothing has arrived for a while
// (patience(helpAfter)): then any, what no fellow has first (see the top
// of this file). Among equals the choice is random: while two fetchers' views of
// who fetches disagree, they then seldom take the same leaf from a seed
// before their next HAVE shows it.
func (f *swarmFetch) choose(p peer.ID) int {
	h := f.peers[p]
	if h == nil || h.bad || h.state == holdsNone || !f.known {
		return -1
	}
	fetchers, rank := f.stripes()
	// Quiet for a while: fellows are not passing leaves on (slow, gone, or
	// claiming what they do not serve), so seeds serve any leaf.
	quiet := time.Since(f.lastGot) >= f.patience(helpAfter)
	best, bestScore := -1, 0
	ties := 0
	for i := range f.leaves {
		if f.have[i] || !f.inflight[i].IsZero() || !h.has(i) {
			continue
		}
		fellows, seeds := f.holders(i)
		var score int
		if h.state == holdsAll {
			switch {
			case quiet:
				score = -fellows // what fellows hold last
			case fellows > 0:
				continue // a fellow has it: take it from the fellow
			case i%fetchers != rank:
				continue // its owner takes it; fellows will pass it on
			}
		} else {
			score = -(fellows + seeds) // rarest first
		}
		switch {
		case best < 0 || score > bestScore:
			best, bestScore, ties = i, score, 1
		case score == bestScore:
			ties++
			if rand.IntN(ties) == 0 { // a random one among equals
				best = i
			}
		}
	}
	if best < 0 {
		best = f.endgame(p, h)
	}
	return best
}

// endgame picks, when nothing is left to ask for, the leaf h holds that
// has been asked of another peer longest, more than patience(endgameAfter)
// ago: a peer that hangs or crawls then holds up the end of a fetch for
// that long, not for its request timeout. Whichever answer comes first is
// kept; mu held.
func (f *swarmFetch) endgame(p peer.ID, h *holding) int {
	best := -1
	wait := f.patience(endgameAfter)
	for i, asked := range f.inflight {
		if f.have[i] || asked.IsZero() || time.Since(asked) < wait || f.askedOf[i] == p || !h.has(i) {
			continue
		}
		if best < 0 || asked.Before(f.inflight[best]) {
			best = i
		}
	}
	return best
}

// holders counts the fellow fetchers and seeds holding leaf i; mu held.
func (f *swarmFetch) holders(i int) (fellows, seeds int) {
	for _, h := range f.peers {
		if !h.has(i) {
			continue
		}
		if h.state == holdsAll {
			seeds++
		} else {
			fellows++
		}
	}
	return fellows, seeds
}

// stripes returns how many peers fetch this artifact as far as this peer
// knows (itself and every partial holder) and its own place among them in
// id order; mu held.
func (f *swarmFetch) stripes() (int, int) {
	ids := []string{string(f.self)}
	for p, h := range f.peers {
		if h.state == holdsPartial && !h.bad {
			ids = append(ids, string(p))
		}
	}
	sort.Strings(ids)
	return len(ids), sort.SearchStrings(ids, string(f.self))
}
