package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the layering of docs/architecture.md:
// protocol is a leaf; kernel and scheduler import only protocol.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/gpunet/gpunet/"
	allowed := map[string][]string{
		"protocol":  nil,
		"kernel":    {"protocol"},
		"scheduler": {"protocol"},
	}
	for pkg, ok := range allowed {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "../../"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			rel, ours := strings.CutPrefix(dep, mod)
			if !ours || rel == pkg || strings.HasPrefix(rel, pkg+"/") {
				continue
			}
			allowedDep := false
			for _, a := range ok {
				if rel == a {
					allowedDep = true
				}
			}
			if !allowedDep {
				t.Errorf("%s imports %s; it may import only %v of this module", pkg, rel, ok)
			}
		}
	}
}
