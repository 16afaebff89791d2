package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"image/png"
	"strconv"
	"strings"

	"golang.org/x/image/webp"

	"github.com/gpunet/gpunet/protocol"
)

// Inputs are the verified bytes of a task's input images.
type Inputs struct {
	Images [][]byte // one per t.Inputs, in order
	Mask   []byte   // the bytes of t.Mask; nil when the task has none
}

// Editor is a Kernel that takes input images (img2img). A host refuses a
// task with inputs when its kernel is not an Editor.
//
// Implementations must be safe for concurrent use, as any Kernel.
type Editor interface {
	Kernel
	// Edit is RunWithPreviews for a task with input images; in holds their
	// bytes (checked against their CIDs by the caller). at/preview as in
	// Previewer (may be nil).
	Edit(ctx context.Context, t protocol.Task, in Inputs, progress Progress, at []int, preview PreviewFunc) ([]Output, error)
}

// ErrInputsNotGiven is returned by a kernel's Run for a task that names
// input images: their bytes reach a kernel only through Editor.Edit, and a
// kernel that painted the task without them would put its output under a
// TaskCID that promises an edit of those images.
var ErrInputsNotGiven = errors.New("the task has input images but the kernel was not given them: run it with Edit")

// Check reports whether in holds exactly the images t names: as many, and
// each hashing to its CID. A caller that fetched the bytes by CID has
// checked this already; kernels check again because their output goes out
// under t's TaskCID, and a sha2-256 pass costs little beside a run.
func (in Inputs) Check(t protocol.Task) error {
	if len(in.Images) != len(t.Inputs) {
		return fmt.Errorf("kernel: %d input images given for a task that names %d", len(in.Images), len(t.Inputs))
	}
	for i, b := range in.Images {
		if !protocol.RawCID(b).Equals(t.Inputs[i].Cid) {
			return fmt.Errorf("kernel: the bytes given for input %d do not hash to %s", i, t.Inputs[i].Cid)
		}
	}
	switch {
	case t.Mask == nil && in.Mask != nil:
		return errors.New("kernel: a mask given for a task that names none")
	case t.Mask != nil && in.Mask == nil:
		return errors.New("kernel: the task names a mask but none was given")
	case t.Mask != nil && !protocol.RawCID(in.Mask).Equals(t.Mask.Cid):
		return fmt.Errorf("kernel: the bytes given for the mask do not hash to %s", t.Mask.Cid)
	}
	return nil
}

// Bounds on an input image, checked from its header before anything is
// decoded, so that a small file claiming a huge picture (a decompression
// bomb) costs nothing.
const (
	// MaxInputSide is twice protocol.MaxSide: a photo larger than any
	// output, to be scaled down, is normal; 4096 covers a 12-megapixel
	// phone photo.
	MaxInputSide = 4096
	// MaxInputPixels bounds the decoded picture: 16 Mpixel, 64 MiB as
	// RGBA. Today MaxInputSide² is the same number; the bound stays
	// should the side ever grow for panoramas.
	MaxInputPixels = 16 << 20
	// MaxInputBytes is an input file's size: it travels as one block.
	MaxInputBytes = protocol.MaxBlockBytes
)

// InputConfig is what an input image's header says.
type InputConfig struct {
	Width, Height int
	Format        string // "png", "jpeg" or "webp"
}

// DecodeInputConfig reads b's header and checks it against the bounds on an
// input image (format, MaxInputSide, MaxInputPixels, MaxInputBytes) without
// decoding the picture. The OpenAI layer calls it to refuse an upload
// before it becomes a task; DecodeInput calls it first. Errors wrap
// protocol.ErrBadTask.
func DecodeInputConfig(b []byte) (InputConfig, error) {
	return decodeInputConfig(b, "input image")
}

// DecodeInput decodes a PNG, JPEG or WebP input image after
// DecodeInputConfig has passed its header. Errors wrap protocol.ErrBadTask
// and say in one line what is wrong.
func DecodeInput(b []byte) (image.Image, error) {
	return decodeInput(b, "input image")
}

// decodeInputConfig is DecodeInputConfig with errors prefixed by what
// ("input 0", "mask").
func decodeInputConfig(b []byte, what string) (InputConfig, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", protocol.ErrBadTask, what, fmt.Sprintf(format, a...))
	}
	if len(b) > MaxInputBytes {
		return InputConfig{}, bad("%d bytes, at most %d", len(b), MaxInputBytes)
	}
	format := sniffFormat(b)
	var (
		cfg image.Config
		err error
	)
	// Each format's own decoder, not image.DecodeConfig: what this
	// accepts must not depend on which formats some other package has
	// registered.
	switch format {
	case "png":
		cfg, err = png.DecodeConfig(bytes.NewReader(b))
	case "jpeg":
		cfg, err = jpeg.DecodeConfig(bytes.NewReader(b))
	case "webp":
		cfg, err = webp.DecodeConfig(bytes.NewReader(b))
	default:
		return InputConfig{}, bad("not a PNG, JPEG or WebP image")
	}
	if err != nil {
		return InputConfig{}, bad("corrupt %s header: %v", format, err)
	}
	w, h := cfg.Width, cfg.Height
	switch {
	case w <= 0 || h <= 0:
		return InputConfig{}, bad("%s of %dx%d pixels", format, w, h)
	case w > MaxInputSide || h > MaxInputSide:
		return InputConfig{}, bad("%s of %dx%d, at most %d pixels a side: scale it down", format, w, h, MaxInputSide)
	case w*h > MaxInputPixels:
		return InputConfig{}, bad("%s of %dx%d, at most %d pixels: scale it down", format, w, h, MaxInputPixels)
	}
	return InputConfig{Width: w, Height: h, Format: format}, nil
}

func decodeInput(b []byte, what string) (image.Image, error) {
	cfg, err := decodeInputConfig(b, what)
	if err != nil {
		return nil, err
	}
	var img image.Image
	switch cfg.Format {
	case "png":
		img, err = png.Decode(bytes.NewReader(b))
	case "jpeg":
		img, err = jpeg.Decode(bytes.NewReader(b))
	case "webp":
		img, err = webp.Decode(bytes.NewReader(b))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: corrupt %s: %v", protocol.ErrBadTask, what, cfg.Format, err)
	}
	if r := img.Bounds(); r.Dx() != cfg.Width || r.Dy() != cfg.Height {
		return nil, fmt.Errorf("%w: %s: %s header says %dx%d, the picture is %dx%d",
			protocol.ErrBadTask, what, cfg.Format, cfg.Width, cfg.Height, r.Dx(), r.Dy())
	}
	return img, nil
}

// sniffFormat names b's format from its first bytes, or returns "".
func sniffFormat(b []byte) string {
	switch {
	case bytes.HasPrefix(b, pngSignature):
		return "png"
	case bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}):
		return "jpeg"
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return "webp"
	}
	return ""
}

// DefaultStrength is the strength of an edit whose task has no strength
// param, in thousandths: 0.6, as diffusers' img2img default (0.8) less a
// little, so that a photo stays recognisable unless asked otherwise.
const DefaultStrength = 600

// ParseStrength parses the strength param of an edit: how far the output
// may move from the input image, a decimal 0 < s ≤ 1 with at most three
// decimals ("0.6", ".75", "1"), returned in thousandths. "" (no param)
// gives DefaultStrength. Errors wrap protocol.ErrBadTask.
func ParseStrength(s string) (permille int, err error) {
	if s == "" {
		return DefaultStrength, nil
	}
	bad := fmt.Errorf("%w: strength %.40q: want a decimal above 0 and at most 1 with at most 3 decimals, e.g. 0.6", protocol.ErrBadTask, s)
	whole, frac, dot := strings.Cut(s, ".")
	// Only plain digits: no sign, exponent, spaces or a second dot.
	digits := func(d string) bool {
		for _, c := range []byte(d) {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	if (whole != "" && whole != "0" && whole != "1") || !digits(frac) || len(frac) > 3 ||
		(dot && frac == "") || (whole == "" && frac == "") {
		return 0, bad
	}
	p := 0
	if whole == "1" {
		p = 1000
	}
	if frac != "" {
		f, _ := strconv.Atoi(frac) // 1-3 digits, checked above
		for range 3 - len(frac) {
			f *= 10
		}
		p += f
	}
	if p <= 0 || p > 1000 {
		return 0, bad
	}
	return p, nil
}

// toRGBA8 converts img to RGBA bytes at its own size. Colours are
// premultiplied: a transparent pixel of a photo counts as black. (The
// alpha of an input is not a mask; only the mask's is.)
func toRGBA8(img image.Image) *image.RGBA {
	if r, ok := img.(*image.RGBA); ok && r.Rect.Min == (image.Point{}) {
		return r
	}
	b := img.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	// image/draw converts with integer arithmetic, so the bytes are the
	// same on every host.
	draw.Draw(dst, dst.Rect, img, b.Min, draw.Src)
	return dst
}

// taps are the source samples and weights making each output sample along
// one axis: output o is Σ wt[k]·src[idx[k]] / total over k in
// off[o]..off[o+1].
type taps struct {
	off   []int
	idx   []int
	wt    []uint32
	total uint32
}

// resampleTaps maps n source samples to m outputs. Shrinking (n ≥ m)
// averages each output's exact share of the source (a box filter, no
// sample skipped, so thin lines survive); growing interpolates linearly
// between the two nearest source centres. Same size is the identity.
func resampleTaps(n, m int) taps {
	t := taps{off: make([]int, 1, m+1)}
	if n >= m {
		// Source sample i spans [i·m, (i+1)·m), output o spans
		// [o·n, (o+1)·n): weights are the overlaps, summing to n.
		t.total = uint32(n)
		for o := range m {
			lo, hi := o*n, (o+1)*n
			for i := lo / m; i*m < hi; i++ {
				ov := min((i+1)*m, hi) - max(i*m, lo)
				t.idx = append(t.idx, i)
				t.wt = append(t.wt, uint32(ov))
			}
			t.off = append(t.off, len(t.idx))
		}
		return t
	}
	// Output o's centre is at source position ((2o+1)·n − m) / 2m.
	t.total = uint32(2 * m)
	for o := range m {
		p := max((2*o+1)*n-m, 0)
		i0, f := p/(2*m), p%(2*m)
		i1 := min(i0+1, n-1)
		t.idx = append(t.idx, i0, i1)
		t.wt = append(t.wt, uint32(2*m-f), uint32(f))
		t.off = append(t.off, len(t.idx))
	}
	return t
}

// resize scales src to w×h, all four channels, in integer arithmetic: a
// horizontal pass into a buffer of src's height, then a vertical one.
func resize(src *image.RGBA, w, h int) *image.RGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	tx, ty := resampleTaps(sw, w), resampleTaps(sh, h)
	mid := make([]uint8, 4*w*sh)
	for y := range sh {
		row := src.Pix[y*src.Stride:][:4*sw]
		out := mid[4*w*y:][:4*w]
		for o := range w {
			var acc [4]uint32
			for k := tx.off[o]; k < tx.off[o+1]; k++ {
				p, wt := row[4*tx.idx[k]:][:4], tx.wt[k]
				acc[0] += uint32(p[0]) * wt
				acc[1] += uint32(p[1]) * wt
				acc[2] += uint32(p[2]) * wt
				acc[3] += uint32(p[3]) * wt
			}
			for c := range 4 {
				out[4*o+c] = uint8((acc[c] + tx.total/2) / tx.total)
			}
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	for o := range h {
		out := dst.Pix[o*dst.Stride:][:4*w]
		for i := range out {
			var acc uint32
			for k := ty.off[o]; k < ty.off[o+1]; k++ {
				acc += uint32(mid[4*w*ty.idx[k]+i]) * ty.wt[k]
			}
			out[i] = uint8((acc + ty.total/2) / ty.total)
		}
	}
	return dst
}

// hardLight lays the luminance l over the colour c: dark where l is dark,
// light where it is light, c itself in the mid-tones. The input's shapes
// and shading show through in the scene's palette.
func hardLight(c, l int32) int32 {
	if l < 128 {
		return 2 * c * l / 255
	}
	return 255 - 2*(255-c)*(255-l)/255
}
