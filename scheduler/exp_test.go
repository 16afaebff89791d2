package scheduler

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// bigExp is exp(x) rounded to the nearest double: exp(x/2²⁰) by its Taylor
// series at 400 bits, squared 20 times.
func bigExp(x float64) float64 {
	const prec = 400
	y := new(big.Float).SetPrec(prec).SetFloat64(x)
	y.SetMantExp(y, -20)
	sum := new(big.Float).SetPrec(prec).SetInt64(1)
	term := new(big.Float).SetPrec(prec).SetInt64(1)
	for i := int64(1); i < 30; i++ {
		term.Mul(term, y)
		term.Quo(term, new(big.Float).SetPrec(prec).SetInt64(i))
		sum.Add(sum, term)
	}
	for range 20 {
		sum.Mul(sum, sum)
	}
	f, _ := sum.Float64()
	return f
}

func ulps(a, b float64) uint64 {
	d := int64(math.Float64bits(a)) - int64(math.Float64bits(b))
	if d < 0 {
		return uint64(-d)
	}
	return uint64(d)
}

// TestFastExp: within 1 ulp of the correctly rounded value over the range
// Place uses (a beacon's age over its drain time; minus the headroom over
// its scale, capped at 60) and the table's whole range, and math.Exp's
// answer outside it. A wrong table entry, constant or polynomial term is
// off by far more than 1 ulp somewhere in these draws.
func TestFastExp(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range 1200 {
		var x float64
		switch i % 3 {
		case 0:
			x = -4 * rng.Float64()
		case 1:
			x = 120*rng.Float64() - 60
		default:
			x = 1020*rng.Float64() - 510
		}
		if got, want := fastExp(x), bigExp(x); ulps(got, want) > 1 {
			t.Fatalf("fastExp(%v) = %v, want %v (%d ulp)", x, got, want, ulps(got, want))
		}
	}
	for _, x := range []float64{0, math.Copysign(0, -1), 1e-300, -1e-300, math.Inf(1), math.Inf(-1), -511.9, 511.9, -745, 710, -1e6} {
		if got, want := fastExp(x), math.Exp(x); got != want && ulps(got, want) > 1 {
			t.Errorf("fastExp(%v) = %v, math.Exp %v", x, got, want)
		}
	}
	if !math.IsNaN(fastExp(math.NaN())) {
		t.Error("fastExp(NaN) is not NaN")
	}
}
