package store

import (
	"errors"
	"testing"
)

func TestWorkerTransition(t *testing.T) {
	for _, tc := range []struct {
		status, event, want string
		illegal             bool
	}{
		{WorkerStarting, WorkerEventHeartbeat, WorkerRunning, false},
		{WorkerStarting, "worker.request.received", WorkerRunning, false},
		{WorkerRunning, "worker.response", WorkerRunning, false},
		{WorkerRunning, WorkerEventHeartbeat, WorkerRunning, false},
		{WorkerStopping, WorkerEventHeartbeat, WorkerStopping, false},
		{WorkerStopping, "worker.error", WorkerStopping, false},
		{WorkerStarting, WorkerEventStopping, WorkerStopping, false},
		{WorkerRunning, WorkerEventStopping, WorkerStopping, false},
		{WorkerStopping, WorkerEventStopping, "", true},
		{WorkerStarting, WorkerEventStopped, WorkerStopped, false},
		{WorkerRunning, WorkerEventStopped, WorkerStopped, false},
		{WorkerStopping, WorkerEventStopped, WorkerStopped, false},
		{WorkerStarting, WorkerEventFailed, WorkerFailed, false},
		{WorkerStopping, WorkerEventFailed, WorkerFailed, false},
		{WorkerRunning, WorkerEventStarted, "", true},
		{WorkerStopped, "worker.response", "", true},
		{WorkerStopped, WorkerEventHeartbeat, "", true},
		{WorkerStopped, WorkerEventStopped, "", true},
		{WorkerFailed, WorkerEventHeartbeat, "", true},
		{WorkerFailed, WorkerEventFailed, "", true},
		{WorkerRunning, "run.delta", "", true},
		{WorkerRunning, "worker.", "", true},
		{WorkerRunning, "worker", "", true},
		{WorkerRunning, "", "", true},
		{"bogus", "worker.response", "", true},
	} {
		got, err := WorkerTransition(tc.status, tc.event)
		if tc.illegal {
			if !errors.Is(err, ErrIllegalTransition) {
				t.Errorf("%s + %q: err %v, want ErrIllegalTransition", tc.status, tc.event, err)
			}
			if got != tc.status {
				t.Errorf("%s + %q: refused but returned status %q", tc.status, tc.event, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s + %q = %q, %v; want %q", tc.status, tc.event, got, err, tc.want)
		}
	}
}
