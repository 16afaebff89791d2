package node

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// Models named by content (docs/protocol.md): a host whose kernel reports
// the digests of its weights (kernel.Digester) advertises each model by
// name and by name@digest; a task may carry the digest, which its TaskCID
// then covers; a client that asks by bare name has the name resolved to
// the digest the swarm serves most.

// modelDigests is this host's kernel's digests, canonical; a digest that
// does not parse is dropped (the model is then served by name alone).
func (n *Node) modelDigests() map[string]string {
	d, ok := n.cfg.Kernel.(kernel.Digester)
	if !ok {
		return nil
	}
	out := map[string]string{}
	for m, v := range d.ModelDigests() {
		c, err := protocol.ParseModelDigest(v)
		if err != nil || !serves(n.cfg.Kernel, m) {
			n.log.Debug("ignoring a model digest", "model", m, "digest", v, "err", err)
			continue
		}
		out[m] = c
	}
	return out
}

// digestOf is the canonical digest k reports for model, or "".
func digestOf(k kernel.Kernel, model string) string {
	d, ok := k.(kernel.Digester)
	if !ok {
		return ""
	}
	c, err := protocol.ParseModelDigest(d.ModelDigests()[model])
	if err != nil {
		return ""
	}
	return c
}

// providerModel is the string whose ModelKey a host provides for t's
// model, and a client looks up: the name, or name@digest.
func providerModel(t protocol.Task) string {
	if t.ModelDigest == "" {
		return t.Model
	}
	return t.Model + "@" + t.ModelDigest
}

// viewModel is what placement matches t's model against in the view:
// the name, or name@DigestKey, which peerState lists for each digest a
// beacon carries.
func viewModel(t protocol.Task) string {
	if t.ModelDigest == "" {
		return t.Model
	}
	return t.Model + "@" + protocol.DigestKey(t.ModelDigest)
}

// capacityServes reports whether a capacity record serves model, a name
// or name@digest.
func capacityServes(c *protocol.Capacity, model string) bool {
	name, digest, ok := strings.Cut(model, "@")
	if !ok {
		return c.Serves(model)
	}
	return c.Serves(name) && c.Digests[name] == digest
}

// ErrAmbiguousModel is wrapped by the error of a submission by bare name
// when the swarm serves that name with several weights, none most.
var ErrAmbiguousModel = fmt.Errorf("%w: model name served with different weights", protocol.ErrBadTask)

// resolveModel gives a task asked by bare name the digest the swarm
// serves that name with: the one most hosts in the view (and this host)
// report, or, with no host in the view, those the DHT finds. A name no
// host reports a digest for stays bare, as tasks before 1.2 were. A tie
// is an error listing the candidates: the caller must choose.
func (n *Node) resolveModel(ctx context.Context, t protocol.Task) (protocol.Task, error) {
	if t.ModelDigest != "" {
		return t, nil
	}
	name := strings.ToLower(strings.TrimSpace(t.Model))
	if name == "" {
		name = protocol.DefaultModel
	}
	hosts := map[string]int{} // by full digest, or by DigestKey from beacons
	bare, seen := 0, 0
	if n.serve != nil && serves(n.cfg.Kernel, name) {
		seen++
		if d := digestOf(n.cfg.Kernel, name); d != "" {
			hosts[d]++
		} else {
			bare++
		}
	}
	vb, vs := n.gossip.digestCounts(name, hosts, n.host.ID(), n.viewExpiry())
	bare, seen = bare+vb, seen+vs
	if seen == 0 && (name == protocol.DefaultModel || name == kernel.NoopModel) {
		// The built-in kernels' names are their versions: no host names
		// them by content, so a client with no view yet need not ask the
		// DHT before its cache lookup and placement.
		return t, nil
	}
	if seen == 0 {
		found, err := n.FindHosts(ctx, name, 20)
		if err == nil {
			for _, h := range found {
				if h.Capacity == nil {
					continue
				}
				if d := h.Capacity.Digests[name]; d != "" {
					hosts[d]++
				} else {
					bare++
				}
			}
		}
	}
	if len(hosts) == 0 {
		return t, nil // served by name alone (or by nobody: placement says so)
	}
	// Beacons carry DigestKeys, the DHT and this host full digests: fold
	// the short form into the long one where both are known.
	full := map[string]string{}
	for d := range hosts {
		if strings.HasPrefix(d, protocol.ModelDigestPrefix) {
			full[protocol.DigestKey(d)] = d
		}
	}
	counts := map[string]int{}
	for d, c := range hosts {
		if f, ok := full[d]; ok {
			d = f
		}
		counts[d] += c
	}
	ds := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), strings.Compare(a, b))
	})
	// Beacons name weights by DigestKey; a task, and a person choosing,
	// need the whole digest, which capacity records carry.
	var fromDHT map[string]string
	whole := func(d string) string {
		if strings.HasPrefix(d, protocol.ModelDigestPrefix) {
			return d
		}
		if fromDHT == nil {
			fromDHT = map[string]string{}
			if found, err := n.FindHosts(ctx, name, 20); err == nil {
				for _, h := range found {
					if h.Capacity != nil && h.Capacity.Digests[name] != "" {
						fromDHT[protocol.DigestKey(h.Capacity.Digests[name])] = h.Capacity.Digests[name]
					}
				}
			}
		}
		if f, ok := fromDHT[d]; ok {
			return f
		}
		return protocol.ModelDigestPrefix + d + "…"
	}
	if (len(ds) > 1 && counts[ds[0]] == counts[ds[1]]) || counts[ds[0]] <= bare {
		var cands []string
		for _, d := range ds {
			cands = append(cands, fmt.Sprintf("%s (%d hosts)", whole(d), counts[d]))
		}
		if bare > 0 {
			cands = append(cands, fmt.Sprintf("by name alone (%d hosts)", bare))
		}
		return t, fmt.Errorf("%w: %s is served as %s: choose one with model_digest", ErrAmbiguousModel, name, strings.Join(cands, ", "))
	}
	d := whole(ds[0])
	if strings.HasSuffix(d, "…") {
		return t, fmt.Errorf("%w: %s: hosts name it by digest %s, but no capacity record with the whole digest was found; retry, or give model_digest", ErrAmbiguousModel, name, d)
	}
	t.ModelDigest = d
	return t, nil
}
