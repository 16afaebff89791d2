package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/rand/v2"
)

// zipfRank draws a rank in 1..n with P(r) ∝ r^(−s), using the continuous
// approximation (inverse CDF of the density x^(−s) on [1, n+1)): exact
// enough for "popular prompts repeat more often", valid for any s > 0
// (math/rand's Zipf needs s > 1), and O(1) as n grows.
func zipfRank(rng *rand.Rand, s float64, n int) int {
	u := rng.Float64()
	top := float64(n) + 1
	var x float64
	if math.Abs(s-1) < 1e-9 {
		x = math.Pow(top, u)
	} else {
		a := 1 - s
		x = math.Pow(1+u*(math.Pow(top, a)-1), 1/a)
	}
	return min(max(int(x), 1), n)
}

// promptCID is the simulated TaskCID of a prompt: its SHA-256.
func promptCID(prompt uint64) [32]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], prompt)
	return sha256.Sum256(b[:])
}

// keyOf indexes the result cache and the coalescing tables by the first 8
// bytes of the TaskCID, as a node indexes by CID; the prompt is kept beside
// it so that a hit can be checked to be the same task (a wrong hit needs two
// prompts with one key). A variable so that a test can force collisions.
var keyOf = func(prompt uint64) uint64 {
	sum := promptCID(prompt)
	return binary.BigEndian.Uint64(sum[:8])
}
