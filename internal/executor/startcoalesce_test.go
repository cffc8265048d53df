package executor_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/store"
)

// appendLog records the event types of each append call a store receives.
type appendLog struct {
	store.Store
	mu    sync.Mutex
	calls [][]string
	at    []time.Time
}

func (s *appendLog) note(in ...store.AppendInput) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var types []string
	for _, x := range in {
		types = append(types, x.EventType)
	}
	s.calls = append(s.calls, types)
	s.at = append(s.at, time.Now())
}

func (s *appendLog) AppendEvent(ctx context.Context, in store.AppendInput) (store.Event, bool, error) {
	s.note(in)
	return s.Store.AppendEvent(ctx, in)
}

func (s *appendLog) AppendEvents(ctx context.Context, in []store.AppendInput) ([]store.AppendResult, error) {
	s.note(in...)
	return s.Store.AppendEvents(ctx, in)
}

func (s *appendLog) first() ([]string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) == 0 {
		return nil, time.Time{}
	}
	return s.calls[0], s.at[0]
}

// run.started waits (StartCoalesce) to be committed with the turn's first
// output: a provider that answers at once costs one append fewer; a slow one
// still shows run.started while it thinks; a negative StartCoalesce appends
// it at once. The log is the same in every case.
func TestRunStartedCoalesces(t *testing.T) {
	for _, tc := range []struct {
		name      string
		coalesce  time.Duration
		script    string
		alone     bool // run.started is appended by itself
		beforeEnd bool // ... and before the provider returned
	}{
		// A window far longer than the turn: never a timing question.
		{"instant provider", time.Minute, `[{"answer":"hi"}]`, false, false},
		{"slow provider", 5 * time.Millisecond, `[{"sleep_ms":300},{"answer":"hi"}]`, true, true},
		{"coalescing off", -1, `[{"answer":"hi"}]`, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &appendLog{Store: openStore(t)}
			ex := executor.New(executor.Config{Owner: "node-c", StartCoalesce: tc.coalesce}, executor.Deps{Store: st})
			createRun(t, st, "run_c", "")
			sendFrame(t, st, "run_c", "f1", "user_message", map[string]any{"script": json.RawMessage(tc.script)})
			ctx := context.Background()
			g, err := st.AcquireLease(ctx, "run_c", "node-c", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			res := ex.RunOnce(ctx, g.Lease)
			ended := time.Now()
			if res.Err != nil || res.Status != store.StatusSucceeded {
				t.Fatalf("RunOnce = %+v", res)
			}
			evs := allEvents(t, st, "run_c")
			counts := checkLog(t, "run_c", evs)
			if evs[0].EventType != "run.started" || counts["run.started"] != 1 || evs[len(evs)-1].EventType != "run.finished" {
				t.Fatalf("log %v", counts)
			}
			first, at := st.first()
			if alone := len(first) == 1; alone != tc.alone || first[0] != "run.started" {
				t.Fatalf("first append %v, want run.started alone=%t", first, tc.alone)
			}
			if tc.beforeEnd && ended.Sub(at) < 100*time.Millisecond {
				t.Fatalf("run.started appended %s before the end of a 300 ms provider call", ended.Sub(at))
			}
		})
	}
}
