package kernel

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"

	"github.com/gpunet/gpunet/protocol"
)

// SketchName is the sketch kernel's name and version. Change the version
// whenever the bytes for some task change: manifests record it, and peers
// compare outputs by hash.
const SketchName = "sketch-v1"

// Sketch is the built-in image kernel: it draws a landscape from the words of
// the prompt on the CPU, with no model weights, so every host can serve
// protocol.DefaultModel and a network can be tried without GPUs.
//
// Known words choose what is in the picture (harbour, dusk, forest, night,
// mountains, snow, rain, colours, ...: see themes), every other word adds an
// element of its own (a planet, a hill, a streak of colour, sparkles, a
// cloud) hashed from the word, and negative-prompt words remove what they
// name. The seed picks the layout and, when the prompt does not, the hour.
// Then Steps refinement passes move the image from a seeded noise field
// towards the composition, as a diffusion sampler moves from noise to a
// picture, so cost grows with steps × pixels and few steps leave grain.
//
// The same task gives byte-identical PNGs: composition and refinement use
// integer arithmetic only and the encoder runs at a fixed level. (The PNG
// bytes also depend on Go's compress/flate, so they hold across hosts built
// with the same Go release; the decoded pixels hold everywhere.)
//
// Sketch has no state and is safe for concurrent use.
type Sketch struct{}

var _ Previewer = Sketch{}

// Name returns SketchName.
func (Sketch) Name() string { return SketchName }

// Models returns protocol.DefaultModel.
func (Sketch) Models() []string { return []string{protocol.DefaultModel} }

// sketchFrac is the fixed-point scale of the refinement buffers: 6 fraction
// bits keep 0..255 in a uint16 with room for rounding.
const sketchFrac = 6

// Run renders t as one PNG. t must be a normalised task for
// protocol.DefaultModel.
func (k Sketch) Run(ctx context.Context, t protocol.Task, progress Progress) ([]Output, error) {
	return k.RunWithPreviews(ctx, t, progress, nil, nil)
}

// RunWithPreviews is Run, showing at the steps in at the refinement buffer as
// it stands: the seeded noise pulled part of the way towards the scene, which
// is what the run has made so far. Encoding a preview reads the buffer and
// never writes it, so the output is Run's, byte for byte.
func (Sketch) RunWithPreviews(ctx context.Context, t protocol.Task, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.Model != protocol.DefaultModel {
		return nil, fmt.Errorf("%w: %s serves %s, not %q", protocol.ErrBadTask, SketchName, protocol.DefaultModel, t.Model)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	w, h, steps := int(t.Width), int(t.Height), int(t.Steps)
	// The prompt's hash joins the seed in the noise field, so two prompts
	// that compose the same scene (say, differing only in stop words) still
	// give different bytes.
	noiseSeed := t.Seed ^ mix64(hashWord(t.Prompt)) ^ mix64(hashWord(t.NegativePrompt)+1)
	target := compose(makePlan(t.Prompt, t.NegativePrompt, t.Seed), w, h, t.Seed).pix

	n := len(target)
	x := make([]uint16, n)
	tmp := make([]uint16, n)
	for i := range x {
		x[i] = uint16(mix64(noiseSeed+uint64(i)*0x9e3779b97f4a7c15)>>56) << sketchFrac
	}
	for s := 1; s <= steps; s++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Pull strength rises linearly to 7/8 at the last step, so the
		// final image keeps a trace of the blurred history: soft edges,
		// and grain when steps are few.
		refine(x, tmp, target, w, h, int32(224*s/steps))
		for len(at) > 0 && at[0] < s {
			at = at[1:]
		}
		// The last step's image is the output, not a preview.
		if preview != nil && len(at) > 0 && at[0] == s && s < steps {
			if b, err := encodePreview(toRGBA(x, w, h)); err == nil {
				preview(s, b)
			}
		}
		if progress != nil {
			progress(s, steps)
		}
	}

	var buf bytes.Buffer
	// BestSpeed: a fixed level keeps bytes stable, and the fastest one
	// keeps encoding small beside the refinement.
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, toRGBA(x, w, h)); err != nil {
		return nil, fmt.Errorf("encoding png: %w", err)
	}
	return []Output{{MediaType: "image/png", Data: buf.Bytes()}}, nil
}

// toRGBA rounds the fixed-point buffer x to an opaque w×h image.
func toRGBA(x []uint16, w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i, j := 0, 0; i < len(x); i, j = i+3, j+4 {
		img.Pix[j] = uint8(min((x[i]+1<<(sketchFrac-1))>>sketchFrac, 255))
		img.Pix[j+1] = uint8(min((x[i+1]+1<<(sketchFrac-1))>>sketchFrac, 255))
		img.Pix[j+2] = uint8(min((x[i+2]+1<<(sketchFrac-1))>>sketchFrac, 255))
		img.Pix[j+3] = 255
	}
	return img
}

// encodePreview encodes img as a PNG of at most protocol.MaxPreviewBytes,
// halving it until it fits. Early steps are mostly noise, which PNG barely
// compresses, so it starts at a size whose raw RGB fits the cap.
func encodePreview(img *image.RGBA) ([]byte, error) {
	for img.Rect.Dx()*img.Rect.Dy()*3 > protocol.MaxPreviewBytes {
		img = halve(img)
	}
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	for {
		var buf bytes.Buffer
		if err := enc.Encode(&buf, img); err != nil {
			return nil, fmt.Errorf("encoding preview: %w", err)
		}
		if buf.Len() <= protocol.MaxPreviewBytes {
			return buf.Bytes(), nil
		}
		if img.Rect.Dx() == 1 && img.Rect.Dy() == 1 {
			return nil, fmt.Errorf("preview of %d bytes at 1×1", buf.Len())
		}
		img = halve(img)
	}
}

// halve box-filters img to half its size (at least 1×1).
func halve(img *image.RGBA) *image.RGBA {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	hw, hh := max(w/2, 1), max(h/2, 1)
	out := image.NewRGBA(image.Rect(0, 0, hw, hh))
	for y := 0; y < hh; y++ {
		y0, y1 := min(2*y, h-1), min(2*y+1, h-1)
		for x := 0; x < hw; x++ {
			x0, x1 := min(2*x, w-1), min(2*x+1, w-1)
			o := out.PixOffset(x, y)
			for c := 0; c < 4; c++ {
				sum := int(img.Pix[img.PixOffset(x0, y0)+c]) + int(img.Pix[img.PixOffset(x1, y0)+c]) +
					int(img.Pix[img.PixOffset(x0, y1)+c]) + int(img.Pix[img.PixOffset(x1, y1)+c])
				out.Pix[o+c] = uint8((sum + 2) / 4)
			}
		}
	}
	return out
}

// refine is one denoising pass: a separable [1 2 1]/4 blur of x, then a pull
// of pull/256 towards target. x and tmp hold interleaved RGB in fixed point;
// target is RGB bytes.
func refine(x, tmp []uint16, target []uint8, w, h int, pull int32) {
	stride := 3 * w
	// Horizontal blur into tmp, edges clamped.
	for y := 0; y < h; y++ {
		row := x[y*stride : (y+1)*stride : (y+1)*stride]
		out := tmp[y*stride : (y+1)*stride : (y+1)*stride]
		for c := 0; c < 3; c++ {
			out[c] = uint16((3*uint32(row[c]) + uint32(row[c+3]) + 2) >> 2)
			last := stride - 3 + c
			out[last] = uint16((3*uint32(row[last]) + uint32(row[last-3]) + 2) >> 2)
		}
		for i := 3; i < stride-3; i++ {
			out[i] = uint16((uint32(row[i-3]) + 2*uint32(row[i]) + uint32(row[i+3]) + 2) >> 2)
		}
	}
	// Vertical blur back into x, with the pull towards target.
	for y := 0; y < h; y++ {
		up := tmp[max(y-1, 0)*stride:][:stride]
		mid := tmp[y*stride:][:stride]
		down := tmp[min(y+1, h-1)*stride:][:stride]
		tg := target[y*stride:][:stride]
		out := x[y*stride:][:stride]
		for i := range out {
			b := int32((uint32(up[i]) + 2*uint32(mid[i]) + uint32(down[i]) + 2) >> 2)
			out[i] = uint16(b + (int32(tg[i])<<sketchFrac-b)*pull/256)
		}
	}
}
