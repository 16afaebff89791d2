package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/spf13/cobra"
)

func newDaemonCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run a gpunet peer: DHT routing, results cache and the local API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd, g, nil); err != nil {
				return err
			}
			log, err := g.logger(slog.LevelInfo)
			if err != nil {
				return err
			}
			return runPeer(cmd, g, g.nodeConfig(cmd, log))
		},
	}
	addGatewayFlags(cmd)
	addMetricsFlag(cmd)
	return cmd
}

type hostFlags struct {
	kernel        string
	kernelCmd     string
	kernelName    string
	kernelModels  []string
	kernelTimeout time.Duration
	kernelServe   bool
	kernelCheckIn bool
	gpu           string
	slots         int
	queue         int
	maxTemp       float64
	rate          float64
	timeScale     float64
	hours         string
	backends      []string
}

func newHostCmd(g *globals) *cobra.Command {
	f := &hostFlags{}
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Join as a volunteer GPU host: a daemon that also runs tasks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd, g, f); err != nil {
				return err
			}
			var hours node.LendHours // zero: every hour
			if f.hours != "" {
				h, err := node.ParseLendHours(f.hours)
				if err != nil {
					return fmt.Errorf("--hours: %w", err)
				}
				hours = h
			}
			log, err := g.logger(slog.LevelInfo)
			if err != nil {
				return err
			}
			cfg := g.nodeConfig(cmd, log)
			if cfg.Kernel, err = openKernel(f, log); err != nil {
				return err
			}
			if cfg.Kernel, err = withBackends(f.backends, cfg.Kernel, cmd.Flags().Changed("kernel"), log); err != nil {
				return err
			}
			if c, ok := cfg.Kernel.(io.Closer); ok {
				defer c.Close() // after the node: serve-mode generators
			}
			dev, picked, err := kernel.OpenDevice(f.gpu, kernel.WithTimeScale(f.timeScale), kernel.WithSlots(f.slots))
			if err != nil {
				return err
			}
			if dev != nil {
				defer dev.Close()
				cfg.Device = dev
			}
			log.Info("GPU", "device", picked)
			cfg.Slots, cfg.QueueLen, cfg.MaxTempC, cfg.RateLimit = f.slots, f.queue, f.maxTemp, f.rate
			cfg.LendHours = hours
			return runPeer(cmd, g, cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kernel, "kernel", "sketch", "kernel that runs tasks: "+strings.Join(kernelNames(), ", "))
	fl.StringArrayVar(&f.backends, "backend", nil, backendFlagHelp)
	fl.StringVar(&f.kernelCmd, "kernel-cmd", "", `--kernel cmd: the generator to run per task, split on spaces, no shell (e.g. "python3 kernels/torch_sketch.py"; see docs/kernels.md)`)
	fl.StringVar(&f.kernelName, "kernel-name", "", "--kernel cmd: kernel name and version recorded in manifests (default: cmd: and the first model's last path element)")
	fl.StringSliceVar(&f.kernelModels, "kernel-models", nil, "--kernel cmd: models the generator serves, comma-separated (e.g. gpunet/torch-sketch-v1)")
	fl.DurationVar(&f.kernelTimeout, "kernel-timeout", kernel.DefaultCommandTimeout, "--kernel cmd: kill a run that has not finished after this long (0: never)")
	fl.BoolVar(&f.kernelCheckIn, "kernel-check-input", false, "--kernel cmd: the start-up check sends a 16x16 input image, for a generator that runs only on one (an upscaler x4)")
	fl.BoolVar(&f.kernelServe, "kernel-serve", false, "--kernel cmd: keep --slots generators running and send them one task per stdin line (serve mode, docs/kernels.md), so a model loads once")
	fl.StringVar(&f.gpu, "gpu", "auto", "GPU telemetry: auto, nvml[:N], nvidia-smi[:N], sim:PROFILE ("+strings.Join(kernel.ProfileNames(), ", ")+") or none")
	fl.IntVar(&f.slots, "slots", 1, "tasks run at once")
	fl.IntVar(&f.queue, "queue", 8, "tasks that may wait for a slot before the host refuses with busy")
	fl.Float64Var(&f.maxTemp, "max-temp", 0, "°C the GPU must never pass because of gpunet (default: 5 °C under its slowdown temperature)")
	fl.Float64Var(&f.rate, "rate-limit", 10, "tasks per second one submitter may start here (0: unlimited)")
	fl.StringVar(&f.hours, "hours", "", `lending hours: take work only between these local times, HH:MM-HH:MM (e.g. 22:00-07:00, past midnight wraps; default: every hour)`)
	fl.Float64Var(&f.timeScale, "sim-time-scale", 1, "simulated GPU only: how much faster than real time it heats and cools")
	addGatewayFlags(cmd)
	addMetricsFlag(cmd)
	cmd.AddCommand(newHostPauseCmd(g, true), newHostPauseCmd(g, false))
	return cmd
}

// newHostPauseCmd is `gpunet host pause` / `gpunet host resume`: the owner
// takes the GPU back (queued tasks are handed back to their clients) or
// lends it again.
func newHostPauseCmd(g *globals, pause bool) *cobra.Command {
	use, short := "resume", "Let the running host take work again"
	if pause {
		use, short = "pause", "Stop the running host taking work; queued tasks go elsewhere"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := localapi.NewClient(g.api).SetPaused(cmd.Context(), pause)
			if err != nil {
				return fmt.Errorf("%w (is `gpunet host` running? pass its --api)", err)
			}
			if g.json {
				return printJSON(st)
			}
			state := "taking work"
			switch {
			case st.Paused:
				state = "paused"
			case st.OffHours:
				state = "resumed, and takes work when its lending hours (" + st.LendHours + " local time) begin"
			}
			fmt.Printf("host %s is %s (%d running, %d queued)\n", shortID(st.PeerID), state, st.Running, st.Queued)
			return nil
		},
	}
}

func kernelNames() []string { return []string{"sketch", "noop", "cmd"} }

func openKernel(f *hostFlags, log *slog.Logger) (kernel.Kernel, error) {
	if f.kernel != "cmd" && (f.kernelCmd != "" || len(f.kernelModels) > 0 || f.kernelName != "" || f.kernelServe || f.kernelCheckIn) {
		return nil, fmt.Errorf("--kernel-cmd, --kernel-models, --kernel-name, --kernel-serve and --kernel-check-input need --kernel cmd (got --kernel %s)", f.kernel)
	}
	switch f.kernel {
	case "sketch":
		return kernel.Sketch{}, nil
	case "noop":
		return kernel.Noop{}, nil
	case "cmd":
		// strings.Fields, not a shell: what the owner typed is what runs,
		// with no expansion, quoting or redirection.
		argv := strings.Fields(f.kernelCmd)
		if len(argv) == 0 {
			return nil, fmt.Errorf(`--kernel cmd needs --kernel-cmd, e.g. --kernel-cmd "python3 kernels/torch_sketch.py" --kernel-models gpunet/torch-sketch-v1`)
		}
		if len(f.kernelModels) == 0 {
			return nil, fmt.Errorf("--kernel cmd needs --kernel-models: the model names the generator serves, e.g. gpunet/torch-sketch-v1")
		}
		name := f.kernelName
		if name == "" {
			m := f.kernelModels[0]
			name = "cmd:" + m[strings.LastIndex(m, "/")+1:]
		}
		opts := []kernel.CommandOption{kernel.WithCommandLogger(log.With("sub", "kernel")), kernel.WithCommandTimeout(f.kernelTimeout)}
		if f.kernelServe {
			opts = append(opts, kernel.WithCommandServe(max(f.slots, 1)))
		}
		if f.kernelCheckIn {
			opts = append(opts, kernel.WithCommandCheckInput())
		}
		c, err := kernel.NewCommand(name, f.kernelModels, argv, opts...)
		if err != nil {
			return nil, err
		}
		// Before the node advertises the models: a host that cannot run
		// them must not draw tasks it will fail. openKernel has no command
		// context, so it listens for Ctrl-C itself (main's handler hears
		// the signal too, and reports it).
		ctx, stop := signalContext()
		defer stop()
		log.Info("checking the generator with a one-step task per model", "cmd", f.kernelCmd, "models", f.kernelModels)
		if err := c.Check(ctx); err != nil {
			_ = c.Close()
			return nil, err
		}
		return c, nil
	}
	return nil, fmt.Errorf("unknown kernel %q: want one of %s", f.kernel, strings.Join(kernelNames(), ", "))
}

// runPeer starts a node and its local API and runs until interrupted.
func runPeer(cmd *cobra.Command, g *globals, cfg node.Config) error {
	ctx := cmd.Context()
	gwAddr, gwKeys, err := gatewayFlags(cmd)
	if err != nil {
		return err
	}
	var attach []func(*node.Node) []localapi.Option
	for _, s := range surfaces {
		attach = append(attach, s(&cfg))
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	var routes []localapi.Option
	for _, a := range attach {
		routes = append(routes, a(n)...)
	}
	api, err := localapi.Listen(n, g.api, cfg.Logger, routes...)
	if err != nil {
		return err
	}
	defer api.Close()
	gw, err := startGateway(n, gwAddr, gwKeys, cfg.Logger)
	if err != nil {
		return err
	}
	if gw != nil {
		defer gw.Close()
	}
	var metricsAddr string
	if a, _ := cmd.Flags().GetString("metrics"); a != "" {
		var stop func()
		if metricsAddr, stop, err = serveMetricsOnly(a, routes, cfg.Logger); err != nil {
			return err
		}
		defer stop()
	}
	if g.json {
		out := map[string]any{"peer_id": n.ID().String(), "addrs": n.Addrs(), "api": api.Addr()}
		if gw != nil {
			out["gateway"] = gw.Addr()
		}
		if metricsAddr != "" {
			out["metrics"] = metricsAddr
		}
		_ = printJSON(out)
	} else {
		role := "daemon"
		if cfg.Kernel != nil {
			role = "host (kernel " + cfg.Kernel.Name() + ")"
		}
		// One value to paste after --bootstrap on another machine: the
		// addresses it can dial, best first (--json lists them all).
		fmt.Fprintf(os.Stdout, "gpunet %s running\n  peer id: %s\n  local API: http://%s\n  join with: --bootstrap %s\n",
			role, n.ID(), api.Addr(), joinOr(node.JoinAddrs(n.Addrs()), "(not listening)"))
		if gw != nil {
			fmt.Fprintf(os.Stdout, "  gateway (API keys, OpenAI routes only): http://%s\n", gw.Addr())
		}
		if metricsAddr != "" {
			fmt.Fprintf(os.Stdout, "  metrics: http://%s/metrics\n", metricsAddr)
		}
	}
	<-ctx.Done()
	cfg.Logger.Info("shutting down")
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		return fmt.Errorf("shutdown took longer than 15 s")
	}
}
