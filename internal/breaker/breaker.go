// Package breaker holds one circuit breaker per provider (model and tool providers) and the
// fallback rule: while a provider's breaker is open, calls go to its configured fallback.
//
// Breakers are github.com/sony/gobreaker/v2 with: open after FailureThreshold consecutive
// failures (no time window, as in the original), Cooldown in open, then exactly one probe in
// half-open (the original let every concurrent caller through as a "trial").
package breaker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// States as exported in metrics.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half_open"
)

// ReasonCircuitOpen is the reason class of a call refused (or diverted) by an open breaker.
const ReasonCircuitOpen = "provider_circuit_open"

// Defaults from DESIGN.md section 5.
const (
	DefaultFailureThreshold = 3
	DefaultCooldown         = 30 * time.Second
)

// ErrCircuitOpen matches (errors.Is) every error returned for a call the breaker refused.
var ErrCircuitOpen = errors.New(ReasonCircuitOpen)

// OpenError is the error for a refused call. It carries the provider whose breaker refused.
type OpenError struct {
	Provider string
	State    string // open, or half_open when the single probe is already in flight
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("provider %s: circuit %s", e.Provider, e.State)
}

// Is makes errors.Is(err, ErrCircuitOpen) true.
func (e *OpenError) Is(target error) bool { return target == ErrCircuitOpen }

// ReasonClass is the reason recorded on the failed call or run.
func (e *OpenError) ReasonClass() string { return ReasonCircuitOpen }

// Observer receives state changes; *telemetry.Metrics satisfies it.
type Observer interface {
	BreakerState(provider, state string)
	BreakerTransition(provider, state string)
}

// Config configures every breaker of a Registry.
type Config struct {
	// FailureThreshold consecutive failures open the breaker; 0 means DefaultFailureThreshold.
	FailureThreshold uint32
	// Cooldown is how long the breaker stays open before one probe; 0 means DefaultCooldown.
	Cooldown time.Duration
	// IsFailure decides whether an error counts against the provider. nil means every error
	// except context.Canceled: a caller giving up (run canceled) says nothing about the
	// provider, whereas a timeout does.
	IsFailure func(error) bool
}

// Registry holds one breaker per provider name, created on first use.
type Registry struct {
	cfg Config
	obs Observer

	mu       sync.Mutex
	breakers map[string]*gobreaker.CircuitBreaker[any]
}

// NewRegistry builds a registry. obs may be nil.
func NewRegistry(cfg Config, obs Observer) *Registry {
	if cfg.FailureThreshold == 0 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = DefaultCooldown
	}
	if cfg.IsFailure == nil {
		cfg.IsFailure = func(err error) bool { return !errors.Is(err, context.Canceled) }
	}
	return &Registry{cfg: cfg, obs: obs, breakers: map[string]*gobreaker.CircuitBreaker[any]{}}
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

func (r *Registry) get(provider string) *gobreaker.CircuitBreaker[any] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cb, ok := r.breakers[provider]; ok {
		return cb
	}
	threshold := r.cfg.FailureThreshold
	isFailure := r.cfg.IsFailure
	cb := gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Name:        provider,
		MaxRequests: 1,
		Interval:    0, // consecutive failures only; counts never age out while closed
		Timeout:     r.cfg.Cooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		// Excluded errors neither count as failure nor as success.
		IsExcluded: func(err error) bool { return err != nil && !isFailure(err) },
		// Called with the breaker's lock held: the observer must not call back into it.
		OnStateChange: func(name string, _, to gobreaker.State) {
			if r.obs != nil {
				r.obs.BreakerState(name, stateName(to))
				r.obs.BreakerTransition(name, stateName(to))
			}
		},
	})
	r.breakers[provider] = cb
	if r.obs != nil {
		r.obs.BreakerState(provider, StateClosed) // the gauge exists from first use
	}
	return cb
}

// State returns the provider's current state. Reading it also performs a due open to
// half_open transition (gobreaker moves lazily), so a periodic States call keeps the gauge
// honest between calls.
func (r *Registry) State(provider string) string {
	return stateName(r.get(provider).State())
}

// States returns the state of every provider seen so far.
func (r *Registry) States() map[string]string {
	r.mu.Lock()
	names := make([]string, 0, len(r.breakers))
	for name := range r.breakers {
		names = append(names, name)
	}
	r.mu.Unlock()
	out := make(map[string]string, len(names))
	for _, name := range names {
		out[name] = r.State(name)
	}
	return out
}

// Execute runs fn through the provider's breaker. A refused call returns an *OpenError
// (errors.Is ErrCircuitOpen) without calling fn. A context that is already done is returned
// as is and not counted.
func Execute[T any](ctx context.Context, r *Registry, provider string, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	cb := r.get(provider)
	out, err := cb.Execute(func() (any, error) { return fn(ctx) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		state := StateOpen
		if errors.Is(err, gobreaker.ErrTooManyRequests) {
			state = StateHalfOpen
		}
		return zero, &OpenError{Provider: provider, State: state}
	}
	if err != nil {
		return zero, err
	}
	v, _ := out.(T) // out is exactly what fn returned, so the assertion cannot fail
	return v, nil
}

// Do is Execute for calls without a result.
func (r *Registry) Do(ctx context.Context, provider string, fn func(context.Context) error) error {
	_, err := Execute(ctx, r, provider, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, fn(ctx)
	})
	return err
}

// Call runs fn for provider. When the provider's breaker refuses the call and fallback is
// set, fn runs for the fallback (through the fallback's own breaker) and the result reports
// fellBack with reason provider_circuit_open; the caller appends provider.fallback and
// records fallback {from, to, reason} on the receipt. Without a fallback the refusal is
// returned (errors.Is ErrCircuitOpen, reason provider_circuit_open). Ordinary provider
// errors are returned as they are, with an empty reason: they count against the breaker but
// do not divert the call.
func (r *Registry) Call(ctx context.Context, provider, fallback string,
	fn func(ctx context.Context, provider string) error,
) (usedProvider string, fellBack bool, reason string, err error) {
	err = r.Do(ctx, provider, func(ctx context.Context) error { return fn(ctx, provider) })
	if !errors.Is(err, ErrCircuitOpen) {
		return provider, false, "", err
	}
	if fallback == "" || fallback == provider {
		return provider, false, ReasonCircuitOpen, err
	}
	err = r.Do(ctx, fallback, func(ctx context.Context) error { return fn(ctx, fallback) })
	return fallback, true, ReasonCircuitOpen, err
}
