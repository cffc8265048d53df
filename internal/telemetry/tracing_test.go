package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestTracerProviderWithoutExporterStillHasIDs(t *testing.T) {
	tp, shutdown, err := NewTracerProvider(context.Background(), TracingConfig{ServiceName: "oaruntime"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(context.Background(), "op")
	sc := span.SpanContext()
	span.End()
	if !sc.IsValid() || !sc.IsSampled() {
		t.Errorf("span context %v: want valid and sampled", sc)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// collector is a fake OTLP/HTTP endpoint recording what it was sent.
type collector struct {
	mu    sync.Mutex
	paths []string
	types []string
	bytes int
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	c.paths = append(c.paths, r.Method+" "+r.URL.Path)
	c.types = append(c.types, r.Header.Get("Content-Type"))
	c.bytes += len(body)
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

func TestTracerProviderExportsOverOTLPHTTP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		endpoint func(srv string) string
		wantPath string
	}{
		{"base URL", func(s string) string { return s }, "POST /v1/traces"},
		{"base URL with trailing slash", func(s string) string { return s + "/" }, "POST /v1/traces"},
		{"base URL with a path prefix", func(s string) string { return s + "/otel" }, "POST /otel/v1/traces"},
		{"host:port without scheme", func(s string) string { return strings.TrimPrefix(s, "http://") }, "POST /v1/traces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &collector{}
			srv := httptest.NewServer(c)
			defer srv.Close()
			tp, shutdown, err := NewTracerProvider(context.Background(), TracingConfig{ServiceName: "oaruntime", OTLPEndpoint: tc.endpoint(srv.URL)})
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("t").Start(context.Background(), "exported")
			span.End()
			if err := shutdown(context.Background()); err != nil {
				t.Fatalf("shutdown (flush): %v", err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			if !slices.Contains(c.paths, tc.wantPath) {
				t.Errorf("collector got %v, want %s", c.paths, tc.wantPath)
			}
			if len(c.types) == 0 || c.types[0] != "application/x-protobuf" || c.bytes == 0 {
				t.Errorf("content types %v, %d bytes: want a protobuf export", c.types, c.bytes)
			}
		})
	}
}

func TestTracerProviderRejectsBadEndpoint(t *testing.T) {
	for _, ep := range []string{"ftp://collector:4318", "http://", "http://%zz"} {
		if _, _, err := NewTracerProvider(context.Background(), TracingConfig{OTLPEndpoint: ep}); err == nil {
			t.Errorf("endpoint %q accepted", ep)
		}
	}
}

func TestInjectAndContextWithRemoteContinueTheTrace(t *testing.T) {
	tp, shutdown, err := NewTracerProvider(context.Background(), TracingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	rec := tracetest.NewSpanRecorder()
	tp.RegisterSpanProcessor(rec)

	// The request side: a span with a vendor tracestate, stored as strings.
	ts, err := trace.ParseTraceState("vendor=abc")
	if err != nil {
		t.Fatal(err)
	}
	reqCtx, reqSpan := tp.Tracer("http").Start(context.Background(), "request")
	reqCtx = trace.ContextWithSpanContext(reqCtx, reqSpan.SpanContext().WithTraceState(ts))
	tp1, ts1 := Inject(reqCtx)
	reqSpan.End()
	if !strings.HasPrefix(tp1, "00-"+reqSpan.SpanContext().TraceID().String()+"-"+reqSpan.SpanContext().SpanID().String()) {
		t.Fatalf("traceparent %q does not carry the request span", tp1)
	}
	if ts1 != "vendor=abc" {
		t.Errorf("tracestate %q, want vendor=abc", ts1)
	}

	// The executor side: a fresh context continues from the stored strings.
	execCtx := ContextWithRemote(context.Background(), tp1, ts1)
	_, child := tp.Tracer("executor").Start(execCtx, "run_once")
	child.End()

	spans := rec.Ended()
	var got bool
	for _, s := range spans {
		if s.Name() != "run_once" {
			continue
		}
		got = true
		if s.SpanContext().TraceID() != reqSpan.SpanContext().TraceID() {
			t.Errorf("run_once trace %s, want %s", s.SpanContext().TraceID(), reqSpan.SpanContext().TraceID())
		}
		if s.Parent().SpanID() != reqSpan.SpanContext().SpanID() || !s.Parent().IsRemote() {
			t.Errorf("run_once parent %v, want the request span as remote parent", s.Parent())
		}
		if s.SpanContext().TraceState().Get("vendor") != "abc" {
			t.Errorf("tracestate not continued: %v", s.SpanContext().TraceState())
		}
	}
	if !got {
		t.Fatal("run_once span not recorded")
	}
}

func TestContextWithRemoteIgnoresBadInput(t *testing.T) {
	for _, tp := range []string{"", "garbage", "00-00000000000000000000000000000000-0000000000000000-01", "00-abc-def-01"} {
		ctx := ContextWithRemote(context.Background(), tp, "vendor=x")
		if trace.SpanContextFromContext(ctx).IsValid() {
			t.Errorf("traceparent %q produced a valid span context", tp)
		}
	}
	if a, b := Inject(context.Background()); a != "" || b != "" {
		t.Errorf("Inject without a span = %q, %q", a, b)
	}
}

func TestPropagatorIsW3CAndBaggage(t *testing.T) {
	fields := Propagator().Fields()
	for _, f := range []string{"traceparent", "tracestate", "baggage"} {
		if !slices.Contains(fields, f) {
			t.Errorf("propagator fields %v lack %s", fields, f)
		}
	}
	h := http.Header{}
	h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Set("baggage", "tenant=acme")
	ctx := Propagator().Extract(context.Background(), propagation.HeaderCarrier(h))
	if got := trace.SpanContextFromContext(ctx).TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("extracted trace id %s", got)
	}
	out := http.Header{}
	Propagator().Inject(ctx, propagation.HeaderCarrier(out))
	if out.Get("traceparent") != h.Get("traceparent") || out.Get("baggage") != "tenant=acme" {
		t.Errorf("re-injected headers %v", out)
	}
}
