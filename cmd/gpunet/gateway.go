package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/gateway"
	"github.com/gpunet/gpunet/node/nodeconf"
	"github.com/gpunet/gpunet/node/openai"
)

// addGatewayFlags gives a command that runs a peer (daemon, host) the
// gateway's flags; runPeer reads them back with gatewayFlags.
func addGatewayFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.String("gateway", "", "also serve the OpenAI Images API on HOST:PORT beyond loopback, to the holders of --api-keys (docs/openai.md \"Gateway\"; put TLS in front of it; or gateway.listen in DATA/config.toml)")
	fl.String("api-keys", "", "--gateway: the keys file, one sha256:HASH [name] [rate=N/s] a line, reread when it changes (`gpunet gateway-key new` makes a key; or gateway.api_keys in DATA/config.toml)")
}

// gatewayFlags reads the gateway's flags, which applyConfig has merged
// with the [gateway] table of the configuration file, and refuses a
// gateway without keys before the node starts. The file alone cannot get
// here with one key and not the other (nodeconf.Load refuses it); a flag
// over the file, or flags alone, can.
func gatewayFlags(cmd *cobra.Command) (addr, keys string, err error) {
	addr, _ = cmd.Flags().GetString("gateway")
	keys, _ = cmd.Flags().GetString("api-keys")
	switch {
	case addr != "" && keys == "":
		return "", "", errors.New("--gateway needs --api-keys FILE (or gateway.api_keys in the configuration file): a gateway without keys would be an open API (`gpunet gateway-key new --name NAME` makes a key)")
	case addr == "" && keys != "":
		return "", "", errors.New("--api-keys is for --gateway HOST:PORT (or gateway.listen in the configuration file), which is not set")
	}
	return addr, keys, nil
}

// gatewayBase is the gateway's flags as the [gateway] table, for
// nodeconf.Merge: what they were given, or their defaults (off).
func gatewayBase(cmd *cobra.Command) nodeconf.Gateway {
	addr, _ := cmd.Flags().GetString("gateway")
	keys, _ := cmd.Flags().GetString("api-keys")
	return nodeconf.Gateway{Listen: addr, APIKeys: keys}
}

// setGateway puts the merged [gateway] values into the gateway's flags,
// where gatewayFlags reads them: as applyConfig does for every other key,
// whose flags are bound to the variables it assigns. Value.Set, not
// FlagSet.Set, which would mark the flags given. --gateway "" over a file
// that sets a gateway turns it off, and the file's keys file goes with
// the file's gateway, unless --api-keys was given too (then gatewayFlags
// refuses keys without a gateway, as for flags alone).
func setGateway(cmd *cobra.Command, given func(key string) bool, gw nodeconf.Gateway) {
	fl := cmd.Flags()
	if fl.Lookup("gateway") == nil { // a command that runs no peer
		return
	}
	if given("gateway.listen") && gw.Listen == "" && !given("gateway.api_keys") {
		gw.APIKeys = ""
	}
	// The values are strings, whose Set never fails.
	_ = fl.Lookup("gateway").Value.Set(gw.Listen)
	_ = fl.Lookup("api-keys").Value.Set(gw.APIKeys)
}

// startGateway serves node/openai's routes for n on addr to the key
// holders; nil when no gateway was asked for.
func startGateway(n *node.Node, addr, keys string, log *slog.Logger) (*gateway.Server, error) {
	if addr == "" {
		return nil, nil
	}
	routes := openai.Routes(n, openai.WithLogger(log.With("sub", "openai")))
	return gateway.Listen(addr, keys, routes, gateway.WithLogger(log.With("sub", "gateway")))
}

func newGatewayKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gateway-key",
		Short: "Make API keys for a daemon's --gateway",
		Args:  cobra.NoArgs,
	}
	var name, rate string
	newCmd := &cobra.Command{
		Use:   "new",
		Short: "Print a fresh API key, once, and the line that admits it to the keys file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, line, err := gateway.NewKey(name, rate)
			if err != nil {
				return err
			}
			fmt.Printf("key (give it to its holder; it is shown only now): %s\nadd this line to the --api-keys file:\n%s\n", key, line)
			return nil
		},
	}
	newCmd.Flags().StringVar(&name, "name", "", "the key holder's name: their submitter is key:NAME (default: key: and 8 hex digits of the hash)")
	newCmd.Flags().StringVar(&rate, "rate", "", "a request budget for the key, N/s, N/m or N/h (default: unlimited)")
	cmd.AddCommand(newCmd)
	return cmd
}
