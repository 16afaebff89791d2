package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpunet/gpunet/node"
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
			fmt.Fprintf(w, "reachability\t%s\n", reachLine(st.Reach))
			if st.Host {
				fmt.Fprintf(w, "state\t%s\n", hostState(st))
				fmt.Fprintf(w, "temperature\t%s\n", hostTemp(st))
				fmt.Fprintf(w, "kernel\t%s serving %v\n", st.Kernel, st.Models)
				fmt.Fprintf(w, "tasks\t%d kernel runs, %d served (%d from cache), %d refused\n", st.KernelRuns, st.Served, st.ServedHits, st.Refused)
				fmt.Fprintf(w, "now\t%d running, %d queued, %d requests waiting\n", st.Running, st.Queued, st.Waiting)
			}
			if st.Submitted > 0 {
				fmt.Fprintf(w, "submitted\t%d tasks, %d moved from a queue by the queue hedge\n", st.Submitted, st.Moved)
				if v := st.Verification; v != nil {
					fmt.Fprintf(w, "verification\t%d results checked, %d re-runs, %d hosts excluded; proofs from others: %d accepted, %d refused\n",
						v.Checks, v.Reruns, len(v.Excluded), v.ProofsAccepted, v.ProofsRefused)
				}
			}
			if g := st.GPU; g != nil {
				sim, throttled := "", ""
				if g.Simulated && !strings.Contains(g.Name, "simulated") {
					sim = " (simulated)"
				}
				if g.Throttled {
					throttled = ", clocks throttled by the GPU itself"
				}
				// The device's own slowdown temperature, not the owner's
				// limit (the temperature line): the two differ by 5 °C by
				// default, and by what --max-temp says otherwise.
				fmt.Fprintf(w, "gpu\t%s%s: %.1f °C (slows down at %.0f °C), %.0f%% busy, %.0f W%s\n",
					g.Name, sim, g.TempC, g.LimitC, g.UtilPct, g.PowerW, throttled)
			}
			fmt.Fprintf(w, "cache\t%d results, %.1f MiB of %.0f MiB, %d hits, %d misses\n", st.Cache.Entries,
				float64(st.Cache.Bytes)/(1<<20), float64(st.Cache.BudgetBytes)/(1<<20), st.Cache.Hits, st.Cache.Misses)
			return w.Flush()
		},
	}
}

// hostState is the status line of a host: whether it takes work, and if
// not, why and until when.
func hostState(st node.Status) string {
	var why []string
	if st.Paused {
		why = append(why, "paused by its owner (`gpunet host resume` lends it again)")
	}
	if st.Hot {
		why = append(why, fmt.Sprintf("hot: %.1f °C against the owner's limit of %.0f °C; no new work until %.0f °C",
			st.TempC, st.MaxTempC, st.ResumeTempC))
	}
	if st.OffHours {
		why = append(why, "outside its lending hours ("+st.LendHours+" local time); it takes work when they begin")
	}
	if st.Cooling {
		why = append(why, "running tasks wait between steps for the GPU to cool")
	}
	if len(why) == 0 {
		return "taking work"
	}
	return "taking no work: " + strings.Join(why, "; ")
}

// hostTemp is the governor's reading against the owner's limit.
func hostTemp(st node.Status) string {
	switch {
	case st.MaxTempC == 0:
		return "no limit: no GPU telemetry (see --gpu)"
	case st.TempC == 0:
		return fmt.Sprintf("no reading yet; owner's limit %.0f °C", st.MaxTempC)
	}
	if d := st.MaxTempC - st.TempC; d < 0 {
		return fmt.Sprintf("%.1f °C, %.1f °C over the owner's limit of %.0f °C", st.TempC, -d, st.MaxTempC)
	}
	return fmt.Sprintf("%.1f °C, owner's limit %.0f °C (%.1f °C of headroom)", st.TempC, st.MaxTempC, st.MaxTempC-st.TempC)
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
