package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/kernel/backend"
)

// backendKinds are the KINDs of --backend KIND=URL.
var backendKinds = []string{"a1111", "comfyui", "openai"}

// backendFlagHelp is --backend's usage line.
const backendFlagHelp = `serve the models of an image backend you already run: KIND=URL[,OPTION=VALUE...], KIND one of a1111 (AUTOMATIC1111/Forge with --api), comfyui, openai (sd-server, LocalAI, another swarm's gpunet gateway); repeatable; options name=, prefix=, timeout=, key-env=VAR (API key from $VAR), workflow=FILE and img2img-workflow=FILE (comfyui); see docs/kernels.md`

// backendSpec is one parsed --backend value.
type backendSpec struct {
	kind, url string
	opts      map[string]string
}

// parseBackendSpec parses KIND=URL[,OPTION=VALUE...].
func parseBackendSpec(s string) (backendSpec, error) {
	kind, rest, ok := strings.Cut(strings.TrimSpace(s), "=")
	kind = strings.ToLower(kind)
	if !ok || rest == "" {
		return backendSpec{}, fmt.Errorf("--backend %q: want KIND=URL, e.g. a1111=http://127.0.0.1:7860", s)
	}
	known := false
	for _, k := range backendKinds {
		known = known || k == kind
	}
	if !known {
		return backendSpec{}, fmt.Errorf("--backend %q: unknown kind %q, want one of %s", s, kind, strings.Join(backendKinds, ", "))
	}
	parts := strings.Split(rest, ",")
	sp := backendSpec{kind: kind, url: parts[0], opts: map[string]string{}}
	allowed := map[string]bool{"name": true, "prefix": true, "timeout": true, "key-env": true}
	if kind == "comfyui" {
		allowed["workflow"], allowed["img2img-workflow"] = true, true
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !allowed[k] {
			return backendSpec{}, fmt.Errorf("--backend %q: option %q: want OPTION=VALUE with OPTION one of name, prefix, timeout, key-env%s",
				s, p, map[bool]string{true: ", workflow, img2img-workflow"}[kind == "comfyui"])
		}
		if _, dup := sp.opts[k]; dup {
			return backendSpec{}, fmt.Errorf("--backend %q: option %s given twice", s, k)
		}
		sp.opts[k] = v
	}
	return sp, nil
}

// options turns the spec's options into the adapter's.
func (sp backendSpec) options(log *slog.Logger) ([]backend.Option, error) {
	opts := []backend.Option{backend.WithLogger(log)}
	if v, ok := sp.opts["name"]; ok {
		opts = append(opts, backend.WithName(v))
	}
	if v, ok := sp.opts["prefix"]; ok {
		opts = append(opts, backend.WithPrefix(v))
	}
	if v, ok := sp.opts["timeout"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--backend %s: timeout=%s: want a duration such as 10m (0: none)", sp.kind, v)
		}
		opts = append(opts, backend.WithRunTimeout(d))
	}
	if v, ok := sp.opts["key-env"]; ok {
		// From the environment, not the command line, where any user of
		// the machine could read it in the process list.
		key := os.Getenv(v)
		if key == "" {
			return nil, fmt.Errorf("--backend %s: key-env=%s: $%s is empty; export the API key in it", sp.kind, v, v)
		}
		opts = append(opts, backend.WithAPIKey(key))
	}
	var graphs [2][]byte
	for i, k := range []string{"workflow", "img2img-workflow"} {
		if v, ok := sp.opts[k]; ok {
			b, err := os.ReadFile(v)
			if err != nil {
				return nil, fmt.Errorf("--backend comfyui: %s=%s: %w", k, v, err)
			}
			graphs[i] = b
		}
	}
	if graphs[0] != nil || graphs[1] != nil {
		opts = append(opts, backend.WithWorkflows(graphs[0], graphs[1]))
	}
	return opts, nil
}

// openBackend connects one adapter, health-checking it first.
func openBackend(ctx context.Context, sp backendSpec, log *slog.Logger) (kernel.Kernel, error) {
	opts, err := sp.options(log)
	if err != nil {
		return nil, err
	}
	switch sp.kind {
	case "a1111":
		return backend.NewA1111(ctx, sp.url, opts...)
	case "comfyui":
		return backend.NewComfyUI(ctx, sp.url, opts...)
	default:
		return backend.NewOpenAI(ctx, sp.url, opts...)
	}
}

// withBackends returns the host's kernel with the --backend adapters
// added: the adapters alone when --kernel was left at its default
// (kernelGiven false), else k and the adapters behind one backend.Multi.
// With no specs it returns k. Each backend must answer and list a model
// now, as a --kernel cmd generator must pass its check: a host must not
// start advertising models it cannot run.
func withBackends(specs []string, k kernel.Kernel, kernelGiven bool, log *slog.Logger) (kernel.Kernel, error) {
	if len(specs) == 0 {
		return k, nil
	}
	ctx, stop := signalContext()
	defer stop()
	var ks []kernel.Kernel
	if kernelGiven {
		ks = append(ks, k)
	}
	closeAll := func() {
		for _, b := range ks {
			if c, ok := b.(interface{ Close() error }); ok && b != k {
				_ = c.Close()
			}
		}
	}
	for _, s := range specs {
		sp, err := parseBackendSpec(s)
		if err != nil {
			closeAll()
			return nil, err
		}
		l := log.With("sub", "backend", "kind", sp.kind)
		b, err := openBackend(ctx, sp, l)
		if err != nil {
			closeAll()
			return nil, err
		}
		shown := sp.url
		if u, err := url.Parse(sp.url); err == nil {
			shown = u.Redacted()
		}
		l.Info("backend connected", "url", shown, "models", b.Models())
		ks = append(ks, b)
	}
	if len(ks) == 1 {
		return ks[0], nil
	}
	return backend.NewMulti(ks...), nil
}
