package node

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Peers that last: a node remembers the DHT servers it was connected to, in
// DATA/peers.json, and while it has fewer than Config.MinPeers connections
// it redials them and its bootstrap peers, backing off. So a daemon
// restarted without --bootstrap rejoins, and one whose bootstrap peer was
// down at start joins when it comes back.

const (
	peersFile = "peers.json"
	// maxRememberedPeers bounds the file and a redial round: a few dozen
	// DHT servers are enough to find the rest of any swarm, and the most
	// recently seen are the likeliest to still be there.
	maxRememberedPeers = 64
	// maxRememberedAddrs bounds one peer's addresses (a host on many
	// interfaces lists many; a few are enough to reach it).
	maxRememberedAddrs = 8
	// peersSaveEvery bounds what a crash loses; the file is also written
	// on Close.
	peersSaveEvery = time.Minute
	// redialParallel bounds the dials of one round, so a node with many
	// dead remembered peers waits on a few timeouts, not all in a row.
	redialParallel = 8
	// redialTimeout bounds one dial, as connectBootstrap's do.
	redialTimeout = 10 * time.Second
)

// dhtProtocol is what a peer speaks if it is a gpunet DHT server: kad-dht
// registers it only in server mode, so clients are not remembered.
var dhtProtocol = libp2pProto(protocol.DHTPrefix + "/kad/1.0.0")

// rememberedPeer is one entry of peers.json.
type rememberedPeer struct {
	ID    peer.ID   `json:"id"`
	Addrs []string  `json:"addrs"`
	Seen  time.Time `json:"seen"` // last time this node was connected to it
}

// peersFileV1 is peers.json. It is a cache: a file that does not decode is
// ignored with a warning, never an error.
type peersFileV1 struct {
	Version int              `json:"version"`
	Peers   []rememberedPeer `json:"peers"`
}

// peerMemory is the set of peers a node remembers. It is not safe for
// concurrent use: only the redial loop uses it, and Close once the loop has
// stopped.
type peerMemory struct {
	path  string
	log   *slog.Logger
	peers map[peer.ID]rememberedPeer
}

// loadPeerMemory reads dir's peers.json; a missing or unreadable file gives
// an empty memory.
func loadPeerMemory(dir string, log *slog.Logger) *peerMemory {
	m := &peerMemory{path: filepath.Join(dir, peersFile), log: log, peers: map[peer.ID]rememberedPeer{}}
	b, err := os.ReadFile(m.path)
	if errors.Is(err, fs.ErrNotExist) {
		return m
	}
	var f peersFileV1
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err == nil && f.Version != 1 {
		err = fmt.Errorf("version %d, want 1", f.Version)
	}
	if err != nil {
		log.Warn("ignoring remembered peers", "file", m.path, "err", err)
		return m
	}
	for _, p := range f.Peers {
		if p.ID.Validate() == nil && len(p.Addrs) > 0 {
			m.peers[p.ID] = p
		}
	}
	m.trim()
	return m
}

// observe remembers the connected peers that are gpunet DHT servers, with
// the addresses they listen on (from identify; an inbound connection's
// remote address is an ephemeral port).
func (m *peerMemory) observe(h host.Host, now time.Time) {
	for _, id := range h.Network().Peers() {
		if ok, err := h.Peerstore().SupportsProtocols(id, dhtProtocol); err != nil || len(ok) == 0 {
			continue
		}
		var addrs []string
		for _, a := range h.Peerstore().Addrs(id) {
			if len(addrs) == maxRememberedAddrs {
				break
			}
			addrs = append(addrs, a.String())
		}
		if len(addrs) > 0 {
			m.peers[id] = rememberedPeer{ID: id, Addrs: addrs, Seen: now}
		}
	}
	m.trim()
}

// trim keeps the maxRememberedPeers most recently seen.
func (m *peerMemory) trim() {
	if len(m.peers) <= maxRememberedPeers {
		return
	}
	for _, p := range m.sorted()[maxRememberedPeers:] {
		delete(m.peers, p.ID)
	}
}

// sorted lists the peers, most recently seen first.
func (m *peerMemory) sorted() []rememberedPeer {
	ps := make([]rememberedPeer, 0, len(m.peers))
	for _, p := range m.peers {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b rememberedPeer) int {
		return cmp.Or(b.Seen.Compare(a.Seen), cmp.Compare(a.ID, b.ID))
	})
	return ps
}

// addrInfos are the remembered peers as dial targets, most recent first.
func (m *peerMemory) addrInfos() []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, p := range m.sorted() {
		ai := peer.AddrInfo{ID: p.ID}
		for _, s := range p.Addrs {
			if a, err := ma.NewMultiaddr(s); err == nil {
				ai.Addrs = append(ai.Addrs, a)
			}
		}
		if len(ai.Addrs) > 0 {
			out = append(out, ai)
		}
	}
	return out
}

// save writes peers.json atomically (temp file, sync, rename), so a crash
// leaves the old file or the new one, never half of one.
func (m *peerMemory) save() error {
	b, err := json.MarshalIndent(peersFileV1{Version: 1, Peers: m.sorted()}, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(m.path), peersFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("saving remembered peers: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	err = errors.Join(err, f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), m.path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("saving remembered peers: %w", err)
	}
	return nil
}

// startPeers loads the remembered peers (a node with a data directory only:
// an ephemeral node remembers nothing) and starts the redial loop. Called at
// the end of start, once bootstrap peers were dialled.
func (n *Node) startPeers() {
	if n.cfg.DataDir != "" {
		n.peers = loadPeerMemory(n.cfg.DataDir, n.log.With("sub", "peers"))
	}
	boot, _ := ParseAddrInfos(n.cfg.Bootstrap) // connectBootstrap parsed them already
	n.wg.Add(1)
	go n.redialLoop(boot)
}

// closePeers saves the remembered peers, with those connected now. Close
// calls it after the loop has stopped and before the host closes.
func (n *Node) closePeers() error {
	if n.peers == nil || n.host == nil {
		return nil
	}
	n.peers.observe(n.host, time.Now())
	return n.peers.save()
}

// redialLoop keeps the node joined and its memory saved. While the node has
// fewer than MinPeers connections it dials the bootstrap and remembered
// peers, backing off from RedialMin to RedialMax after each round that
// connected to no one; once it has enough, it looks again every RedialMax or
// as soon as a connection closes.
func (n *Node) redialLoop(boot []peer.AddrInfo) {
	defer n.wg.Done()
	log := n.log.With("sub", "peers")
	kick := make(chan struct{}, 1)
	nb := &network.NotifyBundle{DisconnectedF: func(network.Network, network.Conn) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}}
	n.host.Network().Notify(nb)
	defer n.host.Network().StopNotify(nb)
	save := time.NewTicker(peersSaveEvery)
	defer save.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	backoff, healthy := n.cfg.RedialMin, false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-save.C:
			if n.peers != nil {
				n.peers.observe(n.host, time.Now())
				if err := n.peers.save(); err != nil {
					log.Warn("remembering peers", "err", err)
				}
			}
		case <-kick:
			// Only a healthy node wakes early: one backing off keeps to
			// its backoff, so a flapping peer cannot make it dial in a
			// loop.
			if healthy && n.needPeers() {
				timer.Reset(0)
			}
		case <-timer.C:
			if !n.needPeers() {
				backoff, healthy = n.cfg.RedialMin, true
				timer.Reset(n.cfg.RedialMax)
				continue
			}
			healthy = false
			if got := n.redial(boot, log); got > 0 {
				log.Info("reconnected", "new_peers", got, "peers", len(n.host.Network().Peers()))
				// A fresh connection may be the node's first DHT peer
				// in a while: refill the routing table from it now
				// rather than at the next periodic refresh.
				n.dht.RefreshRoutingTable()
				backoff = n.cfg.RedialMin
			} else {
				backoff = min(2*backoff, n.cfg.RedialMax)
			}
			timer.Reset(backoffJitter(backoff))
		}
	}
}

// needPeers reports whether the node has fewer connections than it wants.
func (n *Node) needPeers() bool {
	return len(n.host.Network().Peers()) < n.cfg.MinPeers
}

// backoffJitter is a duration in [d/2, d): spread so that nodes restarted together
// do not redial in step, never over d so the cap holds.
func backoffJitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// redial dials, in parallel, the bootstrap and remembered peers this node is
// not connected to, and returns how many it connected to. Only called from
// redialLoop.
func (n *Node) redial(boot []peer.AddrInfo, log *slog.Logger) int {
	cands := slices.Clone(boot)
	if n.peers != nil {
		cands = append(cands, n.peers.addrInfos()...)
	}
	// The loop paces these dials itself; the swarm's own backoff (5 s
	// growing to 5 min per failed address) would refuse a peer that came
	// back minutes after its first failure.
	bo, _ := n.host.Network().(interface{ Backoff() *swarm.DialBackoff })
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, redialParallel)
		got  atomic.Int32
		seen = map[peer.ID]bool{n.host.ID(): true}
	)
	for _, ai := range cands {
		if seen[ai.ID] || n.host.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		seen[ai.ID] = true
		select {
		case sem <- struct{}{}:
		case <-n.ctx.Done():
		}
		if n.ctx.Err() != nil {
			break
		}
		if bo != nil {
			bo.Backoff().Clear(ai.ID)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(n.ctx, redialTimeout)
			defer cancel()
			if err := n.host.Connect(ctx, ai); err != nil {
				log.Debug("redial failed", "peer", ai.ID, "err", err)
				return
			}
			got.Add(1)
		}()
	}
	wg.Wait()
	return int(got.Load())
}

// JoinAddrs picks from addrs (a node's Addrs, each ending in /p2p/ID) those
// worth giving others to --bootstrap from, best first: addresses another
// machine can dial (no loopback or IPv6 link-local, unless that is all there
// is), TCP before QUIC, public before private, IPv4 before IPv6. Strings that
// do not parse are dropped.
func JoinAddrs(addrs []string) []string {
	type ranked struct {
		s    string
		rank [3]int
	}
	var good, local []ranked
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		r := ranked{s: s}
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			r.rank[0] = 1
		}
		if !manet.IsPublicAddr(a) {
			r.rank[1] = 1
		}
		if _, err := a.ValueForProtocol(ma.P_IP4); err != nil {
			r.rank[2] = 1
		}
		if manet.IsIPLoopback(a) || manet.IsIP6LinkLocal(a) {
			local = append(local, r)
		} else {
			good = append(good, r)
		}
	}
	if len(good) == 0 {
		good = local
	}
	slices.SortStableFunc(good, func(a, b ranked) int {
		return slices.Compare(a.rank[:], b.rank[:])
	})
	out := make([]string, len(good))
	for i, r := range good {
		out[i] = r.s
	}
	return out
}
