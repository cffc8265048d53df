package projection

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Kinds of codex worker documents.
const (
	KindCodexWorkerSummary = "codex_worker_summary"
	KindCodexWorkerEvent   = "codex_worker_event"
)

// WorkerDocKey is the document id of a codex worker summary.
func WorkerDocKey(workerID string) string { return "runtime/codex_worker_summary:" + workerID }

// WorkerSummary is the codex_worker_summary document (fields of the
// original, see reference/original-khala-sync.md section 1). Absent values
// are JSON null; metadata is an object ({} when none was given). Fields in
// the byte order of their JSON names, as RunSummary's.
type WorkerSummary struct {
	Adapter           *string         `json:"adapter"`
	CodexHomeRef      *string         `json:"codex_home_ref"`
	DocumentID        string          `json:"document_id"`
	EventCount        int64           `json:"event_count"`
	Kind              string          `json:"kind"`
	LastHeartbeatAt   *string         `json:"last_heartbeat_at"`
	LatestEventAt     *string         `json:"latest_event_at"`
	LatestEventType   *string         `json:"latest_event_type"`
	LatestSeq         int64           `json:"latest_seq"`
	Metadata          json.RawMessage `json:"metadata"`
	OwnerGuestScope   *string         `json:"owner_guest_scope"`
	OwnerUserID       *string         `json:"owner_user_id"`
	ProjectedAt       string          `json:"projected_at"`
	ProjectionVersion string          `json:"projection_version"`
	RuntimeSource     RuntimeSource   `json:"runtime_source"`
	StartedAt         string          `json:"started_at"`
	Status            string          `json:"status"`
	StoppedAt         *string         `json:"stopped_at"`
	UpdatedAt         string          `json:"updated_at"`
	WorkerID          string          `json:"worker_id"`
	WorkspaceRef      *string         `json:"workspace_ref"`
}

// BuildWorkerSummary rebuilds a worker's summary from its row and its events
// (seq order, seq <= w.LatestSeq), as LoadWorkerLog reads them in one
// snapshot. Every change of a worker row appends an event in the same
// transaction, so the summary (and its hash) is a function of the seq.
// updated_at is the last event's time, derived from the log as for runs.
// Worker logs are never pruned; a hole is reported as a gap.
func BuildWorkerSummary(w store.Worker, events []store.WorkerEvent, version string, now time.Time) (WorkerSummary, []Gap) {
	s := WorkerSummary{
		DocumentID:        WorkerDocKey(w.WorkerID),
		Kind:              KindCodexWorkerSummary,
		WorkerID:          w.WorkerID,
		Status:            w.Status,
		WorkspaceRef:      strPtr(w.WorkspaceRef),
		CodexHomeRef:      strPtr(w.CodexHomeRef),
		Adapter:           strPtr(w.Adapter),
		Metadata:          json.RawMessage(`{}`),
		LatestSeq:         w.LatestSeq,
		EventCount:        int64(len(events)),
		StartedAt:         isoTime(w.StartedAt),
		StoppedAt:         isoPtr(w.StoppedAt),
		LastHeartbeatAt:   isoPtr(w.LastHeartbeatAt),
		UpdatedAt:         isoTime(w.UpdatedAt),
		RuntimeSource:     RuntimeSource{Entity: store.ProjectionCodexWorker, WorkerID: w.WorkerID, Seq: w.LatestSeq},
		ProjectionVersion: version,
		ProjectedAt:       isoTime(now),
	}
	if m := bytes.TrimSpace(w.Metadata); len(m) > 0 && m[0] == '{' {
		s.Metadata = m
	}
	switch kind, id, _ := strings.Cut(w.OwnerSub, ":"); kind {
	case "user":
		s.OwnerUserID = strPtr(id)
	case "guest":
		s.OwnerGuestScope = strPtr(id)
	}
	var gaps []Gap
	expect := int64(1)
	for _, e := range events {
		if e.Seq != expect {
			gaps = append(gaps, Gap{ExpectedSeq: expect, LastSeen: expect - 1, IncomingSeq: e.Seq})
		}
		expect = e.Seq + 1
	}
	if expect <= w.LatestSeq {
		gaps = append(gaps, Gap{ExpectedSeq: expect, LastSeen: expect - 1})
	}
	if n := len(events); n > 0 && events[n-1].Seq == w.LatestSeq {
		last := events[n-1]
		s.LatestEventType = strPtr(last.EventType)
		at := isoTime(last.CreatedAt)
		s.LatestEventAt, s.UpdatedAt = &at, at
	}
	return s, gaps
}

// encodeWorkerSummary returns the summary's canonical JSON and summary_hash.
func encodeWorkerSummary(s WorkerSummary) (json.RawMessage, string, error) {
	return encodeDoc(s, s.DocumentID)
}

// WorkerEventDocument is one worker event as a document of topic
// runtime.codex_worker_events. Like the original's lane it carries both the
// snake_case and the camelCase keys. It has no projected_at: an event
// document never changes, so a rebuild is byte for byte the same. Fields in
// the byte order of their JSON names, as RunSummary's.
type WorkerEventDocument struct {
	DocumentID        string          `json:"document_id"`
	EventTypeCamel    string          `json:"eventType"`
	EventType         string          `json:"event_type"`
	Kind              string          `json:"kind"`
	OccurredAtCamel   string          `json:"occurredAt"`
	OccurredAt        string          `json:"occurred_at"`
	Payload           json.RawMessage `json:"payload"`
	ProjectionVersion string          `json:"projection_version"`
	RuntimeSource     RuntimeSource   `json:"runtime_source"`
	Seq               int64           `json:"seq"`
	WorkerIDCamel     string          `json:"workerId"`
	WorkerID          string          `json:"worker_id"`
}

// BuildWorkerEventDocument renders one worker event.
func BuildWorkerEventDocument(e store.WorkerEvent, version string) WorkerEventDocument {
	payload := bytes.TrimSpace(e.Payload)
	if len(payload) == 0 {
		payload = json.RawMessage(`{}`)
	}
	at := isoTime(e.CreatedAt)
	return WorkerEventDocument{
		DocumentID: store.WorkerEventDocKey(e.WorkerID, e.Seq), Kind: KindCodexWorkerEvent,
		WorkerID: e.WorkerID, WorkerIDCamel: e.WorkerID, Seq: e.Seq,
		EventType: e.EventType, EventTypeCamel: e.EventType, Payload: payload,
		OccurredAt: at, OccurredAtCamel: at,
		RuntimeSource:     RuntimeSource{Entity: store.ProjectionCodexWorker, WorkerID: e.WorkerID, Seq: e.Seq},
		ProjectionVersion: version,
	}
}
