package projection

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Sink failure classes (reason_class of write_failures_total).
const (
	ClassKhalaError    = "khala_error"    // the endpoint answered 2xx with an error status or an unreadable body
	ClassHTTP5xx       = "http_5xx"       // the endpoint answered 5xx
	ClassHTTP4xx       = "http_4xx"       // any other non-2xx answer
	ClassAuthError     = "auth_error"     // 401 or 403: admin key missing, wrong or revoked
	ClassTimeout       = "timeout"        // no answer within the sink timeout
	ClassNetworkError  = "network_error"  // connection refused, reset, DNS
	ClassSinkException = "sink_exception" // anything else, including injected faults and local write errors
)

// SinkError is a classified sink failure.
type SinkError struct {
	Class string
	Err   error
	// Injected marks a fault from SetFault: it is counted like a real
	// failure but does not make the projector think the sink is down.
	Injected bool
}

func (e *SinkError) Error() string { return e.Class + ": " + e.Err.Error() }
func (e *SinkError) Unwrap() error { return e.Err }

// classOf returns the failure class of a sink error.
func classOf(err error) string {
	var se *SinkError
	if errors.As(err, &se) {
		return se.Class
	}
	return ClassSinkException
}

// Sink writes one projected document. It returns the watermark of the local
// stream row. A store.ErrConflict means another writer moved the checkpoint
// first (not a failure); any other error is a failed write and the
// checkpoint did not advance.
type Sink interface {
	Name() string
	Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error)
}

// BatchSink is a Sink that can write several documents in one call (one
// transaction where the store allows it). Results are per input, in order,
// with the meaning of Write's.
type BatchSink interface {
	Sink
	WriteBatch(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error)
}

// BatchWriter is a store that writes several projections at once.
type BatchWriter interface {
	WriteProjections(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error)
}

// BuiltinSink writes document, stream row and checkpoint in one store
// transaction (the default, OA_KHALA_SINK=builtin).
type BuiltinSink struct {
	Store store.ProjectionStore
}

// Name implements Sink.
func (BuiltinSink) Name() string { return "builtin" }

// Write implements Sink.
func (b BuiltinSink) Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	wm, err := b.Store.WriteProjection(ctx, in)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return 0, &SinkError{Class: ClassSinkException, Err: err}
	}
	return wm, err
}

// WriteBatch implements BatchSink: one store call when the store writes
// batches, one per document otherwise.
func (b BuiltinSink) WriteBatch(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error) {
	wms, errs := make([]int64, len(ins)), make([]error, len(ins))
	if bw, ok := b.Store.(BatchWriter); ok {
		wms, errs = bw.WriteProjections(ctx, ins)
	} else {
		for i, in := range ins {
			wms[i], errs[i] = b.Store.WriteProjection(ctx, in)
		}
	}
	for i, err := range errs {
		if err != nil && !errors.Is(err, store.ErrConflict) {
			wms[i], errs[i] = 0, &SinkError{Class: ClassSinkException, Err: err}
		}
	}
	return wms, errs
}

// MutationPath is where the HTTP sink posts, relative to OA_KHALA_URL: the
// original HttpSink's Khala mutation endpoint, so an existing Khala
// deployment accepts our writes unchanged.
const MutationPath = "/api/mutation"

// Mutation function names, the "path" field of the request body.
const (
	MutationUpsertRunSummary         = "runtime:upsertRunSummary"
	MutationUpsertCodexWorkerSummary = "runtime:upsertCodexWorkerSummary"
)

// MutationRequest is the body POSTed to <OA_KHALA_URL>/api/mutation.
type MutationRequest struct {
	Path   string         `json:"path"`
	Format string         `json:"format"` // "khala_encoded_json"
	Args   []MutationArgs `json:"args"`
}

// MutationArgs is the single argument of an upsert mutation.
type MutationArgs struct {
	DocumentID  string          `json:"document_id"`
	Summary     json.RawMessage `json:"summary"`
	SummaryHash string          `json:"summary_hash"`
}

// MutationResponse is the endpoint's answer: status "success" or "error".
type MutationResponse struct {
	Status       string `json:"status"`
	ErrorMessage string `json:"errorMessage,omitempty"`
}

// HTTPSink posts each document to an external Khala and, only when Khala
// acknowledged it, records the same write locally (document mirror, stream
// row, checkpoint in one transaction), so the local checkpoint never runs
// ahead of the remote store and the parity auditor can compare hashes.
type HTTPSink struct {
	BaseURL  string // OA_KHALA_URL
	AdminKey string // OA_KHALA_ADMIN_KEY, sent as "authorization: Khala <key>"
	Client   *http.Client
	Timeout  time.Duration // per request; default 2.5 s as the original
	Store    store.ProjectionStore
}

// Name implements Sink.
func (*HTTPSink) Name() string { return "http" }

// Write implements Sink.
func (h *HTTPSink) Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	if err := h.post(ctx, in); err != nil {
		return 0, err
	}
	wm, err := h.Store.WriteProjection(ctx, in)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return 0, &SinkError{Class: ClassSinkException, Err: fmt.Errorf("record acknowledged write locally: %w", err)}
	}
	return wm, err
}

func (h *HTTPSink) post(ctx context.Context, in store.ProjectionWriteInput) error {
	if h.BaseURL == "" {
		return &SinkError{Class: ClassSinkException, Err: errors.New("OA_KHALA_URL is not set")}
	}
	path := MutationUpsertRunSummary
	if in.Projection == store.ProjectionCodexWorker {
		path = MutationUpsertCodexWorkerSummary
	}
	body, err := json.Marshal(MutationRequest{
		Path: path, Format: "khala_encoded_json",
		Args: []MutationArgs{{DocumentID: in.DocKey, Summary: in.Doc, SummaryHash: in.Hash}},
	})
	if err != nil {
		return &SinkError{Class: ClassSinkException, Err: err}
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = 2500 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(h.BaseURL, "/")+MutationPath, bytes.NewReader(body))
	if err != nil {
		return &SinkError{Class: ClassSinkException, Err: fmt.Errorf("build request: %w", err)}
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Khala "+h.AdminKey)
	client := h.Client
	if client == nil {
		client = &http.Client{}
	}
	resp, err := client.Do(req)
	if err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
			return &SinkError{Class: ClassTimeout, Err: err}
		case ctx.Err() != nil:
			return &SinkError{Class: ClassSinkException, Err: err}
		default:
			return &SinkError{Class: ClassNetworkError, Err: err}
		}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return &SinkError{Class: ClassTimeout, Err: err}
		}
		return &SinkError{Class: ClassNetworkError, Err: err}
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return &SinkError{Class: ClassAuthError, Err: fmt.Errorf("khala answered %d", resp.StatusCode)}
	case resp.StatusCode >= 500:
		return &SinkError{Class: ClassHTTP5xx, Err: fmt.Errorf("khala answered %d", resp.StatusCode)}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return &SinkError{Class: ClassHTTP4xx, Err: fmt.Errorf("khala answered %d", resp.StatusCode)}
	}
	var mr MutationResponse
	if err := json.Unmarshal(raw, &mr); err != nil {
		return &SinkError{Class: ClassKhalaError, Err: fmt.Errorf("invalid json answer: %w", err)}
	}
	switch mr.Status {
	case "success":
		return nil
	case "error":
		return &SinkError{Class: ClassKhalaError, Err: fmt.Errorf("khala error: %s", mr.ErrorMessage)}
	default:
		return &SinkError{Class: ClassKhalaError, Err: fmt.Errorf("invalid answer status %q", mr.Status)}
	}
}
