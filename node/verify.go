package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// verifier is node/trust wired into the node (docs/trust.md): which results
// of other hosts Submit checks, the re-runs on independent hosts, and the
// fraud-proof topic. Nil when Config.Verify is.
type verifier struct {
	n       *Node
	book    *trust.Book
	checker *trust.Checker
	topic   *pubsub.Topic
	sub     *pubsub.Subscription
	// later holds a place per background check running; a check that
	// finds none free is skipped (counted in skipped).
	later   chan struct{}
	skipped atomic.Uint64
	// proofs counts the fraud proofs other nodes sent, by outcome.
	proofsAccepted, proofsKnown, proofsRefused, proofsIgnored atomic.Uint64
}

const (
	// maxBackgroundChecks bounds the checks of accepted results running at
	// once: verification must not crowd out the work it checks.
	maxBackgroundChecks = 8
	// checkTimeout bounds one background check, re-runs and arbiters
	// included; proofTimeout, the check of a fraud proof another node sent.
	checkTimeout = 5 * time.Minute
	proofTimeout = 2 * time.Minute
	// rerunRounds bounds how often a re-run looks for a host when every
	// candidate refused for load, waiting rerunWait (times the round) between.
	rerunRounds = 4
	rerunWait   = 250 * time.Millisecond
)

// startVerify joins the fraud-proof topic; gossip must be running.
func (n *Node) startVerify() error {
	if n.cfg.Verify == nil {
		return nil
	}
	v := &verifier{n: n, book: trust.NewBook(*n.cfg.Verify), later: make(chan struct{}, maxBackgroundChecks)}
	v.checker = trust.NewChecker(v.book, runner{n})
	if n.cfg.DataDir != "" {
		v.loadBook(n.cfg.DataDir)
	}
	ps := n.gossip.ps
	err := ps.RegisterTopicValidator(protocol.FraudTopic, v.validate,
		pubsub.WithValidatorTimeout(proofTimeout), pubsub.WithValidatorConcurrency(4))
	if err != nil {
		return err
	}
	if v.topic, err = ps.Join(protocol.FraudTopic); err != nil {
		return fmt.Errorf("joining %s: %w", protocol.FraudTopic, err)
	}
	if v.sub, err = v.topic.Subscribe(); err != nil {
		return err
	}
	n.verify = v
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for { // the validator acts on proofs; this only keeps the subscription
			if _, err := v.sub.Next(n.ctx); err != nil {
				return
			}
		}
	}()
	return nil
}

func (v *verifier) close() {
	v.sub.Cancel()
	_ = v.topic.Close()
	if dir := v.n.cfg.DataDir; dir != "" {
		if err := v.saveBook(dir); err != nil {
			v.n.log.Warn("saving the host records", "err", err)
		}
	}
}

// validate settles a fraud proof before GossipSub forwards it: a proof
// this node cannot confirm by re-running the task is not passed on, and
// one the re-run contradicts costs its sender score (reject).
func (v *verifier) validate(ctx context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if from == v.n.host.ID() {
		return pubsub.ValidationAccept // this node's own, settled when it was made
	}
	sender := msg.GetFrom()
	accused, err := v.checker.CheckProof(ctx, sender.String(), msg.Data)
	switch {
	case errors.Is(err, trust.ErrKnown):
		// This node caught the host itself, or settled an earlier proof:
		// it passes this one on without running the task again (every
		// receiver settles it for itself).
		v.proofsKnown.Add(1)
		return pubsub.ValidationAccept
	case err == nil:
		v.n.log.Warn("host excluded: a fraud proof checked out", "host", accused, "from", sender)
		v.excluded(accused)
		v.proofsAccepted.Add(1)
		return pubsub.ValidationAccept
	case errors.Is(err, protocol.ErrBadProof), errors.Is(err, trust.ErrFramed):
		v.n.log.Warn("fraud proof refused", "accused", accused, "from", sender, "err", err)
		v.proofsRefused.Add(1)
		return pubsub.ValidationReject
	default:
		v.n.log.Info("fraud proof not acted on", "accused", accused, "from", sender, "err", err)
		v.proofsIgnored.Add(1)
		return pubsub.ValidationIgnore
	}
}

// trustFile, in the data directory, keeps the book across restarts: a
// daemon that forgot its records would put every host it knows back on
// probation, and take results of hosts it had caught.
const trustFile = "trust.json"

type trustFileV1 struct {
	Version int                `json:"version"`
	Hosts   []trust.HostRecord `json:"hosts"`
}

// loadBook reads the saved records, if any. A file that does not decode is
// reported and set aside: the node starts with what it learns anew.
func (v *verifier) loadBook(dir string) {
	path := filepath.Join(dir, trustFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var f trustFileV1
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err == nil && f.Version != 1 {
		err = fmt.Errorf("version %d, want 1", f.Version)
	}
	if err != nil {
		v.n.log.Warn("the saved host records do not read; starting without them", "file", path, "err", err)
		return
	}
	v.book.Restore(f.Hosts)
}

// saveBook writes the records worth keeping, atomically.
func (v *verifier) saveBook(dir string) error {
	b, err := json.Marshal(trustFileV1{Version: 1, Hosts: v.book.Records()})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, trustFile+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, trustFile))
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// excluded takes a caught host out of placement at once.
func (v *verifier) excluded(host string) {
	v.n.gossip.pv.touch(host)
}

// publish gossips a fraud proof.
func (v *verifier) publish(proof []byte) {
	if err := v.topic.Publish(v.n.ctx, proof); err != nil {
		v.n.log.Warn("publishing a fraud proof", "err", err)
	}
}

// judge applies the check policy to a result Submit is about to return:
// hold it until a re-run agrees (a host on probation), return it and check
// it in the background, or return it as it is. A result of a host already
// caught is refused (errShunned): it is dropped and the task placed again.
func (v *verifier) judge(ctx context.Context, res *Result, progress func(Progress)) (*Result, error) {
	if res.Cache == CacheLocal || res.Host == v.n.host.ID() || res.Host == "" {
		return res, nil // stored by this node, after its own judgment; or its own run
	}
	host := res.Host.String()
	switch d := v.book.Decide(host, v.idle(res.Manifest.Task)); d {
	case trust.Refuse:
		v.drop(res.ResultCID)
		return nil, errShunned
	case trust.CheckLater:
		if v.n.ctx.Err() != nil {
			break // closing: no new background work
		}
		select {
		case v.later <- struct{}{}:
			v.n.wg.Add(1)
			go func() {
				defer v.n.wg.Done()
				defer func() { <-v.later }()
				ctx, cancel := context.WithTimeout(v.n.ctx, checkTimeout)
				defer cancel()
				_, _ = v.check(ctx, res)
			}()
		default:
			v.skipped.Add(1)
		}
	case trust.Hold:
		progress(Progress{Stage: "verifying", Peer: host})
		out, err := v.check(ctx, res)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// No independent host could check it (a swarm of one host,
			// say): it is returned unverified, as without verification.
			return res, nil
		}
		return out, nil
	}
	return res, nil
}

var errShunned = errors.New("the result's host was caught returning wrong results")

// check re-runs res's task on independent hosts (trust.Checker.Check) and
// acts on the verdict: marks the result verified, or, when its host was
// outvoted, replaces it in the store with the result the re-runs agreed on,
// gossips the fraud proofs and returns the right result.
func (v *verifier) check(ctx context.Context, res *Result) (*Result, error) {
	n := v.n
	mb, err := res.Manifest.Encode()
	if err != nil {
		return res, err
	}
	got := trust.Result{Manifest: res.Manifest, ManifestBytes: mb, Blocks: res.Blocks}
	verdict, err := v.checker.Check(ctx, got)
	n.gossip.pv.touch(res.Host.String())
	if err != nil {
		n.log.Info("result could not be checked", "task", res.TaskCID, "host", res.Host, "err", err)
		return res, err
	}
	for i, liar := range verdict.Caught {
		n.log.Warn("host caught returning a wrong result", "host", liar, "task", res.TaskCID)
		v.excluded(liar)
		v.publish(verdict.Proofs[i])
	}
	right := verdict.Correct
	if right.Host() == got.Host() {
		_ = n.store.MarkVerified(ctx, res.ResultCID)
		return res, nil
	}
	// The result taken was wrong. Keep its blocks, alone, so that the
	// nodes checking the proof can fetch them (a kernel whose outputs are
	// not exact is judged by its images), and store the right one.
	v.drop(res.ResultCID)
	for _, b := range res.Blocks {
		_, _ = n.store.PutBlock(ctx, b)
	}
	kept, err := n.store.PutVerified(ctx, right.Manifest, right.ManifestBytes, right.Blocks)
	if err != nil {
		return nil, fmt.Errorf("storing the checked result: %w", err)
	}
	_ = n.store.MarkVerified(ctx, kept)
	out := &Result{
		TaskCID: res.TaskCID, ResultCID: kept, Manifest: right.Manifest, Blocks: right.Blocks,
		Provider: res.Provider, Cache: CacheMiss,
	}
	out.Host, _ = peer.Decode(right.Host())
	return out, nil
}

// drop removes a result from the store.
func (v *verifier) drop(result cid.Cid) {
	if err := v.n.store.Remove(v.n.ctx, result); err != nil && !errors.Is(err, store.ErrNotFound) {
		v.n.log.Warn("removing a wrong result", "result", result, "err", err)
	}
}

// idle is the share of the swarm's slots for t's model that are idle.
func (v *verifier) idle(t protocol.Task) float64 {
	share := 0.0
	v.n.gossip.pv.read(v.n.viewDeps(), func(s scheduler.View, _ []peer.ID) {
		share = scheduler.IdleShare(s, viewModel(t))
	})
	return share
}

// shunned reports whether r was made by a host this node caught; such a
// result is removed from the store (it is computed again on demand).
func (n *Node) shunned(r *store.Result) bool {
	if n.verify == nil || !n.verify.book.Excluded(r.Manifest.Host) {
		return false
	}
	n.verify.drop(r.CID)
	return true
}

// servable reads the result c names (a TaskCID or a ResultCID) from the
// store, as long as its host was not caught.
func (n *Node) servable(ctx context.Context, c cid.Cid) (*store.Result, error) {
	get := n.store.GetByResult
	if n.store.Has(ctx, c) {
		get = n.store.Get
	}
	r, err := get(ctx, c)
	if err != nil {
		return nil, err
	}
	if n.shunned(r) {
		return nil, fmt.Errorf("%s: %w (its host was caught)", c, store.ErrNotFound)
	}
	return r, nil
}

// reservable is servable for serving to another peer: a result this node
// did not make has its host's signature checked first (a client took it
// straight from its host without, see acceptResult); one that fails is
// dropped.
func (n *Node) reservable(ctx context.Context, c cid.Cid) (*store.Result, error) {
	r, err := n.servable(ctx, c)
	if err != nil {
		return nil, err
	}
	if r.Manifest.Host != n.self {
		if err := r.Manifest.VerifySignature(); err != nil {
			n.log.Warn("dropping a stored result whose signature does not verify", "result", r.CID, "err", err)
			if rerr := n.store.Remove(ctx, r.CID); rerr != nil && !errors.Is(rerr, store.ErrNotFound) {
				n.log.Warn("removing a result", "result", r.CID, "err", rerr)
			}
			return nil, fmt.Errorf("%s: %w (its signature does not verify)", c, store.ErrNotFound)
		}
	}
	return r, nil
}

// runner is what node/trust needs from the node.
type runner struct{ n *Node }

// Rerun runs t afresh on a host not in exclude: on this host first when it
// can (its own run needs no trust), else on the best candidate placement
// gives, trying others on refusals.
func (r runner) Rerun(ctx context.Context, t protocol.Task, exclude []string) (trust.Result, error) {
	res, err := r.n.rerun(ctx, t, exclude)
	if err != nil {
		return trust.Result{}, err
	}
	mb, err := res.Manifest.Encode()
	if err != nil {
		return trust.Result{}, err
	}
	return trust.Result{Manifest: res.Manifest, ManifestBytes: mb, Blocks: res.Blocks}, nil
}

// Blocks reads blocks from this node's store, or fetches them from the peer
// from.
func (r runner) Blocks(ctx context.Context, from string, cids []cid.Cid) ([][]byte, error) {
	p, err := peer.Decode(from)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(cids))
	for i, c := range cids {
		if out[i], err = r.n.store.GetBlock(ctx, c); err == nil {
			continue
		}
		if out[i], err = r.n.fetchBlock(ctx, p, c); err != nil {
			return nil, fmt.Errorf("block %s from %s: %w", c, p, err)
		}
		_, _ = r.n.store.PutBlock(ctx, out[i]) // to pass on with the proof
	}
	return out, nil
}

// rerun asks one host, not in exclude nor caught, for its own fresh result
// of t (protocol.TaskRequest.Verify). Hosts with a clean record past their
// probation are asked first: a check settled by a host itself on probation
// is only as good as that host, and two liars giving the same wrong answer
// could outvote an honest host. Only when none of them takes the task are
// the others asked.
func (n *Node) rerun(ctx context.Context, t protocol.Task, exclude []string) (*Result, error) {
	t, tc, err := t.NormalizeCID()
	if err != nil {
		return nil, err
	}
	never := map[string]bool{}
	for _, id := range exclude {
		never[id] = true
	}
	req := protocol.TaskRequest{Task: t, NoCache: true, Verify: true}
	ignore := func(protocol.Event) {}
	self := n.host.ID()
	if n.serve != nil && !never[self.String()] && canRun(n.cfg.Kernel, t) == nil {
		if res, err := n.runAt(ctx, self, req, tc, ignore); err == nil {
			return res, nil
		}
		never[self.String()] = true
	}
	j := &journey{n: n, t: t, tc: tc, noCache: true, progress: func(Progress) {}}
	var last error = errors.New("no host serves the task's model")
	var book *trust.Book
	if n.verify != nil {
		book = n.verify.book
	}
	for round := range rerunRounds {
		j.tried = maps.Clone(never)
		trustedOnly := book != nil
		asked := 0
		for {
			c, ok := j.next(ctx)
			if !ok && trustedOnly {
				// No trusted host left: the others, from the start.
				trustedOnly = false
				for id := range j.tried {
					if !never[id] && !book.Trusted(id) {
						delete(j.tried, id)
					}
				}
				continue
			}
			if !ok {
				break
			}
			if trustedOnly && !book.Trusted(c.key()) {
				continue // next() marked it tried for this pass
			}
			asked++
			done := n.placed(c)
			res, err := n.runAt(ctx, c.p, req, tc, ignore)
			done()
			if err == nil {
				return res, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			last = fmt.Errorf("%s: %w", c.p, err)
		}
		if asked == 0 {
			break // no other host serves the model: no use waiting
		}
		select {
		case <-time.After(rerunWait * time.Duration(round+1)):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("no other host ran the task: %w", last)
}

// TrustStats is what this node's verification did.
type TrustStats struct {
	trust.Stats
	// Skipped counts background checks not run because maxBackgroundChecks
	// were running.
	Skipped uint64 `json:"skipped"`
	// Proofs from other nodes: accepted (a re-run confirmed it: the
	// accused excluded), known (about a host this node had excluded
	// already: passed on unchecked), refused (malformed, or a re-run
	// agreed with the accused) and ignored (over the rate, undecided, or
	// the re-run failed).
	ProofsAccepted uint64 `json:"proofs_accepted"`
	ProofsKnown    uint64 `json:"proofs_known"`
	ProofsRefused  uint64 `json:"proofs_refused"`
	ProofsIgnored  uint64 `json:"proofs_ignored"`
	// Excluded lists the hosts this node caught or learnt of by proof.
	Excluded []string `json:"excluded"`
}

// Add adds o's counts to s and o's excluded hosts to its list, for a
// total over several nodes (the demo's clients).
func (s *TrustStats) Add(o TrustStats) {
	s.Checks += o.Checks
	s.Reruns += o.Reruns
	s.Agreed += o.Agreed
	s.Caught += o.Caught
	s.Unchecked += o.Unchecked
	s.Skipped += o.Skipped
	s.ProofsAccepted += o.ProofsAccepted
	s.ProofsKnown += o.ProofsKnown
	s.ProofsRefused += o.ProofsRefused
	s.ProofsIgnored += o.ProofsIgnored
	s.Excluded = append(s.Excluded, o.Excluded...)
}

// TrustStats reports the node's verification so far; ok is false when
// verification is off.
func (n *Node) TrustStats() (s TrustStats, ok bool) {
	if n.verify == nil {
		return s, false
	}
	v := n.verify
	return TrustStats{
		Stats: v.checker.Stats(), Skipped: v.skipped.Load(), Excluded: v.book.ExcludedHosts(),
		ProofsAccepted: v.proofsAccepted.Load(), ProofsKnown: v.proofsKnown.Load(), ProofsRefused: v.proofsRefused.Load(), ProofsIgnored: v.proofsIgnored.Load(),
	}, true
}

// Distrust is this node's score for host (node/trust), 0 when verification
// is off.
func (n *Node) Distrust(host peer.ID) float64 {
	if n.verify == nil {
		return 0
	}
	return n.verify.book.Distrust(host.String())
}

// PublishFraudProof gossips an encoded fraud proof (protocol.FraudProof) on
// the fraud topic as this node's. Every receiver settles it itself before
// acting on it or passing it on; a node checks its own proofs when it
// makes them, so this is for proofs made elsewhere (tools, tests).
func (n *Node) PublishFraudProof(ctx context.Context, proof []byte) error {
	if n.verify == nil {
		return errors.New("verification is off: the node is not on the fraud topic")
	}
	if _, err := protocol.DecodeFraudProof(proof); err != nil {
		return err
	}
	return n.verify.topic.Publish(ctx, proof)
}
