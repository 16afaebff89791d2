package protocol

import (
	"errors"
	"testing"
)

// TestDecodeFraudProof: a proof with witnesses that disagree with the
// accused decodes; each way a proof can prove nothing is refused.
func TestDecodeFraudProof(t *testing.T) {
	seeds := fuzzSeeds(t)["FuzzDecodeFraudProof"]
	p, err := DecodeFraudProof(seeds["valid"][0])
	if err != nil {
		t.Fatalf("valid proof refused: %v", err)
	}
	if len(p.Witnesses) != 2 || p.Accused.Host == p.Witnesses[0].Host {
		t.Fatalf("decoded %+v", p)
	}
	for _, name := range []string{"witness-agrees", "same-host", "no-witness", "twice"} {
		if _, err := DecodeFraudProof(seeds[name][0]); !errors.Is(err, ErrBadProof) {
			t.Errorf("%s: %v, want ErrBadProof", name, err)
		}
	}
	big := make([]byte, MaxFraudProofBytes+1)
	if _, err := DecodeFraudProof(big); !errors.Is(err, ErrBadProof) {
		t.Errorf("oversized: %v", err)
	}
	if _, err := EncodeFraudProof([]byte("not a manifest")); err == nil {
		t.Error("a proof of nothing encoded")
	}
}
