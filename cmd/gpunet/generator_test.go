package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// The reference generator answers an edit as the sketch kernel does: the
// input_images of the contract reach Sketch.Edit, in serve mode too.
func TestGeneratorEdits(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	img.Set(3, 3, color.NRGBA{255, 0, 0, 255})
	var photo bytes.Buffer
	if err := png.Encode(&photo, img); err != nil {
		t.Fatal(err)
	}
	task, err := protocol.Task{Prompt: "as a watercolour", Steps: 3, Width: 64, Height: 64,
		Inputs: []protocol.Link{{Cid: protocol.RawCID(photo.Bytes())}}}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want, err := kernel.Sketch{}.Edit(ctx, task, kernel.Inputs{Images: [][]byte{photo.Bytes()}}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := json.Marshal(struct {
		protocol.Task
		InputImages [][]byte `json:"input_images"`
	}{task, [][]byte{photo.Bytes()}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := paint(ctx, line, &bytes.Buffer{})
	if err != nil || !bytes.Equal(got, want[0].Data) {
		t.Fatalf("paint: %d bytes, %v; want the sketch kernel's edit", len(got), err)
	}
	// Without its image the task is refused, not painted from the prompt.
	bare, _ := json.Marshal(task)
	if _, err := paint(ctx, bare, &bytes.Buffer{}); err == nil {
		t.Error("an edit without its input image was painted")
	}
	var out, errs bytes.Buffer
	if err := serveGenerator(ctx, bytes.NewReader(append(line, '\n')), &out, &errs); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "progress 1 3\n") || !bytes.HasSuffix(out.Bytes(), want[0].Data) {
		t.Errorf("serve mode answered %.60q (stderr %q)", out.String(), errs.String())
	}
}
