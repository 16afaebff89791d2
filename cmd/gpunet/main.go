// Command gpunet is the one binary of gpunet: a peer daemon, a volunteer GPU
// host, a p2p client, and the demo, bench and sim tools. The commands are
// thin: they parse flags, build a node.Config, and print.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globals are the flags every command takes.
type globals struct {
	data      string
	api       string
	listen    []string
	bootstrap []string
	mdns      bool
	json      bool
	logLevel  string
	logFormat string
	hedge     bool
	verify    bool
	shards    int
	heard     int
	loadInfo  string
	// storeBudget is store.budget from the configuration file (no flag);
	// 0 leaves node.DefaultConfig's.
	storeBudget int64
	reach       reachFlags // swarmkey.go
}

// Exit codes. A person or a script reads them: 1 is "what you asked for
// failed, the line on stderr says why"; a command cut short by a signal
// exits 128 + the signal's number, as a shell reports a process the signal
// killed, so `gpunet submit ... && next` stops at Ctrl-C.
const (
	exitFailed    = 1
	exitInterrupt = 128 + int(syscall.SIGINT)  // 130: Ctrl-C
	exitTerminate = 128 + int(syscall.SIGTERM) // 143: SIGTERM (kill, a service manager)
)

func main() {
	ctx, caught := notifyContext()
	err := newRootCmd().ExecuteContext(ctx)
	code, msg := outcome(err, caught())
	if msg != "" {
		fmt.Fprintln(os.Stderr, "gpunet:", msg)
	}
	os.Exit(code)
}

// notifyContext is signal.NotifyContext that also says which signal came.
// Only the first is acted on; later ones are swallowed, so a second Ctrl-C
// does not cut a clean shutdown short (runPeer bounds that).
func notifyContext() (context.Context, func() os.Signal) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	var got atomic.Value
	go func() {
		got.Store(<-ch)
		cancel()
	}()
	return ctx, func() os.Signal {
		s, _ := got.Load().(os.Signal)
		return s
	}
}

// signalContext is a context that ends at Ctrl-C or SIGTERM, for code that
// has no command context to hand (openKernel). main's handler hears the
// same signal and reports it.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// outcome is the exit code and the one line main prints for what a command
// returned, given the signal that arrived while it ran (nil: none).
//
// A command that returns no error succeeded, even after a signal: that is
// how a daemon or host ends when asked to stop (Ctrl-C or SIGTERM, then a
// clean shutdown), and a service manager or a test reads 0 as "stopped
// cleanly". A command that fails after a signal was cut short by it: the
// error is then most likely "context canceled", which says nothing a person
// needs, so the line names the signal instead.
func outcome(err error, sig os.Signal) (code int, msg string) {
	switch {
	case err == nil:
		return 0, ""
	case sig == nil:
		return exitFailed, oneLine(err.Error())
	}
	code, msg = exitInterrupt, "interrupted"
	if sig == syscall.SIGTERM {
		code, msg = exitTerminate, "terminated"
	}
	// libp2p flattens some dial errors to text, hence the string test.
	if !errors.Is(err, context.Canceled) && !strings.Contains(err.Error(), context.Canceled.Error()) {
		msg += " (" + oneLine(err.Error()) + ")"
	}
	return code, msg
}

// oneLine folds a multi-line error (errors.Join, libp2p's "all dials
// failed" list, cobra's suggestions) into one line, so that every failure
// is a single "gpunet: ..." line a person can read and a script can grep.
func oneLine(s string) string {
	s = strings.Replace(s, "\n\nDid you mean this?\n", "; did you mean:", 1)
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "gpunet",
		Short:         "A peer-to-peer network of volunteer GPUs for image generation",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Cheap checks of the global flags, before any command opens the
		// data directory or the network: a typo costs one line, not a
		// start-up that fails half-way with logs before the cause.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return g.check(cmd) },
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if strings.HasPrefix(err.Error(), "unknown") { // unknown flag or shorthand
			return fmt.Errorf("%w (see `%s --help`)", err, cmd.CommandPath())
		}
		return err
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.data, "data", node.DefaultDataDir(), "data directory: identity key and results store ($GPUNET_HOME, else ~/.gpunet)")
	pf.StringVar(&g.api, "api", node.DefaultAPIAddr, "local HTTP API address: the one to serve (daemon, host) or to reach (other commands)")
	pf.StringSliceVar(&g.listen, "listen", node.DefaultListenAddrs, "libp2p listen multiaddrs, comma-separated")
	pf.StringSliceVar(&g.bootstrap, "bootstrap", nil, "peers to join through: multiaddrs ending in /p2p/PEER_ID, comma-separated")
	pf.BoolVar(&g.mdns, "mdns", true, "discover peers on the local network with mDNS")
	pf.BoolVar(&g.json, "json", false, "print results as JSON")
	pf.BoolVar(&g.hedge, "queue-hedge", true, "when this node submits: move a task still queued well past its predicted wait to a host predicted to finish it sooner")
	pf.BoolVar(&g.verify, "verify", true, "when this node takes results from other hosts: re-run a sample on independent hosts (every result of a host on probation), exclude hosts caught, act on fraud proofs (docs/trust.md)")
	pf.IntVar(&g.shards, "beacon-shards", 1, "split the swarm's beacons over this many gossip topics (every node of a swarm must agree; see docs/protocol.md)")
	pf.IntVar(&g.heard, "view-shards", 0, "with --beacon-shards: how many shards this node hears, from its own on (0: all)")
	pf.StringVar(&g.loadInfo, "load-info", node.LoadGossip, "how this node learns the hosts' load: gossip (every host's beacon) or probe (a few hosts per task, idle notices, peer sampling: per-node cost flat in swarm size; docs/scheduling.md)")
	pf.StringVar(&g.logLevel, "log-level", "", "debug, info, warn or error (default: info for daemon and host, warn otherwise)")
	pf.StringVar(&g.logFormat, "log-format", "text", "logs on stderr as text (key=value) or json (one object a line); go-libp2p's logs too")
	g.reach.add(pf)

	root.AddCommand(
		newDaemonCmd(g), newHostCmd(g), newSubmitCmd(g), newPeersCmd(g), newStatusCmd(g),
		newDemoCmd(g), newBenchCmd(g), newCacheCmd(g), newSimCmd(), newGeneratorCmd(), newVersionCmd(g), newCompareCmd(g),
	)
	root.AddCommand(newInitCmd(g), newConfigCmd(g))
	root.AddCommand(newGatewayKeyCmd(), newSwarmKeyCmd())
	return root
}

// check validates the global flags' syntax. Whether a bootstrap peer
// answers or a port is free is for the node to find out; what a person can
// get wrong by typing is caught here, before anything starts.
func (g *globals) check(cmd *cobra.Command) error {
	// Only when given: a default from $GPUNET_HOME that is wrong should
	// not stop commands that never open it (version, status).
	if cmd.Flags().Changed("data") {
		if fi, err := os.Stat(g.data); err == nil && !fi.IsDir() {
			return fmt.Errorf("--data %s is a file, not a directory: pass a directory (it is created if missing)", g.data)
		}
	}
	if g.logLevel != "" {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
			return fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
		}
	}
	if g.logFormat != "text" && g.logFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", g.logFormat)
	}
	for _, s := range g.listen {
		if strings.TrimSpace(s) == "" {
			return errors.New("--listen has an empty address (a stray comma?): give multiaddrs, comma-separated, e.g. /ip4/0.0.0.0/tcp/4747")
		}
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("--listen %q is not a multiaddr (%v): want e.g. /ip4/0.0.0.0/tcp/4747 or /ip4/127.0.0.1/tcp/0", s, err)
		}
	}
	for _, s := range g.bootstrap {
		if err := checkBootstrap(s); err != nil {
			return err
		}
	}
	return g.reach.check()
}

// checkBootstrap checks one --bootstrap address: a multiaddr that ends in
// /p2p/PEER_ID, as a running daemon prints after "join with:".
func checkBootstrap(s string) error {
	const want = `copy the address a running daemon prints after "join with:"`
	if strings.TrimSpace(s) == "" {
		return errors.New("--bootstrap has an empty address (a stray comma?): give multiaddrs ending in /p2p/PEER_ID, comma-separated")
	}
	m, err := ma.NewMultiaddr(s)
	if err != nil {
		return fmt.Errorf("--bootstrap %q is not a multiaddr (%v): %s", s, err, want)
	}
	if _, err := peer.AddrInfoFromP2pAddr(m); err != nil {
		return fmt.Errorf("--bootstrap %q does not end in /p2p/PEER_ID, so the peer cannot be authenticated: %s", s, want)
	}
	return nil
}

// logger returns a stderr logger at the level asked for, or def, in the
// format asked for; go-libp2p's logs go through the same handler.
func (g *globals) logger(def slog.Level) (*slog.Logger, error) {
	lvl := def
	if g.logLevel != "" {
		if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
			return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
		}
	}
	h := newLogHandler(os.Stderr, g.logFormat, lvl)
	routeLibp2pLogs(h, lvl)
	return slog.New(h), nil
}

// nodeConfig is the node configuration the global flags describe.
func (g *globals) nodeConfig(cmd *cobra.Command, log *slog.Logger) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = g.data
	cfg.ListenAddrs = g.listen
	cfg.Bootstrap = g.bootstrap
	cfg.MDNS = g.mdns
	cfg.QueueHedge = g.hedge
	if g.verify {
		p := trust.DefaultPolicy()
		cfg.Verify = &p
	}
	if g.storeBudget > 0 {
		cfg.StoreBudget = g.storeBudget
	}
	cfg.BeaconShards, cfg.ViewShards = g.shards, g.heard
	cfg.LoadInfo = g.loadInfo
	g.reach.apply(&cfg, g.data)
	cfg.Version = version
	cfg.Logger = log
	return cfg
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// shortID abbreviates a peer ID or CID for tables.
func shortID(s string) string {
	if len(s) <= 12 {
		return s
	}
	return s[:4] + "…" + s[len(s)-6:]
}

// joinOr joins ss with commas and no spaces, the separator of the
// list flags (--bootstrap, --listen), so that a list prints as one value a
// shell passes whole; def if ss is empty.
func joinOr(ss []string, def string) string {
	if len(ss) == 0 {
		return def
	}
	return strings.Join(ss, ",")
}
