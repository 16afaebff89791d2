package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const workedExampleFile = "testdata/worked_example.golden"

// workedExample renders the worked example of docs/protocol.md from the code:
// a task with an explicit seed, and the same prompt with its seed derived.
func workedExample(t *testing.T) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by TestWorkedExample from the code; do not edit by hand.\n")
	fmt.Fprintf(&b, "# Regenerate: go test ./protocol/ -run TestWorkedExample -update\n\n")

	fmt.Fprintf(&b, "== 1. Explicit seed\n\n")
	in := exampleTask()
	n := mustNormalize(t, in)
	enc := mustEncode(t, n)
	c, err := n.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "input:      %s\n", inputJSON(t, in))
	fmt.Fprintf(&b, "normalised: %s\n", mustJSON(t, n))
	fmt.Fprintf(&b, "canonical encoding (%d bytes):\n%s\n", len(enc), hex.EncodeToString(enc))
	fmt.Fprintf(&b, "annotated:\n%s", annotateMap(t, enc))
	fmt.Fprintf(&b, "TaskCID: %s\n", c)
	fmt.Fprintf(&b, "TaskCID bytes: %s\n\n", hex.EncodeToString(c.Bytes()))

	fmt.Fprintf(&b, "== 2. Derived seed\n\n")
	in2 := Task{Prompt: in.Prompt}
	zero := mustNormalize(t, in2)
	derived := zero.Seed
	zero.Seed = 0
	pre := append([]byte("gpunet-seed-v1\x00"), mustEncode(t, zero)...)
	sum := sha256.Sum256(pre)
	first8 := binary.BigEndian.Uint64(sum[:8])
	fmt.Fprintf(&b, "input: %s\n", inputJSON(t, in2))
	fmt.Fprintf(&b, "preimage = \"gpunet-seed-v1\" 00 || canonical encoding with seed 0 (%d bytes):\n%s\n", len(pre), hex.EncodeToString(pre))
	fmt.Fprintf(&b, "sha2-256(preimage): %s\n", hex.EncodeToString(sum[:]))
	fmt.Fprintf(&b, "first 8 bytes, big-endian: 0x%016x = %d\n", first8, first8)
	fmt.Fprintf(&b, "AND 0x001fffffffffffff (2^53-1): %d\n", first8&(1<<53-1))
	fmt.Fprintf(&b, "derived seed: %d\n", derived)
	n2 := mustNormalize(t, in2)
	enc2 := mustEncode(t, n2)
	c2, err := n2.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "normalised: %s\n", mustJSON(t, n2))
	fmt.Fprintf(&b, "canonical encoding (%d bytes):\n%s\n", len(enc2), hex.EncodeToString(enc2))
	fmt.Fprintf(&b, "TaskCID: %s\n\n", c2)

	fmt.Fprintf(&b, "== 3. An input image (an edit, since 1.2)\n\n")
	img, err := hex.DecodeString(exampleInputPNG)
	if err != nil {
		t.Fatal(err)
	}
	ic := RawCID(img)
	fmt.Fprintf(&b, "input image: a 2x2 PNG (%d bytes):\n%s\n", len(img), exampleInputPNG)
	fmt.Fprintf(&b, "its CID (raw block): %s\n", ic)
	fmt.Fprintf(&b, "its CID bytes: %s\n", hex.EncodeToString(ic.Bytes()))
	in3 := Task{Prompt: "a quiet harbour at dusk, as a watercolour", Seed: 42, Inputs: []Link{{ic}}, Params: map[string]string{"strength": "0.6"}}
	n3 := mustNormalize(t, in3)
	enc3 := mustEncode(t, n3)
	c3, err := n3.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "normalised: %s\n", mustJSON(t, n3))
	fmt.Fprintf(&b, "canonical encoding (%d bytes):\n%s\n", len(enc3), hex.EncodeToString(enc3))
	fmt.Fprintf(&b, "annotated:\n%s", annotateMap(t, enc3))
	fmt.Fprintf(&b, "TaskCID: %s\n", c3)
	img[len(img)-20] ^= 1 // one bit of the image data, as a changed pixel would
	n3.Inputs = []Link{{RawCID(img)}}
	c4, err := n3.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "the same task with one bit of the image changed: TaskCID %s\n\n", c4)

	fmt.Fprintf(&b, "== 4. A model named by content (since 1.2)\n\n")
	weights := []byte("the bytes of a checkpoint file")
	wsum := sha256.Sum256(weights)
	digest := "sha256:" + hex.EncodeToString(wsum[:])
	fmt.Fprintf(&b, "weights: the %d bytes %q\n", len(weights), weights)
	fmt.Fprintf(&b, "model_digest: %s\n", digest)
	fmt.Fprintf(&b, "DigestKey (beacons): %s\n", DigestKey(digest))
	in5 := Task{Prompt: in.Prompt, Seed: 42, Model: "a1111/sdxl-base", ModelDigest: digest}
	n5 := mustNormalize(t, in5)
	enc5 := mustEncode(t, n5)
	c5, err := n5.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "normalised: %s\n", mustJSON(t, n5))
	fmt.Fprintf(&b, "canonical encoding (%d bytes):\n%s\n", len(enc5), hex.EncodeToString(enc5))
	fmt.Fprintf(&b, "annotated:\n%s", annotateMap(t, enc5))
	fmt.Fprintf(&b, "TaskCID: %s\n", c5)
	n5.ModelDigest = ""
	c6, err := n5.CID()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "the same task by name alone: TaskCID %s\n", c6)
	fmt.Fprintf(&b, "provider key of the digest: %s\n", RawCID([]byte("a1111/sdxl-base@"+digest)))
	return b.String()
}

// exampleInputPNG is a 2x2 PNG (red, green; blue, white), written once by
// Go's image/png and kept as bytes: the example must not depend on an
// encoder's version.
const exampleInputPNG = "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001b49444154789c623aa1a1a17142834143e3c4870f1f00010000ffff223a061b67eb3fd80000000049454e44ae426082"

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// inputJSON shows only the fields a client set.
func inputJSON(t *testing.T, in Task) string {
	m := map[string]any{"prompt": in.Prompt}
	if in.Seed != 0 {
		m["seed"] = in.Seed
	}
	if in.Model != "" || in.NegativePrompt != "" || in.Steps != 0 || in.Width != 0 || in.Height != 0 || in.Params != nil || in.Inputs != nil {
		t.Fatal("inputJSON: extend me")
	}
	return mustJSON(t, m)
}

// annotateMap lists a flat map of text keys and text or unsigned values, one
// CBOR item per line, head apart from content.
func annotateMap(t *testing.T, enc []byte) string {
	es, err := mapEntries(enc)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	row := func(depth int, item []byte, note string) {
		h, err := readHead(item)
		if err != nil {
			t.Fatal(err)
		}
		raw := hex.EncodeToString(item[:h.size])
		if h.size < len(item) {
			raw += " " + hex.EncodeToString(item[h.size:])
		}
		fmt.Fprintf(&b, "%s%-56s %s\n", strings.Repeat("  ", depth), raw, note)
	}
	row(0, enc[:1], fmt.Sprintf("map, %d entries", len(es)))
	for _, e := range es {
		row(1, e.KeyBytes, strconv.Quote(e.Key))
		h, err := readHead(e.Val)
		if err != nil {
			t.Fatal(err)
		}
		switch h.major {
		case 0:
			row(2, e.Val, fmt.Sprintf("%d", h.arg))
		case 3:
			row(2, e.Val, strconv.Quote(string(e.Val[h.size:])))
		case 4:
			row(2, e.Val, fmt.Sprintf("array, %d item(s): links, tag 42 over 00 + CID", h.arg))
		case 5:
			row(2, e.Val, fmt.Sprintf("map, %d entr(ies): text to text", h.arg))
		default:
			t.Fatalf("annotateMap: value of major type %d", h.major)
		}
	}
	return b.String()
}

func TestWorkedExample(t *testing.T) {
	got := workedExample(t)
	if *update {
		if err := os.MkdirAll(filepath.Dir(workedExampleFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(workedExampleFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(workedExampleFile)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("worked example changed: the TaskCID of a task is part of the protocol.\n"+
			"If the change is deliberate, bump the version, run with -update and update docs/protocol.md.\ngot:\n%s\nwant:\n%s", got, want)
	}
}

// docValue renders a constant as the doc's tables write it.
func docValue(v any) string {
	d, ok := v.(time.Duration)
	switch {
	case !ok:
		return fmt.Sprint(v)
	case d%time.Hour == 0:
		return fmt.Sprintf("%d h", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%d min", d/time.Minute)
	case d%time.Second != 0:
		return fmt.Sprintf("%d ms", d/time.Millisecond)
	}
	return fmt.Sprintf("%d s", d/time.Second)
}

// docs/protocol.md must agree with the code on the worked example and on
// every constant a client needs.
func TestProtocolDocMatchesCode(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	golden, err := os.ReadFile(workedExampleFile)
	if err != nil {
		t.Fatal(err)
	}
	// Every hex dump, CID and number in the example appears in the doc.
	for _, l := range strings.Split(string(golden), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "==") {
			continue
		}
		if !strings.Contains(string(doc), l) {
			t.Errorf("docs/protocol.md lacks this line of %s:\n%s", workedExampleFile, l)
		}
	}
	consts := []struct {
		name  string
		value any
	}{
		{"MaxPromptBytes", MaxPromptBytes}, {"MaxTaskBytes", MaxTaskBytes}, {"MaxRequestBytes", MaxRequestBytes},
		{"MaxBlockBytes", MaxBlockBytes}, {"MaxEventBytes", MaxEventBytes}, {"MaxManifestBytes", MaxManifestBytes},
		{"MaxCapacityBytes", MaxCapacityBytes}, {"MaxOutputs", MaxOutputs}, {"MaxEventsPerTask", MaxEventsPerTask},
		{"MaxModelLen", MaxModelLen}, {"MaxParams", MaxParams}, {"MaxParamKey", MaxParamKey}, {"MaxParamVal", MaxParamVal},
		{"MaxSeed", uint64(MaxSeed)}, {"MinSteps", MinSteps}, {"MaxSteps", MaxSteps}, {"MinSide", MinSide},
		{"MaxSide", MaxSide}, {"SideMultiple", SideMultiple}, {"DefaultSteps", DefaultSteps},
		{"DefaultWidth", DefaultWidth}, {"DefaultHeight", DefaultHeight},
		{"RequestTimeout", RequestTimeout}, {"CapacityMaxAge", CapacityMaxAge}, {"MaxClockSkew", MaxClockSkew},
		{"ManifestVersion", ManifestVersion},
		{"MaxBeaconBytes", MaxBeaconBytes}, {"MaxBeaconShards", MaxBeaconShards}, {"BeaconMaxAge", BeaconMaxAge}, {"BeaconMinInterval", BeaconMinInterval},
		{"MaxSubmitterBytes", MaxSubmitterBytes}, {"KeepaliveInterval", KeepaliveInterval}, {"SuspectAfter", SuspectAfter},
		{"MaxPreviews", MaxPreviews}, {"MaxPreviewBytes", MaxPreviewBytes}, {"MaxInputs", MaxInputs},
		{"MaxFraudProofBytes", MaxFraudProofBytes}, {"MaxWitnesses", MaxWitnesses}, {"FraudProofVersion", FraudProofVersion},
		{"MaxSampleBytes", MaxSampleBytes}, {"MaxDescriptors", MaxDescriptors}, {"MaxDescriptorAddrs", MaxDescriptorAddrs},
		{"MaxAddrBytes", MaxAddrBytes}, {"SampleTimeout", SampleTimeout},
	}
	for _, c := range consts {
		// The tables in the doc have a row "| `Name` | value |".
		if row := fmt.Sprintf("| `%s` | %s ", c.name, docValue(c.value)); !strings.Contains(string(doc), row) {
			t.Errorf("docs/protocol.md lacks the table row %q", row)
		}
	}
	for _, s := range []string{
		TaskProtocol, SessionProtocol, FetchProtocol, DHTPrefix + "/kad/1.0.0", BeaconTopic, FraudTopic, ProbeProtocol, IdleProtocol, SampleProtocol, "/" + CapacityNamespace + "/",
		DefaultModel, manifestDomain[:len(manifestDomain)-1], capacityDomain[:len(capacityDomain)-1], "gpunet-seed-v1",
		EventQueued, EventProgress, EventPreview, EventBlock, EventResult, EventError,
		CodeBusy, CodeTooHot, CodePaused, CodeRateLimited, CodeUnsupportedModel, CodeBadRequest, CodeNotFound, CodeInternal,
		modelNameSyntax, paramKeySyntax,
	} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("docs/protocol.md never mentions %q", s)
		}
	}
}
