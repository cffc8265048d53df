package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// NoticeWorker is the Notice.Kind of a committed worker write; Notice.RunID
// then carries the worker id and Notice.Seq the worker's new latest seq.
const NoticeWorker = "worker"

// Codex worker statuses.
const (
	WorkerStarting = "starting"
	WorkerRunning  = "running"
	WorkerStopping = "stopping"
	WorkerStopped  = "stopped"
	WorkerFailed   = "failed"
)

// WorkerEnded reports whether a worker in status accepts no more events
// (a later create of the same id reattaches it).
func WorkerEnded(status string) bool { return status == WorkerStopped || status == WorkerFailed }

// Worker event types with a meaning for the worker's status. Every other
// "worker.*" type is a plain record (worker.request.received,
// worker.response, worker.error, ...).
const (
	WorkerEventPrefix    = "worker."
	WorkerEventStarted   = "worker.started"   // written by CreateWorker only
	WorkerEventHeartbeat = "worker.heartbeat" // HeartbeatWorker
	WorkerEventStopping  = "worker.stopping"
	WorkerEventStopped   = "worker.stopped"
	WorkerEventFailed    = "worker.failed"
)

// CreateWorker outcomes.
const (
	WorkerCreated    = "created"    // a new worker (worker.started appended)
	WorkerExisting   = "existing"   // identical create of a live worker: nothing written
	WorkerReattached = "reattached" // identical create of a stopped or failed worker: back to starting
)

// Worker is one codex worker: the durable record of a remote Codex session.
//
// Invariant the projector relies on: every change of a worker row appends a
// worker event in the same transaction, so (row, events up to LatestSeq) is
// a consistent snapshot and a summary is fully determined by its seq.
type Worker struct {
	WorkerID  string `json:"worker_id"`
	OwnerSub  string `json:"owner"` // principal from signed claims: "user:<id>" or "guest:<scope>"
	Status    string `json:"status"`
	LatestSeq int64  `json:"latest_seq"`

	WorkspaceRef string          `json:"workspace_ref"`
	CodexHomeRef string          `json:"codex_home_ref"`
	Adapter      string          `json:"adapter"`
	Metadata     json.RawMessage `json:"metadata"` // canonical JSON object; {} when none was given

	// LastHeartbeatAt is the last sign of life from the worker itself (a
	// heartbeat or an ingested event); nil until the first one.
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at"`
	StartedAt       time.Time  `json:"started_at"` // creation or the last reattach
	StoppedAt       *time.Time `json:"stopped_at"`
	StoppedReason   string     `json:"stopped_reason,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
}

// WorkerEvent is one entry of a worker's append-only log; Seq is gap-free
// per worker, starting at 1 (the worker.started of the create).
type WorkerEvent struct {
	WorkerID       string          `json:"worker_id"`
	Seq            int64           `json:"seq"`
	EventType      string          `json:"event_type"`
	Payload        json.RawMessage `json:"payload"` // canonical JSON
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	Trace          TraceContext    `json:"-"`
	CreatedAt      time.Time       `json:"created_at"`
}

// CreateWorkerInput creates a worker. Idempotent on WorkerID: identical
// fields (owner included; Metadata compared canonically, absent = {}) return
// the stored worker, reattaching it when it had stopped or failed; other
// fields give ErrConflict.
type CreateWorkerInput struct {
	WorkerID, OwnerSub                  string
	WorkspaceRef, CodexHomeRef, Adapter string
	Metadata                            json.RawMessage
	Trace                               TraceContext
}

// WorkerEventInput appends one event reported by the worker. Payload should
// already be sanitized; the driver stores it canonical.
type WorkerEventInput struct {
	WorkerID       string
	EventType      string // must start with "worker."; worker.started is reserved
	Payload        json.RawMessage
	IdempotencyKey string // optional; a seen key replays the stored event
	Trace          TraceContext
}

// WorkerStore is the codex worker contract, implemented by both drivers'
// *Store beside store.Store. Every write is one transaction that notifies
// watchers after commit with Notice{Kind: NoticeWorker, RunID: workerID, Seq}.
type WorkerStore interface {
	// CreateWorker returns the worker and WorkerCreated, WorkerExisting or
	// WorkerReattached. Created and reattached workers are in status
	// starting with a new worker.started event.
	CreateWorker(ctx context.Context, in CreateWorkerInput) (Worker, string, error)
	// GetWorker returns ErrNotFound for an unknown id.
	GetWorker(ctx context.Context, workerID string) (Worker, error)
	// HeartbeatWorker appends worker.heartbeat, sets last_heartbeat_at and
	// moves starting to running; ErrIllegalTransition once stopped or failed.
	HeartbeatWorker(ctx context.Context, workerID string, trace TraceContext) (Worker, WorkerEvent, error)
	// AppendWorkerEvent appends an event in one transaction: a seen
	// idempotency key replays the stored event (replay=true) whatever the
	// status, or gives ErrConflict when the type or payload differ; then
	// WorkerTransition validates the event against the status; then seq =
	// latest+1, the status moves and last_heartbeat_at is set.
	AppendWorkerEvent(ctx context.Context, in WorkerEventInput) (ev WorkerEvent, replay bool, err error)
	// ListWorkerEvents returns up to limit (<= 0 means 100) events with
	// seq > afterSeq in seq order; ErrNotFound for an unknown worker.
	ListWorkerEvents(ctx context.Context, workerID string, afterSeq int64, limit int) ([]WorkerEvent, error)
	// StopWorker stops a live worker in one transaction: a starting or
	// running worker gets worker.stopping then worker.stopped, a stopping
	// one worker.stopped; both carry {"reason"}. stopped=false (nothing
	// written) when the worker had already stopped or failed.
	StopWorker(ctx context.Context, workerID, reason string, trace TraceContext) (w Worker, stopped bool, err error)
	// LoadWorkerLog reads a worker and all its events (seq <= LatestSeq)
	// from one consistent snapshot: what a summary is built from.
	LoadWorkerLog(ctx context.Context, workerID string) (Worker, []WorkerEvent, error)
	// ListWorkerIDs pages through every worker id in order (reproject --all).
	ListWorkerIDs(ctx context.Context, afterWorkerID string, limit int) ([]string, error)
}

// DefaultStopReason is recorded when StopWorker gets an empty reason.
const DefaultStopReason = "stop_requested"

// WorkerTransition validates an event reported by (or for) a worker in
// status and returns the status after it. Anything the worker itself sends
// proves it is alive, so it moves starting to running; worker.stopping,
// worker.stopped and worker.failed drive the lifecycle; a stopped or failed
// worker accepts nothing (it must be created again to reattach). Errors wrap
// ErrIllegalTransition.
func WorkerTransition(status, eventType string) (string, error) {
	if !strings.HasPrefix(eventType, WorkerEventPrefix) || len(eventType) == len(WorkerEventPrefix) {
		return status, fmt.Errorf("%w: event type %q must start with %q", ErrIllegalTransition, eventType, WorkerEventPrefix)
	}
	switch status {
	case WorkerStarting, WorkerRunning, WorkerStopping:
	case WorkerStopped, WorkerFailed:
		return status, fmt.Errorf("%w: worker is %s; %s not accepted", ErrIllegalTransition, status, eventType)
	default:
		return status, fmt.Errorf("%w: unknown worker status %q", ErrIllegalTransition, status)
	}
	switch eventType {
	case WorkerEventStarted:
		return status, fmt.Errorf("%w: %s is written by create only", ErrIllegalTransition, eventType)
	case WorkerEventStopping:
		if status == WorkerStopping {
			return status, fmt.Errorf("%w: worker is already stopping", ErrIllegalTransition)
		}
		return WorkerStopping, nil
	case WorkerEventStopped:
		return WorkerStopped, nil
	case WorkerEventFailed:
		return WorkerFailed, nil
	}
	if status == WorkerStarting {
		return WorkerRunning, nil
	}
	return status, nil
}
