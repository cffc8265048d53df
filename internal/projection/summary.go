// Package projection is the Khala projector: it rebuilds per-entity summary
// documents from the run event log, decides whether to write them (DESIGN
// section 7), writes them through a sink with a checkpoint that only advances
// when the write succeeded, detects drift, audits parity and reprojects.
package projection

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// DefaultVersion is the projection_version written when none is configured.
const DefaultVersion = "khala_summary_v1"

// KindRunSummary is the kind field of run summary documents.
const KindRunSummary = "run_summary"

// timeLayout is ISO-8601 with microseconds, as the original wrote times.
const timeLayout = "2006-01-02T15:04:05.000000Z"

func isoTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func isoPtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := isoTime(*t)
	return &s
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// RunDocKey is the document id of a run summary.
func RunDocKey(runID string) string { return "runtime/run_summary:" + runID }

// RuntimeSource says which log position a summary reflects: entity "run"
// with run_id, or "codex_worker" with worker_id.
//
// The fields of these structs are in the byte order of their JSON names, so
// that json.Marshal writes them canonically and canonicalizing a summary
// takes the fast path (TestDocumentFieldsInCanonicalOrder).
type RuntimeSource struct {
	Entity   string `json:"entity"`
	RunID    string `json:"run_id,omitempty"`
	Seq      int64  `json:"seq"`
	WorkerID string `json:"worker_id,omitempty"`
}

// RunSummary is the run_summary document (fields of the original, see
// reference/original-khala-sync.md section 1). Absent values are JSON null.
type RunSummary struct {
	DocumentID          string        `json:"document_id"`
	EventCount          int64         `json:"event_count"`
	Kind                string        `json:"kind"`
	LatestEventAt       *string       `json:"latest_event_at"`
	LatestEventType     *string       `json:"latest_event_type"`
	LatestSeq           int64         `json:"latest_seq"`
	OwnerGuestScope     *string       `json:"owner_guest_scope"`
	OwnerUserID         *string       `json:"owner_user_id"`
	ProjectedAt         string        `json:"projected_at"`
	ProjectionVersion   string        `json:"projection_version"`
	RunID               string        `json:"run_id"`
	RuntimeSource       RuntimeSource `json:"runtime_source"`
	Status              string        `json:"status"`
	TerminalAt          *string       `json:"terminal_at"`
	TerminalReason      *string       `json:"terminal_reason"`
	TerminalReasonClass *string       `json:"terminal_reason_class"`
	ThreadID            string        `json:"thread_id"`
	UpdatedAt           string        `json:"updated_at"`
}

// Gap is a hole in the retained event log found while rebuilding.
type Gap struct {
	ExpectedSeq int64 `json:"expected_next_seq"`
	LastSeen    int64 `json:"last_seen_seq"`
	IncomingSeq int64 `json:"incoming_seq"` // 0 when the tail is missing
}

// BuildRunSummary rebuilds a run's summary from its row and its retained
// events (seq order, seq <= run.LatestSeq). prev, when it reflects the same
// seq, supplies the latest event's type and time after retention pruned that
// event, so that a rebuild of an old run reproduces the stored hash.
//
// event_count is the retention floor plus the retained events: the number
// of events the run has had, which pruning does not change. updated_at is
// the last event's time (or the run's creation): derived from the log alone,
// so the hash of a seq never depends on unrelated run row updates.
func BuildRunSummary(run store.Run, events []store.Event, version string, prev *RunSummary, now time.Time) (RunSummary, []Gap) {
	return buildRunSummary(run, 0, events, version, prev, now)
}

// buildRunSummary is BuildRunSummary of a log read with its first elided
// events above the floor counted, not read (store.RunLog.Elided): the same
// summary and gaps as from the whole log.
func buildRunSummary(run store.Run, elided int64, events []store.Event, version string, prev *RunSummary, now time.Time) (RunSummary, []Gap) {
	s := RunSummary{
		DocumentID:        RunDocKey(run.RunID),
		Kind:              KindRunSummary,
		RunID:             run.RunID,
		ThreadID:          run.ThreadID,
		Status:            run.Status,
		LatestSeq:         run.LatestSeq,
		EventCount:        run.RetentionFloorSeq + elided + int64(len(events)),
		UpdatedAt:         isoTime(run.CreatedAt),
		ProjectionVersion: version,
		ProjectedAt:       isoTime(now),
	}
	switch kind, id, _ := strings.Cut(run.OwnerSub, ":"); kind {
	case "user":
		s.OwnerUserID = strPtr(id)
	case "guest":
		s.OwnerGuestScope = strPtr(id)
	}
	if store.Terminal(run.Status) {
		s.TerminalReasonClass = strPtr(run.TerminalReasonClass)
		s.TerminalReason = strPtr(run.TerminalReason)
		s.TerminalAt = isoPtr(run.TerminalAt)
	}

	var gaps []Gap
	expect := run.RetentionFloorSeq + elided + 1
	for _, e := range events {
		if e.Seq != expect {
			gaps = append(gaps, Gap{ExpectedSeq: expect, LastSeen: expect - 1, IncomingSeq: e.Seq})
		}
		expect = e.Seq + 1
	}
	if expect <= run.LatestSeq {
		gaps = append(gaps, Gap{ExpectedSeq: expect, LastSeen: expect - 1})
	}

	if n := len(events); n > 0 && events[n-1].Seq == run.LatestSeq {
		last := events[n-1]
		s.LatestEventType = strPtr(last.EventType)
		at := isoTime(last.CreatedAt)
		s.LatestEventAt, s.UpdatedAt = &at, at
	} else if prev != nil && prev.LatestSeq == run.LatestSeq && run.LatestSeq > 0 {
		s.LatestEventType, s.LatestEventAt = prev.LatestEventType, prev.LatestEventAt
		if prev.LatestEventAt != nil {
			s.UpdatedAt = *prev.LatestEventAt
		}
	}
	s.RuntimeSource = RuntimeSource{Entity: "run", RunID: run.RunID, Seq: run.LatestSeq}
	return s, gaps
}

// SummaryHash is sha256 (64 hex) of the canonical JSON of a summary
// document without projected_at. The projector and the parity auditor both
// hash through this one function, from the JSON form, so a stored document
// and a rebuilt summary are compared the same way.
func SummaryHash(doc json.RawMessage) (string, error) {
	// The documents the runtime writes are canonical: the member can be
	// cut out without decoding. Anything else is decoded and re-encoded.
	if c, ok := runs.DropMember(doc, "projected_at"); ok {
		return runs.SHA256Hex(c), nil
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return "", fmt.Errorf("summary hash: %w", err)
	}
	if m == nil {
		return "", fmt.Errorf("summary hash: document is not an object")
	}
	delete(m, "projected_at")
	c, err := runs.Canonical(m)
	if err != nil {
		return "", fmt.Errorf("summary hash: %w", err)
	}
	return runs.SHA256Hex(c), nil
}

// encodeSummary returns the summary's canonical JSON and its summary_hash.
func encodeSummary(s RunSummary) (json.RawMessage, string, error) {
	return encodeDoc(s, s.DocumentID)
}

// encodeDoc returns a document's canonical JSON and its summary_hash.
func encodeDoc(v any, docKey string) (json.RawMessage, string, error) {
	doc, err := runs.Canonical(v)
	if err != nil {
		return nil, "", fmt.Errorf("encode %s: %w", docKey, err)
	}
	h, err := SummaryHash(doc)
	if err != nil {
		return nil, "", err
	}
	return doc, h, nil
}
