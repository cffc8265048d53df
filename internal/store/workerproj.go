package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// WorkerEventsCursorPrefix prefixes the entity id of a worker's event-lane
// cursor: a checkpoint row (projection ProjectionCodexWorker) beside the
// worker's summary checkpoint. The "/" cannot occur in a worker id accepted
// by the API (letters, digits, "-", "_", ".", ":"), so a cursor id never
// names a worker.
const WorkerEventsCursorPrefix = "codex_worker_events/"

// WorkerEventsCursorID is the checkpoint entity id of a worker's event cursor.
func WorkerEventsCursorID(workerID string) string { return WorkerEventsCursorPrefix + workerID }

// WorkerEventDocKey is the document id of one worker event in topic
// TopicCodexWorkerEvents (the original's runtime/codex_worker_event:<id>:<seq>).
func WorkerEventDocKey(workerID string, seq int64) string {
	return "runtime/codex_worker_event:" + workerID + ":" + strconv.FormatInt(seq, 10)
}

// WorkerProjectionCandidate is a worker whose summary checkpoint or event
// cursor does not match its log. CheckpointSeq and HasCheckpoint describe the
// summary checkpoint; EventsSeq is the event cursor (0 when none).
type WorkerProjectionCandidate struct {
	ProjectionCandidate
	EventsSeq int64
}

// WorkerEventDoc is one worker event rendered as a document of topic
// TopicCodexWorkerEvents; its doc key is WorkerEventDocKey(worker, Seq).
type WorkerEventDoc struct {
	Seq  int64
	Doc  json.RawMessage // stored canonical
	Hash string          // 64 hex
}

// WorkerEventsWriteInput appends worker events to TopicCodexWorkerEvents.
// The driver, in ONE transaction: checks the cursor precondition, inserts
// each event's document unless it already exists and, only for a document
// it inserted, a stream row with the topic's next watermark (so an event
// reaches the stream at most once even if a cursor was lost), then moves the
// cursor to the last event.
type WorkerEventsWriteInput struct {
	WorkerID string
	OwnerSub string
	Version  string // projection_version recorded on documents and cursor
	// ExpectSeq is the cursor seq the writer read (0 = no cursor); another
	// stored cursor gives ErrConflict. Events must then start at ExpectSeq+1.
	ExpectSeq int64
	// Force skips the precondition: reprojection replaces a corrupt cursor
	// (ahead of the log) by walking the log again from any seq.
	Force  bool
	Events []WorkerEventDoc // 1..MaxWorkerEventsPerWrite, consecutive seqs
}

// MaxWorkerEventsPerWrite bounds one WriteWorkerEvents transaction.
const MaxWorkerEventsPerWrite = 1000

// Validate checks the input both drivers accept.
func (in WorkerEventsWriteInput) Validate() error {
	switch {
	case in.WorkerID == "":
		return errors.New("worker_id is required")
	case in.Version == "":
		return errors.New("projection_version is required")
	case len(in.Events) == 0:
		return errors.New("events: at least one is required")
	case len(in.Events) > MaxWorkerEventsPerWrite:
		return fmt.Errorf("events: at most %d per write, got %d", MaxWorkerEventsPerWrite, len(in.Events))
	case in.ExpectSeq < 0:
		return fmt.Errorf("expect_seq must be >= 0, got %d", in.ExpectSeq)
	case !in.Force && in.Events[0].Seq != in.ExpectSeq+1:
		return fmt.Errorf("events: first seq %d does not follow the cursor %d", in.Events[0].Seq, in.ExpectSeq)
	}
	for i, e := range in.Events {
		switch {
		case e.Seq <= 0:
			return fmt.Errorf("events[%d].seq must be > 0, got %d", i, e.Seq)
		case i > 0 && e.Seq != in.Events[i-1].Seq+1:
			return fmt.Errorf("events[%d].seq %d does not follow %d", i, e.Seq, in.Events[i-1].Seq)
		case len(e.Hash) != 64:
			return fmt.Errorf("events[%d].hash must be 64 hex characters, got %d", i, len(e.Hash))
		case len(e.Doc) == 0:
			return fmt.Errorf("events[%d].doc is required", i)
		}
	}
	return nil
}

// WorkerEventsWriteResult reports what a WriteWorkerEvents appended.
type WorkerEventsWriteResult struct {
	Appended      int   // stream rows written (events whose document was new)
	LastWatermark int64 // of the last row appended; 0 when none
}

// WorkerProjectionStore is what the projector needs beyond ProjectionStore
// and WorkerStore to project codex workers; both drivers' *Store implement it.
type WorkerProjectionStore interface {
	// WorkerProjectionCandidates lists workers whose summary checkpoint is
	// missing, at another seq or another version, or whose event cursor is
	// not at the worker's latest seq, in (updated_at, worker_id) order after
	// the key (q.AfterUpdatedAt, q.AfterRunID = the worker id).
	WorkerProjectionCandidates(ctx context.Context, q CandidateQuery) ([]WorkerProjectionCandidate, error)
	// WriteWorkerEvents appends events to the event lane (see
	// WorkerEventsWriteInput).
	WriteWorkerEvents(ctx context.Context, in WorkerEventsWriteInput) (WorkerEventsWriteResult, error)
}
