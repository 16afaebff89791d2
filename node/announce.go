package node

import (
	"context"
	"fmt"
	"strings"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
)

// Who provides a result on the DHT (issue 14, docs/cache.md "Who provides").
//
// A provide costs a DHT lookup plus ADD_PROVIDER to the k closest peers:
// tens of kilobytes and tens of RPCs. One provider per result is enough for
// a duplicate anywhere to find it, so only the node that holds a result and
// will serve it provides it:
//
//   - the host that computed it, as soon as it is stored (serve.go,
//     provideResult), and again every ReprovideInterval; unless its kernel
//     ran less than Config.ProvideMinCompute. Such a result is stored quiet
//     (store.PutQuiet): computing it again costs less than a provide and a
//     lookup. It is served all the same, to a duplicate placed on its host
//     (rendezvous placement sends duplicates there) or to a fetch, and once
//     it is asked for again that way its host provides it like the others;
//   - a node that got it from someone else (a client that submitted it, or
//     fetched it from a provider) only once it shows it serves it: it
//     answered a fetch of it, re-served it from its store to another peer's
//     task request, or its owner pinned it. From then on it is announced,
//     remembered in node/providers, and reprovided like the maker's.
//
// A client that got a result straight from its host therefore sends no
// provide at all: on the bench's swarm, 0.37 of the DHT bytes per result
// (docs/cache.md).

// Announce makes this node a provider of the result c names (a TaskCID or a
// ResultCID), held in its store: from now on it provides the TaskCID on the
// DHT, in the background, and again every ReprovideInterval. A pinned result
// is one its owner wants kept and served, so pinning through the local API
// announces it. It returns an error wrapping store.ErrNotFound when the store
// does not hold the result.
func (n *Node) Announce(ctx context.Context, c cid.Cid) error {
	get := n.store.GetByResult
	if n.store.Has(ctx, c) {
		get = n.store.Get
	}
	r, err := get(ctx, c)
	if err != nil {
		return fmt.Errorf("announcing %s: %w", c, err)
	}
	n.announce(r.Manifest)
	return nil
}

// announce provides m's TaskCID unless this node announced it already, or
// made it and provided it when it was stored. A result it made quiet (cheaper
// to compute than to find) is provided from now on: someone asked for it.
// It does not block: the provide runs in the background.
func (n *Node) announce(m *protocol.Manifest) {
	if m == nil || n.prov == nil {
		return
	}
	tc := m.TaskCID.Cid
	if m.Host == n.self {
		// Its maker's: provided when stored, unless it was quiet.
		if unquiet, err := n.store.Unquiet(n.ctx, tc); err != nil {
			n.log.Debug("announcing a result this node made", "task", tc, "err", err)
		} else if unquiet {
			n.log.Debug("announcing a quiet result asked for again", "task", tc)
			n.provideResult(tc)
		}
		return
	}
	n.announceMu.Lock()
	already := n.prov.Announced(n.ctx, tc)
	if !already {
		// A received result was stored unsynced (store.PutReceived): on
		// disk before anyone is told of it.
		if err := n.store.Sync(n.ctx); err != nil {
			n.announceMu.Unlock()
			n.log.Warn("not announcing a result: the store could not sync it", "task", tc, "err", err)
			return
		}
		if err := n.prov.Announce(n.ctx, tc); err != nil {
			n.log.Debug("remembering an announced result", "task", tc, "err", err)
		}
	}
	n.announceMu.Unlock()
	if !already {
		n.log.Debug("announcing a result this node serves", "task", tc)
		n.provideResult(tc)
	}
}

// reprovides reports whether a reprovide round provides e's TaskCID.
func (n *Node) reprovides(ctx context.Context, e store.Entry) bool {
	return servesResult(e, n.self, func() bool { return n.prov.Announced(ctx, e.TaskCID) })
}

// servesResult is the rule of who provides a stored result: the node that
// made it (self, its peer ID) unless it is quiet, or one whose owner pinned
// it, or that announced it (announced, asked last since it reads the disk).
func servesResult(e store.Entry, self string, announced func() bool) bool {
	return (e.Host == self && !e.Quiet) || e.Pinned || announced()
}

// forgetEvicted drops from the announced set the results the store no
// longer holds, so the set stays the size of the store.
func (n *Node) forgetEvicted(ctx context.Context, held []store.Entry) {
	keys, err := n.prov.AnnouncedKeys(ctx)
	if err != nil {
		n.log.Debug("listing announced results", "err", err)
		return
	}
	have := make(map[cid.Cid]bool, len(held))
	for _, e := range held {
		have[e.TaskCID] = true
	}
	for _, k := range keys {
		if !have[k] {
			_ = n.prov.Forget(ctx, k)
		}
	}
}

// DHTBytesSent is the total bytes this node sent on the DHT's protocol
// (lookups, provides, answers to others' queries) so far. The bandwidth
// counter updates its totals once a second, so a reading may lag by that.
func (n *Node) DHTBytesSent() uint64 {
	var total int64
	for p, st := range n.bw.GetBandwidthByProtocol() {
		if strings.HasPrefix(string(p), protocol.DHTPrefix+"/kad/") {
			total += st.TotalOut
		}
	}
	return uint64(total)
}
