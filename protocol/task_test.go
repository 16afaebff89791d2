package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

func TestNormalizeWhitespace(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "a quiet harbour", "a quiet harbour"},
		{"trim", "  \t a quiet harbour \n ", "a quiet harbour"},
		{"multiple spaces", "a   quiet    harbour", "a quiet harbour"},
		{"tabs", "a\tquiet\t\tharbour", "a quiet harbour"},
		{"newlines", "a\nquiet\r\n\r\nharbour\n", "a quiet harbour"},
		{"vertical tab and form feed", "a\v\fquiet", "a quiet"},
		{"NBSP", "a\u00a0quiet\u00a0\u00a0harbour", "a quiet harbour"},
		{"NEL", "a\u0085quiet", "a quiet"},
		{"em and ideographic spaces", "a\u2003\u3000quiet", "a quiet"},
		{"line and paragraph separators", "a\u2028quiet\u2029harbour", "a quiet harbour"},
		{"mixed run becomes one ASCII space", "a \t\u00a0\n quiet", "a quiet"},
		// Zero-width space and BOM are not white space in Unicode's
		// White_Space property: they are kept, so the spec must say so.
		{"zero-width space kept", "a\u200bquiet", "a\u200bquiet"},
		{"BOM kept", "\ufeffa quiet", "\ufeffa quiet"},
		{"case kept", "A Quiet HARBOUR", "A Quiet HARBOUR"},
		{"non-ASCII kept", "ein  ruhiger Hafen — 静かな港", "ein ruhiger Hafen — 静かな港"},
		// Invalid UTF-8 is replaced byte by byte with U+FFFD.
		{"invalid UTF-8 replaced", "a\xffb\xfe\xfdc", "a\ufffdb\ufffd\ufffdc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := mustNormalize(t, Task{Prompt: tt.in, NegativePrompt: tt.in, Params: map[string]string{"sampler": tt.in}})
			if n.Prompt != tt.want {
				t.Errorf("prompt = %q, want %q", n.Prompt, tt.want)
			}
			if n.NegativePrompt != tt.want {
				t.Errorf("negative prompt = %q, want %q", n.NegativePrompt, tt.want)
			}
			if got := n.Params["sampler"]; got != tt.want {
				t.Errorf("param value = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNormalizeModelAndParamKeys(t *testing.T) {
	tests := []struct {
		name, model, wantModel string
		params, wantParams     map[string]string
	}{
		{name: "empty model gets default", model: "", wantModel: DefaultModel},
		{name: "blank model gets default", model: " \t\n", wantModel: DefaultModel},
		{name: "lower-cased and trimmed", model: "  GPUnet/Sketch-V1\t", wantModel: "gpunet/sketch-v1"},
		// Unicode simple lowercase mapping, code point by code point: the
		// Kelvin sign becomes an ASCII k, dotted capital I an ASCII i.
		{name: "Kelvin sign", model: "\u212aelvin/M", wantModel: "kelvin/m"},
		{name: "dotted capital I", model: "\u0130d", wantModel: "id"},
		{name: "all allowed characters", model: "Org.Name/Model_2:Q8-v1", wantModel: "org.name/model_2:q8-v1"},
		{
			name: "param keys lower-cased and trimmed, values collapsed", model: "m",
			params:     map[string]string{" Sampler ": "  euler   a ", "CFG.Scale": "7"},
			wantModel:  "m",
			wantParams: map[string]string{"sampler": "euler a", "cfg.scale": "7"},
		},
		{name: "empty params become nil", model: "m", params: map[string]string{}, wantModel: "m"},
		{name: "empty param value allowed", model: "m", params: map[string]string{"x": "  "}, wantModel: "m", wantParams: map[string]string{"x": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := mustNormalize(t, Task{Model: tt.model, Prompt: "p", Params: tt.params})
			if n.Model != tt.wantModel {
				t.Errorf("model = %q, want %q", n.Model, tt.wantModel)
			}
			if len(tt.wantParams) == 0 {
				if n.Params != nil {
					t.Errorf("params = %#v, want nil", n.Params)
				}
				return
			}
			if !(Task{Params: n.Params}).Equal(Task{Params: tt.wantParams}) {
				t.Errorf("params = %v, want %v", n.Params, tt.wantParams)
			}
		})
	}
}

func TestNormalizeDefaults(t *testing.T) {
	n := mustNormalize(t, Task{Prompt: "p", Seed: 7})
	want := Task{Model: "gpunet/sketch-v1", Prompt: "p", Seed: 7, Steps: 20, Width: 512, Height: 512}
	if !n.Equal(want) {
		t.Errorf("Normalize filled %+v, want %+v", n, want)
	}
	// The exported defaults are part of the protocol: a change changes TaskCIDs.
	if DefaultModel != "gpunet/sketch-v1" || DefaultSteps != 20 || DefaultWidth != 512 || DefaultHeight != 512 {
		t.Errorf("defaults changed: %s %d %dx%d", DefaultModel, DefaultSteps, DefaultWidth, DefaultHeight)
	}
	explicit := Task{Model: "other/m", Prompt: "p", Seed: 9, Steps: 3, Width: 64, Height: 2048}
	if n := mustNormalize(t, explicit); !n.Equal(explicit) {
		t.Errorf("explicit values changed: %+v, want %+v", n, explicit)
	}
}

func TestNormalizeSeed(t *testing.T) {
	t.Run("derived when zero and never zero", func(t *testing.T) {
		for i := range 200 {
			n := mustNormalize(t, Task{Prompt: fmt.Sprintf("prompt %d", i)})
			if n.Seed == 0 || n.Seed > MaxSeed {
				t.Fatalf("derived seed %d outside 1..%d", n.Seed, uint64(MaxSeed))
			}
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		a := mustNormalize(t, Task{Prompt: "a quiet harbour at dusk"})
		b := mustNormalize(t, Task{Prompt: "  a quiet\tharbour at   dusk\n", Model: "GPUNET/SKETCH-V1", Steps: 20, Width: 512})
		if a.Seed != b.Seed {
			t.Errorf("equivalent tasks derived seeds %d and %d", a.Seed, b.Seed)
		}
	})
	t.Run("different tasks derive different seeds", func(t *testing.T) {
		base := Task{Prompt: "a quiet harbour at dusk"}
		variants := map[string]Task{
			"base":            base,
			"prompt":          {Prompt: "a quiet harbour at dawn"},
			"prompt case":     {Prompt: "A quiet harbour at dusk"},
			"negative prompt": {Prompt: base.Prompt, NegativePrompt: "boats"},
			"model":           {Prompt: base.Prompt, Model: "other/model"},
			"steps":           {Prompt: base.Prompt, Steps: 21},
			"width":           {Prompt: base.Prompt, Width: 520},
			"height":          {Prompt: base.Prompt, Height: 520},
			"params":          {Prompt: base.Prompt, Params: map[string]string{"sampler": "euler"}},
		}
		seen := map[uint64]string{}
		for name, v := range variants {
			s := mustNormalize(t, v).Seed
			if other, ok := seen[s]; ok {
				t.Errorf("%s and %s derive the same seed %d", name, other, s)
			}
			seen[s] = name
		}
	})
	t.Run("explicit seed kept", func(t *testing.T) {
		for _, s := range []uint64{1, 42, 1 << 32, MaxSeed} {
			if got := mustNormalize(t, Task{Prompt: "p", Seed: s}).Seed; got != s {
				t.Errorf("seed %d became %d", s, got)
			}
		}
	})
	t.Run("matches the documented algorithm", func(t *testing.T) {
		for _, in := range []Task{
			{Prompt: "a quiet harbour at dusk"},
			{Prompt: "x", NegativePrompt: "y", Params: map[string]string{"b": "2", "a": "1"}},
		} {
			n := mustNormalize(t, in)
			if got, want := n.Seed, documentedSeed(t, n); got != want {
				t.Errorf("Normalize(%+v) seed = %d, documented algorithm gives %d", in, got, want)
			}
		}
	})
}

// documentedSeed derives a seed the way docs/protocol.md says to, without
// calling deriveSeed: sha2-256 over "gpunet-seed-v1" 0x00 and the canonical
// encoding with seed 0; the first 8 bytes big-endian, masked to 53 bits; 0
// becomes 1.
func documentedSeed(tb testing.TB, n Task) uint64 {
	tb.Helper()
	n.Seed = 0
	sum := sha256.Sum256(append([]byte("gpunet-seed-v1\x00"), mustEncode(tb, n)...))
	s := binary.BigEndian.Uint64(sum[:8]) & (1<<53 - 1)
	if s == 0 {
		s = 1
	}
	return s
}

func TestNormalizeIsIdempotentAndValidates(t *testing.T) {
	inputs := []Task{
		exampleTask(),
		{Prompt: "  lots   of\tspace  ", NegativePrompt: "\n\n"},
		{Model: "A/B", Prompt: "p", Params: map[string]string{" K ": " v  v "}},
		{Prompt: strings.Repeat("é", MaxPromptBytes/2)},
	}
	for _, in := range inputs {
		n := mustNormalize(t, in)
		if err := n.Validate(); err != nil {
			t.Errorf("Validate(Normalize(%+v)): %v", in, err)
		}
		if again := mustNormalize(t, n); !again.Equal(n) {
			t.Errorf("Normalize is not idempotent: %+v then %+v", n, again)
		}
	}
}

func TestValidateRejectsTasksNotInNormalForm(t *testing.T) {
	good := mustNormalize(t, exampleTask())
	tests := map[string]func(*Task){
		"double space":      func(t *Task) { t.Prompt = "a  quiet" },
		"leading space":     func(t *Task) { t.Prompt = " a quiet" },
		"tab in negative":   func(t *Task) { t.NegativePrompt = "a\tb" },
		"upper-case model":  func(t *Task) { t.Model = "GPUNET/SKETCH-V1" },
		"seed 0":            func(t *Task) { t.Seed = 0 },
		"steps 0":           func(t *Task) { t.Steps = 0 },
		"width 0":           func(t *Task) { t.Width = 0 },
		"empty model":       func(t *Task) { t.Model = "" },
		"upper-case param":  func(t *Task) { t.Params = map[string]string{"Sampler": "x"} },
		"spaced param":      func(t *Task) { t.Params = map[string]string{"sampler": " x"} },
		"invalid UTF-8":     func(t *Task) { t.Prompt = "a\xffb" },
		"invalid UTF-8 neg": func(t *Task) { t.NegativePrompt = "a\xffb" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			task := good
			mutate(&task)
			if err := task.Validate(); !errors.Is(err, ErrBadTask) {
				t.Errorf("Validate = %v, want ErrBadTask", err)
			}
		})
	}
}

func TestNormalizeRejects(t *testing.T) {
	tooManyParams := map[string]string{}
	for i := range MaxParams + 1 {
		tooManyParams[fmt.Sprintf("p%d", i)] = "v"
	}
	tests := []struct {
		name string
		task Task
	}{
		{"empty prompt", Task{}},
		{"blank prompt", Task{Prompt: " \t\n\u00a0"}},
		{"prompt too long", Task{Prompt: strings.Repeat("x", MaxPromptBytes+1)}},
		{"prompt too long in bytes, not runes", Task{Prompt: strings.Repeat("é", MaxPromptBytes/2+1)}},
		{"negative prompt too long", Task{Prompt: "p", NegativePrompt: strings.Repeat("x", MaxPromptBytes+1)}},
		{"model with space", Task{Prompt: "p", Model: "gpunet sketch"}},
		{"model with bang", Task{Prompt: "p", Model: "gpunet/sketch!"}},
		{"model starting with dash", Task{Prompt: "p", Model: "-sketch"}},
		{"model starting with slash", Task{Prompt: "p", Model: "/sketch"}},
		{"model non-ASCII", Task{Prompt: "p", Model: "skétch"}},
		{"model too long", Task{Prompt: "p", Model: strings.Repeat("m", MaxModelLen+1)}},
		{"steps above max", Task{Prompt: "p", Steps: MaxSteps + 1}},
		{"width not multiple of 8", Task{Prompt: "p", Width: 500}},
		{"height not multiple of 8", Task{Prompt: "p", Height: 516}},
		{"width too small", Task{Prompt: "p", Width: MinSide - SideMultiple}},
		{"height too large", Task{Prompt: "p", Height: MaxSide + SideMultiple}},
		{"seed above MaxSeed", Task{Prompt: "p", Seed: MaxSeed + 1}},
		{"seed 2^63", Task{Prompt: "p", Seed: 1 << 63}},
		{"too many params", Task{Prompt: "p", Params: tooManyParams}},
		{"param key with space", Task{Prompt: "p", Params: map[string]string{"cfg scale": "7"}}},
		{"param key with colon", Task{Prompt: "p", Params: map[string]string{"cfg:scale": "7"}}},
		{"param key starting with dot", Task{Prompt: "p", Params: map[string]string{".x": "7"}}},
		{"param key empty", Task{Prompt: "p", Params: map[string]string{" ": "7"}}},
		{"param key too long", Task{Prompt: "p", Params: map[string]string{strings.Repeat("k", MaxParamKey+1): "7"}}},
		{"param value too long", Task{Prompt: "p", Params: map[string]string{"k": strings.Repeat("v", MaxParamVal+1)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.task.Normalize()
			if !errors.Is(err, ErrBadTask) {
				t.Fatalf("Normalize = %+v, %v; want ErrBadTask", n, err)
			}
		})
	}
}

func TestNormalizeAcceptsLimits(t *testing.T) {
	maxParams := map[string]string{}
	for i := range MaxParams {
		maxParams[fmt.Sprintf("p%d", i)] = "v"
	}
	tests := []struct {
		name string
		task Task
	}{
		{"prompt at cap", Task{Prompt: strings.Repeat("x", MaxPromptBytes)}},
		{"prompt over cap before collapsing", Task{Prompt: "a" + strings.Repeat(" ", 3*MaxPromptBytes) + "b"}},
		{"model at cap", Task{Prompt: "p", Model: strings.Repeat("m", MaxModelLen)}},
		{"steps min", Task{Prompt: "p", Steps: MinSteps}},
		{"steps max", Task{Prompt: "p", Steps: MaxSteps}},
		{"sides min", Task{Prompt: "p", Width: MinSide, Height: MinSide}},
		{"sides max", Task{Prompt: "p", Width: MaxSide, Height: MaxSide}},
		{"seed max", Task{Prompt: "p", Seed: MaxSeed}},
		{"params at cap", Task{Prompt: "p", Params: maxParams}},
		{"param key and value at cap", Task{Prompt: "p", Params: map[string]string{strings.Repeat("k", MaxParamKey): strings.Repeat("v", MaxParamVal)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := mustNormalize(t, tt.task)
			if _, err := n.CID(); err != nil {
				t.Errorf("CID of a normalised task: %v", err)
			}
		})
	}
}

// A task that Normalize accepts must have a TaskCID: otherwise a client can
// build a task that no host can address, store or answer.
//
// BUG: every field at its cap encodes to 8839 bytes, over MaxTaskBytes
// (8192), so Normalize accepts it and Encode/CID then fail.
func TestNormalizedTaskAtEveryCapEncodes(t *testing.T) {
	params := map[string]string{}
	for i := range MaxParams {
		params[fmt.Sprintf("%0*d", MaxParamKey, i)] = strings.Repeat("v", MaxParamVal)
	}
	n, err := Task{
		Model:          strings.Repeat("m", MaxModelLen),
		Prompt:         strings.Repeat("x", MaxPromptBytes),
		NegativePrompt: strings.Repeat("y", MaxPromptBytes),
		Seed:           MaxSeed, Steps: MaxSteps, Width: MaxSide, Height: MaxSide,
		Params: params,
	}.Normalize()
	if err != nil {
		return // rejecting it in Normalize is also consistent
	}
	b, err := n.Encode()
	if err != nil {
		t.Fatalf("Normalize accepted a task whose Encode fails: %v", err)
	}
	if _, err := DecodeTask(b); err != nil {
		t.Fatalf("DecodeTask(Encode(normalised task)): %v", err)
	}
	req := mustMarshal(t, TaskRequest{Task: n})
	if _, err := DecodeTaskRequest(req); err != nil {
		t.Fatalf("a request for it does not decode: %v", err)
	}
}

// Normalize must be a function of its input. BUG: two param keys that differ
// only in case or surrounding space ("Sampler", "sampler") collapse to one
// key, and which value survives depends on Go's random map order, so the
// same input yields different TaskCIDs.
func TestNormalizeParamKeyCollisionIsDeterministic(t *testing.T) {
	in := Task{Prompt: "p", Params: map[string]string{"Sampler": "euler", "sampler": "ddim", " sampler ": "lms"}}
	first, firstErr := in.Normalize()
	for range 100 {
		n, err := in.Normalize()
		if (err == nil) != (firstErr == nil) || (err == nil && !n.Equal(first)) {
			t.Fatalf("Normalize gave %v (%v) then %v (%v)", first.Params, firstErr, n.Params, err)
		}
	}
}

func TestSortedParamKeys(t *testing.T) {
	task := Task{Params: map[string]string{"b": "", "a.b": "", "aa": "", "a": ""}}
	if got, want := task.SortedParamKeys(), []string{"a", "a.b", "aa", "b"}; !slices.Equal(got, want) {
		t.Errorf("SortedParamKeys = %v, want %v", got, want)
	}
}

func TestEncodeKeyOrder(t *testing.T) {
	tests := []struct {
		name       string
		task       Task
		keys       []string
		paramsKeys []string
	}{
		{
			name: "no params",
			task: exampleTask(),
			keys: []string{"seed", "model", "steps", "width", "height", "prompt", "negative_prompt"},
		},
		{
			name:       "params",
			task:       Task{Prompt: "p", Params: map[string]string{"zz": "1", "bb": "2", "a": "3", "ab": "4", "sampler": "5"}},
			keys:       []string{"seed", "model", "steps", "width", "height", "params", "prompt", "negative_prompt"},
			paramsKeys: []string{"a", "ab", "bb", "zz", "sampler"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustEncode(t, mustNormalize(t, tt.task))
			if err := checkDAGCBOR(b); err != nil {
				t.Fatalf("not canonical DAG-CBOR: %v\n%x", err, b)
			}
			es, err := mapEntries(b)
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, e := range es {
				keys = append(keys, e.Key)
				if e.Key == "params" {
					if got := mapKeys(t, e.Val); !slices.Equal(got, tt.paramsKeys) {
						t.Errorf("params keys = %v, want %v", got, tt.paramsKeys)
					}
				}
			}
			if !slices.Equal(keys, tt.keys) {
				t.Errorf("keys = %v, want %v", keys, tt.keys)
			}
		})
	}
}

func TestEncodeMinimalIntegers(t *testing.T) {
	// Each seed sits at an edge of a CBOR integer width.
	for _, seed := range []uint64{1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, MaxSeed} {
		b := mustEncode(t, mustNormalize(t, Task{Prompt: "p", Seed: seed, Steps: 23, Width: 248, Height: 256}))
		if err := checkDAGCBOR(b); err != nil {
			t.Errorf("seed %d: %v\n%x", seed, err, b)
		}
		got, err := DecodeTask(b)
		if err != nil || got.Seed != seed {
			t.Errorf("seed %d: decoded %d, %v", seed, got.Seed, err)
		}
	}
}

func TestTaskCID(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	c, err := n.CID()
	if err != nil {
		t.Fatal(err)
	}
	p := c.Prefix()
	if p.Version != 1 || p.Codec != cid.DagCBOR || p.MhType != mh.SHA2_256 || p.MhLength != 32 {
		t.Fatalf("TaskCID prefix %+v, want CIDv1 dag-cbor sha2-256/32", p)
	}
	dec, err := mh.Decode(c.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(mustEncode(t, n)); !bytes.Equal(dec.Digest, sum[:]) {
		t.Errorf("TaskCID digest %x, want sha2-256 of the canonical encoding %x", dec.Digest, sum)
	}

	cidOf := func(in Task) cid.Cid {
		t.Helper()
		c, err := mustNormalize(t, in).CID()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	same := []Task{
		{Prompt: "a quiet harbour at dusk", Seed: 42},
		{Prompt: " a  quiet harbour\nat dusk ", Seed: 42, Model: "GPUnet/Sketch-v1", Steps: 20, Width: 512, Height: 512},
		{Prompt: "a quiet harbour at dusk", Seed: 42, Params: map[string]string{}},
	}
	for _, s := range same {
		if got := cidOf(s); !got.Equals(c) {
			t.Errorf("CID of %+v = %s, want %s", s, got, c)
		}
	}
	// Params are a map: insertion order must not matter.
	p1, p2 := map[string]string{}, map[string]string{}
	for i := range MaxParams {
		p1[fmt.Sprintf("k%d", i)] = "v"
		p2[fmt.Sprintf("k%d", MaxParams-1-i)] = "v"
	}
	if a, b := cidOf(Task{Prompt: "p", Params: p1}), cidOf(Task{Prompt: "p", Params: p2}); !a.Equals(b) {
		t.Errorf("param order changed the CID: %s vs %s", a, b)
	}
	different := map[string]Task{
		"seed":   {Prompt: "a quiet harbour at dusk", Seed: 43},
		"prompt": {Prompt: "a quiet harbour at dawn", Seed: 42},
		"steps":  {Prompt: "a quiet harbour at dusk", Seed: 42, Steps: 21},
		"param":  {Prompt: "a quiet harbour at dusk", Seed: 42, Params: map[string]string{"a": ""}},
	}
	for name, d := range different {
		if got := cidOf(d); got.Equals(c) {
			t.Errorf("changing %s kept the CID %s", name, c)
		}
	}
}

func TestDecodeTaskRoundTrip(t *testing.T) {
	for _, in := range []Task{
		exampleTask(),
		{Prompt: "静かな港", NegativePrompt: "boats, people", Model: "x/y:z", Steps: 150, Width: 2048, Height: 64, Seed: MaxSeed,
			Params: map[string]string{"sampler": "euler a", "cfg": "7.5"}},
	} {
		n := mustNormalize(t, in)
		got, err := DecodeTask(mustEncode(t, n))
		if err != nil {
			t.Fatalf("DecodeTask: %v", err)
		}
		if !got.Equal(n) {
			t.Errorf("round trip %+v, want %+v", got, n)
		}
	}
}

// canonicalFields is the example task as a generic map, for building
// encodings that differ from the canonical one in exactly one way.
func canonicalFields(t *testing.T) map[string]any {
	n := mustNormalize(t, exampleTask())
	return map[string]any{
		"seed": n.Seed, "model": n.Model, "steps": n.Steps, "width": n.Width, "height": n.Height,
		"prompt": n.Prompt, "negative_prompt": n.NegativePrompt,
	}
}

func TestDecodeTaskRejects(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	canon := mustEncode(t, n)
	if _, err := DecodeTask(canon); err != nil {
		t.Fatalf("the canonical example does not decode: %v", err)
	}
	// A map spelled out of order, by an encoder that keeps struct order.
	declOrder, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	unsorted, err := declOrder.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	type absent struct{}
	with := func(k string, v any) []byte {
		m := canonicalFields(t)
		if _, ok := v.(absent); ok {
			delete(m, k)
		} else {
			m[k] = v
		}
		return mustMarshal(t, m)
	}
	seedEntry := []byte("\x64seed\x18\x2a")
	promptHead := []byte("\x77a quiet")

	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"keys in declaration order", unsorted},
		{"keys reversed", reverseMap(t, canon)},
		{"non-minimal seed", replaceOnce(t, canon, seedEntry, []byte("\x64seed\x19\x00\x2a"))},
		{"non-minimal steps", replaceOnce(t, canon, []byte("steps\x14"), []byte("steps\x18\x14"))},
		{"non-minimal map head", append([]byte{0xb8, 0x07}, canon[1:]...)},
		{"non-minimal string length", replaceOnce(t, canon, promptHead, []byte("\x78\x17a quiet"))},
		{"indefinite-length map", append(append([]byte{0xbf}, canon[1:]...), 0xff)},
		{"indefinite-length prompt", replaceOnce(t, canon, []byte("\x77a quiet harbour at dusk"), []byte("\x7f\x67a quiet\x70 harbour at dusk\xff"))},
		{"duplicate key", append(append([]byte{0xa8}, canon[1:]...), seedEntry...)},
		{"upper-case key", replaceOnce(t, canon, []byte("\x64seed"), []byte("\x64SEED"))},
		{"unknown field", with("extra", 1)},
		{"missing field", with("negative_prompt", absent{})},
		{"trailing byte", append(slices.Clone(canon), 0x00)},
		{"truncated", canon[:len(canon)-1]},
		{"oversize", bytes.Repeat([]byte{0}, MaxTaskBytes+1)},
		{"oversize valid CBOR", with("prompt", strings.Repeat("x", MaxTaskBytes))},
		{"seed as text", with("seed", "42")},
		{"negative seed", with("seed", -42)},
		{"seed as float", with("seed", float64(42))},
		{"seed as bignum", with("seed", cbor.Tag{Number: 2, Content: []byte{42}})},
		{"tagged seed", with("seed", cbor.Tag{Number: 42, Content: []byte{0, 42}})},
		{"width overflows uint32", with("width", uint64(1)<<32+512)},
		{"seed 0", with("seed", 0)},
		{"seed above MaxSeed", with("seed", uint64(MaxSeed)+1)},
		{"not normalised: prompt spaces", with("prompt", "a  quiet harbour at dusk")},
		{"not normalised: model case", with("model", "GPUnet/sketch-v1")},
		{"not normalised: params {}", with("params", map[string]string{})},
		{"not normalised: params key case", with("params", map[string]string{"A": "1"})},
		{"params null", with("params", nil)},
		{"an array", mustMarshal(t, []any{n.Seed, n.Model})},
		{"null", []byte{0xf6}},
		{"invalid UTF-8 prompt", replaceOnce(t, canon, []byte("dusk"), []byte("dus\xff"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeTask(tt.b)
			if !errors.Is(err, ErrBadTask) {
				t.Errorf("DecodeTask = %+v, %v; want ErrBadTask", got, err)
			}
		})
	}
}

// reverseMap re-spells a canonical map with its entries in reverse order.
func reverseMap(t *testing.T, b []byte) []byte {
	es, err := mapEntries(b)
	if err != nil {
		t.Fatal(err)
	}
	out := []byte{b[0]}
	for _, e := range slices.Backward(es) {
		out = append(append(out, e.KeyBytes...), e.Val...)
	}
	return out
}

// TestNormalizeCID: the task and TaskCID of the spec's worked example, and
// no CID for a task that does not normalise.
func TestNormalizeCID(t *testing.T) {
	n, c, err := exampleTask().NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	if c.String() != "bafyreidn2yh3jrcnx63lm5e3yofnwibcgrmx4n74oydnzc3ef3ebrttvym" {
		t.Errorf("TaskCID %s, want the worked example's (docs/protocol.md)", c)
	}
	if !n.Equal(mustNormalize(t, exampleTask())) {
		t.Errorf("task %+v, want the normalised one", n)
	}
	if _, c, err := (Task{Prompt: "  "}).NormalizeCID(); !errors.Is(err, ErrBadTask) || c.Defined() {
		t.Errorf("a blank prompt: %v, CID %v; want ErrBadTask and no CID", err, c)
	}
}

func TestTaskInputs(t *testing.T) {
	a, b := Link{RawCID([]byte("photo a"))}, Link{RawCID([]byte("photo b"))}
	base := Task{Prompt: "as a watercolour", Seed: 7}
	with := func(in []Link, mask *Link) Task { t := base; t.Inputs, t.Mask = in, mask; return t }
	cidOf := func(tk Task) string {
		t.Helper()
		_, c, err := tk.NormalizeCID()
		if err != nil {
			t.Fatal(err)
		}
		return c.String()
	}
	plain, one, two, swapped, masked := cidOf(base), cidOf(with([]Link{a}, nil)), cidOf(with([]Link{a, b}, nil)),
		cidOf(with([]Link{b, a}, nil)), cidOf(with([]Link{a}, &b))
	seen := map[string]string{}
	for name, c := range map[string]string{"plain": plain, "one": one, "two": two, "swapped": swapped, "masked": masked} {
		if other, dup := seen[c]; dup {
			t.Errorf("tasks %s and %s share TaskCID %s", name, other, c)
		}
		seen[c] = name
	}
	if cidOf(with([]Link{}, nil)) != plain {
		t.Error("an empty inputs list is not normalised away")
	}

	n := mustNormalize(t, with([]Link{a, b}, &b))
	enc := mustEncode(t, n)
	got, err := DecodeTask(enc)
	if err != nil || !got.Equal(n) {
		t.Fatalf("DecodeTask round trip: %v (equal %v)", err, got.Equal(n))
	}
	if err := checkDAGCBOR(enc); err != nil {
		t.Errorf("not canonical: %v", err)
	}

	h, err := mh.Sum([]byte("x"), mh.SHA2_512, -1)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		task Task
	}{
		{"dag-cbor input", with([]Link{{dagCBORCID([]byte("x"))}}, nil)},
		{"sha2-512 input", with([]Link{{cid.NewCidV1(cid.Raw, h)}}, nil)},
		{"undefined input", with([]Link{{}}, nil)},
		{"too many inputs", with([]Link{a, b, a, b, a}, nil)},
		{"mask without input", with(nil, &a)},
		{"dag-cbor mask", with([]Link{a}, &Link{dagCBORCID([]byte("x"))})},
	}
	for _, tt := range bad {
		if _, err := tt.task.Normalize(); !errors.Is(err, ErrBadTask) {
			t.Errorf("%s: Normalize = %v, want ErrBadTask", tt.name, err)
		}
	}
	// A peer that sends an empty inputs array spells the plain task a
	// second way: DecodeTask refuses it.
	if _, err := DecodeTask(mustMarshal(t, map[string]any{
		"seed": n.Seed, "model": n.Model, "steps": n.Steps, "width": n.Width, "height": n.Height,
		"inputs": []Link{}, "prompt": n.Prompt, "negative_prompt": "",
	})); !errors.Is(err, ErrBadTask) {
		t.Errorf("empty inputs array accepted: %v", err)
	}
}

func TestModelDigest(t *testing.T) {
	const hex = "9a5a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef"
	base := Task{Prompt: "a lighthouse", Model: "a1111/sdxl", Seed: 3}
	named := base
	named.ModelDigest = "SHA256:" + strings.ToUpper(hex) // as people paste it
	n, c, err := named.NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	if n.ModelDigest != "sha256:"+hex {
		t.Errorf("normalised digest %q, want sha256:%s", n.ModelDigest, hex)
	}
	bare := base
	bare.ModelDigest = hex
	if _, c2, err := bare.NormalizeCID(); err != nil || !c2.Equals(c) {
		t.Errorf("the bare hex digits give %s (%v), want the same task %s", c2, err, c)
	}
	_, plain, _ := base.NormalizeCID()
	other := base
	other.ModelDigest = "sha256:" + strings.Repeat("0", 64)
	_, c3, _ := other.NormalizeCID()
	if plain.Equals(c) || c3.Equals(c) {
		t.Error("the digest does not change the TaskCID")
	}
	if got, err := DecodeTask(mustEncode(t, n)); err != nil || !got.Equal(n) {
		t.Errorf("round trip: %v", err)
	}
	for _, d := range []string{"sha256:abc", "md5:" + hex, "sha256:" + hex + "0", "sha256:" + strings.Repeat("g", 64)} {
		bad := base
		bad.ModelDigest = d
		if _, err := bad.Normalize(); !errors.Is(err, ErrBadTask) {
			t.Errorf("digest %q: %v, want ErrBadTask", d, err)
		}
	}
	if k := DigestKey(n.ModelDigest); k != hex[:16] {
		t.Errorf("DigestKey %q, want %q", k, hex[:16])
	}
}

// TestNameSyntaxMatchesRegexp: the loop that checks model names and param
// keys accepts exactly what the regular expressions it replaced did.
func TestNameSyntaxMatchesRegexp(t *testing.T) {
	cases := []struct {
		syntax nameSyntax
		re     *regexp.Regexp
	}{
		{modelName, regexp.MustCompile(modelNameSyntax)},
		{paramKey, regexp.MustCompile(paramKeySyntax)},
	}
	const alphabet = "az09AZ._:/-é \x00+\n"
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range cases {
		for _, s := range []string{"", "a", "-a", "a-", "gpunet/noop", "sd:1.5", "Upper", "é"} {
			if got, want := c.syntax.valid(s), c.re.MatchString(s); got != want {
				t.Errorf("%q: valid %v, the expression says %v", s, got, want)
			}
		}
		for range 20000 {
			b := make([]byte, rng.IntN(6))
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			if got, want := c.syntax.valid(string(b)), c.re.MatchString(string(b)); got != want {
				t.Fatalf("%q: valid %v, the expression says %v", b, got, want)
			}
		}
	}
}
