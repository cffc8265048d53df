package runs

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Run statuses (mirrors store constants; runs must not import store).
const (
	StatusCreated   = "created"
	StatusRunning   = "running"
	StatusCanceling = "canceling"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
)

// ErrIllegalTransition is returned (wrapped) for a rejected transition.
var ErrIllegalTransition = errors.New("illegal transition")

// Outcome is what an event does to its run.
type Outcome struct {
	Status      string // status after the event
	Changed     bool   // status differs from before
	Terminal    bool   // the event finishes the run
	Idempotent  bool   // a same-status repeat of a terminal run.finished
	ReasonClass string
	Reason      string
}

// Transition applies the event to a run in status, following the legal
// transition table of the original Rust state machine. Event types other than
// run.started, run.cancel_requested and run.finished do not change status and
// are accepted unless the run is terminal.
// finishedKeys are the members of a run.finished payload Transition reads
// (the json names of its fields, in that order).
var finishedKeys = []string{"status", "reason_class", "reason"}

func Transition(status, eventType string, payload json.RawMessage) (Outcome, error) {
	out := Outcome{Status: status}
	terminal := status == StatusSucceeded || status == StatusFailed || status == StatusCanceled
	switch eventType {
	case "run.started":
		if status != StatusCreated && status != StatusRunning {
			return out, fmt.Errorf("%w: run.started from %s", ErrIllegalTransition, status)
		}
		out.Status = StatusRunning
	case "run.cancel_requested":
		if status != StatusCreated && status != StatusRunning && status != StatusCanceling {
			return out, fmt.Errorf("%w: run.cancel_requested from %s", ErrIllegalTransition, status)
		}
		out.Status = StatusCanceling
	case "run.finished":
		var p struct {
			Status      string `json:"status"`
			ReasonClass string `json:"reason_class"`
			Reason      string `json:"reason"`
		}
		vals := []string{"", "", ""}
		if stringMembers(payload, finishedKeys, vals) {
			p.Status, p.ReasonClass, p.Reason = vals[0], vals[1], vals[2]
		} else if len(payload) > 0 {
			if err := json.Unmarshal(payload, &p); err != nil {
				return out, fmt.Errorf("%w: run.finished payload: %v", ErrIllegalTransition, err)
			}
		}
		to := p.Status
		if to == "cancelled" {
			to = StatusCanceled
		}
		var from []string
		switch to {
		case StatusSucceeded:
			from = []string{StatusCreated, StatusRunning}
		case StatusFailed, StatusCanceled:
			from = []string{StatusCreated, StatusRunning, StatusCanceling}
		default:
			return out, fmt.Errorf("%w: run.finished needs payload.status succeeded|failed|canceled, got %q", ErrIllegalTransition, p.Status)
		}
		if status == to {
			out.Idempotent = true
			out.Terminal = true
			return out, nil
		}
		ok := false
		for _, f := range from {
			ok = ok || f == status
		}
		if !ok {
			return out, fmt.Errorf("%w: run.finished{%s} from %s", ErrIllegalTransition, to, status)
		}
		out.Status, out.Terminal, out.ReasonClass, out.Reason = to, true, p.ReasonClass, p.Reason
	default:
		if terminal {
			return out, fmt.Errorf("%w: %s after terminal status %s", ErrIllegalTransition, eventType, status)
		}
	}
	out.Changed = out.Status != status
	return out, nil
}
