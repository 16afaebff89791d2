package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
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
// With an input image (Edit) it repaints the photo in the prompt's scene
// instead, starting from the photo rather than from noise.
//
// The same task gives byte-identical PNGs: composition and refinement use
// integer arithmetic only and the encoder runs at a fixed level. (The PNG
// bytes also depend on Go's compress/flate, so they hold across hosts built
// with the same Go release; the decoded pixels hold everywhere.)
//
// Sketch has no state and is safe for concurrent use.
type Sketch struct{}

var (
	_ Previewer = Sketch{}
	_ Editor    = Sketch{}
)

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
func (k Sketch) RunWithPreviews(ctx context.Context, t protocol.Task, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	if err := k.check(ctx, t); err != nil {
		return nil, err
	}
	if len(t.Inputs) > 0 {
		return nil, fmt.Errorf("%s: %w", SketchName, ErrInputsNotGiven)
	}
	w, h := int(t.Width), int(t.Height)
	target := compose(makePlan(t.Prompt, t.NegativePrompt, t.Seed), w, h, t.Seed).pix
	x := make([]uint16, len(target))
	seed := sketchNoiseSeed(t)
	for i := range x {
		x[i] = noiseAt(seed, i) << sketchFrac
	}
	r := sketchRun{w: w, h: h, steps: int(t.Steps), x: x, target: target}
	return r.run(ctx, progress, at, preview)
}

// Edit repaints the task's one input image in the prompt's scene
// (Editor). The image, scaled to the task's size, is laid as light and
// shade over the scene (hardLight), and the target is that picture mixed
// with the input by the strength param (ParseStrength). As diffusion
// img2img starts from the input noised by the strength, refinement starts
// from the input mixed with the seeded noise by it, then the steps run as
// in Run. Where the mask is opaque (alpha 255) the output is the scaled
// input exactly; where it is transparent (alpha 0) the edit; in between a
// blend by alpha. A task without inputs is RunWithPreviews.
//
// The bytes of the input and mask join the noise's seed, so any change to
// them changes the output even where scaling rounds it away.
func (k Sketch) Edit(ctx context.Context, t protocol.Task, in Inputs, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	if err := k.check(ctx, t); err != nil {
		return nil, err
	}
	if err := in.Check(t); err != nil {
		return nil, err
	}
	if len(t.Inputs) == 0 {
		return k.RunWithPreviews(ctx, t, progress, at, preview)
	}
	if len(t.Inputs) > 1 {
		// Reference images would need a model that understands them;
		// painting them in somehow would pretend to.
		return nil, fmt.Errorf("%w: %s edits one image; got %d", protocol.ErrBadTask, SketchName, len(t.Inputs))
	}
	strength, err := ParseStrength(t.Params["strength"])
	if err != nil {
		return nil, err
	}
	w, h := int(t.Width), int(t.Height)
	photo, err := decodeInput(in.Images[0], "input 0")
	if err != nil {
		return nil, err
	}
	src := resize(toRGBA8(photo), w, h)
	var keep []uint8 // the mask's alpha at the output size; nil: edit everywhere
	if in.Mask != nil {
		m, err := decodeInput(in.Mask, "mask")
		if err != nil {
			return nil, err
		}
		mr := resize(toRGBA8(m), w, h)
		keep = make([]uint8, w*h)
		for i := range keep {
			keep[i] = mr.Pix[4*i+3]
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	scene := compose(makePlan(t.Prompt, t.NegativePrompt, t.Seed), w, h, t.Seed).pix
	seed := sketchNoiseSeed(t)
	// The CIDs are sha2-256 of the bytes (in.Check): their digests are
	// the bytes' hash for free.
	seed ^= mix64(linkWord(t.Inputs[0]) + 2)
	if t.Mask != nil {
		seed ^= mix64(linkWord(*t.Mask) + 3)
	}
	target := make([]uint8, len(scene))
	x := make([]uint16, len(scene))
	srcRGB := make([]uint8, len(scene))
	for p := range w * h {
		s := src.Pix[4*p:][:3]
		// Rec. 601 luma in 8 bits.
		l := (77*int32(s[0]) + 150*int32(s[1]) + 29*int32(s[2]) + 128) >> 8
		// The share of the edit here, in thousandths.
		a := int32(strength)
		if keep != nil {
			a = a * (255 - int32(keep[p])) / 255
		}
		for c := range 3 {
			i := 3*p + c
			sv := int32(s[c])
			srcRGB[i] = s[c]
			target[i] = uint8(sv + (hardLight(int32(scene[i]), l)-sv)*a/1000)
			n := int32(noiseAt(seed, i))
			x[i] = uint16(sv+(n-sv)*a/1000) << sketchFrac
		}
	}
	r := sketchRun{w: w, h: h, steps: int(t.Steps), x: x, target: target, src: srcRGB, keep: keep}
	return r.run(ctx, progress, at, preview)
}

// check is what every sketch entry point checks first.
func (Sketch) check(ctx context.Context, t protocol.Task) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.Model != protocol.DefaultModel {
		return fmt.Errorf("%w: %s serves %s, not %q", protocol.ErrBadTask, SketchName, protocol.DefaultModel, t.Model)
	}
	return t.Validate()
}

// sketchNoiseSeed seeds the noise field. The prompt's hash joins the seed,
// so two prompts that compose the same scene (say, differing only in stop
// words) still give different bytes.
func sketchNoiseSeed(t protocol.Task) uint64 {
	return t.Seed ^ mix64(hashWord(t.Prompt)) ^ mix64(hashWord(t.NegativePrompt)+1)
}

// noiseAt is sample i of the noise field seeded by seed, 0..255.
func noiseAt(seed uint64, i int) uint16 {
	return uint16(mix64(seed+uint64(i)*0x9e3779b97f4a7c15) >> 56)
}

// linkWord is the first 8 bytes of a sha2-256 CID's digest.
func linkWord(l protocol.Link) uint64 {
	h := l.Hash()
	return binary.BigEndian.Uint64(h[len(h)-32:])
}

// sketchRun is one run's refinement: x, the fixed-point buffer, moves
// towards target over steps passes.
type sketchRun struct {
	w, h, steps int
	x           []uint16
	target      []uint8
	// An edit with a mask: src is the scaled input (RGB) and keep its
	// share per pixel (the mask's alpha), laid over each image shown.
	src, keep []uint8
}

func (r *sketchRun) run(ctx context.Context, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	tmp := make([]uint16, len(r.x))
	for s := 1; s <= r.steps; s++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Pull strength rises linearly to 7/8 at the last step, so the
		// final image keeps a trace of the blurred history: soft edges,
		// and grain when steps are few.
		refine(r.x, tmp, r.target, r.w, r.h, int32(224*s/r.steps))
		for len(at) > 0 && at[0] < s {
			at = at[1:]
		}
		// The last step's image is the output, not a preview.
		if preview != nil && len(at) > 0 && at[0] == s && s < r.steps {
			if b, err := encodePreview(r.image()); err == nil {
				preview(s, b)
			}
		}
		if progress != nil {
			progress(s, r.steps)
		}
	}

	var buf bytes.Buffer
	// BestSpeed: a fixed level keeps bytes stable, and the fastest one
	// keeps encoding small beside the refinement.
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, r.image()); err != nil {
		return nil, fmt.Errorf("encoding png: %w", err)
	}
	return []Output{{MediaType: "image/png", Data: buf.Bytes()}}, nil
}

// image is the run's picture as it stands. Under a mask the kept input is
// laid over it last: blurring in refine spreads the edit a few pixels, and
// an opaque mask pixel must come out as the input, exactly.
func (r *sketchRun) image() *image.RGBA {
	img := toRGBA(r.x, r.w, r.h)
	if r.keep == nil {
		return img
	}
	for p, a := range r.keep {
		if a == 0 {
			continue
		}
		k := uint32(a)
		for c := range 3 {
			o := &img.Pix[4*p+c]
			*o = uint8((uint32(*o)*(255-k) + uint32(r.src[3*p+c])*k + 127) / 255)
		}
	}
	return img
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
