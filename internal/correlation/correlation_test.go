// Package correlation_test proves the runbook's "End-to-end request
// correlation walkthrough" (docs/OPERATIONS_ALERTING.md) against a real
// node: one request carrying traceparent, tracestate and x-request-id is
// followed through the HTTP layer, the executor and the projector, in the
// exported traces and in the JSON logs, and never shows up in a metric
// label.
package correlation_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// The walkthrough's identifiers (docs/OPERATIONS_ALERTING.md, step 1).
const (
	frameTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	frameParentSpan  = "00f067aa0ba902b7"
	frameTraceparent = "00-" + frameTraceID + "-" + frameParentSpan + "-01"
	frameTracestate  = "congo=t61rcWkgMzE"
	frameRequestID   = "walkthrough-1"

	createTraceID     = "0af7651916cd43dd8448eb211c80319c"
	createParentSpan  = "b7ad6b7169203331"
	createTraceparent = "00-" + createTraceID + "-" + createParentSpan + "-01"
	createRequestID   = "walkthrough-create-1"

	runID    = "corr-run-1"
	threadID = "corr-thread-1"
	frameID  = "f-walkthrough-1"
	sub      = "user:corr-1"
)

func TestRequestCorrelationWalkthrough(t *testing.T) {
	col := newCollector(t)
	logs := &logBuffer{}
	n := startNode(t, col.URL, logs)

	// Step 1: create the run and post the frame with the correlation headers.
	resp, body := n.call(t, http.MethodPost, "/internal/v1/runs", sub, map[string]string{
		"traceparent": createTraceparent, "x-request-id": createRequestID,
	}, map[string]any{"run_id": runID, "thread_id": threadID})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create run: %d %s", resp.StatusCode, body)
	}
	// Step 3: the response echoes x-request-id.
	if got := resp.Header.Get("x-request-id"); got != createRequestID {
		t.Errorf("create run: x-request-id = %q, want %q", got, createRequestID)
	}

	frame := map[string]any{"frame_id": frameID, "type": "user_message", "payload": map[string]any{
		"script": []any{
			map[string]any{"say": "hello"},
			map[string]any{"tool": "echo", "input": map[string]any{"text": "ping"}},
			map[string]any{"answer": "done"},
		},
	}}
	resp, body = n.call(t, http.MethodPost, "/internal/v1/runs/"+runID+"/frames", sub, map[string]string{
		"traceparent": frameTraceparent, "tracestate": frameTracestate, "x-request-id": frameRequestID,
	}, frame)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("post frame: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("x-request-id"); got != frameRequestID {
		t.Errorf("post frame: x-request-id = %q, want %q", got, frameRequestID)
	}

	latest := waitSucceeded(t, n)
	waitProjected(t, n, latest)
	metricsText := scrapeMetrics(t, n)
	n.Stop() // flushes the batch span processor to the collector

	spans, colErrs := col.Spans()
	for _, e := range colErrs {
		t.Errorf("collector: %s", e)
	}
	if len(spans) == 0 {
		t.Fatal("the collector received no spans")
	}
	lines := logs.Lines(t)

	t.Run("http span continues the incoming traceparent", func(t *testing.T) {
		s, ok := findSpan(spans, func(s span) bool { return s.Name == "POST /internal/v1/runs/{run_id}/frames" })
		if !ok {
			t.Fatalf("no HTTP span for the frame request; spans:%s", names(spans))
		}
		if s.TraceID != frameTraceID {
			t.Errorf("HTTP span trace id = %s, want %s (from traceparent)", s.TraceID, frameTraceID)
		}
		if s.Parent != frameParentSpan {
			t.Errorf("HTTP span parent = %q, want the traceparent's span id %s", s.Parent, frameParentSpan)
		}
		if s.Kind != "SPAN_KIND_SERVER" {
			t.Errorf("HTTP span kind = %s, want SPAN_KIND_SERVER", s.Kind)
		}
		if got := s.Attrs["http.route"]; got != "/internal/v1/runs/{run_id}/frames" {
			t.Errorf("HTTP span http.route = %q", got)
		}
		if got := s.Attrs["request_id"]; got != frameRequestID {
			t.Errorf("HTTP span request_id attribute = %q, want %q", got, frameRequestID)
		}
		c, ok := findSpan(spans, func(s span) bool { return s.Name == "POST /internal/v1/runs" })
		if !ok {
			t.Fatalf("no HTTP span for the create request; spans:%s", names(spans))
		}
		if c.TraceID != createTraceID || c.Parent != createParentSpan {
			t.Errorf("create span trace=%s parent=%s, want trace=%s parent=%s", c.TraceID, c.Parent, createTraceID, createParentSpan)
		}
	})

	t.Run("executor spans join the frame's trace", func(t *testing.T) {
		for _, name := range []string{"run_once", "model.call", "tool.call"} {
			if _, ok := findSpan(spans, func(s span) bool { return s.Name == name && s.TraceID == frameTraceID }); !ok {
				t.Errorf("no %q span in trace %s; spans:%s", name, frameTraceID, names(spans))
			}
		}
	})

	t.Run("projection write span joins the frame's trace", func(t *testing.T) {
		var writes []span
		for _, s := range spans {
			if s.Name == "khala.projection.write" {
				writes = append(writes, s)
			}
		}
		if len(writes) == 0 {
			t.Fatalf("no khala.projection.write span; spans:%s", names(spans))
		}
		// The write that projected the terminal state is the last one; it
		// must continue the trace of the frame that finished the run.
		if _, ok := findSpan(writes, func(s span) bool { return s.TraceID == frameTraceID }); !ok {
			t.Errorf("no projection write span in trace %s; writes:%s", frameTraceID, names(writes))
		}
		// Every projection write of an event belongs to the trace of the
		// request that caused the event: a write in a trace of its own
		// cannot be found from the request. (The write of a run without
		// events, seq 0, has no stored trace context to continue: creating
		// a run appends no event.)
		for _, w := range writes {
			if w.Attrs["seq"] == "0" {
				continue
			}
			if w.TraceID != frameTraceID {
				t.Errorf("projection write span in trace %s, which no request started (parent %q)", w.TraceID, w.Parent)
			}
		}
	})

	t.Run("request log line carries the ids", func(t *testing.T) {
		l, ok := findLine(lines, func(l map[string]any) bool {
			return str(l, "msg") == "http request" && str(l, "request_id") == frameRequestID
		})
		if !ok {
			t.Fatalf("no request log line with request_id %s", frameRequestID)
		}
		if str(l, "trace_id") != frameTraceID {
			t.Errorf("request log line trace_id = %q, want %q", str(l, "trace_id"), frameTraceID)
		}
		if str(l, "span_id") == "" || str(l, "span_id") == frameParentSpan {
			t.Errorf("request log line span_id = %q, want the server span's id", str(l, "span_id"))
		}
		if str(l, "route") != "/internal/v1/runs/{run_id}/frames" || str(l, "run_id") != runID {
			t.Errorf("request log line route=%q run_id=%q", str(l, "route"), str(l, "run_id"))
		}
		if got := bytes.Count([]byte(rawLine(l)), []byte(`"request_id"`)); got != 1 {
			t.Errorf("request log line has request_id %d times: %s", got, rawLine(l))
		}
	})

	t.Run("executor and projector log lines carry the ids", func(t *testing.T) {
		// Step 4: everything the action caused, by trace id, excluding the
		// HTTP request lines.
		var other []map[string]any
		for _, l := range lines {
			if str(l, "trace_id") == frameTraceID && str(l, "msg") != "http request" {
				other = append(other, l)
				if str(l, "request_id") != frameRequestID {
					t.Errorf("log line %q in trace %s has request_id %q, want %q", str(l, "msg"), frameTraceID, str(l, "request_id"), frameRequestID)
				}
			}
		}
		if len(other) == 0 {
			t.Fatalf("no executor or projector log line carries trace_id %s at log level info; all lines:\n%s", frameTraceID, dumpLines(lines))
		}
		hasSpan := func(l map[string]any, names ...string) bool {
			id := str(l, "span_id")
			for _, s := range spans {
				if s.SpanID == id && contains(names, s.Name) {
					return true
				}
			}
			return false
		}
		if _, ok := findLine(other, func(l map[string]any) bool {
			return hasSpan(l, "run_once", "frame user_message", "model.call", "tool.call")
		}); !ok {
			t.Errorf("no executor log line (span run_once/frame/model.call/tool.call) in trace %s; lines:\n%s", frameTraceID, dumpLines(other))
		}
		if _, ok := findLine(other, func(l map[string]any) bool { return hasSpan(l, "khala.projection.write") }); !ok {
			t.Errorf("no projector write log line (span khala.projection.write) in trace %s; lines:\n%s", frameTraceID, dumpLines(other))
		}
	})

	t.Run("no metric label carries an id", func(t *testing.T) {
		ids := []string{runID, threadID, frameID, sub, "corr-1", frameTraceID, frameParentSpan, createTraceID, createParentSpan,
			frameRequestID, createRequestID, frameTraceparent, createTraceparent, frameTracestate}
		for _, s := range spans {
			ids = append(ids, s.SpanID)
		}
		checkMetrics(t, metricsText, ids)
	})
}

// waitSucceeded polls the run until it succeeds and returns its latest seq.
func waitSucceeded(t *testing.T, n *node) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, body := n.call(t, http.MethodGet, "/internal/v1/runs/"+runID, sub, nil, nil)
		var out struct {
			Run struct {
				Status    string `json:"status"`
				LatestSeq int64  `json:"latest_seq"`
			} `json:"run"`
		}
		if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &out) == nil {
			switch out.Run.Status {
			case "succeeded":
				return out.Run.LatestSeq
			case "failed", "canceled":
				t.Fatalf("run ended %s: %s", out.Run.Status, body)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run did not succeed: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitProjected polls the operator checkpoint view until the projection has
// caught up with seq.
func waitProjected(t *testing.T, n *node, seq int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, body := n.call(t, http.MethodGet, "/internal/v1/projectors/checkpoints/"+runID, sub, nil, nil)
		var out struct {
			Checkpoint *struct {
				LastSeq int64 `json:"last_seq"`
			} `json:"checkpoint"`
		}
		if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &out) == nil && out.Checkpoint != nil && out.Checkpoint.LastSeq >= seq {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("projection did not reach seq %d: %d %s", seq, resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scrapeMetrics(t *testing.T, n *node) string {
	t.Helper()
	resp, body := n.get(t, "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	return string(body)
}

// checkMetrics parses the exposition and fails on a forbidden label key or
// on a label value that contains one of ids.
func checkMetrics(t *testing.T, text string, ids []string) {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	var httpSeen bool
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				if contains(telemetry.ForbiddenLabelKeys, lp.GetName()) {
					t.Errorf("%s has forbidden label key %s", name, lp.GetName())
				}
				for _, id := range ids {
					if id != "" && strings.Contains(lp.GetValue(), id) {
						t.Errorf("%s{%s=%q} carries the id %q", name, lp.GetName(), lp.GetValue(), id)
					}
				}
			}
			if name == telemetry.HTTPRequests && labelValue(m, "route") == "/internal/v1/runs/{run_id}/frames" && m.GetCounter().GetValue() >= 1 {
				httpSeen = true
			}
		}
	}
	// Guard against a vacuous pass: the request under test was counted,
	// by its pattern.
	if !httpSeen {
		t.Errorf("%s has no series for route /internal/v1/runs/{run_id}/frames", telemetry.HTTPRequests)
	}
}

func labelValue(m *dto.Metric, key string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == key {
			return lp.GetValue()
		}
	}
	return ""
}

func findSpan(spans []span, f func(span) bool) (span, bool) {
	for _, s := range spans {
		if f(s) {
			return s, true
		}
	}
	return span{}, false
}

func findLine(lines []map[string]any, f func(map[string]any) bool) (map[string]any, bool) {
	for _, l := range lines {
		if f(l) {
			return l, true
		}
	}
	return nil, false
}

func rawLine(l map[string]any) string {
	if s, ok := l["\x00raw"].(string); ok {
		return s
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func dumpLines(lines []map[string]any) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "  %s\n", rawLine(l))
	}
	return b.String()
}
