package trust

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// picture is a task's true image: a gradient and a disc placed by the
// seed, 64×64.
func picture(t protocol.Task) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, 64, 64))
	cx, cy := int(t.Seed%48)+8, int(t.Seed/48%48)+8
	for y := range 64 {
		for x := range 64 {
			c := color.RGBA{uint8(4 * x), uint8(4 * y), 128, 255}
			if (x-cx)*(x-cx)+(y-cy)*(y-cy) < 100 {
				c = color.RGBA{250, 40, 40, 255}
			}
			m.Set(x, y, c)
		}
	}
	return m
}

func encodePNG(m image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, m); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// honest draws the true image; with noise > 0 it moves each pixel's values
// by up to ±noise at random, as a GPU generator's output moves between
// cards (different bytes, the same picture).
func honest(noise int, rng *rand.Rand) func(protocol.Task) []byte {
	return func(t protocol.Task) []byte {
		m := picture(t)
		if noise > 0 {
			for i := range m.Pix {
				if i%4 == 3 {
					continue
				}
				v := int(m.Pix[i]) + rng.IntN(2*noise+1) - noise
				m.Pix[i] = uint8(min(max(v, 0), 255))
			}
		}
		return encodePNG(m)
	}
}

// lying paints a quarter of the true image in colour c.
func lying(c color.RGBA) func(protocol.Task) []byte {
	return func(t protocol.Task) []byte {
		m := picture(t)
		for y := range 32 {
			for x := range 32 {
				m.Set(x, y, c)
			}
		}
		return encodePNG(m)
	}
}

type fakeHost struct {
	key    crypto.PrivKey
	id     string
	kernel string
	draw   func(protocol.Task) []byte
}

func newHost(t *testing.T, kernel string, draw func(protocol.Task) []byte) *fakeHost {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return &fakeHost{key: k, id: id.String(), kernel: kernel, draw: draw}
}

// run is h's signed answer to task.
func (h *fakeHost) run(t *testing.T, task protocol.Task) Result {
	t.Helper()
	b := h.draw(task)
	m, err := protocol.NewManifest(task, []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(b)}, MediaType: "image/png", Size: uint64(len(b))}}, h.kernel, 1, h.key)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return Result{Manifest: m, ManifestBytes: mb, Blocks: [][]byte{b}}
}

// fakeRunner re-runs tasks on its hosts, in order, skipping the excluded;
// Blocks serves any block a host drew.
type fakeRunner struct {
	t      *testing.T
	hosts  []*fakeHost
	blocks map[string][]byte
	reruns int
	book   *Book // hosts it excludes are skipped, as the node's placement does
}

func (r *fakeRunner) Rerun(_ context.Context, task protocol.Task, exclude []string) (Result, error) {
	for _, h := range r.hosts {
		if slices.Contains(exclude, h.id) || (r.book != nil && r.book.Excluded(h.id)) {
			continue
		}
		r.reruns++
		res := h.run(r.t, task)
		r.blocks[res.Manifest.Outputs[0].CID.String()] = res.Blocks[0]
		return res, nil
	}
	return Result{}, errors.New("no host left")
}

func (r *fakeRunner) Blocks(_ context.Context, _ string, cids []cid.Cid) ([][]byte, error) {
	var out [][]byte
	for _, c := range cids {
		b, ok := r.blocks[c.String()]
		if !ok {
			return nil, fmt.Errorf("no block %s", c)
		}
		out = append(out, b)
	}
	return out, nil
}

func task(seed uint64) protocol.Task {
	t, _, err := protocol.Task{Prompt: "a harbour", Width: 64, Height: 64, Steps: 2, Seed: seed}.NormalizeCID()
	if err != nil {
		panic(err)
	}
	return t
}

func newChecker(t *testing.T, hosts ...*fakeHost) (*Checker, *fakeRunner) {
	r := &fakeRunner{t: t, hosts: hosts, blocks: map[string][]byte{}, book: NewBook(DefaultPolicy())}
	return NewChecker(r.book, r), r
}

// keep records got's blocks so that a proof's receiver can fetch them.
func (r *fakeRunner) keep(got Result) Result {
	r.blocks[got.Manifest.Outputs[0].CID.String()] = got.Blocks[0]
	return got
}

func TestCheckAgrees(t *testing.T) {
	h1, h2 := newHost(t, "sketch-v1", honest(0, nil)), newHost(t, "sketch-v1", honest(0, nil))
	c, r := newChecker(t, h2)
	v, err := c.Check(context.Background(), h1.run(t, task(1)))
	if err != nil || !v.Agreed || len(v.Caught) != 0 || v.Reruns != 1 || r.reruns != 1 {
		t.Fatalf("verdict %+v, %v; want agreed after one re-run", v, err)
	}
	if rec, _ := c.Book().Record(h1.id); rec.Passed != 1 {
		t.Errorf("record %+v: the check that agreed was not counted", rec)
	}
}

// TestCheckCatchesTheLiar: a liar's result is outvoted by the re-run and an
// arbiter; the book excludes it and the proof names it. When the liar is
// the re-run instead, the arbiter sides with the result checked and the
// liar re-runner is the one caught.
func TestCheckCatchesTheLiar(t *testing.T) {
	for _, kernel := range []string{"sketch-v1", "cmd:gpu-generator"} {
		rng := rand.New(rand.NewPCG(1, 2))
		noise := 0
		if !protocol.ExactKernel(kernel) {
			noise = 3 // honest GPU results differ in bytes
		}
		liar := newHost(t, kernel, lying(color.RGBA{255, 255, 255, 255}))
		h1, h2 := newHost(t, kernel, honest(noise, rng)), newHost(t, kernel, honest(noise, rng))

		c, _ := newChecker(t, h1, h2)
		v, err := c.Check(context.Background(), liar.run(t, task(2)))
		if err != nil {
			t.Fatal(err)
		}
		if v.Agreed || len(v.Caught) != 1 || v.Caught[0] != liar.id || v.Correct.Host() == liar.id || v.Reruns != 2 {
			t.Fatalf("%s: verdict %+v; want the liar caught after two re-runs", kernel, v)
		}
		if !c.Book().Excluded(liar.id) || c.Book().Excluded(h1.id) || c.Book().Excluded(h2.id) {
			t.Fatalf("%s: book excludes the wrong hosts", kernel)
		}
		p, err := protocol.DecodeFraudProof(v.Proofs[0])
		if err != nil || p.Accused.Host != liar.id || len(p.Witnesses) != 2 {
			t.Fatalf("%s: proof %+v, %v", kernel, p, err)
		}

		// The liar as the re-runner: the result checked stands.
		c2, _ := newChecker(t, liar, h2)
		got := h1.run(t, task(3))
		v, err = c2.Check(context.Background(), got)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Caught) != 1 || v.Caught[0] != liar.id || v.Correct.Host() != h1.id {
			t.Fatalf("%s: verdict %+v; want the re-runner caught and the result kept", kernel, v)
		}
	}
}

// TestCheckProof: a receiver that never saw the lie settles a real proof by
// re-running the task and excludes the liar; a proof about an honest host
// (its real manifest, with a framer's signed wrong result as witness) is
// refused with ErrFramed and excludes nobody; a sender is held to its rate.
func TestCheckProof(t *testing.T) {
	for _, kernel := range []string{"sketch-v1", "cmd:gpu-generator"} {
		rng := rand.New(rand.NewPCG(3, 4))
		noise := 0
		if !protocol.ExactKernel(kernel) {
			noise = 3
		}
		liar := newHost(t, kernel, lying(color.RGBA{0, 0, 0, 255}))
		h1, h2, h3 := newHost(t, kernel, honest(noise, rng)), newHost(t, kernel, honest(noise, rng)), newHost(t, kernel, honest(noise, rng))
		catcher, cr := newChecker(t, h1, h2)
		v, err := catcher.Check(context.Background(), cr.keep(liar.run(t, task(5))))
		if err != nil || len(v.Proofs) != 1 {
			t.Fatalf("%s: no proof: %+v %v", kernel, v, err)
		}

		// The receiver re-runs on h3 (the accused and the witnesses are
		// excluded); it fetches images from what the catcher kept.
		receiver, rr := newChecker(t, liar, h1, h2, h3)
		rr.blocks = cr.blocks
		accused, err := receiver.CheckProof(context.Background(), "catcher", v.Proofs[0])
		if err != nil || accused != liar.id || !receiver.Book().Excluded(liar.id) {
			t.Fatalf("%s: real proof: accused %s, err %v, excluded %v", kernel, accused, err, receiver.Book().Excluded(liar.id))
		}
		if _, err := receiver.CheckProof(context.Background(), "catcher", v.Proofs[0]); !errors.Is(err, ErrKnown) {
			t.Errorf("%s: the same proof again: %v, want ErrKnown", kernel, err)
		}

		// Framing h1: its genuine result, and a framer's wrong one.
		framer := newHost(t, kernel, lying(color.RGBA{0, 255, 0, 255}))
		real, fake := cr.keep(h1.run(t, task(6))), cr.keep(framer.run(t, task(6)))
		frame, err := protocol.EncodeFraudProof(real.ManifestBytes, fake.ManifestBytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := receiver.CheckProof(context.Background(), "framer", frame); !errors.Is(err, ErrFramed) {
			t.Fatalf("%s: proof about an honest host: %v, want ErrFramed", kernel, err)
		}
		if receiver.Book().Excluded(h1.id) {
			t.Fatalf("%s: an honest host was excluded by a false proof", kernel)
		}

		// The framer's rate: its burst is spent (one proof above), then
		// dropped unchecked.
		reruns := rr.reruns
		for range ProofBurst - 1 {
			if _, err := receiver.CheckProof(context.Background(), "framer", frame); !errors.Is(err, ErrFramed) {
				t.Fatalf("%s: within the burst: %v", kernel, err)
			}
		}
		if _, err := receiver.CheckProof(context.Background(), "framer", frame); !errors.Is(err, ErrRateLimited) {
			t.Fatalf("%s: past the burst: %v, want ErrRateLimited", kernel, err)
		}
		if rr.reruns != reruns+ProofBurst-1 {
			t.Errorf("%s: %d re-runs for %d proofs checked", kernel, rr.reruns-reruns, ProofBurst-1)
		}
	}
}

// TestDecide: probation holds, then the check rate falls with the record
// towards MinRate, and every result is checked when the swarm is idle.
func TestDecide(t *testing.T) {
	pol := DefaultPolicy()
	b := NewBook(pol)
	for i := range pol.Probation {
		if d := b.Decide("h", 0); d != Hold {
			t.Fatalf("result %d on probation: %s", i+1, d)
		}
		b.Passed("h")
	}
	if got := b.Distrust("h"); got != 0 {
		t.Errorf("distrust after probation %v, want 0", got)
	}
	const n = 20000
	checked := 0
	want := 0.0
	for k := pol.Probation + 1; k <= pol.Probation+n; k++ {
		if b.Decide("h", 0) == CheckLater {
			checked++
		}
		want += max(pol.MinRate, float64(pol.Probation)/float64(k))
	}
	if math.Abs(float64(checked)-want) > 4*math.Sqrt(want) {
		t.Errorf("%d checks in %d results, want about %.0f", checked, n, want)
	}
	if d := b.Decide("h", 0.9); d != CheckLater {
		t.Errorf("idle swarm: %s, want check-later", d)
	}
	if b.Distrust("new") != ProbationDistrust {
		t.Errorf("a new host's distrust %v", b.Distrust("new"))
	}
	b.Exclude("h", []byte("proof"))
	if b.Decide("h", 0) != Refuse || b.Distrust("h") != 1 {
		t.Error("a caught host is not refused")
	}
}

func TestBookIsBounded(t *testing.T) {
	pol := DefaultPolicy()
	pol.MaxHosts = 10
	b := NewBook(pol)
	b.Exclude("liar", nil)
	for i := range 100 {
		b.Decide(fmt.Sprint("h", i), 0)
	}
	if len(b.hosts) > pol.MaxHosts {
		t.Errorf("%d records, cap %d", len(b.hosts), pol.MaxHosts)
	}
	if !b.Excluded("liar") {
		t.Error("a caught host was forgotten to make room")
	}
}

// TestDistance: the perceptual distance is small for an image whose pixels
// moved by a few values (as across GPUs), large for a changed picture, 1
// for another size, and an error for what is not an image.
func TestDistance(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	tk := task(9)
	orig := encodePNG(picture(tk))
	near := honest(4, rng)(tk)
	far := lying(color.RGBA{255, 255, 255, 255})(tk)
	dn, err := Distance(orig, near)
	if err != nil || dn > DefaultTolerance/4 {
		t.Errorf("noisy copy at %v (%v), want well under %v", dn, err, DefaultTolerance)
	}
	df, err := Distance(orig, far)
	if err != nil || df < 4*DefaultTolerance {
		t.Errorf("altered image at %v (%v), want well over %v", df, err, DefaultTolerance)
	}
	t.Logf("distance: pixels moved by up to ±4: %.5f; a quarter painted white: %.4f; tolerance %.2f", dn, df, DefaultTolerance)
	small := encodePNG(image.NewRGBA(image.Rect(0, 0, 8, 8)))
	if d, err := Distance(orig, small); err != nil || d != 1 {
		t.Errorf("other size: %v, %v", d, err)
	}
	if _, err := Distance(orig, []byte("not an image")); err == nil {
		t.Error("garbage compared without error")
	}
}

// FuzzDistance: no input makes the comparison panic or hang.
func FuzzDistance(f *testing.F) {
	f.Add(encodePNG(picture(task(1))), []byte("x"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		_, _ = Distance(a, b)
	})
}
