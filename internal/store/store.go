// Package store declares the durable storage contract of oaruntime. Every
// driver (sqlite, postgres) implements Store and passes the one conformance
// suite in storetest. All ordering, hashing and state-machine checks of an
// event append happen inside the driver's transaction so that they hold under
// concurrent appends from many goroutines and many processes.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors. Drivers wrap them with context; callers test with errors.Is.
var (
	ErrNotFound          = errors.New("not found")
	ErrConflict          = errors.New("conflict")           // same id, different content
	ErrSeqConflict       = errors.New("sequence conflict")  // expected_previous_seq mismatch
	ErrIllegalTransition = errors.New("illegal transition") // run state machine rejected the event
	ErrFenced            = errors.New("lease fencing token rejected")
	ErrLeaseHeld         = errors.New("lease held by another owner")
)

// Run statuses.
const (
	StatusCreated   = "created"
	StatusRunning   = "running"
	StatusCanceling = "canceling"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
)

// Terminal reports whether status is one of the terminal statuses.
func Terminal(status string) bool {
	return status == StatusSucceeded || status == StatusFailed || status == StatusCanceled
}

// Run is one agent run. JSON-typed fields hold the caller's documents verbatim
// (canonical JSON as stored).
type Run struct {
	RunID     string `json:"run_id"`
	ThreadID  string `json:"thread_id"`
	OwnerSub  string `json:"owner"` // principal from signed claims: "user:<id>" or "guest:<scope>"
	Status    string `json:"status"`
	LatestSeq int64  `json:"latest_seq"`

	Provider      json.RawMessage `json:"provider,omitempty"`
	Tools         json.RawMessage `json:"tools,omitempty"`
	Authorization json.RawMessage `json:"authorization,omitempty"`
	OutputSchema  json.RawMessage `json:"output_schema,omitempty"`
	Metadata      json.RawMessage `json:"metadata,omitempty"`

	TerminalReasonClass string     `json:"terminal_reason_class,omitempty"`
	TerminalReason      string     `json:"terminal_reason,omitempty"`
	TerminalAt          *time.Time `json:"terminal_at,omitempty"`

	// LastProcessedFrameID is the row id (Frame.ID) of the last frame the
	// executor finished; frames with a larger id are pending work.
	LastProcessedFrameID int64 `json:"last_processed_frame_id"`
	// RetentionFloorSeq: events with seq <= floor were pruned. 0 = nothing pruned.
	RetentionFloorSeq int64 `json:"retention_floor_seq"`
	// RecoveryAttempts counts consecutive janitor reclaims without progress.
	RecoveryAttempts int        `json:"recovery_attempts"`
	LastRecoveryAt   *time.Time `json:"last_recovery_at,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// CreateRunInput creates a run. Idempotent on RunID: identical fields return
// the existing run with created=false; different fields give ErrConflict.
type CreateRunInput struct {
	RunID, ThreadID, OwnerSub                              string
	Provider, Tools, Authorization, OutputSchema, Metadata json.RawMessage
	// Input, when set, is the run's first input frame (its RunID is the
	// run's). A new run and its input are stored in one transaction: both
	// or neither. For an existing run (a create replay) the input is
	// inserted as InsertFrame would, replay and ErrConflict included.
	Input *InsertFrameInput
}

// TraceContext is stored with every event and frame so that the executor and
// the projector continue the trace of the request that caused the write.
type TraceContext struct {
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
}

// Event is one entry of a run's append-only, hash-chained log.
type Event struct {
	RunID          string          `json:"run_id"`
	Seq            int64           `json:"seq"`
	EventType      string          `json:"event_type"`
	Payload        json.RawMessage `json:"payload"`
	PrevHash       string          `json:"prev_hash,omitempty"` // "" for seq 1
	EventHash      string          `json:"event_hash"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	Trace          TraceContext    `json:"-"`
	CreatedAt      time.Time       `json:"created_at"`
}

// Fence is the lease holder's fencing token. A write carrying a Fence succeeds
// only while (owner, generation) still holds a live, unreclaimed lease.
type Fence struct {
	Owner      string
	Generation int64
}

// AppendInput appends one event. Payload must already be sanitized canonical
// JSON (runs.Canonical). The driver, in one transaction: replays a seen
// IdempotencyKey (before any seq check), checks the fence, checks
// ExpectedPreviousSeq, applies runs.Transition to the run status (rejecting
// illegal transitions with ErrIllegalTransition), assigns seq = latest+1,
// computes prev_hash/event_hash with runs.EventHash, updates the run row
// (status, terminal fields) and, when ProcessedFrameID > 0, advances
// last_processed_frame_id to it. An event that makes the run terminal also
// releases its lease: a finished run needs no executor, and a lease left
// held would stay in every janitor scan. Then it notifies watchers after
// commit.
type AppendInput struct {
	RunID               string
	EventType           string
	Payload             json.RawMessage
	IdempotencyKey      string
	ExpectedPreviousSeq *int64
	Fence               *Fence
	ProcessedFrameID    int64
	Trace               TraceContext
}

// AppendResult is one event of AppendEvents; Replay as AppendEvent's.
type AppendResult struct {
	Event  Event
	Replay bool
}

// CheckSameRun is AppendEvents' input check, shared by the drivers.
func CheckSameRun(in []AppendInput) error {
	if len(in) == 0 {
		return errors.New("no events to append")
	}
	for _, x := range in[1:] {
		if x.RunID != in[0].RunID {
			return fmt.Errorf("events of runs %q and %q in one append: one run per call", in[0].RunID, x.RunID)
		}
	}
	return nil
}

// EventTypes names the events of one append call, for error messages
// ("run.delta+run.finished").
func EventTypes(in []AppendInput) string {
	names := make([]string, len(in))
	for i, x := range in {
		names[i] = strings.TrimSpace(x.EventType)
	}
	return strings.Join(names, "+")
}

// Frame is an input to a run (user message, cancel, finish, fail).
type Frame struct {
	ID          int64           `json:"id"` // row id, monotonically increasing per store
	RunID       string          `json:"run_id"`
	FrameID     string          `json:"frame_id"`
	Type        string          `json:"type"`
	Payload     json.RawMessage `json:"payload"`
	PayloadHash string          `json:"payload_hash"`
	Trace       TraceContext    `json:"-"`
	CreatedAt   time.Time       `json:"created_at"`
}

// InsertFrameInput inserts a frame. Idempotent on (RunID, FrameID): the same
// type and payload hash returns the stored frame with inserted=false; another
// type or payload gives ErrConflict. An unknown run gives ErrNotFound.
type InsertFrameInput struct {
	RunID, FrameID, Type string
	Payload              json.RawMessage // canonical JSON, stored unsanitized
	Trace                TraceContext
}

// Lease acquire results (label values of lease_operations_total{result}).
const (
	LeaseAcquired = "acquired"
	LeaseRenewed  = "renewed"
	LeaseHeld     = "held"
	LeaseStolen   = "stolen"
)

// Lease is a run's execution lease.
type Lease struct {
	RunID      string
	Owner      string
	Generation int64 // fencing token; incremented on every acquire or steal
	ExpiresAt  time.Time
}

// Fence returns the fencing token of l.
func (l Lease) Fence() *Fence { return &Fence{Owner: l.Owner, Generation: l.Generation} }

// LeaseGrant is a lease obtained by ClaimRunnable or AcquireLease.
type LeaseGrant struct {
	Lease  Lease
	Result string // LeaseAcquired, LeaseRenewed, LeaseStolen
	// Run and Next, when a driver's ClaimRunnable sets Run, are the run row
	// and its first pending frame (nil: none) as the claim read them, so
	// that the executor starts without reading them again. Drivers may
	// leave both nil; the executor then reads them itself.
	Run  *Run
	Next *Frame
}

// Reclaim is one janitor action on an expired lease.
type Reclaim struct {
	RunID    string
	Owner    string // the lost holder (for logs only)
	Attempts int    // consecutive reclaims without progress, after this one
	Outcome  string // ReclaimResumed or ReclaimExhausted
}

const (
	ReclaimResumed   = "resumed"
	ReclaimExhausted = "exhausted"
)

// Notice is a wake-up: something was written for RunID. Notices are hints;
// readers always re-read the store, so a lost notice only delays.
type Notice struct {
	Kind  string `json:"kind"` // NoticeEvent or NoticeFrame
	RunID string `json:"run_id"`
	Seq   int64  `json:"seq,omitempty"`
	// Leased: the write was made under a live lease (a fenced append, or
	// the input of a run created leased: CreateLeasedRun), so it cannot
	// have made the run claimable and claimers need not look.
	Leased bool `json:"leased,omitempty"`
}

const (
	NoticeEvent = "event"
	NoticeFrame = "frame"
)

// Store is the driver contract.
type Store interface {
	// Ping checks the database is reachable.
	Ping(ctx context.Context) error
	// Close releases resources.
	Close() error
	// Dialect is "sqlite" or "postgres".
	Dialect() string

	CreateRun(ctx context.Context, in CreateRunInput) (Run, bool, error)
	// CreateLeasedRun is CreateRun for a run whose input the caller's
	// executor will process at once: a new run with Input may be created
	// already leased to owner (generation 1, expiring after ttl) in the same
	// transaction, so that no claim is needed. When it was, grant.Lease is
	// set (Result LeaseAcquired) and grant.Next is the input frame; when it
	// was not (a replay, no Input, or a driver path that does not lease) the
	// lease is zero and the run is claimed as any other. grant.Run is the
	// run either way. The notice of a leased run's input says so
	// (Notice.Leased), so that claimers need not look for it.
	CreateLeasedRun(ctx context.Context, in CreateRunInput, owner string, ttl time.Duration) (grant LeaseGrant, created bool, err error)
	GetRun(ctx context.Context, runID string) (Run, error)

	InsertFrame(ctx context.Context, in InsertFrameInput) (Frame, bool, error)
	// NextFrame returns the first frame of runID with ID > afterID, or ErrNotFound.
	NextFrame(ctx context.Context, runID string, afterID int64) (Frame, error)

	// AppendEvent appends one event; replay=true when IdempotencyKey was seen
	// (the original event is returned) or when it is a same-status repeat of a
	// terminal run.finished (the existing run.finished is returned).
	AppendEvent(ctx context.Context, in AppendInput) (ev Event, replay bool, err error)
	// AppendEvents appends events to one run in order, in one transaction:
	// each exactly as AppendEvent would (replays included), and all of them
	// or none. Every input must name the same run.
	AppendEvents(ctx context.Context, in []AppendInput) ([]AppendResult, error)
	// ListEvents returns up to limit events with seq > afterSeq in seq order.
	ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]Event, error)
	// FindEventByType returns the latest event of the given type, or ErrNotFound.
	FindEventByType(ctx context.Context, runID, eventType string) (Event, error)
	// PruneEvents deletes events with seq <= throughSeq and raises the run's
	// retention floor; used by retention and by tests of stale cursors.
	PruneEvents(ctx context.Context, runID string, throughSeq int64) error

	// AcquireLease takes runID's lease for owner: acquired (no live holder),
	// renewed (owner already holds it), stolen (holder's lease had expired);
	// ErrLeaseHeld when another owner holds a live lease.
	AcquireLease(ctx context.Context, runID, owner string, ttl time.Duration) (LeaseGrant, error)
	// RenewLease extends a held lease; ErrFenced when it was lost.
	RenewLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)
	// ReleaseLease gives the lease up (no-op when it was lost).
	ReleaseLease(ctx context.Context, l Lease) error
	// ClaimRunnable leases up to limit non-terminal runs that have work
	// (pending frames, or status canceling) and no live lease (never leased,
	// released, or reclaimed by the janitor). PostgreSQL uses FOR UPDATE SKIP
	// LOCKED so that replicas never claim the same run.
	ClaimRunnable(ctx context.Context, owner string, ttl time.Duration, limit int) ([]LeaseGrant, error)
	// ReclaimExpired finds non-terminal runs whose lease expired before now,
	// appends run.executor_lost, counts consecutive reclaims without progress
	// and, above maxAttempts, appends run.finished{failed,
	// executor_recovery_exhausted}; the lease is marked reclaimed so that
	// ClaimRunnable can hand it to a live executor.
	ReclaimExpired(ctx context.Context, now time.Time, maxAttempts, limit int) ([]Reclaim, error)

	// Watch delivers notices until ctx ends. PostgreSQL: LISTEN/NOTIFY on a
	// dedicated connection, reconnecting; SQLite: an in-process broadcaster.
	Watch(ctx context.Context) (<-chan Notice, error)
	// ListenerUp reports whether the notification listener is connected.
	ListenerUp() bool

	// SchemaVersion is the applied migration version.
	SchemaVersion(ctx context.Context) (int64, error)
}
