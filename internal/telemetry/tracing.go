package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"path"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TracingConfig configures NewTracerProvider.
type TracingConfig struct {
	// ServiceName is the service.name resource attribute ("oaruntime").
	ServiceName string
	// ServiceVersion, optional, is the service.version resource attribute.
	ServiceVersion string
	// OTLPEndpoint is OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base URL
	// ("http://collector:4318"); spans go to <base>/v1/traces over OTLP/HTTP.
	// Empty: no exporter.
	OTLPEndpoint string
}

// Config is TracingConfig under the name the brief used.
type Config = TracingConfig

// NewTracerProvider builds a tracer provider that is never installed
// globally: callers take tracers from it explicitly. Without an endpoint it
// has no exporter, but spans still get trace and span ids, so logs and stored
// events can carry them and a later process can continue the trace. shutdown
// flushes and stops the exporter; call it once on exit.
func NewTracerProvider(ctx context.Context, cfg TracingConfig) (*sdktrace.TracerProvider, func(context.Context) error, error) {
	name := cfg.ServiceName
	if name == "" {
		name = "oaruntime"
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", name)}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.ServiceVersion))
	}
	opts := []sdktrace.TracerProviderOption{
		// A schemaless resource: merging with the SDK's default resource
		// fails whenever the two semconv schema URLs differ.
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
	}
	if cfg.OTLPEndpoint != "" {
		exp, err := newOTLPExporter(ctx, cfg.OTLPEndpoint)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return tp, tp.Shutdown, nil
}

// newOTLPExporter follows the OTLP spec for OTEL_EXPORTER_OTLP_ENDPOINT: the
// value is a base URL and the signal path v1/traces is appended to it (the
// exporter's WithEndpointURL would post to the bare path instead).
func newOTLPExporter(ctx context.Context, endpoint string) (sdktrace.SpanExporter, error) {
	raw := strings.TrimSpace(endpoint)
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %q: %w", endpoint, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %q: scheme must be http or https", endpoint)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %q: no host", endpoint)
	}
	opts := []otlptracehttp.Option{
		otlptracehttp.WithEndpoint(u.Host),
		otlptracehttp.WithURLPath(path.Join("/", u.Path, "v1/traces")),
	}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("create OTLP/HTTP trace exporter for %s: %w", u.Redacted(), err)
	}
	return exp, nil
}

// Propagator returns the W3C trace-context and baggage propagator, for
// extracting from incoming and injecting into outgoing HTTP headers:
//
//	ctx = telemetry.Propagator().Extract(ctx, propagation.HeaderCarrier(r.Header))
//	telemetry.Propagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

const (
	headerTraceparent = "traceparent"
	headerTracestate  = "tracestate"
)

// ContextWithRemote makes the span context in the stored traceparent and
// tracestate the remote parent of spans started from the returned context, so
// the executor and projector continue the trace of the request that appended
// an event. An empty or malformed traceparent leaves ctx unchanged.
func ContextWithRemote(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	carrier := propagation.MapCarrier{headerTraceparent: traceparent}
	if tracestate != "" {
		carrier[headerTracestate] = tracestate
	}
	out := propagation.TraceContext{}.Extract(ctx, carrier)
	if !trace.SpanContextFromContext(out).IsValid() {
		return ctx
	}
	return out
}

// Inject returns the W3C traceparent and tracestate of the span in ctx, for
// storing with an event; both are empty when ctx has no valid span.
func Inject(ctx context.Context) (traceparent, tracestate string) {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	return carrier[headerTraceparent], carrier[headerTracestate]
}
