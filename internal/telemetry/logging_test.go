package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func decodeLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func TestLoggerAddsCorrelationIDs(t *testing.T) {
	tp, shutdown, err := NewTracerProvider(context.Background(), TracingConfig{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	ctx, span := tp.Tracer("test").Start(WithRequestID(context.Background(), "req-123"), "op")
	defer span.End()
	traceID, spanID := span.SpanContext().TraceID().String(), span.SpanContext().SpanID().String()

	cases := []struct {
		name    string
		log     func(l *slog.Logger)
		want    map[string]any // top-level fields that must be present with these values
		absent  []string       // top-level fields that must be absent
		inGroup map[string]any // fields under group "g"
	}{
		{
			name: "context method",
			log:  func(l *slog.Logger) { l.InfoContext(ctx, "hello", "k", "v") },
			want: map[string]any{"msg": "hello", "k": "v", LogTraceID: traceID, LogSpanID: spanID, LogRequestID: "req-123"},
		},
		{
			name:   "no context",
			log:    func(l *slog.Logger) { l.Info("plain") },
			want:   map[string]any{"msg": "plain"},
			absent: []string{LogTraceID, LogSpanID, LogRequestID},
		},
		{
			name:   "request id only",
			log:    func(l *slog.Logger) { l.InfoContext(WithRequestID(context.Background(), "r-9"), "x") },
			want:   map[string]any{LogRequestID: "r-9"},
			absent: []string{LogTraceID, LogSpanID},
		},
		{
			name:    "ids stay top-level under a group",
			log:     func(l *slog.Logger) { l.With("a", 1).WithGroup("g").With("b", 2).WarnContext(ctx, "grouped", "c", 3) },
			want:    map[string]any{"a": float64(1), LogTraceID: traceID, LogSpanID: spanID, LogRequestID: "req-123", "level": "WARN"},
			inGroup: map[string]any{"b": float64(2), "c": float64(3)},
		},
		{
			name:    "group without context ids",
			log:     func(l *slog.Logger) { l.WithGroup("g").InfoContext(context.Background(), "m", "c", 3) },
			absent:  []string{LogTraceID},
			inGroup: map[string]any{"c": float64(3)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.log(NewLogger(&buf, slog.LevelInfo))
			recs := decodeLines(t, &buf)
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1: %s", len(recs), buf.String())
			}
			rec := recs[0]
			for k, v := range tc.want {
				if rec[k] != v {
					t.Errorf("%s = %v, want %v (record %v)", k, rec[k], v, rec)
				}
			}
			for _, k := range tc.absent {
				if _, ok := rec[k]; ok {
					t.Errorf("%s present: %v", k, rec)
				}
			}
			if tc.inGroup != nil {
				g, _ := rec["g"].(map[string]any)
				for k, v := range tc.inGroup {
					if g[k] != v {
						t.Errorf("g.%s = %v, want %v (record %v)", k, g[k], v, rec)
					}
				}
				if _, ok := g[LogTraceID]; ok {
					t.Errorf("trace_id nested in group: %v", rec)
				}
			}
		})
	}
}

func TestLoggerLevel(t *testing.T) {
	var buf bytes.Buffer
	l := NewLogger(&buf, slog.LevelWarn)
	l.InfoContext(context.Background(), "dropped")
	l.ErrorContext(context.Background(), "kept")
	recs := decodeLines(t, &buf)
	if len(recs) != 1 || recs[0]["msg"] != "kept" {
		t.Fatalf("records %v, want only the error", recs)
	}
}

func TestRequestIDContext(t *testing.T) {
	ctx := context.Background()
	if got := RequestID(ctx); got != "" {
		t.Errorf("RequestID(empty) = %q", got)
	}
	if got := WithRequestID(ctx, ""); got != ctx {
		t.Error("WithRequestID with an empty id changed the context")
	}
	ctx = WithRequestID(ctx, "a")
	inner := WithRequestID(ctx, "b")
	if RequestID(ctx) != "a" || RequestID(inner) != "b" {
		t.Errorf("got %q and %q, want a and b", RequestID(ctx), RequestID(inner))
	}
}
