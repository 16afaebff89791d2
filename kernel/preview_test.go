package kernel

import (
	"bytes"
	"context"
	"image/png"
	"slices"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

func TestPreviewSteps(t *testing.T) {
	tests := []struct {
		total, n int
		want     []int
	}{
		{20, 0, nil},
		{20, -1, nil},
		{20, 1, []int{10}},
		{20, 2, []int{6, 13}},
		{20, 3, []int{5, 10, 15}},
		{4, 3, []int{1, 2, 3}},
		{3, 3, []int{1, 2}}, // never the last step: that image is the output
		{2, 3, []int{1}},
		{1, 3, nil},
		{0, 3, nil},
		{150, 3, []int{37, 75, 112}},
	}
	for _, tt := range tests {
		if got := PreviewSteps(tt.total, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("PreviewSteps(%d, %d) = %v, want %v", tt.total, tt.n, got, tt.want)
		}
	}
}

// Previews show the refinement buffer part way: each differs from the others
// and from the output, and asking for them leaves the output's bytes as they
// were.
func TestSketchRunWithPreviews(t *testing.T) {
	for _, size := range []uint32{64, 512} {
		task := sketchTask(t, "a harbour at dusk", "", 7, size, size, 12)
		want := runSketch(t, task)
		at := PreviewSteps(12, 3)
		var steps []int
		var previews [][]byte
		out, err := Sketch{}.RunWithPreviews(context.Background(), task, nil, at, func(step int, b []byte) {
			steps = append(steps, step)
			previews = append(previews, b)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || !bytes.Equal(out[0].Data, want) {
			t.Fatalf("%dpx: RunWithPreviews output differs from Run's", size)
		}
		if !slices.Equal(steps, at) {
			t.Fatalf("%dpx: previews at steps %v, want %v", size, steps, at)
		}
		final := decodePNG(t, want)
		var seen [][]byte
		for i, b := range previews {
			if len(b) == 0 || len(b) > protocol.MaxPreviewBytes {
				t.Errorf("%dpx: preview %d is %d bytes, cap %d", size, i, len(b), protocol.MaxPreviewBytes)
			}
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("%dpx: preview %d: %v", size, i, err)
			}
			if r := img.Bounds(); r.Dx() > int(size) || r.Dy() > int(size) || r.Dx() < 1 {
				t.Errorf("%dpx: preview %d is %v", size, i, r)
			}
			if img.Bounds() == final.Bounds() && bytes.Equal(decodePNG(t, b).Pix, final.Pix) {
				t.Errorf("%dpx: preview %d is the final image", size, i)
			}
			for j, o := range seen {
				if bytes.Equal(o, b) {
					t.Errorf("%dpx: previews %d and %d are the same", size, j, i)
				}
			}
			seen = append(seen, b)
		}
	}
}

// A preview at the last step, or at a step the run never reaches, is not sent.
func TestSketchPreviewsOnlyBeforeTheEnd(t *testing.T) {
	task := sketchTask(t, "snow", "", 1, 64, 64, 5)
	var steps []int
	if _, err := (Sketch{}).RunWithPreviews(context.Background(), task, nil, []int{0, 2, 5, 9}, func(step int, _ []byte) {
		steps = append(steps, step)
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps, []int{2}) {
		t.Errorf("previews at %v, want [2]", steps)
	}
}
