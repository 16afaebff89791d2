package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/gpunet/gpunet/node/localapi"
	"github.com/spf13/cobra"
)

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the local daemon's state: identity, peers, kernel runs, cache",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := localapi.NewClient(g.api).Status(cmd.Context())
			if err != nil {
				return fmt.Errorf("%w (start one with `gpunet daemon` or `gpunet host`, or pass --api)", err)
			}
			if g.json {
				return printJSON(st)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "peer id\t%s\n", st.PeerID)
			for _, a := range st.Addrs {
				fmt.Fprintf(w, "address\t%s\n", a)
			}
			fmt.Fprintf(w, "uptime\t%s\n", time.Duration(st.UptimeS*float64(time.Second)).Round(time.Second))
			fmt.Fprintf(w, "peers\t%d connected, %d in DHT routing table\n", st.Peers, st.DHTPeers)
			if st.Host {
				fmt.Fprintf(w, "kernel\t%s serving %v\n", st.Kernel, st.Models)
				fmt.Fprintf(w, "tasks\t%d kernel runs, %d served (%d from cache), %d refused\n", st.KernelRuns, st.Served, st.ServedHits, st.Refused)
				fmt.Fprintf(w, "now\t%d running, %d queued, %d requests waiting\n", st.Running, st.Queued, st.Waiting)
			}
			if st.Submitted > 0 {
				fmt.Fprintf(w, "submitted\t%d tasks, %d moved from a queue by the queue hedge\n", st.Submitted, st.Moved)
			}
			if st.GPU != nil {
				sim := ""
				if st.GPU.Simulated {
					sim = " (simulated)"
				}
				fmt.Fprintf(w, "gpu\t%s%s: %.1f °C of %.0f °C limit, %.0f%% busy, %.0f W\n", st.GPU.Name, sim, st.GPU.TempC, st.GPU.LimitC, st.GPU.UtilPct, st.GPU.PowerW)
			}
			fmt.Fprintf(w, "cache\t%d results, %.1f MiB of %.0f MiB, %d hits, %d misses\n", st.Cache.Entries,
				float64(st.Cache.Bytes)/(1<<20), float64(st.Cache.BudgetBytes)/(1<<20), st.Cache.Hits, st.Cache.Misses)
			return w.Flush()
		},
	}
}

func newPeersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "peers",
		Short: "List the local daemon's connected peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := localapi.NewClient(g.api).Peers(cmd.Context())
			if err != nil {
				return fmt.Errorf("%w (start one with `gpunet daemon`, or pass --api)", err)
			}
			if g.json {
				return printJSON(ps)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tDHT\tADDRESS")
			for _, p := range ps {
				fmt.Fprintf(w, "%s\t%v\t%s\n", p.ID, p.DHT, joinOr(p.Addrs, "-"))
			}
			return w.Flush()
		},
	}
}
