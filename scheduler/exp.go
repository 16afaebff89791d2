package scheduler

import (
	"math"
	"math/big"
)

// expAll replaces every x of xs by exp(x), within 1 ulp of the exact value
// as math.Exp is, in a third of its time: Place takes two exponentials per
// peer, and with math.Exp they were a fifth of its cost. It is the table
// method of ARM's optimized-routines exp (Szabolcs Nagy): x = k·ln2/N + r
// with |r| ≤ ln2/2N, exp(x) = 2^(k/N) · exp(r), 2^(k/N) from a table of N
// entries (each a double and the tail it leaves) and exp(r) from its
// Taylor polynomial to r⁵, whose error at |r| ≤ ln2/256 is under 2⁻⁶⁰.
// Outside ±512 (and for NaN) it is math.Exp. Taking a slice, not one x,
// leaves no call per exponential and iterations the processor overlaps.
func expAll(xs []float64) {
	const (
		invLn2N = 0x1.71547652b82fep0 * expN
		// shift rounds to an integer that ends up in the low bits.
		shift = 0x1.8p52
		// ln2/N in two parts; the first has trailing zeros, so k times it
		// is exact for |k| < 2¹⁷.
		negLn2hiN = -0x1.62e42fefa0000p-8
		negLn2loN = -0x1.cf79abc9e3b3ap-47
	)
	for j, x := range xs {
		if !(x > -512 && x < 512) {
			xs[j] = math.Exp(x)
			continue
		}
		kd := invLn2N*x + shift
		ki := math.Float64bits(kd)
		kd -= shift
		r := x + kd*negLn2hiN + kd*negLn2loN
		i := 2 * (ki % expN)
		tail := math.Float64frombits(expTab[i])
		scale := math.Float64frombits(expTab[i+1] + ki<<(52-expBits))
		r2 := r * r
		p := tail + r + r2*(1.0/2+r*(1.0/6)) + r2*r2*(1.0/24+r*(1.0/120))
		xs[j] = scale + scale*p
	}
}

// fastExp is expAll for one x.
func fastExp(x float64) float64 {
	a := [1]float64{x}
	expAll(a[:])
	return a[0]
}

const (
	expBits = 7
	expN    = 1 << expBits
)

// expTab holds, for i < N, 2^(i/N) as the nearest double H (at 2i+1, less
// i in the exponent's place, so that adding k's bits scales it by 2^⌊k/N⌋)
// and the relative tail 2^(i/N)/H − 1 (at 2i), computed once to 256 bits.
var expTab = func() (t [2 * expN]uint64) {
	const prec = 256
	root := new(big.Float).SetPrec(prec).SetInt64(2)
	for range expBits {
		root.Sqrt(root)
	}
	x := new(big.Float).SetPrec(prec).SetInt64(1)
	q := new(big.Float).SetPrec(prec)
	one := big.NewFloat(1)
	for i := range uint64(expN) {
		h, _ := x.Float64()
		q.Quo(x, new(big.Float).SetFloat64(h))
		q.Sub(q, one)
		tail, _ := q.Float64()
		t[2*i] = math.Float64bits(tail)
		t[2*i+1] = math.Float64bits(h) - i<<(52-expBits)
		x.Mul(x, root)
	}
	return t
}()
