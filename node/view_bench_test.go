package node

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// benchNode is a lone loopback node whose view holds n hosts, fed through
// the beacon validator as gossip would.
func benchNode(b *testing.B, n int) *Node {
	b.Helper()
	nd := startLoopback(b, loopbackConfig())
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	for i := 0; i < n; i++ {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			b.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(k)
		bc := goodBeacon(id, 1, now)
		bc.Slots = uint32(1 + rng.IntN(4))
		bc.Busy = uint32(rng.IntN(int(bc.Slots) + 1))
		bc.Queue = uint32(rng.IntN(3))
		bc.TempDC = uint32(450 + rng.IntN(400))
		bc.ServiceMs = map[string]uint32{protocol.DefaultModel: uint32(200 + rng.IntN(2000))}
		data, err := protocol.Marshal(bc)
		if err != nil {
			b.Fatal(err)
		}
		if r := nd.gossip.judge(rawMsg(id, data)); r != pubsub.ValidationAccept {
			b.Fatalf("beacon %d: %v", i, r)
		}
	}
	return nd
}

// BenchmarkPlaceInView is one placement as a client makes it for each
// task: the node's view of n hosts, corrected by its ledger, then
// scheduler.Place (issue 14: a placement should cost what Place costs).
//
//	go test -run '^$' -bench PlaceInView -benchmem ./node/
func BenchmarkPlaceInView(b *testing.B) {
	for _, n := range []int{16, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			nd := benchNode(b, n)
			j := &journey{n: nd, t: protocol.Task{Model: protocol.DefaultModel}, tried: map[string]bool{}}
			_, j.tc, _ = protocol.Task{Prompt: "bench", Seed: 1}.NormalizeCID()
			rng := rand.New(rand.NewPCG(3, 4))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, ok := j.placeInView(j.tried, rng); !ok {
					b.Fatal("no candidate")
				}
			}
		})
	}
}
