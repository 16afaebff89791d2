// Package swarm starts a small gpunet network on loopback inside one
// process: hosts with simulated GPUs and client nodes, all real libp2p hosts
// with the real DHT. The demo, the bench command and the tests use it.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
)

// Loopback is the listen address of every swarm node: loopback only, an
// ephemeral port, TCP (QUIC on loopback is half TCP's rate and adds nothing
// to a one-machine swarm).
var Loopback = []string{"/ip4/127.0.0.1/tcp/0"}

// Options size a swarm.
type Options struct {
	// Profiles names one simulated GPU profile per host.
	Profiles []string
	// Kernel makes the kernel of host i; nil means kernel.Sketch.
	Kernel func(i int) kernel.Kernel
	// Slots per host (default 1).
	Slots int
	// StartTempC, if set, gives host i's GPU its starting temperature
	// (0 = idle steady state).
	StartTempC []float64
	// TimeScale speeds up the simulated GPUs' thermal clock.
	TimeScale float64
	// Dir, if set, holds each node's data directory (persistent identities
	// and stores); empty means ephemeral nodes.
	Dir string
	// BootstrapDaemon starts a plain daemon (no kernel) first and makes it
	// everyone's bootstrap peer, so no client knows a host's address: hosts
	// can only be found through the DHT.
	BootstrapDaemon bool
	// Tune adjusts each node's config before it starts.
	Tune   func(*node.Config)
	Logger *slog.Logger
}

// Swarm is a running loopback network.
type Swarm struct {
	opts    Options
	Hosts   []*node.Node
	Devices []*kernel.SimGPU
	Clients []*node.Node
	Daemon  *node.Node // the bootstrap daemon, if Options.BootstrapDaemon
	boot    []string
}

// Start starts the hosts; the first is everyone's bootstrap peer. It returns
// once every host's capacity is findable on the DHT (or ctx ends).
func Start(ctx context.Context, o Options) (s *Swarm, err error) {
	if len(o.Profiles) == 0 {
		return nil, errors.New("swarm needs at least one host profile")
	}
	if o.Slots == 0 {
		o.Slots = 1
	}
	if o.TimeScale == 0 {
		o.TimeScale = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s = &Swarm{opts: o}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if o.BootstrapDaemon {
		cfg := s.config("daemon")
		cfg.DHTServer = true
		if s.Daemon, err = node.New(ctx, cfg); err != nil {
			return nil, fmt.Errorf("starting bootstrap daemon: %w", err)
		}
		s.boot = s.Daemon.Addrs()
	}
	for i, prof := range o.Profiles {
		p, err := kernel.ProfileByName(prof)
		if err != nil {
			return nil, err
		}
		dopts := []kernel.DeviceOption{kernel.WithTimeScale(o.TimeScale), kernel.WithSlots(o.Slots)}
		if i < len(o.StartTempC) && o.StartTempC[i] > 0 {
			dopts = append(dopts, kernel.WithStartTempC(o.StartTempC[i]))
		}
		dev, err := kernel.NewSimGPU(p, dopts...)
		if err != nil {
			return nil, err
		}
		cfg := s.config(fmt.Sprintf("host-%d", i))
		cfg.DHTServer = true
		cfg.Device = dev
		cfg.Slots = o.Slots
		cfg.Kernel = kernel.Sketch{}
		if o.Kernel != nil {
			cfg.Kernel = o.Kernel(i)
		}
		if o.Tune != nil {
			o.Tune(&cfg)
		}
		n, err := node.New(ctx, cfg)
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("starting host %d: %w", i, err)
		}
		s.Hosts = append(s.Hosts, n)
		s.Devices = append(s.Devices, dev)
		if len(s.boot) == 0 {
			s.boot = n.Addrs()
		}
	}
	return s, s.waitAdvertised(ctx)
}

// StartWithClients starts a swarm as Start does, adds clients client
// nodes, and waits (at most 15 s) until every client's gossip view holds
// every host it hears, so that the first placement has load and heat to go
// on. The swarm is closed if any step fails.
func StartWithClients(ctx context.Context, o Options, clients int) (*Swarm, error) {
	s, err := Start(ctx, o)
	if err != nil {
		return nil, err
	}
	for range clients {
		if _, err := s.AddClient(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := s.WaitViews(wctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Swarm) config(name string) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = ""
	if s.opts.Dir != "" {
		cfg.DataDir = filepath.Join(s.opts.Dir, name)
	}
	cfg.ListenAddrs = Loopback
	cfg.Bootstrap = s.boot
	cfg.MDNS = false
	cfg.Logger = s.opts.Logger.With("node", name)
	// A swarm on loopback answers in milliseconds; retry advertisement
	// often so a restarted host is findable quickly.
	cfg.AdvertiseInterval = 30 * time.Second
	return cfg
}

// Bootstrap returns the multiaddrs other nodes join through.
func (s *Swarm) Bootstrap() []string { return s.boot }

// AddClient starts a client node (no kernel, DHT client mode) joined to the
// swarm.
func (s *Swarm) AddClient(ctx context.Context) (*node.Node, error) {
	return s.AddClientTuned(ctx, nil)
}

// AddClientTuned adds a client as AddClient does, with tune applied after
// Options.Tune.
func (s *Swarm) AddClientTuned(ctx context.Context, tune func(*node.Config)) (*node.Node, error) {
	cfg := s.config(fmt.Sprintf("client-%d", len(s.Clients)))
	cfg.DHTServer = false
	if s.opts.Tune != nil {
		s.opts.Tune(&cfg)
	}
	if tune != nil {
		tune(&cfg)
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.Clients = append(s.Clients, n)
	return n, nil
}

// waitAdvertised waits until a fresh lookup finds every host of the
// default model, bounded by 20 s.
func (s *Swarm) waitAdvertised(ctx context.Context) error {
	probe := s.Daemon
	if probe == nil {
		if len(s.Hosts) < 2 {
			return nil // a lone host has no peer to store its records
		}
		probe = s.Hosts[0]
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	want := map[string]bool{}
	for _, h := range s.Hosts {
		want[h.ID().String()] = true
	}
	delete(want, probe.ID().String()) // FindHosts skips the node itself
	// A model every host serves (host 0 may serve more: the demo's
	// upscaler), so that each host is found under it.
	model := s.Hosts[0].Models()[0]
	for _, m := range s.Hosts[0].Models() {
		every := true
		for _, h := range s.Hosts[1:] {
			every = every && slices.Contains(h.Models(), m)
		}
		if every {
			model = m
			break
		}
	}
	for {
		found := 0
		if hosts, err := probe.FindHosts(ctx, model, len(s.Hosts)+1); err == nil {
			for _, h := range hosts {
				if want[h.ID.String()] {
					found++
				}
			}
		}
		if found == len(want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hosts not advertised on the DHT in time (%d of %d found)", found, len(want))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every node and device.
func (s *Swarm) Close() error {
	var errs []error
	for _, n := range s.Clients {
		errs = append(errs, n.Close())
	}
	for _, n := range s.Hosts {
		errs = append(errs, n.Close())
	}
	if s.Daemon != nil {
		errs = append(errs, s.Daemon.Close())
	}
	for _, d := range s.Devices {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}

// WaitViews waits until every client's gossip view holds every host it
// hears (all of them unless beacons are sharded), so placement has load and
// heat to go on, bounded by ctx.
func (s *Swarm) WaitViews(ctx context.Context) error {
	for {
		ready := true
		for _, c := range s.Clients {
			want := 0
			for _, h := range s.Hosts {
				if c.Hears(h.ID()) {
					want++
				}
			}
			if len(c.View()) < want {
				ready = false
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clients' gossip views incomplete: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// NoopOptions are n hosts that measure the protocol itself: the no-op
// kernel, no simulated GPU speed, and no rate limit (one client submits on
// purpose), with slots tasks at once each.
func NoopOptions(n, slots int) Options {
	profiles := make([]string, n)
	for i := range profiles {
		profiles[i] = "h100"
	}
	return Options{
		Profiles: profiles,
		Kernel:   func(int) kernel.Kernel { return kernel.Noop{} },
		Slots:    slots,
		Tune: func(c *node.Config) {
			c.RateLimit = 0
			c.SimulateGPUSpeed = false
		},
	}
}
