package app_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/alerttest"
	"github.com/oaruntime/oaruntime/internal/client"
)

// TestOperatorRoutesNeedAnOperator: a signed principal that is not an
// operator cannot trigger replays, audits or faults, nor read another
// principal's checkpoint.
func TestOperatorRoutesNeedAnOperator(t *testing.T) {
	rt := alerttest.StartRuntime(t) // operator: user:alerttest
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	op := rt.Client
	user := client.New(op.BaseURL, op.Secret, "user:someone")
	other := client.New(op.BaseURL, op.Secret, "user:other")
	if _, err := user.CreateRun(ctx, map[string]any{"run_id": "run_mine", "thread_id": "t1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := user.SendFrame(ctx, "run_mine", "f1", "user_message", map[string]any{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	if _, err := user.WaitTerminal(ctx, "run_mine", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		c      *client.Client
		method string
		path   string
		body   any
		want   int
	}{
		{"user reproject", user, http.MethodPost, "/internal/v1/projectors/reproject", map[string]any{"all": true}, 403},
		{"user verify", user, http.MethodPost, "/internal/v1/projectors/verify", map[string]any{}, 403},
		{"user drift", user, http.MethodGet, "/internal/v1/projectors/drift", nil, 403},
		{"user fault", user, http.MethodPost, "/internal/v1/ops/faults/http", map[string]any{"rate": 1.0}, 403},
		{"other's checkpoint", other, http.MethodGet, "/internal/v1/projectors/checkpoints/run_mine", nil, 403},
		{"own checkpoint", user, http.MethodGet, "/internal/v1/projectors/checkpoints/run_mine", nil, 200},
		{"operator checkpoint", op, http.MethodGet, "/internal/v1/projectors/checkpoints/run_mine", nil, 200},
		{"operator drift", op, http.MethodGet, "/internal/v1/projectors/drift", nil, 200},
		{"operator reproject", op, http.MethodPost, "/internal/v1/projectors/reproject", map[string]any{"run_id": "run_mine"}, 200},
	}
	for _, c := range cases {
		status, err := c.c.Do(ctx, c.method, c.path, c.body, nil)
		var ae *client.APIError
		if errors.As(err, &ae) {
			status = ae.Status
		} else if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if status != c.want {
			t.Errorf("%s: status %d, want %d (%v)", c.name, status, c.want, err)
		}
	}
}

// TestFaultEndpointsRejectBadInput: the fault knobs answer 400 naming the
// field, never 5xx.
func TestFaultEndpointsRejectBadInput(t *testing.T) {
	rt := alerttest.StartRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		path string
		body any
		want string
	}{
		{"/internal/v1/ops/faults/http", map[string]any{"rate": 2.0}, "rate"},
		{"/internal/v1/ops/faults/http", map[string]any{}, "rate"},
		{"/internal/v1/ops/faults/executor", map[string]any{"rate": "x"}, "rate"},
		{"/internal/v1/ops/faults/token-mint", map[string]any{"fail": true, "extra": 1}, "extra"},
	} {
		_, err := rt.Client.Do(ctx, http.MethodPost, c.path, c.body, nil)
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, c.want) {
			t.Errorf("%s %v: %v, want 400 naming %s", c.path, c.body, err, c.want)
		}
	}
	if _, err := rt.Client.Do(ctx, http.MethodPost, "/internal/v1/ops/faults/http", map[string]any{"rate": 0.0}, nil); err != nil {
		t.Fatal(err)
	}
}
