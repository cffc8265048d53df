package telemetry

import (
	"context"
	"io"
	"log/slog"
	"slices"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys added from the context.
const (
	LogTraceID   = "trace_id"
	LogSpanID    = "span_id"
	LogRequestID = "request_id"
)

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id (x-request-id) for logs
// and for storing with appended events. An empty id leaves ctx unchanged.
func WithRequestID(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	if ctx == nil {
		return ""
	}
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// NewLogger returns a JSON logger that adds trace_id and span_id (from the
// span in the context) and request_id (from WithRequestID) to every record
// logged through the *Context methods (InfoContext, ...). The ids are always
// top-level fields, also under WithGroup, so log queries find them in one place.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	base := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(&correlationHandler{base: base, h: base})
}

// correlationHandler wraps a handler; it keeps the unwrapped base and the
// WithAttrs/WithGroup calls made since, so that under a group it can put the
// correlation ids in front of that group instead of inside it.
type correlationHandler struct {
	base    slog.Handler
	h       slog.Handler // base with ops applied
	ops     []func(slog.Handler) slog.Handler
	grouped bool
}

func (c *correlationHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return c.h.Enabled(ctx, l)
}

func (c *correlationHandler) Handle(ctx context.Context, r slog.Record) error {
	ids := correlationAttrs(ctx)
	if len(ids) == 0 {
		return c.h.Handle(ctx, r)
	}
	if !c.grouped {
		r.AddAttrs(ids...)
		return c.h.Handle(ctx, r)
	}
	h := c.base.WithAttrs(ids)
	for _, op := range c.ops {
		h = op(h)
	}
	return h.Handle(ctx, r)
}

func (c *correlationHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return c
	}
	op := func(h slog.Handler) slog.Handler { return h.WithAttrs(attrs) }
	return &correlationHandler{base: c.base, h: op(c.h), ops: append(slices.Clip(c.ops), op), grouped: c.grouped}
}

func (c *correlationHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return c
	}
	op := func(h slog.Handler) slog.Handler { return h.WithGroup(name) }
	return &correlationHandler{base: c.base, h: op(c.h), ops: append(slices.Clip(c.ops), op), grouped: true}
}

func correlationAttrs(ctx context.Context) []slog.Attr {
	if ctx == nil {
		return nil
	}
	var out []slog.Attr
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		out = append(out, slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
	}
	if id := RequestID(ctx); id != "" {
		out = append(out, slog.String(LogRequestID, id))
	}
	return out
}
