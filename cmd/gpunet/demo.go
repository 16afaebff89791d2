package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/gpunet/gpunet/protocol"
	"github.com/spf13/cobra"
)

// demoPrompts are the demo's unique prompts; later tasks repeat earlier ones
// so the caches have something to do.
var demoPrompts = []string{
	"a quiet harbour at dusk",
	"a pine forest under the northern lights",
	"a red fox in fresh snow at sunrise",
	"a lighthouse in a storm at night",
	"desert dunes under a violet sky",
	"a mountain lake at golden hour",
	"a city of glass towers in the rain",
	"sunflowers in a summer field",
	"a coral reef with bright fish",
	"an old stone bridge over a misty river",
}

// demoProfiles are the simulated GPUs of the demo's hosts, in turn.
var demoProfiles = []string{"rtx4090", "a100", "laptop-4070", "rtx3060", "h100"}

type demoFlags struct {
	hosts, tasks, clients, parallel int
	out                             string
	size                            string
	steps                           uint32
	timeScale                       float64
	queueHedge                      bool
	verify                          bool
}

type demoTask struct {
	Prompt    string  `json:"prompt"`
	Client    int     `json:"client"`
	TaskCID   string  `json:"task_cid"`
	ResultCID string  `json:"result_cid"`
	Host      string  `json:"host"`
	Cache     string  `json:"cache"`
	ElapsedMs float64 `json:"elapsed_ms"`
	Path      string  `json:"path"`
	Error     string  `json:"error,omitempty"`
}

type demoHost struct {
	PeerID     string  `json:"peer_id"`
	GPU        string  `json:"gpu"`
	Tasks      uint64  `json:"tasks"`
	KernelRuns uint64  `json:"kernel_runs"`
	PeakTempC  float64 `json:"peak_temp_c"`
	TempLimitC float64 `json:"temp_limit_c"` // the governor's limit
	SlowdownC  float64 `json:"slowdown_c"`   // the GPU's hardware slowdown
}

type demoReport struct {
	Tasks   []demoTask `json:"tasks"`
	Hosts   []demoHost `json:"hosts"`
	Dir     string     `json:"dir"`
	Elapsed float64    `json:"elapsed_s"`
	// Moved counts tasks the clients' queue hedge took from one host's
	// queue to another host.
	Moved uint64 `json:"moved"`
	// Verification is what the clients' checks of the hosts' results did
	// (docs/trust.md); absent with --verify=false.
	Verification *node.TrustStats `json:"verification,omitempty"`
	// Upscale is the pipeline's second task, the first image ×4 by the
	// trained ESRGAN network, when kernels/esrgan is installed; Skipped
	// says why it did not run otherwise.
	Upscale *demoTask `json:"upscale,omitempty"`
	Skipped string    `json:"upscale_skipped,omitempty"`
}

func newDemoCmd(g *globals) *cobra.Command {
	f := &demoFlags{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a small gpunet swarm on loopback and generate a batch of images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.queueHedge, f.verify = g.hedge, g.verify
			r, err := runDemo(cmd.Context(), f, g.json)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(r)
			}
			printDemo(r)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.hosts, "hosts", 4, "hosts, each with a simulated GPU ("+strings.Join(demoProfiles, ", ")+", in turn)")
	fl.IntVar(&f.tasks, "tasks", 16, "tasks to submit; about a third repeat earlier prompts")
	fl.IntVar(&f.clients, "clients", 2, "client nodes submitting in turn")
	fl.IntVar(&f.parallel, "parallel", 4, "tasks in flight at once")
	fl.StringVarP(&f.out, "output", "o", "gpunet-demo", "folder for the images")
	fl.StringVar(&f.size, "size", "384x384", "image size WxH")
	fl.Uint32Var(&f.steps, "steps", 16, "steps per image")
	fl.Float64Var(&f.timeScale, "sim-time-scale", 40, "how much faster than real time the simulated GPUs heat and cool")
	return cmd
}

func runDemo(ctx context.Context, f *demoFlags, quiet bool) (*demoReport, error) {
	if f.hosts < 1 || f.hosts > 64 || f.tasks < 1 || f.tasks > 10000 || f.clients < 1 || f.clients > 16 || f.parallel < 1 {
		return nil, fmt.Errorf("demo: want 1-64 hosts, 1-10000 tasks, 1-16 clients, parallel >= 1")
	}
	w, h, err := parseSize(f.size)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return nil, err
	}
	say := func(format string, a ...any) {
		if !quiet {
			fmt.Fprintf(os.Stderr, format+"\n", a...)
		}
	}
	start := time.Now()
	profiles := make([]string, f.hosts)
	for i := range profiles {
		profiles[i] = demoProfiles[i%len(demoProfiles)]
	}
	say("starting %d hosts on loopback (simulated GPUs: %s)…", f.hosts, strings.Join(profiles, ", "))
	esr, skipped := demoUpscaler(ctx)
	if esr != nil {
		defer esr.Close()
		say("host 1 also serves %s (the trained ESRGAN ×4 network, kernels/esrgan)", upscaleModel)
	}
	sw, err := swarm.StartWithClients(ctx, swarm.Options{Profiles: profiles, TimeScale: f.timeScale, Kernel: demoHostKernel(esr),
		// Beacons 4x as often as a real swarm's: the whole demo lasts seconds.
		Tune: func(c *node.Config) {
			c.BeaconInterval = 500 * time.Millisecond
			c.QueueHedge = f.queueHedge
			if f.verify {
				p := trust.DefaultPolicy()
				c.Verify = &p
			}
		}}, f.clients)
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	stopSampling := samplePeaks(sw)
	say("swarm ready in %s; submitting %d tasks from %d clients", time.Since(start).Round(time.Millisecond), f.tasks, f.clients)

	tasks := make([]demoTask, f.tasks)
	unique := max(1, (f.tasks*2+2)/3)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	sem := make(chan struct{}, f.parallel)
	for i := range tasks {
		p := i
		if i >= unique {
			p = (i * 7) % unique // a repeat of an earlier prompt
		}
		dt := &tasks[i]
		dt.Prompt = demoPrompts[p%len(demoPrompts)]
		if p >= len(demoPrompts) {
			dt.Prompt += fmt.Sprintf(", variation %d", p/len(demoPrompts))
		}
		dt.Client = i % f.clients
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := sw.Clients[dt.Client]
			res, err := c.Submit(ctx, protocol.Task{Prompt: dt.Prompt, Width: w, Height: h, Steps: f.steps}, node.SubmitOptions{})
			mu.Lock()
			defer mu.Unlock()
			done++
			if err != nil {
				dt.Error = err.Error()
				say("[%d/%d] %-40.40s failed: %v", done, len(tasks), dt.Prompt, err)
				return
			}
			dt.TaskCID, dt.ResultCID = res.TaskCID.String(), res.ResultCID.String()
			dt.Host, dt.Cache = res.Host.String(), res.Cache
			dt.ElapsedMs = math.Round(float64(res.Elapsed.Microseconds())/100) / 10
			dt.Path = filepath.Join(f.out, fmt.Sprintf("%02d-%s.png", i+1, slug(dt.Prompt)))
			if err := os.WriteFile(dt.Path, res.Blocks[0], 0o644); err != nil {
				dt.Error = err.Error()
			}
			say("[%d/%d] %-40.40s host %s  cache %-7s %7.1f ms", done, len(tasks), dt.Prompt, shortID(dt.Host), dt.Cache, dt.ElapsedMs)
		}()
	}
	wg.Wait()
	r := &demoReport{Tasks: tasks, Dir: f.out, Skipped: skipped}
	if esr != nil {
		// A pipeline: a small image, then it ×4; the upscaling host fetches
		// the image by CID from client 0, which holds it.
		if r.Upscale, err = demoUpscale(ctx, sw.Clients[0], tasks[0].Prompt, f.out, f.steps); err != nil {
			return r, fmt.Errorf("demo: the pipeline failed: %w", err)
		}
		say("[pipeline] %-39.39s host %s  %7.1f ms  %s", r.Upscale.Prompt, shortID(r.Upscale.Host), r.Upscale.ElapsedMs, r.Upscale.Path)
	}
	peaks := stopSampling()
	r.Elapsed = math.Round(time.Since(start).Seconds()*10) / 10
	for _, c := range sw.Clients {
		r.Moved += c.Status(ctx).Moved
		if s, ok := c.TrustStats(); ok {
			if r.Verification == nil {
				r.Verification = &node.TrustStats{}
			}
			r.Verification.Add(s)
		}
	}
	for i, hn := range sw.Hosts {
		st := hn.Status(ctx)
		tel, _ := sw.Devices[i].Telemetry(ctx)
		r.Hosts = append(r.Hosts, demoHost{PeerID: st.PeerID, GPU: profiles[i], Tasks: st.Served, KernelRuns: st.KernelRuns,
			PeakTempC: math.Round(peaks[i]*10) / 10, TempLimitC: st.MaxTempC, SlowdownC: tel.SlowdownTempC})
	}
	for _, t := range tasks {
		if t.Error != "" {
			return r, fmt.Errorf("demo: a task failed: %s", t.Error)
		}
	}
	return r, nil
}

// samplePeaks records each device's peak temperature until stopped.
func samplePeaks(sw *swarm.Swarm) func() []float64 {
	peaks := make([]float64, len(sw.Devices))
	stop := make(chan struct{})
	done := make(chan struct{})
	sample := func() {
		for i, d := range sw.Devices {
			if t, err := d.Telemetry(context.Background()); err == nil && t.TempC > peaks[i] {
				peaks[i] = t.TempC
			}
		}
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			sample()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() []float64 {
		close(stop)
		<-done
		sample()
		return peaks
	}
}

func printDemo(r *demoReport) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "#\tPROMPT\tCLIENT\tHOST\tCACHE\tTIME\tFILE")
	for i, t := range r.Tasks {
		fmt.Fprintf(w, "%d\t%.38s\t%d\t%s\t%s\t%.1f ms\t%s\n", i+1, t.Prompt, t.Client, shortID(t.Host), t.Cache, t.ElapsedMs, t.Path)
	}
	w.Flush()
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tGPU (simulated)\tTASKS\tKERNEL RUNS\tPEAK °C\tLIMIT °C")
	for _, h := range r.Hosts {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%.1f\t%.0f\n", shortID(h.PeerID), h.GPU, h.Tasks, h.KernelRuns, h.PeakTempC, h.TempLimitC)
	}
	w.Flush()
	fmt.Printf("\n%d images in %s/ in %.1f s; %d moved from a queue by the queue hedge\n", len(r.Tasks), r.Dir, r.Elapsed, r.Moved)
	if v := r.Verification; v != nil {
		fmt.Printf("verification: %d results checked by re-running them on another host (%d agreed, %d could not be checked), %d hosts caught lying\n",
			v.Checks, v.Agreed, v.Unchecked, v.Caught)
	}
	if r.Upscale != nil {
		fmt.Printf("pipeline: a %dx%d image upscaled ×4 by the trained ESRGAN network on host %s, its input fetched by CID: %s\n",
			demoPipelineSide, demoPipelineSide, shortID(r.Upscale.Host), r.Upscale.Path)
	} else if r.Skipped != "" {
		fmt.Printf("pipeline (generate, then upscale ×4 by ESRGAN) skipped: %s\n", r.Skipped)
	}
}

func slug(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
		if b.Len() >= 32 {
			break
		}
	}
	return strings.Trim(b.String(), "-")
}
