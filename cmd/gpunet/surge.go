package main

import (
	"context"
	"fmt"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/spf13/cobra"
)

type surgeFlags struct {
	hosts, slots, clients, submitters, tasks int
	size                                     string
	steps                                    uint32
	timeout                                  time.Duration
}

// newSurgeCmd is `gpunet bench surge`: many more tasks than slots, at once,
// from several submitters, on a loopback swarm; what a launch day does.
func newSurgeCmd(g *globals) *cobra.Command {
	f := &surgeFlags{}
	cmd := &cobra.Command{
		Use:   "surge",
		Short: "Submit many more tasks than the swarm has slots, at once, and report how they were served",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := runSurge(cmd.Context(), g, f)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(r)
			}
			fmt.Printf("surge: %d tasks from %d submitters on %d slot(s), in %.1f s\n", r.Tasks, r.Submitters, r.Slots, r.ElapsedS)
			fmt.Printf("  completed %d, failed %d\n", r.Completed, r.Failed)
			fmt.Printf("  wait for a GPU p50 %.0f ms, p99 %.0f ms; result p50 %.0f ms, p99 %.0f ms\n", r.WaitP50Ms, r.WaitP99Ms, r.DoneP50Ms, r.DoneP99Ms)
			fmt.Printf("  refusals per task %.2f; Jain's fairness across submitters %.3f\n", r.Refusals, r.Jain)
			if r.FirstError != "" {
				fmt.Printf("  first error: %s\n", r.FirstError)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.hosts, "hosts", 1, "hosts, each with a simulated H100")
	fl.IntVar(&f.slots, "slots", 1, "slots per host")
	fl.IntVar(&f.clients, "clients", 2, "client nodes the submitters submit through")
	fl.IntVar(&f.submitters, "submitters", 4, "submitters, spread over the clients, sharing the tasks evenly")
	fl.IntVar(&f.tasks, "tasks", 48, "distinct tasks, all submitted at once")
	fl.StringVar(&f.size, "size", "512x512", "image size WxH")
	fl.Uint32Var(&f.steps, "steps", 8, "steps per image (8 at 512x512: about 0.2 s on a simulated H100)")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "each task's deadline")
	return cmd
}

func runSurge(ctx context.Context, g *globals, f *surgeFlags) (*swarm.SurgeReport, error) {
	if f.hosts < 1 || f.hosts > 64 || f.slots < 1 || f.clients < 1 || f.clients > 16 || f.tasks < 1 || f.tasks > 10000 ||
		f.submitters < 1 || f.submitters > f.tasks {
		return nil, fmt.Errorf("surge: want 1-64 hosts, slots >= 1, 1-16 clients, 1-10000 tasks and 1 to that many submitters")
	}
	w, h, err := parseSize(f.size)
	if err != nil {
		return nil, err
	}
	profiles := make([]string, f.hosts)
	for i := range profiles {
		profiles[i] = "h100"
	}
	sw, err := swarm.StartWithClients(ctx, swarm.Options{Profiles: profiles, Slots: f.slots, TimeScale: 40,
		Tune: func(c *node.Config) {
			c.BeaconInterval = 500 * time.Millisecond
			c.QueueHedge = g.hedge
		}}, f.clients)
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	return sw.Surge(ctx, swarm.SurgeOptions{Tasks: f.tasks, Submitters: f.submitters, Width: w, Height: h, Steps: f.steps, Timeout: f.timeout})
}
