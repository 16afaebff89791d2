package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the layering of docs/architecture.md:
// protocol is a leaf; kernel, scheduler and the store import only
// protocol; the node's surfaces (local API, metrics, dashboard) and the
// config file's format are rooms with a door to the node, which imports
// none of them, nor they each other.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/gpunet/gpunet/"
	deps := func(pkg string) []string {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "../../"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		var ours []string
		for _, dep := range strings.Fields(string(out)) {
			if rel, ok := strings.CutPrefix(dep, mod); ok && rel != pkg && !strings.HasPrefix(rel, pkg+"/") {
				ours = append(ours, rel)
			}
		}
		return ours
	}
	// Packages whose every import of this module is listed.
	only := map[string][]string{
		"protocol":       nil,
		"kernel":         {"protocol"},
		"kernel/backend": {"protocol", "kernel"}, // backends as kernels: no node
		"scheduler":      {"protocol"},
		"node/store":     {"protocol"},
		"node/providers": nil, // the DHT's records on disk: libraries only
		"node/nodeconf":  nil,
		"node/reach":     nil,                       // NAT, relays, swarm keys: how the libp2p host is built; libraries only
		"node/trust":     {"protocol"},              // checks, verdicts, fraud proofs: the node only through trust.Runner
		"node/sampling":  {"protocol", "scheduler"}, // probes, idle notices, peer sampling: the node only through sampling.Node
	}
	for pkg, ok := range only {
		for _, dep := range deps(pkg) {
			if !slices.Contains(ok, dep) {
				t.Errorf("%s imports %s; it may import only %v of this module", pkg, dep, ok)
			}
		}
	}
	// Packages that must not import these.
	never := map[string][]string{
		"node":          {"node/localapi", "node/metrics", "node/web", "node/openai", "node/nodeconf", "node/swarm", "node/gateway", "node/nodetest", "node/scale", "kernel/backend"},
		"node/metrics":  {"node/localapi", "node/web", "node/openai", "node/swarm"},
		"node/web":      {"node/metrics", "node/openai", "node/swarm"},
		"node/localapi": {"node/metrics", "node/web", "node/openai", "node/swarm"},
		"node/openai":   {"node/metrics", "node/web", "node/swarm"},
		"node/gateway":  {"node/metrics", "node/web", "node/swarm", "node/nodeconf"},
	}
	for pkg, banned := range never {
		for _, dep := range deps(pkg) {
			if slices.Contains(banned, dep) || strings.HasPrefix(dep, "cmd/") {
				t.Errorf("%s imports %s: the node's rooms open onto the node, not onto each other", pkg, dep)
			}
		}
	}
}
