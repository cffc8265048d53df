package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Projection names as stored in checkpoints, drift incidents and replay
// results (the replay scope uses the same values). The metric label
// "projection" uses telemetry.ProjectionRunSummary and friends instead.
const (
	ProjectionRun         = "run"
	ProjectionCodexWorker = "codex_worker"
)

// Sync topics (DESIGN section 8).
const (
	TopicRunSummaries         = "runtime.run_summaries"
	TopicCodexWorkerSummaries = "runtime.codex_worker_summaries"
	TopicCodexWorkerEvents    = "runtime.codex_worker_events"
)

// Replay results.
const (
	ReplayOK    = "ok"
	ReplayError = "error"
)

// ProjectionDocument is the current read model of one entity in a topic.
type ProjectionDocument struct {
	Topic             string          `json:"topic"`
	DocKey            string          `json:"doc_key"`
	OwnerSub          string          `json:"owner_sub"`
	ProjectionVersion string          `json:"projection_version"`
	SourceSeq         int64           `json:"runtime_source_seq"` // doc_version
	SummaryHash       string          `json:"summary_hash"`
	Payload           json.RawMessage `json:"payload"`
	UpdatedAt         time.Time       `json:"updated_at"`
}

// StreamRow is one entry of a topic's replay journal. Watermark is gap-free
// per topic because it is allocated in the transaction that inserts the row.
type StreamRow struct {
	Topic       string          `json:"topic"`
	Watermark   int64           `json:"watermark"`
	DocKey      string          `json:"doc_key"`
	OwnerSub    string          `json:"owner_sub"`
	DocVersion  int64           `json:"doc_version"`
	Payload     json.RawMessage `json:"payload"`
	PayloadHash string          `json:"payload_hash"` // "sha256:<hex>" of the canonical payload
	CreatedAt   time.Time       `json:"created_at"`
}

// Checkpoint is how far a projection of one entity got.
type Checkpoint struct {
	Projection        string    `json:"projection"`
	EntityID          string    `json:"entity_id"`
	DocKey            string    `json:"document_id"`
	LastSeq           int64     `json:"last_seq"`
	SummaryHash       string    `json:"summary_hash"`
	ProjectionVersion string    `json:"projection_version"`
	UpdatedAt         time.Time `json:"updated_at"`
}

// ProjectionWriteInput writes one projected document. The driver, in ONE
// transaction: checks the precondition on the checkpoint, upserts the
// document, appends a stream row with the topic's next watermark, and
// upserts the checkpoint (never deleting it).
type ProjectionWriteInput struct {
	Projection string // ProjectionRun or ProjectionCodexWorker
	EntityID   string
	Topic      string
	DocKey     string
	OwnerSub   string
	Doc        json.RawMessage // the summary; stored canonical
	Hash       string          // summary_hash (64 hex)
	Version    string          // projection_version
	SourceSeq  int64           // runtime_source.seq

	// ExpectSeq is the checkpoint seq the writer decided from; -1 means "no
	// checkpoint". A different stored checkpoint gives ErrConflict, so that
	// two projectors (replicas) deciding from the same state cannot both
	// win and a slow one cannot move a checkpoint backwards.
	ExpectSeq int64
	// Force skips the precondition (reprojection replaces any checkpoint,
	// including a corrupt one that is ahead of the log).
	Force bool
}

// ProjectionCandidate is an entity whose checkpoint does not match its log.
type ProjectionCandidate struct {
	EntityID      string
	LatestSeq     int64
	HasCheckpoint bool
	CheckpointSeq int64
	UpdatedAt     time.Time // the run's; with EntityID, the paging key
}

// CandidateQuery selects runs needing projection: no checkpoint, a
// checkpoint seq different from runs.latest_seq, or another version. Rows
// come in (updated_at, run_id) order after the key (AfterUpdatedAt,
// AfterRunID); a zero key starts at the beginning, and a key with an empty
// run id selects runs updated at or after AfterUpdatedAt.
type CandidateQuery struct {
	Version        string
	AfterUpdatedAt time.Time
	AfterRunID     string
	Limit          int // <= 0 means 100
}

// DriftIncident is one drift finding (projector or parity auditor).
type DriftIncident struct {
	ID          int64           `json:"id"`
	Projection  string          `json:"projection"`
	EntityID    string          `json:"entity_id"`
	ReasonClass string          `json:"reason_class"`
	Detail      json.RawMessage `json:"detail"`
	// Origin names the recording process ("serve:<host>:<pid>", "cli:<pid>").
	Origin string `json:"origin"`
	// Counted is true when the recording process already turned the row
	// into its metric; otherwise a serving process claims and counts it
	// exactly once (ClaimUncountedDrift).
	Counted   bool      `json:"counted"`
	CreatedAt time.Time `json:"created_at"`
}

// ReplayResult is the outcome of reprojecting one entity.
type ReplayResult struct {
	ID        int64         `json:"id"`
	Scope     string        `json:"scope"` // ProjectionRun or ProjectionCodexWorker
	EntityID  string        `json:"entity_id"`
	Result    string        `json:"result"` // ReplayOK or ReplayError
	Error     string        `json:"error,omitempty"`
	Duration  time.Duration `json:"duration_ns"`
	Origin    string        `json:"origin"`
	Counted   bool          `json:"counted"`
	CreatedAt time.Time     `json:"created_at"`
}

// DriftQuery filters ListDrift. Rows come newest first unless AfterID > 0,
// in which case they come in id order after it (for tailing).
type DriftQuery struct {
	AfterID     int64
	ReasonClass string // "" = any
	EntityID    string // "" = any
	Limit       int    // <= 0 means 100
}

// RunLog is a run, its retained events with seq <= LatestSeq and its
// checkpoint of one projection (nil: none), read in one snapshot. Err is
// this run's error (ErrNotFound for an unknown run); the others are unset
// then.
type RunLog struct {
	Checkpoint *Checkpoint
	Run        Run
	Events     []Event
	// Elided, when above 0, says the first Elided events above the run's
	// retention floor (seq RetentionFloorSeq+1 ... RetentionFloorSeq+Elided)
	// are all present and were counted rather than read: Events holds the
	// ones after them. A reader may elide only a log with no gap and no
	// event at or below the floor, and the drivers' batch reads elide only
	// logs of more than ElideLogsAbove events above the floor.
	Elided int64
	Err    error
}

// ElideLogsAbove is the shortest log (events above the retention floor)
// that the projector's batch reads count rather than read (RunLog.Elided):
// a few events without their payloads cost less to read than to count.
const ElideLogsAbove = 16

// ProjectionStore is the projection contract, implemented by both drivers'
// *Store beside store.Store.
type ProjectionStore interface {
	// LoadRunLog reads a run and its retained events with seq <=
	// run.LatestSeq from one consistent snapshot.
	LoadRunLog(ctx context.Context, runID string) (Run, []Event, error)

	// WriteProjection writes document, stream row and checkpoint in one
	// transaction and returns the stream row's watermark.
	WriteProjection(ctx context.Context, in ProjectionWriteInput) (watermark int64, err error)
	// GetCheckpoint returns ErrNotFound when the entity has none.
	GetCheckpoint(ctx context.Context, projection, entityID string) (Checkpoint, error)
	// ListCheckpoints returns the most recently updated checkpoints first.
	ListCheckpoints(ctx context.Context, projection string, limit int) ([]Checkpoint, error)
	// GetDocument returns ErrNotFound when the document does not exist.
	GetDocument(ctx context.Context, topic, docKey string) (ProjectionDocument, error)
	// ReadStream returns up to limit rows with watermark > after, in order.
	ReadStream(ctx context.Context, topic string, afterWatermark int64, limit int) ([]StreamRow, error)

	// ProjectionCandidates lists runs whose checkpoint is missing, at
	// another seq or at another version, oldest update first.
	ProjectionCandidates(ctx context.Context, q CandidateQuery) ([]ProjectionCandidate, error)
	// ListRunIDs pages through every run id in order (reproject --all).
	ListRunIDs(ctx context.Context, afterRunID string, limit int) ([]string, error)

	RecordDrift(ctx context.Context, d DriftIncident) (DriftIncident, error)
	ListDrift(ctx context.Context, q DriftQuery) ([]DriftIncident, error)
	// ClaimUncountedDrift marks up to limit uncounted rows counted and
	// returns them; concurrent claimers (replicas) never get the same row.
	ClaimUncountedDrift(ctx context.Context, limit int) ([]DriftIncident, error)

	RecordReplay(ctx context.Context, r ReplayResult) (ReplayResult, error)
	// ListReplays returns up to limit rows (<= 0 means 100): with afterID > 0
	// those with id > afterID in id order (tailing), with afterID 0 the
	// latest, newest first.
	ListReplays(ctx context.Context, afterID int64, limit int) ([]ReplayResult, error)
	ClaimUncountedReplays(ctx context.Context, limit int) ([]ReplayResult, error)
}

// Check validates a write's fields; drivers add their own storage limits.
func (in ProjectionWriteInput) Check() error {
	switch {
	case in.Projection != ProjectionRun && in.Projection != ProjectionCodexWorker:
		return fmt.Errorf("projection must be run or codex_worker, got %q", in.Projection)
	case in.EntityID == "":
		return errors.New("entity_id is required")
	case in.Topic == "":
		return errors.New("topic is required")
	case in.DocKey == "":
		return errors.New("doc_key is required")
	case in.Version == "":
		return errors.New("projection_version is required")
	case in.SourceSeq < 0:
		return fmt.Errorf("runtime_source.seq must be >= 0, got %d", in.SourceSeq)
	case len(in.Hash) != 64:
		return fmt.Errorf("summary_hash must be 64 hex characters, got %d", len(in.Hash))
	}
	return nil
}
