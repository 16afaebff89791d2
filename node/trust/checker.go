package trust

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"golang.org/x/time/rate"
)

// Runner is what a Checker needs from the node.
type Runner interface {
	// Rerun runs task on a host other than those in exclude (peer IDs),
	// preferring hosts the book trusts, and returns that host's own fresh
	// result (protocol.TaskRequest.Verify), verified against its CIDs.
	Rerun(ctx context.Context, task protocol.Task, exclude []string) (Result, error)
	// Blocks fetches raw blocks by CID from peer from, or anyone who holds
	// them, each verified against its CID.
	Blocks(ctx context.Context, from string, cids []cid.Cid) ([][]byte, error)
}

// Errors of CheckProof.
var (
	// ErrKnown: the accused host was caught already; the proof adds nothing.
	ErrKnown = errors.New("the accused host is already excluded")
	// ErrFramed: re-running the task agreed with the accused host, so the
	// proof is false (its sender is trying to frame an honest host, or was
	// itself fooled by a liar).
	ErrFramed = errors.New("fraud proof refused: a re-run agrees with the accused host")
	// ErrUndecided: the re-run agreed with neither side.
	ErrUndecided = errors.New("fraud proof undecided: the re-run agrees with neither side")
	// ErrRateLimited: the sender, or all senders together, sent proofs
	// faster than this node checks them.
	ErrRateLimited = errors.New("fraud proof dropped: too many proofs")
)

// Checker settles checks and fraud proofs. Safe for concurrent use.
type Checker struct {
	book *Book
	run  Runner
	// maxReruns bounds the re-runs of one check: the first, then arbiters
	// until two results agree.
	maxReruns int

	mu      sync.Mutex
	senders map[string]*rate.Limiter
	all     *rate.Limiter

	checks, reruns, agreed, caught, unchecked atomic.Int64
}

// Proof rates: each proof a node checks costs it a re-run, so a sender may
// have one checked every ProofEvery (bursts of ProofBurst), and all senders
// together ten times that.
const (
	ProofEvery = 10 * time.Second
	ProofBurst = 3
)

// NewChecker returns a checker that keeps its records in book and runs
// tasks through run.
func NewChecker(book *Book, run Runner) *Checker {
	return &Checker{
		book:      book,
		run:       run,
		maxReruns: 3,
		senders:   map[string]*rate.Limiter{},
		all:       rate.NewLimiter(rate.Every(ProofEvery/10), 10*ProofBurst),
	}
}

// Book returns the checker's book.
func (c *Checker) Book() *Book { return c.book }

// Verdict is what a check found.
type Verdict struct {
	// Agreed: the first re-run agreed with the result checked.
	Agreed bool
	// Correct is the result the re-runs settled on: the one checked when
	// it stood.
	Correct Result
	// Caught lists the hosts outvoted, and Proofs the fraud proof against
	// each, in the same order.
	Caught []string
	Proofs [][]byte
	// Reruns is how many times the task ran again.
	Reruns int
	// Distance is the largest perceptual distance between the first two
	// results (0 for equal bytes).
	Distance float64
}

// Check re-runs got's task on an independent host and compares. When the
// two disagree, further hosts run it until two results agree; every host
// whose result differs from theirs is caught: excluded in the book, with a
// fraud proof. It fails, leaving the book as it was, when no other host
// could run the task.
func (c *Checker) Check(ctx context.Context, got Result) (Verdict, error) {
	c.checks.Add(1)
	tol := c.book.Policy().Tolerance
	answers := []Result{got}
	v := Verdict{}
	for v.Reruns < c.maxReruns {
		exclude := make([]string, len(answers))
		for i, a := range answers {
			exclude[i] = a.Host()
		}
		r, err := c.run.Rerun(ctx, got.Manifest.Task, exclude)
		if err != nil {
			c.unchecked.Add(1)
			return v, fmt.Errorf("checking %s's result: %w", got.Host(), err)
		}
		v.Reruns++
		c.reruns.Add(1)
		answers = append(answers, r)
		if v.Reruns == 1 {
			ok, d, err := Agree(got, r, tol)
			if err != nil {
				return v, err
			}
			v.Distance = d
			if ok {
				v.Agreed, v.Correct = true, got
				c.agreed.Add(1)
				c.book.Passed(got.Host())
				return v, nil
			}
			continue
		}
		// An arbiter: does it side with one of the earlier answers?
		for _, a := range answers[:len(answers)-1] {
			if ok, _, _ := Agree(a, r, tol); ok {
				v.Correct = a
				c.settle(&v, answers)
				return v, nil
			}
		}
	}
	c.unchecked.Add(1)
	return v, fmt.Errorf("checking %s's result: %d re-runs and no two results agree", got.Host(), v.Reruns)
}

// settle catches every answer that disagrees with v.Correct.
func (c *Checker) settle(v *Verdict, answers []Result) {
	tol := c.book.Policy().Tolerance
	var witnesses [][]byte
	var liars []Result
	for _, a := range answers {
		if ok, _, _ := Agree(v.Correct, a, tol); ok {
			if len(witnesses) < protocol.MaxWitnesses {
				witnesses = append(witnesses, a.ManifestBytes)
			}
			c.book.Passed(a.Host())
		} else {
			liars = append(liars, a)
		}
	}
	for _, l := range liars {
		// Witnesses whose outputs are the liar's bytes prove nothing; Agree
		// said they differ, so only an exact duplicate could.
		ws := slices.DeleteFunc(slices.Clone(witnesses), func(w []byte) bool {
			m, err := protocol.DecodeManifest(w)
			return err != nil || protocol.SameOutputs(m, l.Manifest)
		})
		proof, err := protocol.EncodeFraudProof(l.ManifestBytes, ws...)
		if err != nil {
			continue // cannot happen for manifests that verified; nothing to send
		}
		if c.book.Exclude(l.Host(), proof) {
			c.caught.Add(1)
		}
		v.Caught = append(v.Caught, l.Host())
		v.Proofs = append(v.Proofs, proof)
	}
}

// CheckProof settles a fraud proof sent by sender: it decodes it (every
// signature checked), then re-runs the task on a host that is neither the
// accused nor a witness. The accused host is caught only if the re-run
// disagrees with it and agrees with a witness: a proof about an honest host
// fails with ErrFramed. For a kernel whose outputs are not exact the
// images are needed to compare: they are fetched from the sender, which
// kept them. It returns the accused host's ID and whether this node had
// not caught it before.
func (c *Checker) CheckProof(ctx context.Context, sender string, raw []byte) (accused string, err error) {
	p, err := protocol.DecodeFraudProof(raw)
	if err != nil {
		return "", err
	}
	accused = p.Accused.Host
	if c.book.Excluded(accused) {
		return accused, ErrKnown
	}
	if !c.allow(sender) {
		return accused, ErrRateLimited
	}
	exclude := []string{accused}
	for _, w := range p.Witnesses {
		exclude = append(exclude, w.Host)
	}
	r, err := c.run.Rerun(ctx, p.Accused.Task, exclude)
	if err != nil {
		return accused, fmt.Errorf("re-running the task of a fraud proof: %w", err)
	}
	c.reruns.Add(1)
	acc := Result{Manifest: p.Accused}
	witnesses := make([]Result, len(p.Witnesses))
	for i, w := range p.Witnesses {
		witnesses[i] = Result{Manifest: w}
	}
	if !exact(p) {
		// The images decide: fetch the accused's and the witnesses'.
		for _, x := range append([]*Result{&acc}, ptrs(witnesses)...) {
			if x.Blocks, err = c.run.Blocks(ctx, sender, outputCIDs(x.Manifest)); err != nil {
				return accused, fmt.Errorf("fetching the outputs a fraud proof names: %w", err)
			}
		}
	}
	tol := c.book.Policy().Tolerance
	if ok, _, err := Agree(r, acc, tol); err != nil {
		return accused, err
	} else if ok {
		return accused, ErrFramed
	}
	for _, w := range witnesses {
		if ok, _, _ := Agree(r, w, tol); ok {
			if c.book.Exclude(accused, raw) {
				c.caught.Add(1)
			}
			return accused, nil
		}
	}
	return accused, ErrUndecided
}

// allow charges one proof to sender's rate and to the node's.
func (c *Checker) allow(sender string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	lim := c.senders[sender]
	if lim == nil {
		if len(c.senders) > 4096 {
			clear(c.senders) // bounded; a sender forgotten gets a fresh burst
		}
		lim = rate.NewLimiter(rate.Every(ProofEvery), ProofBurst)
		c.senders[sender] = lim
	}
	return lim.Allow() && c.all.Allow()
}

// exact reports whether a proof's results are compared by bytes.
func exact(p *protocol.Proof) bool {
	if protocol.ExactKernel(p.Accused.Kernel) {
		return true
	}
	for _, w := range p.Witnesses {
		if protocol.ExactKernel(w.Kernel) {
			return true
		}
	}
	return false
}

func outputCIDs(m *protocol.Manifest) []cid.Cid {
	out := make([]cid.Cid, len(m.Outputs))
	for i, o := range m.Outputs {
		out[i] = o.CID.Cid
	}
	return out
}

func ptrs(rs []Result) []*Result {
	out := make([]*Result, len(rs))
	for i := range rs {
		out[i] = &rs[i]
	}
	return out
}

// Stats counts a checker's work.
type Stats struct {
	// Checks started, Reruns made for checks and proofs, checks whose
	// first re-run Agreed, hosts Caught, and checks left Unchecked (no
	// other host could run the task, or no two results agreed).
	Checks    int64 `json:"checks"`
	Reruns    int64 `json:"reruns"`
	Agreed    int64 `json:"agreed"`
	Caught    int64 `json:"caught"`
	Unchecked int64 `json:"unchecked"`
}

// Stats returns the checker's counts so far.
func (c *Checker) Stats() Stats {
	return Stats{
		Checks: c.checks.Load(), Reruns: c.reruns.Load(), Agreed: c.agreed.Load(),
		Caught: c.caught.Load(), Unchecked: c.unchecked.Load(),
	}
}
