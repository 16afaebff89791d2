package trust

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Policy sets how much a node checks.
type Policy struct {
	// Probation is how many results of a new host are held until a re-run
	// on another host agrees.
	Probation int
	// MinRate is the lowest probability that a result of a host past
	// probation is re-run in the background; the rate is
	// max(MinRate, Probation/k) for its k-th result.
	MinRate float64
	// IdleAbove: when more than this share of the swarm's slots are idle,
	// every result is re-run (idle capacity is free verification).
	IdleAbove float64
	// Tolerance is the largest perceptual distance (Distance) at which two
	// results of a kernel whose outputs are not exact still agree.
	Tolerance float64
	// MaxHosts bounds the records kept; past it the oldest clean record
	// is forgotten (a host forgotten starts its probation again).
	MaxHosts int
}

// DefaultPolicy is the policy docs/trust.md measured in the simulator
// (gpunet sim --liars): probation 10, floor 0.15, re-run all above 80 %
// idle.
func DefaultPolicy() Policy {
	return Policy{Probation: 10, MinRate: 0.15, IdleAbove: 0.8, Tolerance: DefaultTolerance, MaxHosts: 100000}
}

// Decision is what to do with one more result of a host.
type Decision int

// The decisions, from Decide.
const (
	// Accept takes the result unchecked.
	Accept Decision = iota
	// CheckLater takes the result now and re-runs it in the background.
	CheckLater
	// Hold re-runs the result before taking it.
	Hold
	// Refuse drops the result: its host was caught.
	Refuse
)

func (d Decision) String() string {
	return [...]string{"accept", "check-later", "hold", "refuse"}[d]
}

// Record is what a Book knows of one host.
type Record struct {
	// Results counts the host's results this node took (or refused).
	Results int `json:"results"`
	// Passed counts the re-runs that agreed with it.
	Passed int `json:"passed"`
	// Excluded is set once the host was caught; Proof is the evidence.
	Excluded bool      `json:"excluded"`
	Proof    []byte    `json:"proof,omitempty"`
	Since    time.Time `json:"since"` // first seen, or caught
}

// Book is a node's record of the hosts whose results it takes. Safe for
// concurrent use.
type Book struct {
	pol Policy

	mu    sync.Mutex
	hosts map[string]*Record
	rng   *rand.Rand
	now   func() time.Time
}

// NewBook returns an empty book with policy pol.
func NewBook(pol Policy) *Book {
	if pol.MaxHosts <= 0 {
		pol.MaxHosts = DefaultPolicy().MaxHosts
	}
	return &Book{
		pol:   pol,
		hosts: map[string]*Record{},
		rng:   rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		now:   time.Now,
	}
}

// Policy returns the book's policy.
func (b *Book) Policy() Policy { return b.pol }

// recordLocked returns host's record, making one if needed.
func (b *Book) recordLocked(host string) *Record {
	r := b.hosts[host]
	if r == nil {
		if len(b.hosts) >= b.pol.MaxHosts {
			b.forgetOldestLocked()
		}
		r = &Record{Since: b.now()}
		b.hosts[host] = r
	}
	return r
}

// forgetOldestLocked drops the oldest record of a host not caught. A scan,
// run only when the book is full.
func (b *Book) forgetOldestLocked() {
	var oldest string
	var at time.Time
	for h, r := range b.hosts {
		if !r.Excluded && (oldest == "" || r.Since.Before(at)) {
			oldest, at = h, r.Since
		}
	}
	delete(b.hosts, oldest)
}

// Decide records one more result of host and says what to do with it.
// idle is the share of the swarm's slots that are idle now (0..1).
func (b *Book) Decide(host string, idle float64) Decision {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.recordLocked(host)
	r.Results++
	switch {
	case r.Excluded:
		return Refuse
	case r.Passed < b.pol.Probation:
		return Hold
	case idle > b.pol.IdleAbove:
		return CheckLater
	}
	p := max(b.pol.MinRate, float64(b.pol.Probation)/float64(r.Results))
	if b.rng.Float64() < p {
		return CheckLater
	}
	return Accept
}

// Passed records that a re-run agreed with a result of host.
func (b *Book) Passed(host string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recordLocked(host).Passed++
}

// Exclude marks host caught, with proof as the evidence, and reports
// whether it was not caught before.
func (b *Book) Exclude(host string, proof []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.recordLocked(host)
	if r.Excluded {
		return false
	}
	r.Excluded, r.Proof, r.Since = true, proof, b.now()
	return true
}

// Excluded reports whether host was caught.
func (b *Book) Excluded(host string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.hosts[host]
	return r != nil && r.Excluded
}

// Trusted reports whether host finished its probation with a clean record:
// the hosts a node prefers to settle a check or a proof on.
func (b *Book) Trusted(host string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.hosts[host]
	return r != nil && !r.Excluded && r.Passed >= b.pol.Probation
}

// Distrust is host's score for scheduler.Place (PeerState.Distrust): 1 for a
// host caught (never placed on), ProbationDistrust for a host with no
// confirmed result falling to 0 as its probation passes, 0 after.
func (b *Book) Distrust(host string) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.hosts[host]
	switch {
	case r == nil:
		return ProbationDistrust
	case r.Excluded:
		return 1
	case r.Passed >= b.pol.Probation:
		return 0
	}
	return ProbationDistrust * float64(b.pol.Probation-r.Passed) / float64(b.pol.Probation)
}

// ProbationDistrust is the score of a host with no confirmed result: Place
// prefers a host with a record when the two are otherwise close, since each
// result of a host on probation costs a re-run.
const ProbationDistrust = 0.2

// Record returns a copy of host's record.
func (b *Book) Record(host string) (Record, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.hosts[host]
	if !ok {
		return Record{}, false
	}
	return *r, true
}

// HostRecord is one host's record, as Records lists it.
type HostRecord struct {
	Host string `json:"host"`
	Record
}

// Records lists the records worth keeping across a restart: hosts caught,
// and hosts with at least one confirmed result; by host.
func (b *Book) Records() []HostRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []HostRecord
	for h, r := range b.hosts {
		if r.Excluded || r.Passed > 0 {
			out = append(out, HostRecord{Host: h, Record: *r})
		}
	}
	slices.SortFunc(out, func(a, b HostRecord) int { return strings.Compare(a.Host, b.Host) })
	return out
}

// Restore puts saved records back, up to the book's bound; a record with
// no host or negative counts is skipped.
func (b *Book) Restore(rs []HostRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range rs {
		if r.Host == "" || r.Results < 0 || r.Passed < 0 {
			continue
		}
		if _, ok := b.hosts[r.Host]; !ok && len(b.hosts) >= b.pol.MaxHosts {
			b.forgetOldestLocked()
		}
		rec := r.Record
		b.hosts[r.Host] = &rec
	}
}

// ExcludedHosts lists the hosts caught.
func (b *Book) ExcludedHosts() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for h, r := range b.hosts {
		if r.Excluded {
			out = append(out, h)
		}
	}
	return out
}
