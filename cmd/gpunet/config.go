package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/BurntSushi/toml"
	"github.com/gpunet/gpunet/node/nodeconf"
	"github.com/spf13/cobra"
)

// flagOf names the flag of each key of the configuration file; a key
// with none (store.budget) is set by the file alone.
var flagOf = map[string]string{
	"bootstrap":          "bootstrap",
	"listen":             "listen",
	"api":                "api",
	"mdns":               "mdns",
	"log_level":          "log-level",
	"log_format":         "log-format",
	"host.kernel":        "kernel",
	"host.kernel_cmd":    "kernel-cmd",
	"host.kernel_models": "kernel-models",
	"host.gpu":           "gpu",
	"host.slots":         "slots",
	"host.queue":         "queue",
	"host.max_temp":      "max-temp",
	"host.rate_limit":    "rate-limit",
	"host.hours":         "hours",
	"host.backends":      "backend",
	"gateway.listen":     "gateway",
	"gateway.api_keys":   "api-keys",
}

func configPath(g *globals) string { return filepath.Join(g.data, nodeconf.FileName) }

// applyConfig lays DATA/config.toml under the flags of a daemon (f nil)
// or a host: every key the file sets whose flag was not given replaces
// the flag's default. A missing file is written with the defaults first,
// so that a first start leaves a file to edit. It runs first in RunE,
// before the logger is built, because the file may set the log format.
func applyConfig(cmd *cobra.Command, g *globals, f *hostFlags) error {
	file, md, created, err := loadConfig(g, true)
	if err != nil {
		return err
	}
	given := givenFlag(cmd)
	base := configBase(g, f)
	base.Gateway = gatewayBase(cmd)
	merged, _ := nodeconf.Merge(base, given, file, md)
	// --kernel sketch over a file for a cmd kernel: the file's generator
	// goes with the file's kernel, not with the one the flag chose.
	if f != nil && given("host.kernel") && merged.Host.Kernel != "cmd" {
		if !given("host.kernel_cmd") {
			merged.Host.KernelCmd = ""
		}
		if !given("host.kernel_models") {
			merged.Host.KernelModels = nil
		}
	}
	g.bootstrap, g.listen, g.api, g.mdns = merged.Bootstrap, merged.Listen, merged.API, merged.MDNS
	g.logLevel, g.logFormat = merged.LogLevel, merged.LogFormat
	g.storeBudget = int64(merged.Store.Budget)
	if f != nil {
		h := merged.Host
		f.kernel, f.kernelCmd, f.kernelModels, f.gpu = h.Kernel, h.KernelCmd, h.KernelModels, h.GPU
		f.slots, f.queue, f.maxTemp, f.rate, f.hours = h.Slots, h.Queue, h.MaxTemp, h.RateLimit, h.Hours
		f.backends = h.Backends
	}
	setGateway(cmd, given, merged.Gateway)
	if created {
		log, err := g.logger(slog.LevelInfo)
		if err != nil {
			return err
		}
		log.Info("wrote a configuration file with the defaults: edit it to change them (flags still win)", "file", configPath(g))
	}
	return nil
}

// loadConfig reads DATA/config.toml. A missing file is the defaults with
// no key defined; with create, it is also written (created reports it).
func loadConfig(g *globals, create bool) (file nodeconf.File, md toml.MetaData, created bool, err error) {
	if g.data == "" { // no data directory, no file
		return nodeconf.Defaults(), toml.MetaData{}, false, nil
	}
	path := configPath(g)
	file, md, err = nodeconf.Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return file, md, false, err
	}
	if create {
		if err := os.MkdirAll(g.data, 0o700); err != nil {
			return file, md, false, fmt.Errorf("creating the data directory: %w", err)
		}
		// Another process may have written it meanwhile: read what is there.
		if err := nodeconf.Create(path, nodeconf.Defaults()); err != nil && !errors.Is(err, fs.ErrExist) {
			return file, md, false, fmt.Errorf("%w (is the data directory writable? pass another --data)", err)
		} else if err != nil {
			file, md, err = nodeconf.Load(path)
			return file, md, false, err
		}
		created = true
	}
	return nodeconf.Defaults(), toml.MetaData{}, created, nil
}

// configBase is the flags' values as a File: what they were given, or
// their defaults. With no host flags (a daemon, `config show`), the host
// keys are the file's defaults.
func configBase(g *globals, f *hostFlags) nodeconf.File {
	c := nodeconf.Defaults()
	c.Listen, c.API, c.MDNS, c.LogFormat = g.listen, g.api, g.mdns, g.logFormat
	if g.bootstrap != nil {
		c.Bootstrap = g.bootstrap
	}
	if g.logLevel != "" { // "" is the per-command default: info for a daemon or host
		c.LogLevel = g.logLevel
	}
	if g.storeBudget > 0 {
		c.Store.Budget = nodeconf.Size(g.storeBudget)
	}
	if f != nil {
		c.Host = nodeconf.Host{Kernel: f.kernel, KernelCmd: f.kernelCmd, KernelModels: f.kernelModels, GPU: f.gpu,
			Slots: f.slots, Queue: f.queue, MaxTemp: f.maxTemp, RateLimit: f.rate, Hours: f.hours, Backends: f.backends}
		if c.Host.KernelModels == nil {
			c.Host.KernelModels = []string{}
		}
		if c.Host.Backends == nil {
			c.Host.Backends = []string{}
		}
	}
	return c
}

// givenFlag says whether the flag of a configuration key was given on the
// command line (cobra's Changed: a flag set to its default value counts).
func givenFlag(cmd *cobra.Command) func(key string) bool {
	return func(key string) bool {
		name := flagOf[key]
		return name != "" && cmd.Flags().Changed(name)
	}
}

func newInitCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write DATA/config.toml with the defaults, commented",
		Long: "Write the configuration file of a daemon or host, DATA/config.toml, with every key at its default\n" +
			"and a comment on each. Flags still win over it. An existing file is kept unless --force.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := configPath(g)
			if err := os.MkdirAll(g.data, 0o700); err != nil {
				return fmt.Errorf("creating the data directory: %w", err)
			}
			write := nodeconf.Create
			if force {
				write = nodeconf.Write
			}
			if err := write(path, nodeconf.Defaults()); errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s exists: edit it, or pass --force to replace it with the defaults", path)
			} else if err != nil {
				return err
			}
			if g.json {
				return printJSON(map[string]string{"file": path})
			}
			fmt.Printf("wrote %s\n", path)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing file")
	return cmd
}

// shownSetting is one line of `gpunet config show --json`.
type shownSetting struct {
	Value  any             `json:"value"`
	Source nodeconf.Source `json:"source"`
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "The configuration file, DATA/config.toml",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration and where each value came from",
		Long: "Print what a daemon or host started with the same global flags would run with, and where each value\n" +
			"came from: flag, file (DATA/config.toml), env ($GPUNET_HOME, for --data) or default. The host and\n" +
			"gateway keys show the file and the defaults; flags given to `gpunet host` or `gpunet daemon` (--gateway,\n" +
			"--api-keys) win over them too.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, md, _, err := loadConfig(g, false)
			if err != nil {
				return err
			}
			_, settings := nodeconf.Merge(configBase(g, nil), givenFlag(cmd), file, md)
			data := nodeconf.Setting{Key: "data", Value: g.data, Source: nodeconf.FromDefault}
			switch {
			case cmd.Flags().Changed("data"):
				data.Source = nodeconf.FromFlag
			case os.Getenv("GPUNET_HOME") != "":
				data.Source = nodeconf.FromEnv
			}
			settings = append([]nodeconf.Setting{data}, settings...)
			_, statErr := os.Stat(configPath(g))
			if g.json {
				out := map[string]shownSetting{}
				for _, s := range settings {
					out[s.Key] = shownSetting{s.Value, s.Source}
				}
				return printJSON(map[string]any{"file": configPath(g), "file_exists": statErr == nil, "settings": out})
			}
			note := ""
			if statErr != nil {
				note = " (none yet: `gpunet init` writes one, as does the first start of a daemon or host)"
			}
			fmt.Printf("configuration file: %s%s\n\n", configPath(g), note)
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
			for _, s := range settings {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, showValue(s.Value), s.Source)
			}
			return tw.Flush()
		},
	})
	return cmd
}

// showValue prints a value as the flags take it: lists comma-separated.
func showValue(v any) string {
	switch v := v.(type) {
	case []string:
		return joinOr(v, "(none)")
	case string:
		if v == "" {
			return `""`
		}
		return v
	case fmt.Stringer:
		return v.String()
	}
	return strings.TrimSpace(fmt.Sprint(v))
}
