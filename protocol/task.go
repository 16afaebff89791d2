package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Task defaults, filled in by Normalize.
const (
	DefaultModel  = "gpunet/sketch-v1"
	DefaultSteps  = 20
	DefaultWidth  = 512
	DefaultHeight = 512

	MinSteps, MaxSteps = 1, 150
	MinSide, MaxSide   = 64, 2048
	// SideMultiple: diffusion models work on 8x8 latent patches; the CPU
	// kernel does not care, but keeping the rule means a task valid here is
	// valid for any backend.
	SideMultiple = 8
	// MaxSeed is 2^53-1 so that seeds survive a round trip through JSON in
	// any language (JavaScript numbers are float64).
	MaxSeed = 1<<53 - 1

	MaxModelLen = 64
	MaxParams   = 16
	MaxParamKey = 32
	MaxParamVal = 256
	// MaxInputs bounds a task's input images (an edit's photo and its
	// references); the mask is on top.
	MaxInputs = 4
)

var (
	// modelName checks modelNameSyntax, paramKey paramKeySyntax.
	modelName = nameSyntax{rest: "._:/-"}
	paramKey  = nameSyntax{rest: "._-"}
)

// ErrBadTask is wrapped by every validation error of a task.
var ErrBadTask = errors.New("invalid task")

// Task is one generation request. Its canonical encoding (Encode) is what the
// TaskCID addresses, so two tasks are the same work exactly when their
// normalised fields are equal.
//
// The CBOR keys below are the wire names; DAG-CBOR orders them length-first:
// mask, seed, model, steps, width, height, inputs, params, prompt,
// model_digest, negative_prompt.
type Task struct {
	Model          string `cbor:"model" json:"model"`
	Prompt         string `cbor:"prompt" json:"prompt"`
	NegativePrompt string `cbor:"negative_prompt" json:"negative_prompt"`
	// Seed 0 means "not chosen": Normalize derives one from the other fields,
	// so the same prompt is the same task everywhere. A normalised task never
	// has seed 0.
	Seed   uint64 `cbor:"seed" json:"seed"`
	Steps  uint32 `cbor:"steps" json:"steps"`
	Width  uint32 `cbor:"width" json:"width"`
	Height uint32 `cbor:"height" json:"height"`
	// Params carries kernel parameters (sampler, guidance, ...) as strings.
	// Omitted from the encoding when empty.
	Params map[string]string `cbor:"params,omitempty" json:"params,omitempty"`
	// Inputs names the task's input images (since 1.2): an edit's photo
	// first, then any reference images, each a raw block (CIDv1, codec raw,
	// sha2-256) of a PNG, JPEG or WebP file. The TaskCID covers them, so the
	// same photo with the same prompt is the same task everywhere. The host
	// gets the bytes by CID (docs/protocol.md, Input images). Omitted when
	// empty.
	Inputs []Link `cbor:"inputs,omitempty" json:"inputs,omitempty"`
	// Mask, with Inputs, names a PNG whose fully transparent pixels mark
	// where the first input may change (OpenAI's edit mask). Omitted when
	// nil.
	Mask *Link `cbor:"mask,omitempty" json:"mask,omitempty"`
	// ModelDigest names the model by content (since 1.2): "sha256:" and the
	// 64 lower-case hex digits of the digest of its weights, so the TaskCID
	// changes with the weights and two checkpoints that share a name never
	// share results. Empty: the name alone (models whose name is their
	// version, such as gpunet/sketch-v1). docs/protocol.md, "Models named by
	// content".
	ModelDigest string `cbor:"model_digest,omitempty" json:"model_digest,omitempty"`
}

// ModelDigestPrefix starts every model digest.
const ModelDigestPrefix = "sha256:"

// The syntax of model names and param keys, as docs/protocol.md gives it.
const (
	modelNameSyntax = `^[a-z0-9][a-z0-9._:/-]*$`
	paramKeySyntax  = `^[a-z0-9][a-z0-9._-]*$`
)

// nameSyntax is the syntax of model names and param keys: a lower-case
// letter or digit, then any of those or the characters in rest. A loop
// rather than a regular expression: every request, beacon and manifest a
// node decodes checks its names, and the loop costs a tenth as much.
type nameSyntax struct{ rest string }

func (n nameSyntax) valid(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || (i > 0 && strings.IndexByte(n.rest, c) >= 0) {
			continue
		}
		return false
	}
	return true
}

var modelDigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ParseModelDigest returns d as a task's model_digest: "sha256:" and 64
// lower-case hex digits. It also takes the bare hex digits, in either case,
// as AUTOMATIC1111 and most tools print a checkpoint's sha256.
func ParseModelDigest(d string) (string, error) {
	d = strings.ToLower(strings.TrimSpace(d))
	if !strings.HasPrefix(d, ModelDigestPrefix) {
		d = ModelDigestPrefix + d
	}
	if !modelDigestRE.MatchString(d) {
		return "", fmt.Errorf("%w: model digest %.80q: want sha256: and 64 hex digits", ErrBadTask, d)
	}
	return d, nil
}

// SplitModelRef splits "name@digest", the way a person or an API caller
// names a model by content, into the task's model and model_digest; a
// plain name comes back with an empty digest.
func SplitModelRef(ref string) (model, digest string) {
	model, digest, _ = strings.Cut(ref, "@")
	return model, digest
}

// DigestKey is the short form of a model digest that beacons carry and
// placement matches on: its first 8 bytes, 16 hex digits.
func DigestKey(digest string) string {
	h := strings.TrimPrefix(digest, ModelDigestPrefix)
	if len(h) < 16 {
		return h
	}
	return h[:16]
}

// Normalize returns t with whitespace collapsed, the model lower-cased,
// defaults filled in and, when Seed is 0, a seed derived from the rest of the
// task. It then validates the result.
func (t Task) Normalize() (Task, error) {
	n := t
	n.Model = strings.ToLower(strings.TrimSpace(n.Model))
	if n.Model == "" {
		n.Model = DefaultModel
	}
	n.Prompt = collapseSpace(n.Prompt)
	n.NegativePrompt = collapseSpace(n.NegativePrompt)
	if n.Steps == 0 {
		n.Steps = DefaultSteps
	}
	if n.Width == 0 {
		n.Width = DefaultWidth
	}
	if n.Height == 0 {
		n.Height = DefaultHeight
	}
	if len(n.Inputs) == 0 {
		n.Inputs = nil
	}
	if n.ModelDigest != "" {
		d, err := ParseModelDigest(n.ModelDigest)
		if err != nil {
			return Task{}, err
		}
		n.ModelDigest = d
	}
	if len(n.Params) == 0 {
		n.Params = nil
	} else {
		p := make(map[string]string, len(n.Params))
		for k, v := range n.Params {
			nk := strings.ToLower(strings.TrimSpace(k))
			if _, dup := p[nk]; dup {
				return Task{}, fmt.Errorf("%w: param key %q given more than once", ErrBadTask, nk)
			}
			p[nk] = collapseSpace(v)
		}
		n.Params = p
	}
	if err := n.validate(false); err != nil {
		return Task{}, err
	}
	if n.Seed == 0 {
		n.Seed = deriveSeed(n)
	}
	if _, err := n.Encode(); err != nil {
		return Task{}, err
	}
	return n, nil
}

// Validate checks that t is a normalised task: what a host checks before it
// does any work for a remote peer.
func (t Task) Validate() error {
	if err := t.validate(true); err != nil {
		return err
	}
	if n, err := t.Normalize(); err != nil || !t.Equal(n) {
		return fmt.Errorf("%w: not in normal form", ErrBadTask)
	}
	return nil
}

func (t Task) validate(needSeed bool) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadTask}, a...)...)
	}
	switch {
	case len(t.Model) > MaxModelLen || !modelName.valid(t.Model):
		return bad("model %q: want 1-%d of a-z 0-9 . _ : / -", t.Model, MaxModelLen)
	case t.Prompt == "":
		return bad("empty prompt")
	case !utf8.ValidString(t.Prompt) || !utf8.ValidString(t.NegativePrompt):
		return bad("prompt is not valid UTF-8")
	case len(t.Prompt) > MaxPromptBytes || len(t.NegativePrompt) > MaxPromptBytes:
		return bad("prompt longer than %d bytes", MaxPromptBytes)
	case t.Steps < MinSteps || t.Steps > MaxSteps:
		return bad("steps %d outside %d..%d", t.Steps, MinSteps, MaxSteps)
	case !validSide(t.Width) || !validSide(t.Height):
		return bad("size %dx%d: each side %d..%d and a multiple of %d", t.Width, t.Height, MinSide, MaxSide, SideMultiple)
	case t.Seed > MaxSeed:
		return bad("seed %d above %d", t.Seed, uint64(MaxSeed))
	case needSeed && t.Seed == 0:
		return bad("seed not set")
	case len(t.Params) > MaxParams:
		return bad("%d params, at most %d", len(t.Params), MaxParams)
	case t.ModelDigest != "" && !modelDigestRE.MatchString(t.ModelDigest):
		return bad("model_digest %.80q: want sha256: and 64 lower-case hex digits", t.ModelDigest)
	}
	for k, v := range t.Params {
		if len(k) > MaxParamKey || !paramKey.valid(k) {
			return bad("param key %q", k)
		}
		if len(v) > MaxParamVal || !utf8.ValidString(v) {
			return bad("param %q value too long or not UTF-8", k)
		}
	}
	if len(t.Inputs) > MaxInputs {
		return bad("%d input images, at most %d", len(t.Inputs), MaxInputs)
	}
	for i, in := range t.Inputs {
		if err := validInput(in); err != nil {
			return bad("input %d: %v", i, err)
		}
	}
	if t.Mask != nil {
		if len(t.Inputs) == 0 {
			return bad("a mask without an input image")
		}
		if err := validInput(*t.Mask); err != nil {
			return bad("mask: %v", err)
		}
	}
	return nil
}

// validInput checks that an input image's link is what a block of image
// bytes is addressed by: CIDv1, codec raw, sha2-256.
func validInput(l Link) error {
	if !l.Defined() {
		return errors.New("no CID")
	}
	p := l.Prefix()
	if p.Version != 1 || p.Codec != cid.Raw || p.MhType != mh.SHA2_256 || p.MhLength != 32 {
		return fmt.Errorf("%s: want a CIDv1 raw block, sha2-256", l.Cid)
	}
	return nil
}

func validSide(s uint32) bool { return s >= MinSide && s <= MaxSide && s%SideMultiple == 0 }

// Equal reports whether two tasks have the same fields.
func (t Task) Equal(o Task) bool {
	if t.Model != o.Model || t.Prompt != o.Prompt || t.NegativePrompt != o.NegativePrompt ||
		t.Seed != o.Seed || t.Steps != o.Steps || t.Width != o.Width || t.Height != o.Height ||
		len(t.Params) != len(o.Params) || len(t.Inputs) != len(o.Inputs) || (t.Mask == nil) != (o.Mask == nil) ||
		t.ModelDigest != o.ModelDigest {
		return false
	}
	for i := range t.Inputs {
		if !t.Inputs[i].Equals(o.Inputs[i].Cid) {
			return false
		}
	}
	if t.Mask != nil && !t.Mask.Equals(o.Mask.Cid) {
		return false
	}
	for k, v := range t.Params {
		if ov, ok := o.Params[k]; !ok || ov != v {
			return false
		}
	}
	return true
}

// Encode returns the canonical DAG-CBOR encoding of t. Call it on a
// normalised task; Encode does not normalise.
func (t Task) Encode() ([]byte, error) {
	b, err := encMode.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encoding task: %w", err)
	}
	if len(b) > MaxTaskBytes {
		return nil, fmt.Errorf("%w: encoding is %d bytes, cap %d", ErrBadTask, len(b), MaxTaskBytes)
	}
	return b, nil
}

// CID returns the TaskCID: CIDv1, dag-cbor, sha2-256 over Encode's bytes.
func (t Task) CID() (cid.Cid, error) {
	b, err := t.Encode()
	if err != nil {
		return cid.Undef, err
	}
	return dagCBORCID(b), nil
}

// NormalizeCID normalises t and returns it with its TaskCID: what a
// submitter does first with any task.
func (t Task) NormalizeCID() (Task, cid.Cid, error) {
	n, err := t.Normalize()
	if err != nil {
		return Task{}, cid.Undef, err
	}
	c, err := n.CID()
	if err != nil {
		return Task{}, cid.Undef, err
	}
	return n, c, nil
}

// DecodeTask decodes and validates a canonical task encoding. It rejects
// encodings that are valid CBOR but not canonical, so one TaskCID never has
// two spellings.
func DecodeTask(b []byte) (Task, error) {
	if len(b) > MaxTaskBytes {
		return Task{}, fmt.Errorf("%w: %d bytes, cap %d", ErrBadTask, len(b), MaxTaskBytes)
	}
	var t Task
	if err := Unmarshal(b, &t); err != nil {
		return Task{}, fmt.Errorf("%w: %v", ErrBadTask, err)
	}
	if err := t.Validate(); err != nil {
		return Task{}, err
	}
	if again, err := t.Encode(); err != nil || string(again) != string(b) {
		return Task{}, fmt.Errorf("%w: encoding is not canonical", ErrBadTask)
	}
	return t, nil
}

// deriveSeed maps the task (seed 0) to a seed in 1..MaxSeed: the first 8
// bytes of sha2-256 over the domain "gpunet-seed-v1\x00" and the canonical
// encoding with seed 0, big-endian, masked to 53 bits (0 becomes 1).
func deriveSeed(t Task) uint64 {
	t.Seed = 0
	b, err := encMode.Marshal(t)
	if err != nil {
		panic(fmt.Sprintf("encoding a validated task: %v", err))
	}
	h := sha256.New()
	h.Write([]byte("gpunet-seed-v1\x00"))
	h.Write(b)
	s := binary.BigEndian.Uint64(h.Sum(nil)) & MaxSeed
	if s == 0 {
		s = 1
	}
	return s
}

// collapseSpace trims s and turns every run of Unicode white space into a
// single ASCII space.
func collapseSpace(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range strings.TrimSpace(s) {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// SortedParamKeys returns the keys of t.Params in byte order, for kernels
// that must consume parameters deterministically.
func (t Task) SortedParamKeys() []string {
	keys := make([]string, 0, len(t.Params))
	for k := range t.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
