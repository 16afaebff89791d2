package backend

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"slices"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// checkOutput reports whether data is a whole PNG of the task's size. A
// backend that answers another size (one that rounds sizes, or ignored the
// request) is refused rather than passed on: the output goes out under a
// TaskCID that promises width × height.
func checkOutput(kind string, data []byte, t protocol.Task) error {
	switch {
	case len(data) == 0:
		return fmt.Errorf("%s backend answered no image", kind)
	case len(data) > protocol.MaxBlockBytes:
		return fmt.Errorf("%s backend answered an image of %d bytes, at most %d", kind, len(data), protocol.MaxBlockBytes)
	case !bytes.HasPrefix(data, pngSignature):
		return fmt.Errorf("%s backend answered an image that is not a PNG (starts % x): set its output format to PNG", kind, data[:min(len(data), 8)])
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s backend answered a corrupt PNG: %w", kind, err)
	}
	if cfg.Width != int(t.Width) || cfg.Height != int(t.Height) {
		return fmt.Errorf("%s backend answered a %dx%d image for a %dx%d task: it does not honour the size, so its result is refused",
			kind, cfg.Width, cfg.Height, t.Width, t.Height)
	}
	// The whole picture, not only its header: a truncated file must not
	// become a result.
	if _, err := png.Decode(bytes.NewReader(data)); err != nil {
		return fmt.Errorf("%s backend answered a corrupt PNG: %w", kind, err)
	}
	return nil
}

// decodeAny decodes a PNG, JPEG or WebP picture (a backend's preview).
func decodeAny(b []byte) (image.Image, error) {
	if _, err := kernel.DecodeInputConfig(b); err != nil {
		return nil, err // bounds checked before decoding
	}
	switch {
	case bytes.HasPrefix(b, pngSignature):
		return png.Decode(bytes.NewReader(b))
	case bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}):
		return jpeg.Decode(bytes.NewReader(b))
	default:
		return webp.Decode(bytes.NewReader(b))
	}
}

// previewPNG turns a backend's live preview (PNG, JPEG or WebP, any size)
// into what a PreviewFunc takes: a PNG no larger than the task's image and
// at most protocol.MaxPreviewBytes, halving its size until it fits.
func previewPNG(b []byte, t protocol.Task) ([]byte, error) {
	img, err := decodeAny(b)
	if err != nil {
		return nil, err
	}
	r := img.Bounds()
	w, h := r.Dx(), r.Dy()
	// Fit within the task's size, keeping the aspect ratio.
	if w > int(t.Width) || h > int(t.Height) {
		s := min(float64(t.Width)/float64(w), float64(t.Height)/float64(h))
		w, h = max(int(float64(w)*s), 1), max(int(float64(h)*s), 1)
	}
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	for {
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.ApproxBiLinear.Scale(dst, dst.Rect, img, r, draw.Src, nil)
		var buf bytes.Buffer
		if err := enc.Encode(&buf, dst); err != nil {
			return nil, err
		}
		if buf.Len() <= protocol.MaxPreviewBytes {
			return buf.Bytes(), nil
		}
		if w <= 16 || h <= 16 {
			return nil, errors.New("preview does not fit")
		}
		w, h = w/2, h/2
	}
}

// previewer passes a backend's live previews on at the steps asked for:
// each step of at once, ascending, the image of the latest step reached.
// Only the run's goroutine uses it.
type previewer struct {
	at      []int
	fn      kernel.PreviewFunc
	t       protocol.Task
	next    int // index in at of the next step to send
	dropped func(reason error)
}

func newPreviewer(at []int, fn kernel.PreviewFunc, t protocol.Task, dropped func(error)) *previewer {
	if fn == nil {
		return &previewer{}
	}
	var steps []int
	for _, k := range at {
		if k >= 1 && k < int(t.Steps) {
			steps = append(steps, k)
		}
	}
	slices.Sort(steps)
	return &previewer{at: slices.Compact(steps), fn: fn, t: t, dropped: dropped}
}

// wants reports whether an image of step k would be sent.
func (p *previewer) wants(k int) bool {
	return p.fn != nil && p.next < len(p.at) && k >= p.at[p.next]
}

// offer sends img (the backend's preview after step k) under the latest
// asked step not after k, and skips the earlier asked steps it passed: a
// backend polled twice a second shows a run in jumps.
func (p *previewer) offer(k int, img []byte) {
	if !p.wants(k) || len(img) == 0 {
		return
	}
	step := 0
	for p.next < len(p.at) && p.at[p.next] <= k {
		step = p.at[p.next]
		p.next++
	}
	b, err := previewPNG(img, p.t)
	if err != nil {
		if p.dropped != nil {
			p.dropped(err)
		}
		return
	}
	p.fn(step, b)
}

// a1111Mask turns a task's mask (fully transparent pixels: where the
// first input may change, as OpenAI's) into A1111's (white: repaint,
// black: keep), as a PNG.
func a1111Mask(b []byte) ([]byte, error) {
	img, err := decodeAny(b)
	if err != nil {
		return nil, err
	}
	r := img.Bounds()
	out := image.NewGray(image.Rect(0, 0, r.Dx(), r.Dy()))
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if _, _, _, a := img.At(x, y).RGBA(); a == 0 {
				out.SetGray(x-r.Min.X, y-r.Min.Y, color.Gray{Y: 255})
			}
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, out); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
