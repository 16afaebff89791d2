// Command gpunet is the one binary of gpunet: a peer daemon, a volunteer GPU
// host, a p2p client, and the demo, bench and sim tools. The commands are
// thin: they parse flags, build a node.Config, and print.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gpunet/gpunet/node"
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
	hedge     bool
	shards    int
	heard     int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpunet:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "gpunet",
		Short:         "A peer-to-peer network of volunteer GPUs for image generation",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.data, "data", node.DefaultDataDir(), "data directory: identity key and results store ($GPUNET_HOME, else ~/.gpunet)")
	pf.StringVar(&g.api, "api", node.DefaultAPIAddr, "local HTTP API address: the one to serve (daemon, host) or to reach (other commands)")
	pf.StringSliceVar(&g.listen, "listen", node.DefaultListenAddrs, "libp2p listen multiaddrs, comma-separated")
	pf.StringSliceVar(&g.bootstrap, "bootstrap", nil, "peers to join through: multiaddrs ending in /p2p/PEER_ID, comma-separated")
	pf.BoolVar(&g.mdns, "mdns", true, "discover peers on the local network with mDNS")
	pf.BoolVar(&g.json, "json", false, "print results as JSON")
	pf.BoolVar(&g.hedge, "queue-hedge", true, "when this node submits: move a task still queued well past its predicted wait to a host predicted to finish it sooner")
	pf.IntVar(&g.shards, "beacon-shards", 1, "split the swarm's beacons over this many gossip topics (every node of a swarm must agree; see docs/protocol.md)")
	pf.IntVar(&g.heard, "view-shards", 0, "with --beacon-shards: how many shards this node hears, from its own on (0: all)")
	pf.StringVar(&g.logLevel, "log-level", "", "debug, info, warn or error (default: info for daemon and host, warn otherwise)")

	root.AddCommand(
		newDaemonCmd(g), newHostCmd(g), newSubmitCmd(g), newPeersCmd(g), newStatusCmd(g),
		newDemoCmd(g), newBenchCmd(g), newCacheCmd(g), newSimCmd(), newGeneratorCmd(),
	)
	return root
}

// logger returns a stderr logger at the level asked for, or def.
func (g *globals) logger(def slog.Level) (*slog.Logger, error) {
	lvl := def
	if g.logLevel != "" {
		if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
			return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// nodeConfig is the node configuration the global flags describe.
func (g *globals) nodeConfig(cmd *cobra.Command, log *slog.Logger) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = g.data
	cfg.ListenAddrs = g.listen
	cfg.Bootstrap = g.bootstrap
	cfg.MDNS = g.mdns
	cfg.QueueHedge = g.hedge
	cfg.BeaconShards, cfg.ViewShards = g.shards, g.heard
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

func joinOr(ss []string, def string) string {
	if len(ss) == 0 {
		return def
	}
	return strings.Join(ss, ", ")
}
