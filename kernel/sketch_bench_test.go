package kernel

import (
	"context"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

func benchTask(b *testing.B, w, h, steps uint32) protocol.Task {
	b.Helper()
	t, err := protocol.Task{Prompt: "a harbour at dusk, mountains and a forest", Seed: 42, Width: w, Height: h, Steps: steps}.Normalize()
	if err != nil {
		b.Fatal(err)
	}
	return t
}

// BenchmarkSketch512 is the default task: 512x512, 20 steps.
func BenchmarkSketch512(b *testing.B) {
	t := benchTask(b, 512, 512, 20)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (Sketch{}).Run(context.Background(), t, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSketch512Steps1 isolates composition and encoding from the
// per-step cost: the difference to BenchmarkSketch512 is 19 steps.
func BenchmarkSketch512Steps1(b *testing.B) {
	t := benchTask(b, 512, 512, 1)
	for b.Loop() {
		if _, err := (Sketch{}).Run(context.Background(), t, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNoop(b *testing.B) {
	t, err := protocol.Task{Model: NoopModel, Prompt: "x", Seed: 1}.Normalize()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (Noop{}).Run(context.Background(), t, nil); err != nil {
			b.Fatal(err)
		}
	}
}
