package breaker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

type event struct{ kind, provider, state string }

type fakeObserver struct {
	mu     sync.Mutex
	events []event
}

func (o *fakeObserver) BreakerState(p, s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, event{"state", p, s})
}

func (o *fakeObserver) BreakerTransition(p, s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, event{"transition", p, s})
}

func (o *fakeObserver) transitions(p string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, e := range o.events {
		if e.kind == "transition" && e.provider == p {
			out = append(out, e.state)
		}
	}
	return out
}

func (o *fakeObserver) states(p string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, e := range o.events {
		if e.kind == "state" && e.provider == p {
			out = append(out, e.state)
		}
	}
	return out
}

var errBoom = errors.New("boom")

// A short cooldown stands in for a fake clock (gobreaker reads time.Now itself). Tests
// sleep past it; they never assert how long anything took.
const testCooldown = 30 * time.Millisecond

func waitCooldown() { time.Sleep(3 * testCooldown) }

func fail(context.Context) error { return errBoom }
func ok(context.Context) error   { return nil }

func TestOpensAfterThreeConsecutiveFailures(t *testing.T) {
	r := NewRegistry(Config{Cooldown: time.Hour}, nil)
	ctx := context.Background()
	for i := range 3 {
		if st := r.State("p"); st != StateClosed {
			t.Fatalf("after %d failures state %s, want closed", i, st)
		}
		if err := r.Do(ctx, "p", fail); !errors.Is(err, errBoom) {
			t.Fatalf("call %d: got %v, want the provider error", i, err)
		}
	}
	if st := r.State("p"); st != StateOpen {
		t.Fatalf("state %s, want open", st)
	}
	called := false
	err := r.Do(ctx, "p", func(context.Context) error { called = true; return nil })
	if called {
		t.Fatal("open breaker called the provider")
	}
	if !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("got %v, want ErrCircuitOpen", err)
	}
	var oe *OpenError
	if !errors.As(err, &oe) || oe.Provider != "p" || oe.ReasonClass() != "provider_circuit_open" {
		t.Fatalf("bad open error %#v", err)
	}
}

func TestSuccessResetsConsecutiveCount(t *testing.T) {
	r := NewRegistry(Config{Cooldown: time.Hour}, nil)
	ctx := context.Background()
	for _, fn := range []func(context.Context) error{fail, fail, ok, fail, fail} {
		_ = r.Do(ctx, "p", fn)
	}
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s, want closed (no 3 consecutive failures)", st)
	}
	_ = r.Do(ctx, "p", fail)
	if st := r.State("p"); st != StateOpen {
		t.Fatalf("state %s, want open", st)
	}
}

func TestCustomThreshold(t *testing.T) {
	r := NewRegistry(Config{FailureThreshold: 1, Cooldown: time.Hour}, nil)
	_ = r.Do(context.Background(), "p", fail)
	if st := r.State("p"); st != StateOpen {
		t.Fatalf("state %s, want open after 1 failure", st)
	}
}

func TestProvidersAreIsolated(t *testing.T) {
	r := NewRegistry(Config{Cooldown: time.Hour}, nil)
	for range 3 {
		_ = r.Do(context.Background(), "a", fail)
	}
	if err := r.Do(context.Background(), "b", ok); err != nil {
		t.Fatalf("b refused: %v", err)
	}
	got := r.States()
	if got["a"] != StateOpen || got["b"] != StateClosed || len(got) != 2 {
		t.Fatalf("states %v", got)
	}
}

func TestHalfOpenProbeSuccessCloses(t *testing.T) {
	obs := &fakeObserver{}
	r := NewRegistry(Config{Cooldown: testCooldown}, obs)
	for range 3 {
		_ = r.Do(context.Background(), "p", fail)
	}
	waitCooldown()
	if st := r.State("p"); st != StateHalfOpen {
		t.Fatalf("state %s after cooldown, want half_open", st)
	}
	if err := r.Do(context.Background(), "p", ok); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s after good probe, want closed", st)
	}
	if got := obs.transitions("p"); !slices.Equal(got, []string{StateOpen, StateHalfOpen, StateClosed}) {
		t.Fatalf("transitions %v", got)
	}
	if got := obs.states("p"); !slices.Equal(got, []string{StateClosed, StateOpen, StateHalfOpen, StateClosed}) {
		t.Fatalf("state gauge updates %v (first is the initial closed)", got)
	}
	// Closed again with a fresh count: two failures do not reopen it.
	_ = r.Do(context.Background(), "p", fail)
	_ = r.Do(context.Background(), "p", fail)
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s, want closed", st)
	}
}

func TestHalfOpenProbeFailureReopens(t *testing.T) {
	obs := &fakeObserver{}
	r := NewRegistry(Config{Cooldown: testCooldown}, obs)
	for range 3 {
		_ = r.Do(context.Background(), "p", fail)
	}
	waitCooldown()
	if err := r.Do(context.Background(), "p", fail); !errors.Is(err, errBoom) {
		t.Fatalf("probe should have run and failed: %v", err)
	}
	if st := r.State("p"); st != StateOpen {
		t.Fatalf("state %s after failed probe, want open", st)
	}
	if err := r.Do(context.Background(), "p", ok); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("reopened breaker let a call through: %v", err)
	}
	if got := obs.transitions("p"); !slices.Equal(got, []string{StateOpen, StateHalfOpen, StateOpen}) {
		t.Fatalf("transitions %v", got)
	}
}

func TestHalfOpenAllowsExactlyOneProbe(t *testing.T) {
	r := NewRegistry(Config{Cooldown: testCooldown}, nil)
	for range 3 {
		_ = r.Do(context.Background(), "p", fail)
	}
	waitCooldown()
	started := make(chan struct{})
	release := make(chan struct{})
	probeDone := make(chan error, 1)
	go func() {
		probeDone <- r.Do(context.Background(), "p", func(context.Context) error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	called := false
	err := r.Do(context.Background(), "p", func(context.Context) error { called = true; return nil })
	var oe *OpenError
	if called || !errors.As(err, &oe) || oe.State != StateHalfOpen {
		t.Fatalf("second caller during probe: called=%v err=%v", called, err)
	}
	close(release)
	if err := <-probeDone; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s, want closed", st)
	}
}

func TestCanceledCallsDoNotCount(t *testing.T) {
	r := NewRegistry(Config{Cooldown: time.Hour}, nil)
	for range 5 {
		_ = r.Do(context.Background(), "p", func(context.Context) error {
			return fmt.Errorf("model call: %w", context.Canceled)
		})
	}
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s: caller cancellations tripped the breaker", st)
	}
	// Timeouts do count.
	for range 3 {
		_ = r.Do(context.Background(), "p", func(context.Context) error { return context.DeadlineExceeded })
	}
	if st := r.State("p"); st != StateOpen {
		t.Fatalf("state %s: timeouts must count as failures", st)
	}
}

func TestDoneContextNotCalledNotCounted(t *testing.T) {
	r := NewRegistry(Config{FailureThreshold: 1, Cooldown: time.Hour}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := r.Do(ctx, "p", func(context.Context) error { called = true; return errBoom })
	if called || !errors.Is(err, context.Canceled) {
		t.Fatalf("called=%v err=%v", called, err)
	}
	if st := r.State("p"); st != StateClosed {
		t.Fatalf("state %s", st)
	}
}

func TestExecuteReturnsValue(t *testing.T) {
	r := NewRegistry(Config{}, nil)
	got, err := Execute(context.Background(), r, "p", func(context.Context) (string, error) { return "answer", nil })
	if err != nil || got != "answer" {
		t.Fatalf("got %q, %v", got, err)
	}
	got, err = Execute(context.Background(), r, "p", func(context.Context) (string, error) { return "partial", errBoom })
	if !errors.Is(err, errBoom) || got != "" {
		t.Fatalf("on error got %q, %v; want zero value and the error", got, err)
	}
}

func TestCallFallback(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name         string
		openPrimary  bool
		openFallback bool
		fallback     string
		primaryErr   error
		wantUsed     string
		wantFellBack bool
		wantReason   string
		wantErr      error
		wantCalls    []string
	}{
		{name: "closed primary succeeds", fallback: "backup", wantUsed: "primary", wantCalls: []string{"primary"}},
		{name: "closed primary error is not diverted", fallback: "backup", primaryErr: errBoom,
			wantUsed: "primary", wantErr: errBoom, wantCalls: []string{"primary"}},
		{name: "open primary goes to fallback", openPrimary: true, fallback: "backup",
			wantUsed: "backup", wantFellBack: true, wantReason: ReasonCircuitOpen, wantCalls: []string{"backup"}},
		{name: "open primary without fallback fails fast", openPrimary: true,
			wantUsed: "primary", wantReason: ReasonCircuitOpen, wantErr: ErrCircuitOpen},
		{name: "fallback equal to primary is no fallback", openPrimary: true, fallback: "primary",
			wantUsed: "primary", wantReason: ReasonCircuitOpen, wantErr: ErrCircuitOpen},
		{name: "both open", openPrimary: true, openFallback: true, fallback: "backup",
			wantUsed: "backup", wantFellBack: true, wantReason: ReasonCircuitOpen, wantErr: ErrCircuitOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry(Config{FailureThreshold: 1, Cooldown: time.Hour}, nil)
			if tt.openPrimary {
				_ = r.Do(ctx, "primary", fail)
			}
			if tt.openFallback {
				_ = r.Do(ctx, "backup", fail)
			}
			var calls []string
			used, fellBack, reason, err := r.Call(ctx, "primary", tt.fallback, func(_ context.Context, p string) error {
				calls = append(calls, p)
				if p == "primary" {
					return tt.primaryErr
				}
				return nil
			})
			if used != tt.wantUsed || fellBack != tt.wantFellBack || reason != tt.wantReason {
				t.Fatalf("used=%s fellBack=%v reason=%q", used, fellBack, reason)
			}
			if (tt.wantErr == nil) != (err == nil) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(calls, tt.wantCalls) {
				t.Fatalf("calls %v, want %v", calls, tt.wantCalls)
			}
		})
	}
}

func TestNilObserverAndTypedNil(t *testing.T) {
	var typed *nilSafeObserver // a nil *telemetry.Metrics arrives like this
	for _, obs := range []Observer{nil, typed} {
		r := NewRegistry(Config{FailureThreshold: 1, Cooldown: time.Hour}, obs)
		_ = r.Do(context.Background(), "p", fail)
		if st := r.State("p"); st != StateOpen {
			t.Fatalf("state %s", st)
		}
	}
}

type nilSafeObserver struct{}

func (*nilSafeObserver) BreakerState(string, string)      {}
func (*nilSafeObserver) BreakerTransition(string, string) {}
