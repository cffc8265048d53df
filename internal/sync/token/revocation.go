package token

import (
	"context"
	"sync"
	"time"
)

// Revocations answers whether a token id (jti) has been revoked. The verifier
// declares it; the store-backed implementation lives with the store.
type Revocations interface {
	IsRevoked(ctx context.Context, jti string) (bool, error)
}

// MemoryRevocations is an in-process Revocations for tests and single-node use.
type MemoryRevocations struct {
	mu      sync.RWMutex
	revoked map[string]time.Time // jti -> token expiry, after which the entry is moot
}

// NewMemoryRevocations returns an empty set.
func NewMemoryRevocations() *MemoryRevocations {
	return &MemoryRevocations{revoked: make(map[string]time.Time)}
}

// Revoke marks jti revoked. expiresAt is the token's exp: once it passes, the
// token is rejected as expired anyway and Prune may forget the entry.
func (r *MemoryRevocations) Revoke(jti string, expiresAt time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revoked[jti] = expiresAt
}

// IsRevoked implements Revocations.
func (r *MemoryRevocations) IsRevoked(_ context.Context, jti string) (bool, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.revoked[jti]
	return ok, nil
}

// Prune forgets entries whose token expired more than grace before now, and
// returns how many it dropped. grace should cover the verifier's leeway.
func (r *MemoryRevocations) Prune(now time.Time, grace time.Duration) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for jti, exp := range r.revoked {
		if exp.Add(grace).Before(now) {
			delete(r.revoked, jti)
			n++
		}
	}
	return n
}

// Len returns the number of revoked ids held.
func (r *MemoryRevocations) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.revoked)
}
