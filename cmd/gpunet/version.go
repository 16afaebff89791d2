package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"text/tabwriter"

	"github.com/gpunet/gpunet/protocol"
	"github.com/spf13/cobra"
)

// versionInfo is what `gpunet version --json` prints. The protocol IDs are
// what decides whether two builds can work together: peers negotiate each
// protocol by its ID, so equal IDs interoperate whatever the version says.
type versionInfo struct {
	Version   string            `json:"version"`
	Commit    string            `json:"commit,omitempty"` // VCS revision, "+dirty" when built from a modified tree
	Go        string            `json:"go"`
	Platform  string            `json:"platform"` // GOOS/GOARCH
	Protocols map[string]string `json:"protocols"`
}

func currentVersion() versionInfo {
	v := versionInfo{
		Version:  version,
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
		Protocols: map[string]string{
			"task":   protocol.TaskProtocol,
			"fetch":  protocol.FetchProtocol,
			"beacon": protocol.BeaconTopic,
			"fraud":  protocol.FraudTopic,
			"dht":    protocol.DHTPrefix + "/kad/1.0.0",
		},
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if v.Commit != "" && dirty {
			v.Commit += "+dirty"
		}
	}
	return v
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print gpunet's version, its Go version and the protocol IDs it speaks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			if g.json {
				return printJSON(v)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "gpunet\t%s\n", v.Version)
			if v.Commit != "" {
				fmt.Fprintf(w, "commit\t%s\n", v.Commit)
			}
			fmt.Fprintf(w, "go\t%s %s\n", v.Go, v.Platform)
			for _, k := range []string{"task", "fetch", "beacon", "dht"} {
				fmt.Fprintf(w, "%s protocol\t%s\n", k, v.Protocols[k])
			}
			return w.Flush()
		},
	}
}
