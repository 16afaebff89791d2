package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

func libp2pProto(s string) lp2pproto.ID { return lp2pproto.ID(s) }

// ModelKey is the DHT key hosts provide for a model they serve: CIDv1, raw,
// sha2-256 over the UTF-8 bytes of the model name.
func ModelKey(model string) cid.Cid { return protocol.RawCID([]byte(model)) }

// advertiseLoop keeps this host findable: it provides a key per model and
// puts its signed capacity record, at start and every AdvertiseInterval. Until
// the first success it retries quickly, because a host started before any
// peer has no one to store its records.
func (n *Node) advertiseLoop() {
	defer n.wg.Done()
	n.repeat(n.cfg.AdvertiseInterval, 30*time.Second, func() error {
		err := n.advertise(n.ctx)
		if err != nil {
			n.log.Debug("advertising capacity", "err", err)
		}
		return err
	})
}

// kernelWatcher is a kernel whose models change while it runs (a backend
// adapter: its backend went away, came back, or got a new checkpoint).
// Changed returns a channel closed at the next change.
type kernelWatcher interface {
	Changed() <-chan struct{}
}

// watchKernel re-advertises as soon as the kernel's models change, rather
// than at the next AdvertiseInterval: the capacity record lists only what
// the backend can run now (FindHosts skips a provider whose record no
// longer lists the model), and a beacon goes out at once.
func (n *Node) watchKernel(w kernelWatcher) {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-w.Changed():
		}
		n.log.Info("the kernel's models changed; advertising again", "models", n.cfg.Kernel.Models())
		poke(n.serve.changed)
		if err := n.advertise(n.ctx); err != nil {
			n.log.Debug("advertising after a change of models", "err", err)
		}
	}
}

// repeat runs do now and then every interval until the node closes. After a
// failure it tries again sooner: 250 ms, doubling up to maxRetry.
func (n *Node) repeat(interval, maxRetry time.Duration, do func() error) {
	const firstRetry = 250 * time.Millisecond
	retry := firstRetry
	for {
		wait := interval
		if err := do(); err != nil {
			wait, retry = retry, min(retry*2, maxRetry)
		} else {
			retry = firstRetry
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// advertise provides every model key and puts the capacity record once.
func (n *Node) advertise(ctx context.Context) error {
	// Provide and PutValue store locally before they look for peers, so
	// even a host with no DHT peer yet answers lookups that reach it; the
	// error then only means "not replicated yet", and the loop retries.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	digests := n.modelDigests()
	for _, m := range n.cfg.Kernel.Models() {
		if err := n.dht.Provide(ctx, ModelKey(m), true); err != nil {
			return fmt.Errorf("providing model %s: %w", m, err)
		}
		if d := digests[m]; d != "" {
			if err := n.dht.Provide(ctx, ModelKey(m+"@"+d), true); err != nil {
				return fmt.Errorf("providing model %s by digest: %w", m, err)
			}
		}
	}
	rec, err := n.capacityRecord()
	if err != nil {
		return err
	}
	if err := n.dht.PutValue(ctx, protocol.CapacityKey(n.host.ID()), rec); err != nil {
		return fmt.Errorf("putting capacity record: %w", err)
	}
	n.log.Debug("advertised capacity", "models", n.cfg.Kernel.Models())
	return nil
}

// capacityRecord signs what this host can serve now.
func (n *Node) capacityRecord() ([]byte, error) {
	c := protocol.Capacity{
		Models:         n.cfg.Kernel.Models(),
		Kernels:        []string{n.cfg.Kernel.Name()},
		MaxConcurrency: uint32(n.cfg.Slots),
		Version:        n.cfg.Version,
		Issued:         uint64(time.Now().UnixMilli()),
	}
	if d := n.modelDigests(); len(d) > 0 {
		c.Digests = d
	}
	if g, ok := n.gpuInfo(); ok {
		c.GPUs = []protocol.GPUInfo{g}
	}
	return c.Sign(n.key)
}

// FindHosts returns up to max hosts that provide model, each with its
// verified capacity record, in the order the DHT found them. It is bounded
// by FindTimeout.
func (n *Node) FindHosts(ctx context.Context, model string, max int) ([]HostInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.FindTimeout)
	defer cancel()
	// Capacity records are fetched side by side as providers arrive (at
	// most max lookups), and the hosts kept in the order they were found.
	type found struct {
		hi     HostInfo
		stale  bool // its capacity record no longer lists the model
		lookup sync.WaitGroup
	}
	var all []*found
	for ai := range n.dht.FindProvidersAsync(ctx, ModelKey(model), max) {
		if ai.ID == n.host.ID() {
			continue
		}
		if len(ai.Addrs) > 0 {
			n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, 10*time.Minute)
		}
		f := &found{hi: HostInfo{AddrInfo: ai}}
		all = append(all, f)
		f.lookup.Go(func() {
			c, err := n.lookupCapacity(ctx, ai.ID)
			switch {
			case err != nil:
				n.log.Debug("no capacity record", "peer", ai.ID, "err", err)
			case !capacityServes(c, model):
				f.stale = true // a provider record older than the host's current models
			default:
				f.hi.Capacity = c
			}
		})
	}
	var out []HostInfo
	for _, f := range all {
		f.lookup.Wait()
		if !f.stale {
			out = append(out, f.hi)
		}
	}
	if len(out) == 0 {
		if err := ctx.Err(); err != nil && ctx.Err() != context.DeadlineExceeded {
			return nil, err
		}
		return nil, fmt.Errorf("no host serves model %q (searched the DHT for %s; is a `gpunet host` running and connected?)", model, n.cfg.FindTimeout)
	}
	return out, nil
}

// HostInfo is a host found on the DHT.
type HostInfo struct {
	peer.AddrInfo
	// Capacity is the host's verified record; nil if none could be fetched.
	Capacity *protocol.Capacity
}

func (n *Node) lookupCapacity(ctx context.Context, id peer.ID) (*protocol.Capacity, error) {
	b, err := n.dht.GetValue(ctx, protocol.CapacityKey(id), dht.Quorum(1))
	if err != nil {
		return nil, err
	}
	// The DHT already ran the validator; decode again for the fields.
	return protocol.DecodeCapacity(b, time.Now())
}
