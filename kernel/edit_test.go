package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

// photo paints a w×h test picture whose structure is easy to tell apart:
// "disc" is a bright disc on a dark diagonal gradient, "stripes" vertical
// bands. Both have colour, so a restyle has something to change.
func photo(kind string, w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			var c color.RGBA
			switch kind {
			case "disc":
				dx, dy := x-w/2, y-h/2
				if dx*dx+dy*dy < (w/3)*(w/3) {
					c = color.RGBA{240, 220, 120, 255}
				} else {
					v := uint8(20 + 60*(x+y)/(w+h))
					c = color.RGBA{v, v / 2, v + 40, 255}
				}
			case "stripes":
				if (x/(w/8))%2 == 0 {
					c = color.RGBA{30, 200, 60, 255}
				} else {
					c = color.RGBA{200, 30, 180, 255}
				}
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

func encodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// editTask is a normalised sketch task naming images (raw CIDs of their
// bytes) and mask, with the Inputs that go with it.
func editTask(t testing.TB, prompt string, seed uint64, side, steps uint32, params map[string]string, mask []byte, images ...[]byte) (protocol.Task, Inputs) {
	t.Helper()
	task := protocol.Task{Prompt: prompt, Seed: seed, Width: side, Height: side, Steps: steps, Params: params}
	return withInputs(t, task, mask, images...)
}

// withInputs is task naming images (raw CIDs of their bytes) and mask,
// normalised, with the Inputs that go with it.
func withInputs(t testing.TB, task protocol.Task, mask []byte, images ...[]byte) (protocol.Task, Inputs) {
	t.Helper()
	for _, b := range images {
		task.Inputs = append(task.Inputs, protocol.Link{Cid: protocol.RawCID(b)})
	}
	if mask != nil {
		task.Mask = &protocol.Link{Cid: protocol.RawCID(mask)}
	}
	task, err := task.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return task, Inputs{Images: images, Mask: mask}
}

func runEdit(t testing.TB, task protocol.Task, in Inputs) []byte {
	t.Helper()
	out, err := Sketch{}.Edit(context.Background(), task, in, nil, nil, nil)
	if err != nil {
		t.Fatalf("Edit: %v", err)
	}
	if len(out) != 1 || out[0].MediaType != "image/png" {
		t.Fatalf("outputs %+v, want one image/png", out)
	}
	return out[0].Data
}

// mad is the mean absolute difference of two same-sized images over RGB,
// in levels of 255.
func mad(a, b *image.RGBA) float64 {
	sum := 0
	for i := range a.Pix {
		if i%4 != 3 {
			sum += abs(int(a.Pix[i]) - int(b.Pix[i]))
		}
	}
	return float64(sum) / float64(len(a.Pix)/4*3)
}

// lumaCorr is the correlation of two images' luminance.
func lumaCorr(a, b *image.RGBA) float64 {
	luma := func(p []uint8, i int) float64 { return 0.3*float64(p[i]) + 0.59*float64(p[i+1]) + 0.11*float64(p[i+2]) }
	var sa, sb, saa, sbb, sab float64
	n := float64(len(a.Pix) / 4)
	for i := 0; i < len(a.Pix); i += 4 {
		x, y := luma(a.Pix, i), luma(b.Pix, i)
		sa, sb, saa, sbb, sab = sa+x, sb+y, saa+x*x, sbb+y*y, sab+x*y
	}
	cov := sab/n - sa/n*sb/n
	return cov / math.Sqrt((saa/n-sa/n*sa/n)*(sbb/n-sb/n*sb/n))
}

const editPrompt = "a harbour at dusk with boats"

// TestSketchEditRecognisable: the edit of a photo is restyled (far from
// the photo itself) yet much nearer to it than to another photo's edit
// input, and its light and shade follow the photo's.
func TestSketchEditRecognisable(t *testing.T) {
	const side = 128
	discPNG, stripesPNG := encodePNG(t, photo("disc", 256, 256)), encodePNG(t, photo("stripes", 256, 256))
	disc, stripes := resize(photo("disc", 256, 256), side, side), resize(photo("stripes", 256, 256), side, side)
	task, in := editTask(t, editPrompt, 5, side, 8, nil, nil, discPNG)
	out := decodePNG(t, runEdit(t, task, in))

	near, far := mad(out, disc), mad(out, stripes)
	t.Logf("mean |out−photo| %.1f, |out−other photo| %.1f; luma correlation %.2f with the photo, %.2f with the other",
		near, far, lumaCorr(out, disc), lumaCorr(out, stripes))
	if near < 8 {
		t.Errorf("edit is %.1f levels from its photo: hardly restyled", near)
	}
	if near > far/2 {
		t.Errorf("edit is %.1f levels from its photo and %.1f from another: not recognisably its photo", near, far)
	}
	// The photo, not the prompt, makes most of the picture: the edit of
	// another photo with the same prompt and seed is further off still.
	taskS, inS := editTask(t, editPrompt, 5, side, 8, nil, nil, stripesPNG)
	if other := mad(out, decodePNG(t, runEdit(t, taskS, inS))); near > other/2 {
		t.Errorf("edit is %.1f levels from its photo and %.1f from the edit of another: not recognisably its photo", near, other)
	} else {
		t.Logf("mean |out−edit of the other photo| %.1f", other)
	}
	if c := lumaCorr(out, disc); c < 0.8 {
		t.Errorf("luminance correlation with the photo %.2f, want ≥ 0.8", c)
	}
	if c := lumaCorr(out, stripes); math.Abs(c) > 0.3 {
		t.Errorf("luminance correlation with another photo %.2f, want near 0", c)
	}

	// The prompt restyles: another prompt, same photo, other picture.
	task2, in2 := editTask(t, "snowy mountains at noon", 5, side, 8, nil, nil, discPNG)
	if d := mad(out, decodePNG(t, runEdit(t, task2, in2))); d < 5 {
		t.Errorf("two prompts give edits %.1f levels apart: the prompt barely matters", d)
	}
}

// TestSketchEditStrength: each strength gives other bytes, and a higher
// one moves further from the photo.
func TestSketchEditStrength(t *testing.T) {
	const side = 96
	img := photo("disc", side, side)
	b := encodePNG(t, img)
	prev, prevBytes := -1.0, []byte(nil)
	for _, s := range []string{"0.1", "0.35", "0.6", "0.85", "1"} {
		task, in := editTask(t, editPrompt, 3, side, 6, map[string]string{"strength": s}, nil, b)
		out := runEdit(t, task, in)
		if bytes.Equal(out, prevBytes) {
			t.Errorf("strength %s gives the bytes of the strength below", s)
		}
		d := mad(decodePNG(t, out), img)
		t.Logf("strength %s: %.1f levels from the photo", s, d)
		if d <= prev+1 {
			t.Errorf("strength %s is %.1f levels from the photo, the strength below %.1f: want further", s, d, prev)
		}
		prev, prevBytes = d, out
	}
	// No strength param is DefaultStrength.
	task, in := editTask(t, editPrompt, 3, side, 6, nil, nil, b)
	taskDef, inDef := editTask(t, editPrompt, 3, side, 6, map[string]string{"strength": "0.6"}, nil, b)
	if a, d := decodePNG(t, runEdit(t, task, in)), decodePNG(t, runEdit(t, taskDef, inDef)); !bytes.Equal(a.Pix, d.Pix) {
		t.Errorf("no strength param and strength 0.6 paint different pixels")
	}
}

// TestSketchEditInputBytesMatter: one pixel of the photo, changed by one
// level where scaling rounds it away, still changes the output bytes.
func TestSketchEditInputBytesMatter(t *testing.T) {
	img := photo("disc", 256, 256)
	a := encodePNG(t, img)
	img.Pix[4*(100*256+100)]++
	b := encodePNG(t, img)
	taskA, inA := editTask(t, editPrompt, 1, 64, 4, nil, nil, a)
	taskB, inB := editTask(t, editPrompt, 1, 64, 4, nil, nil, b)
	if bytes.Equal(runEdit(t, taskA, inA), runEdit(t, taskB, inB)) {
		t.Error("a one-pixel change in the photo gives the same output bytes")
	}
}

// TestSketchEditMask: opaque mask pixels keep the scaled photo exactly,
// transparent ones get the edit.
func TestSketchEditMask(t *testing.T) {
	const side = 96
	img := photo("disc", 192, 192)
	b := encodePNG(t, img)
	src := resize(img, side, side)

	opaque := image.NewNRGBA(image.Rect(0, 0, 48, 48))
	for i := 3; i < len(opaque.Pix); i += 4 {
		opaque.Pix[i] = 255
	}
	task, in := editTask(t, editPrompt, 9, side, 6, nil, encodePNG(t, opaque), b)
	if out := decodePNG(t, runEdit(t, task, in)); !bytes.Equal(out.Pix, src.Pix) {
		t.Errorf("an opaque mask changed the photo (%.2f levels on average)", mad(out, src))
	}

	// Left half kept, right half edited; the mask is a quarter of the
	// output's size, so it is scaled too.
	half := image.NewNRGBA(image.Rect(0, 0, 48, 48))
	for y := range 48 {
		for x := range 24 {
			half.Pix[half.PixOffset(x, y)+3] = 255
		}
	}
	task, in = editTask(t, editPrompt, 9, side, 6, nil, encodePNG(t, half), b)
	out := decodePNG(t, runEdit(t, task, in))
	// Scaling the mask blends the two columns at the border.
	left, right := image.Rect(0, 0, side/2-2, side), image.Rect(side/2+2, 0, side, side)
	if d := madIn(out, src, left); d != 0 {
		t.Errorf("kept half differs from the photo by %.2f levels", d)
	}
	if d := madIn(out, src, right); d < 8 {
		t.Errorf("edited half is %.1f levels from the photo: not edited", d)
	}
}

// madIn is mad over r only.
func madIn(a, b *image.RGBA, r image.Rectangle) float64 {
	ca, cb := image.NewRGBA(r), image.NewRGBA(r)
	draw.Draw(ca, r, a, r.Min, draw.Src)
	draw.Draw(cb, r, b, r.Min, draw.Src)
	return mad(ca, cb)
}

// TestSketchEditDeterministic: concurrent edits of one task agree to the
// byte, from a JPEG as from a PNG, and previews change nothing.
func TestSketchEditDeterministic(t *testing.T) {
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, photo("disc", 200, 150), &jpeg.Options{Quality: 80}); err != nil {
		t.Fatal(err)
	}
	task, in := editTask(t, editPrompt, 11, 128, 6, map[string]string{"strength": "0.75"}, nil, jb.Bytes())
	const n = 4
	outs := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			o, err := Sketch{}.Edit(context.Background(), task, in, nil, nil, nil)
			if err != nil {
				t.Error(err)
				return
			}
			outs[i] = o[0].Data
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if !bytes.Equal(outs[0], outs[i]) {
			t.Fatalf("run %d differs from run 0", i)
		}
	}
	var shown []int
	var steps []int
	o, err := Sketch{}.Edit(context.Background(), task, in, func(k, _ int) { steps = append(steps, k) }, PreviewSteps(6, 2),
		func(step int, b []byte) {
			if _, err := png.DecodeConfig(bytes.NewReader(b)); err != nil {
				t.Errorf("preview at %d: %v", step, err)
			}
			shown = append(shown, step)
		})
	if err != nil || !bytes.Equal(o[0].Data, outs[0]) {
		t.Fatalf("Edit with previews: %v, or other bytes than without", err)
	}
	if len(shown) != 2 || len(steps) != 6 {
		t.Errorf("previews at %v, progress %v: want 2 previews and 6 steps", shown, steps)
	}
}

func TestSketchEditRejects(t *testing.T) {
	good := encodePNG(t, photo("disc", 64, 64))
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		task   func() (protocol.Task, Inputs)
		badTsk bool // wraps ErrBadTask
		want   string
	}{
		{"two images", func() (protocol.Task, Inputs) {
			return editTask(t, "x", 1, 64, 1, nil, nil, good, encodePNG(t, photo("stripes", 64, 64)))
		}, true, "sketch-v1 edits one image; got 2"},
		{"garbage", func() (protocol.Task, Inputs) {
			return editTask(t, "x", 1, 64, 1, nil, nil, []byte("GIF89a not really"))
		}, true, "input 0: not a PNG, JPEG or WebP image"},
		{"truncated png", func() (protocol.Task, Inputs) {
			return editTask(t, "x", 1, 64, 1, nil, nil, good[:len(good)/2])
		}, true, "input 0: corrupt png"},
		{"mask not an image", func() (protocol.Task, Inputs) {
			return editTask(t, "x", 1, 64, 1, nil, []byte("mask"), good)
		}, true, "mask: not a PNG"},
		{"strength", func() (protocol.Task, Inputs) {
			return editTask(t, "x", 1, 64, 1, map[string]string{"strength": "1.5"}, nil, good)
		}, true, `strength "1.5"`},
		{"bytes do not match the CID", func() (protocol.Task, Inputs) {
			task, in := editTask(t, "x", 1, 64, 1, nil, nil, good)
			in.Images = [][]byte{encodePNG(t, photo("stripes", 64, 64))}
			return task, in
		}, false, "do not hash to"},
		{"images missing", func() (protocol.Task, Inputs) {
			task, _ := editTask(t, "x", 1, 64, 1, nil, nil, good)
			return task, Inputs{}
		}, false, "0 input images given for a task that names 1"},
		{"mask missing", func() (protocol.Task, Inputs) {
			task, in := editTask(t, "x", 1, 64, 1, nil, good, good)
			in.Mask = nil
			return task, in
		}, false, "names a mask but none was given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			task, in := tc.task()
			_, err := Sketch{}.Edit(ctx, task, in, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, protocol.ErrBadTask) != tc.badTsk {
				t.Errorf("Edit error %v, want one containing %q (ErrBadTask: %v)", err, tc.want, tc.badTsk)
			}
		})
	}
	t.Run("Run with inputs", func(t *testing.T) {
		task, _ := editTask(t, "x", 1, 64, 1, nil, nil, good)
		if _, err := (Sketch{}).Run(ctx, task, nil); !errors.Is(err, ErrInputsNotGiven) {
			t.Errorf("Run of a task with inputs: %v, want ErrInputsNotGiven", err)
		}
	})
}

// TestSketchEditWithoutInputsIsRun: Edit of a plain task paints Run's bytes.
func TestSketchEditWithoutInputsIsRun(t *testing.T) {
	task := sketchTask(t, editPrompt, "", 4, 64, 64, 3)
	out, err := Sketch{}.Edit(context.Background(), task, Inputs{}, nil, nil, nil)
	if err != nil || !bytes.Equal(out[0].Data, runSketch(t, task)) {
		t.Errorf("Edit without inputs: %v, or other bytes than Run", err)
	}
}

// pngHeader is a PNG signature and an IHDR claiming w×h, with a valid CRC
// and nothing after: what a decompression bomb shows before its data.
func pngHeader(w, h uint32) []byte {
	ihdr := []byte("IHDR")
	ihdr = binary.BigEndian.AppendUint32(ihdr, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0) // 8-bit RGBA, no interlace
	b := append([]byte(nil), pngSignature...)
	b = binary.BigEndian.AppendUint32(b, 13)
	b = append(b, ihdr...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(ihdr))
}

// jpegHeader is SOI, a baseline SOF0 claiming w×h with three components,
// and the start of an SOS: as far as a decoder reads for the size.
func jpegHeader(w, h uint16) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xc0, 0, 17, 8}
	b = binary.BigEndian.AppendUint16(b, h)
	b = binary.BigEndian.AppendUint16(b, w)
	return append(b, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xff, 0xda, 0, 12)
}

// webpHeader is a RIFF WEBP with a VP8X chunk claiming a w×h canvas.
func webpHeader(w, h uint32) []byte {
	b := []byte("RIFF\x16\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00")
	b = append(b, byte(w-1), byte((w-1)>>8), byte((w-1)>>16), byte(h-1), byte((h-1)>>8), byte((h-1)>>16))
	return b
}

// tinyWebP is a 1×1 lossless WebP.
var tinyWebP = []byte("RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00")

// TestDecodeInputBombs: a header claiming a huge picture is refused from
// the header, before anything the size of the picture is allocated.
func TestDecodeInputBombs(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"png 100000x100000", pngHeader(100000, 100000), "png of 100000x100000, at most 4096 pixels a side"},
		{"png 4097x8", pngHeader(4097, 8), "at most 4096 pixels a side"},
		{"jpeg 65535x65535", jpegHeader(65535, 65535), "jpeg of 65535x65535"},
		{"webp 40000x40000", webpHeader(40000, 40000), "webp of 40000x40000"},
		{"png 0x0", pngHeader(0, 0), "input image: corrupt png header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			img, err := DecodeInput(tc.b)
			runtime.ReadMemStats(&after)
			if err == nil || !errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeInput: %v, want ErrBadTask containing %q", err, tc.want)
			}
			if img != nil {
				t.Error("an image with the error")
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("refusing it allocated %d bytes", n)
			}
		})
	}
	if _, err := DecodeInputConfig(make([]byte, MaxInputBytes+1)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("DecodeInputConfig of a file over MaxInputBytes: %v", err)
	}
}

// TestDecodeInputFormats: PNG, JPEG and WebP decode, with the header's size.
func TestDecodeInputFormats(t *testing.T) {
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, photo("disc", 40, 30), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		b      []byte
		format string
		w, h   int
	}{
		{encodePNG(t, photo("stripes", 16, 24)), "png", 16, 24},
		{jb.Bytes(), "jpeg", 40, 30},
		{tinyWebP, "webp", 1, 1},
		{pngHeader(4096, 4096), "png", 4096, 4096}, // at the bound: the header passes
	} {
		cfg, err := DecodeInputConfig(tc.b)
		if err != nil || cfg != (InputConfig{Width: tc.w, Height: tc.h, Format: tc.format}) {
			t.Errorf("DecodeInputConfig: %+v, %v; want %s %dx%d", cfg, err, tc.format, tc.w, tc.h)
		}
		if tc.w == 4096 {
			continue // only a header
		}
		img, err := DecodeInput(tc.b)
		if err != nil || img.Bounds().Dx() != tc.w || img.Bounds().Dy() != tc.h {
			t.Errorf("DecodeInput %s: %v", tc.format, err)
		}
	}
}

func TestParseStrength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int // 0: an error
	}{
		{"", DefaultStrength},
		{"0.6", 600},
		{"0.75", 750},
		{"0.001", 1},
		{".5", 500},
		{"1", 1000},
		{"1.0", 1000},
		{"1.000", 1000},
		{"0.999", 999},
		{"0", 0},
		{"0.0", 0},
		{"0.0001", 0},
		{"1.001", 0},
		{"1.5", 0},
		{"2", 0},
		{"-0.5", 0},
		{"+0.5", 0},
		{"0.5.1", 0},
		{"1e-1", 0},
		{"0.", 0},
		{".", 0},
		{"NaN", 0},
		{" 0.5", 0},
		{"00.5", 0},
		{"0,5", 0},
	} {
		got, err := ParseStrength(tc.in)
		switch {
		case tc.want == 0 && (err == nil || !errors.Is(err, protocol.ErrBadTask)):
			t.Errorf("ParseStrength(%q) = %d, %v; want ErrBadTask", tc.in, got, err)
		case tc.want != 0 && (err != nil || got != tc.want):
			t.Errorf("ParseStrength(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// TestResize: same size is the identity; a flat picture stays flat either
// way; shrinking averages every source pixel.
func TestResize(t *testing.T) {
	src := photo("disc", 30, 20)
	if got := resize(src, 30, 20); !bytes.Equal(got.Pix, src.Pix) {
		t.Error("resize to the same size changed the picture")
	}
	flat := image.NewRGBA(image.Rect(0, 0, 7, 5))
	for i := range flat.Pix {
		flat.Pix[i] = uint8(100 + i%4)
	}
	for _, size := range [][2]int{{3, 2}, {64, 40}, {7, 64}} {
		got := resize(flat, size[0], size[1])
		for i, v := range got.Pix {
			if v != uint8(100+i%4) {
				t.Fatalf("flat 7x5 resized to %v: byte %d is %d", size, i, v)
			}
		}
	}
	// A 1-pixel line in 4 columns shrunk to one: a quarter of its level.
	line := image.NewRGBA(image.Rect(0, 0, 4, 1))
	line.Pix[4] = 200
	if got := resize(line, 1, 1); got.Pix[0] != 50 {
		t.Errorf("4 pixels (0 200 0 0) shrunk to one: %d, want 50", got.Pix[0])
	}
}

func FuzzDecodeInput(f *testing.F) {
	var jb bytes.Buffer
	_ = jpeg.Encode(&jb, photo("disc", 16, 16), nil)
	f.Add(encodePNG(f, photo("stripes", 16, 16)))
	f.Add(jb.Bytes())
	f.Add(tinyWebP)
	f.Add(pngHeader(100000, 100000))
	f.Add(jpegHeader(9, 9))
	f.Add(webpHeader(3, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, cerr := DecodeInputConfig(b)
		img, err := DecodeInput(b)
		if err != nil {
			if !errors.Is(err, protocol.ErrBadTask) {
				t.Fatalf("error %v does not wrap ErrBadTask", err)
			}
			return
		}
		if cerr != nil {
			t.Fatalf("DecodeInput passed what DecodeInputConfig refused: %v", cerr)
		}
		r := img.Bounds()
		if r.Dx() != cfg.Width || r.Dy() != cfg.Height || r.Dx() > MaxInputSide || r.Dy() > MaxInputSide {
			t.Fatalf("decoded %v, header %+v", r, cfg)
		}
	})
}
