package trust

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // outputs a GPU generator may send
	_ "image/png"
	"math"

	"github.com/gpunet/gpunet/protocol"
)

// Result is one host's answer to a task: its signed manifest (decoded and
// as sent) and its output blocks, in manifest order.
type Result struct {
	Manifest      *protocol.Manifest
	ManifestBytes []byte
	Blocks        [][]byte
}

// Host is the peer that signed r.
func (r Result) Host() string { return r.Manifest.Host }

// DefaultTolerance is the perceptual distance under which two outputs of a
// kernel that is not exact agree: 2 % of the full range, on average over
// the thumbnail. docs/trust.md has the distances measured between honest
// runs and between honest and altered images.
const DefaultTolerance = 0.02

// thumb is the side of the thumbnail Distance compares.
const thumb = 32

// Agree reports whether a and b, two results of one task, say the same:
// the same output blocks, or, unless either names an exact kernel
// (protocol.ExactKernel), outputs whose Distance is at most tol each. It
// returns the largest distance found (0 for equal bytes).
func Agree(a, b Result, tol float64) (bool, float64, error) {
	if protocol.SameOutputs(a.Manifest, b.Manifest) {
		return true, 0, nil
	}
	if len(a.Manifest.Outputs) != len(b.Manifest.Outputs) {
		return false, math.Inf(1), nil
	}
	if protocol.ExactKernel(a.Manifest.Kernel) || protocol.ExactKernel(b.Manifest.Kernel) {
		return false, math.Inf(1), nil
	}
	if len(a.Blocks) != len(a.Manifest.Outputs) || len(b.Blocks) != len(b.Manifest.Outputs) {
		return false, 0, errors.New("comparing results: blocks missing")
	}
	worst := 0.0
	for i := range a.Blocks {
		if bytes.Equal(a.Blocks[i], b.Blocks[i]) {
			continue
		}
		d, err := Distance(a.Blocks[i], b.Blocks[i])
		if err != nil {
			return false, 0, fmt.Errorf("comparing output %d: %w", i, err)
		}
		worst = max(worst, d)
	}
	return worst <= tol, worst, nil
}

// MaxComparePixels bounds the images Distance decodes, checked from their
// headers before decoding.
const MaxComparePixels = 64 << 20

// Distance is a perceptual distance between two images, 0 (the same
// picture) to 1: both are shrunk to a 32×32 thumbnail by averaging over
// areas, and the distance is the mean absolute difference of the
// thumbnails' red, green and blue values over their range. Shrinking
// averages away the last-bit differences of floating point across GPUs,
// which move single pixels by a few values, while a changed picture moves
// whole areas. Images of different sizes are at distance 1.
func Distance(a, b []byte) (float64, error) {
	ta, wa, ha, err := thumbnail(a)
	if err != nil {
		return 0, err
	}
	tb, wb, hb, err := thumbnail(b)
	if err != nil {
		return 0, err
	}
	if wa != wb || ha != hb {
		return 1, nil
	}
	sum := 0.0
	for i := range ta {
		sum += math.Abs(ta[i] - tb[i])
	}
	return sum / float64(len(ta)) / 0xffff, nil
}

// thumbnail decodes img and averages it into thumb×thumb RGB cells.
func thumbnail(img []byte) (cells []float64, w, h int, err error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(img))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("not an image: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > MaxComparePixels {
		return nil, 0, 0, fmt.Errorf("image of %d×%d pixels: too large to compare", cfg.Width, cfg.Height)
	}
	m, _, err := image.Decode(bytes.NewReader(img))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("decoding image: %w", err)
	}
	r := m.Bounds()
	w, h = r.Dx(), r.Dy()
	sums := make([]float64, thumb*thumb*3)
	counts := make([]float64, thumb*thumb)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		cy := (y - r.Min.Y) * thumb / h
		for x := r.Min.X; x < r.Max.X; x++ {
			cx := (x - r.Min.X) * thumb / w
			c := cy*thumb + cx
			pr, pg, pb, _ := m.At(x, y).RGBA()
			sums[3*c] += float64(pr)
			sums[3*c+1] += float64(pg)
			sums[3*c+2] += float64(pb)
			counts[c]++
		}
	}
	for c, n := range counts {
		if n == 0 {
			continue // an image smaller than the thumbnail leaves cells empty, the same in both
		}
		for k := range 3 {
			sums[3*c+k] /= n
		}
	}
	return sums, w, h, nil
}
