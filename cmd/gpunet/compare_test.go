package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompareCommand: the same picture with its pixels moved by one value
// agrees; with a quarter painted over it differs; a file that is not an
// image is one line and exit 1.
func TestCompareCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	dir := t.TempDir()
	write := func(name string, paint func(x, y int) color.Color) string {
		m := image.NewRGBA(image.Rect(0, 0, 64, 64))
		for y := range 64 {
			for x := range 64 {
				m.Set(x, y, paint(x, y))
			}
		}
		var b bytes.Buffer
		if err := png.Encode(&b, m); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := func(x, y int) color.Color { return color.RGBA{uint8(3 * x), uint8(3 * y), 90, 255} }
	a := write("a.png", base)
	near := write("near.png", func(x, y int) color.Color {
		c := base(x, y).(color.RGBA)
		c.R++
		return c
	})
	far := write("far.png", func(x, y int) color.Color {
		if x < 32 && y < 32 {
			return color.White
		}
		return base(x, y)
	})
	ctx, cancel := context.WithTimeout(context.Background(), fcWait)
	defer cancel()
	var r compareResult
	runJSON(t, ctx, &r, "compare", "--json", a, near)
	if !r.Agree || r.Distance <= 0 || r.Distance > r.Tolerance {
		t.Errorf("a copy one value off: %+v", r)
	}
	runJSON(t, ctx, &r, "compare", "--json", a, far)
	if r.Agree {
		t.Errorf("a quarter painted over: %+v", r)
	}
	out, err := exec.CommandContext(ctx, gpunetBin, "compare", a, filepath.Join(dir, "..", filepath.Base(dir), "a.png.missing")).CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("a missing file: %v, printed %q", err, out)
	}
}
