package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
)

// Input images (docs/protocol.md, "Input images"): a task names them by
// CID; the submitter keeps the bytes in its store and serves them over the
// fetch protocol; the host that runs the task fetches them from it once the
// task is admitted, verifies them and hands them to its kernel.

// inputFetchTimeout bounds fetching one input image from the submitter:
// 16 MiB at a few MB/s, with room for a slow link.
const inputFetchTimeout = 60 * time.Second

// PutInput stores data, the bytes of an image file a task will name in
// Inputs or Mask, and returns its CID. The node keeps it like a result
// (LRU, within the store's budget) and serves it to the host that runs the
// task. It checks that data is an image a kernel can read (PNG, JPEG or
// WebP within kernel.MaxInputSide) before storing anything.
func (n *Node) PutInput(ctx context.Context, data []byte) (cid.Cid, error) {
	if len(data) > protocol.MaxBlockBytes {
		return cid.Undef, fmt.Errorf("%w: input image of %d bytes, at most %d", protocol.ErrBadTask, len(data), protocol.MaxBlockBytes)
	}
	if _, err := kernel.DecodeInputConfig(data); err != nil {
		return cid.Undef, err
	}
	return n.store.PutBlock(ctx, data)
}

// checkInputs fails a submission whose input images this node does not
// hold: no host could get them from it.
func (n *Node) checkInputs(t protocol.Task) error {
	for _, c := range taskInputCIDs(t) {
		if !n.store.HasBlock(c) {
			return fmt.Errorf("%w: input image %s is not in this node's store: store it first (PutInput, or the API's image upload)", protocol.ErrBadTask, c)
		}
	}
	return nil
}

// taskInputCIDs lists the blocks a task needs: its inputs, then its mask.
func taskInputCIDs(t protocol.Task) []cid.Cid {
	cs := make([]cid.Cid, 0, len(t.Inputs)+1)
	for _, l := range t.Inputs {
		cs = append(cs, l.Cid)
	}
	if t.Mask != nil {
		cs = append(cs, t.Mask.Cid)
	}
	return cs
}

// canRun is nil when this host's kernel can run t, else the refusal: the
// model is not served, or the task has input images and the kernel takes
// none. Both are unsupported_model, so the client tries another host.
func canRun(k kernel.Kernel, t protocol.Task) *protocol.RemoteError {
	if !serves(k, t.Model) {
		return &protocol.RemoteError{Code: protocol.CodeUnsupportedModel, Message: fmt.Sprintf("this host serves %v", k.Models())}
	}
	switch d := digestOf(k, t.Model); {
	case t.ModelDigest != "" && d != t.ModelDigest:
		have := "by name alone"
		if d != "" {
			have = "with weights " + d
		}
		return &protocol.RemoteError{Code: protocol.CodeUnsupportedModel, Message: fmt.Sprintf("this host serves %s %s, not %s", t.Model, have, t.ModelDigest)}
	case t.ModelDigest == "" && d != "":
		// A task by bare name would put these weights' result under the
		// TaskCID every checkpoint of that name shares.
		return &protocol.RemoteError{Code: protocol.CodeUnsupportedModel, Message: fmt.Sprintf("this host names %s by content (%s): send model_digest (protocol 1.2)", t.Model, d)}
	}
	if _, ok := k.(kernel.Editor); len(t.Inputs) > 0 && !ok {
		return &protocol.RemoteError{Code: protocol.CodeUnsupportedModel, Message: fmt.Sprintf("this host's kernel %s takes no input images", k.Name())}
	}
	return nil
}

// taskInputs gets the bytes of t's input images for the kernel: from this
// node's store, else from the peer that sent the task. Each block is
// verified against its CID and kept in the store, so a repeated edit of the
// same photo does not fetch it again. Any failure is the task's
// (bad_request): another host would fetch from the same submitter.
func (n *Node) taskInputs(ctx context.Context, t protocol.Task, from peer.ID) (kernel.Inputs, error) {
	var in kernel.Inputs
	for i, c := range taskInputCIDs(t) {
		b, err := n.store.GetBlock(ctx, c)
		if err != nil && from != n.host.ID() {
			if b, err = n.fetchBlock(ctx, from, c); err == nil {
				if _, perr := n.store.PutBlock(n.ctx, b); perr != nil {
					n.log.Warn("keeping a fetched input image", "cid", c, "err", perr)
				}
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return in, ctx.Err()
			}
			return in, &protocol.RemoteError{Code: protocol.CodeBadRequest, Message: fmt.Sprintf("input image %s: %v", c, err)}
		}
		if i < len(t.Inputs) {
			in.Images = append(in.Images, b)
		} else {
			in.Mask = b
		}
	}
	return in, nil
}

// fetchBlock fetches the raw block c from p over the fetch protocol and
// verifies it.
func (n *Node) fetchBlock(ctx context.Context, p peer.ID, c cid.Cid) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, inputFetchTimeout)
	defer cancel()
	st, done, err := n.openFetch(ctx, p, c)
	if err != nil {
		return nil, err
	}
	defer done()
	e, err := readFetchEvent(st, bufio.NewReader(st))
	if err != nil {
		return nil, err
	}
	switch e.Type {
	case protocol.EventError:
		return nil, e.Err()
	case protocol.EventBlock:
		if err := protocol.VerifyBlock(c, e.Data); err != nil {
			return nil, err
		}
		return e.Data, nil
	}
	st.Reset()
	return nil, fmt.Errorf("%w: %s event in answer to a block fetch", errBadProvider, e.Type)
}

// serveBlock answers a fetch request for one raw block: the block event, or
// not_found.
func (f *fetcher) serveBlock(st network.Stream, c cid.Cid, log *slog.Logger, refuse func(code, msg string, retry time.Duration)) {
	b, err := f.n.store.GetBlock(f.n.ctx, c)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, protocol.ErrBadCID):
		refuse(protocol.CodeNotFound, "this peer does not hold "+c.String(), 0)
		return
	case err != nil:
		refuse(protocol.CodeInternal, "reading the results store: "+err.Error(), 0)
		return
	}
	_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := protocol.WriteMsg(st, protocol.Event{Type: protocol.EventBlock, Data: b}); err != nil {
		log.Debug("sending a block", "err", err)
		st.Reset()
		return
	}
	f.served.Add(1)
	log.Debug("block served", "bytes", len(b))
}
