package providers_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/gpunet/gpunet/node/providers"
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	"github.com/libp2p/go-libp2p/core/peer"
)

// BenchmarkProviderLookupMissing is what every cache miss asks of every DHT
// server it reaches: the providers of a key nobody provides, from kad-dht's
// provider manager holding 1k, 10k or 100k records. "map" is kad-dht's
// default datastore (what gpunet used before issue 14), "pebble" this
// package's; both are filled with the same records in the same run.
//
//	go test -run '^$' -bench ProviderLookupMissing ./node/providers/
func BenchmarkProviderLookupMissing(b *testing.B) {
	ctx := context.Background()
	self := randPeer(b)
	// Keys nobody provides, asked in turn.
	missing := make([][]byte, 1024)
	for i := range missing {
		missing[i] = randCID(b).Hash()
	}
	for _, n := range []int{1_000, 10_000, 100_000} {
		s, err := providers.Open(filepath.Join(b.TempDir(), "dht"), quiet())
		if err != nil {
			b.Fatal(err)
		}
		stores := []struct {
			name string
			d    ds.Batching
		}{
			{"map", dssync.MutexWrap(ds.NewMapDatastore())},
			{"pebble", s.Datastore()},
		}
		pms := make([]*records.ProviderManager, len(stores))
		for i, st := range stores {
			// GC off: the benchmark times lookups, not the hourly sweep.
			pm, err := records.NewProviderManager(self, newPeerstore(b), st.d, records.CleanupInterval(0))
			if err != nil {
				b.Fatal(err)
			}
			pms[i] = pm
		}
		for range n {
			k, p := randCID(b).Hash(), randPeer(b)
			for _, pm := range pms {
				if err := pm.AddProvider(ctx, k, peer.AddrInfo{ID: p}); err != nil {
					b.Fatal(err)
				}
			}
		}
		for i, st := range stores {
			b.Run(fmt.Sprintf("%s/%dk", st.name, n/1000), func(b *testing.B) {
				pm := pms[i]
				b.ResetTimer()
				for j := 0; j < b.N; j++ {
					got, err := pm.GetProviders(ctx, missing[j%len(missing)])
					if err != nil || len(got) != 0 {
						b.Fatalf("missing key: %v, %v", got, err)
					}
				}
			})
		}
		for _, pm := range pms {
			pm.Close()
		}
		s.Close()
	}
}
