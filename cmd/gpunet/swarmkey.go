package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/reach"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// reachFlags are the network flags: the private swarm's key and, for a
// daemon or host, its reachability and relay (docs/nat.md).
type reachFlags struct {
	swarmKey     string
	reachability string
	relayService bool
}

func (r *reachFlags) add(pf *pflag.FlagSet) {
	pf.StringVar(&r.swarmKey, "swarm-key", "", "private swarm: connect only to peers with this key file (`gpunet swarm-key generate`; default DATA/swarm.key when it exists); TCP only")
	pf.StringVar(&r.reachability, "reachability", "auto", "daemon, host: auto (AutoNAT finds out), or public / private when you know whether peers can dial this machine")
	pf.BoolVar(&r.relayService, "relay-service", true, "daemon, host: relay for peers behind NAT while this node is publicly reachable (docs/nat.md)")
}

// check validates the flags' syntax, before anything starts.
func (r *reachFlags) check() error {
	if _, err := reach.ParseReachability(r.reachability); err != nil {
		return fmt.Errorf("--reachability %q: want auto, public or private", r.reachability)
	}
	return nil
}

// apply sets cfg's network fields. The key is looked up in the data
// directory here, not left to the node, because a one-shot submit runs an
// ephemeral node whose data directory is a temporary one.
func (r *reachFlags) apply(cfg *node.Config, dataDir string) {
	cfg.SwarmKeyFile = reach.SwarmKeyPath(r.swarmKey, dataDir)
	cfg.Reachability = r.reachability
	cfg.RelayService = r.relayService
}

func newSwarmKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "swarm-key",
		Short: "Make the key of a private swarm",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "generate [FILE]",
		Short: "Write a new swarm key (Kubo's swarm.key format) to FILE, or print it",
		Long: `Write a new random swarm key to FILE, readable by you only; without FILE, print it.
Every node of the private swarm needs the same key: copy the file into each
node's data directory as swarm.key (it is picked up there), or pass
--swarm-key FILE. Nodes without the key cannot connect. An existing FILE is
never replaced.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "-" {
				key, err := reach.GenerateSwarmKey()
				if err != nil {
					return err
				}
				_, err = os.Stdout.Write(key)
				return err
			}
			path := args[0]
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return fmt.Errorf("swarm key: %w", err)
			}
			if err := reach.WriteSwarmKey(path); err != nil {
				return err
			}
			fmt.Printf("wrote swarm key %s\n  copy it to every node of the swarm as DATA/swarm.key, or pass --swarm-key %s\n", path, path)
			return nil
		},
	})
	return cmd
}

// reachLine is the status line on reachability: public, private or
// unknown and who said so, then the relay addresses and roles.
func reachLine(r reach.Info) string {
	s := string(r.Reachability)
	if s == "" {
		s = string(reach.Unknown)
	}
	if r.Source != "" {
		s += " (" + r.Source + ")"
	}
	if len(r.Relay) > 0 {
		s += fmt.Sprintf(", reached through %d relay address(es), e.g. %s", len(r.Relay), r.Relay[0])
	}
	if r.RelayService {
		s += ", relaying for peers behind NAT"
	}
	if r.PrivateSwarm {
		s += ", private swarm"
	}
	return s
}
