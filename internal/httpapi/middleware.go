package httpapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// RequestIDHeader is echoed on every response.
const RequestIDHeader = "X-Request-Id"

// MaxRequestIDLen bounds a kept incoming request id.
const MaxRequestIDLen = 200

// UnmatchedRoute is the route label and span name of requests that match no
// pattern (404, 405, path-cleaning redirects).
const UnmatchedRoute = telemetry.UnmatchedRoute

// reqInfo is filled in as the request travels inward, and read by the
// outermost middleware for the log line, the metric and the span name.
type reqInfo struct {
	requestID string
	pattern   string // full mux pattern, "" until matched
	runID     string
	sub       string
	panicked  bool // a handler panicked: counted and logged as a 500
	aborted   bool // a handler panicked with http.ErrAbortHandler
}

type reqInfoKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{} // a mounted handler used outside New: nothing to record
}

// RequestID returns the request id of ctx ("" outside a request).
func RequestID(ctx context.Context) string { return infoFrom(ctx).requestID }

// validRequestID keeps a client's id only when it is 1-200 visible ASCII
// characters; anything else could forge log lines or blow up log storage.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	if id, err := uuid.NewV7(); err == nil {
		return id.String()
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusWriter records the status and size of the response. It forwards
// Flush and Hijack (SSE and WebSocket) and unwraps for
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe is the outermost middleware: request id, W3C trace context and the
// server span, panic recovery, body limit, then one log line and one metric
// per request.
func (a *api) observe() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &reqInfo{requestID: r.Header.Get(RequestIDHeader)}
		if !validRequestID(ri.requestID) {
			ri.requestID = newRequestID()
		}
		w.Header().Set(RequestIDHeader, ri.requestID)

		ctx := a.propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := a.tracer.Start(ctx, metricMethod(r.Method), trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		ctx = context.WithValue(ctx, reqInfoKey{}, ri)
		ctx = telemetry.WithRequestID(ctx, ri.requestID)
		span.SetAttributes(attribute.String("request_id", ri.requestID))

		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(ctx)
		if r.ContentLength > a.maxBody {
			// Refused before routing; still label it by its route.
			if _, p := a.mux.Handler(r); p != "" {
				if _, ok := a.patterns[p]; ok {
					ri.pattern = p
				}
			}
			writeAPIError(sw, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "body: larger than %d bytes", a.maxBody))
		} else {
			if r.Body != nil {
				r.Body = http.MaxBytesReader(sw, r.Body, a.maxBody)
			}
			a.serveRecovering(sw, r, ri)
		}

		status := sw.status
		if status == 0 {
			status = http.StatusOK // handler wrote nothing: net/http sends 200
		}
		if ri.panicked {
			status = http.StatusInternalServerError
		}
		route := routeLabel(ri.pattern)
		name := ri.pattern // "POST /internal/v1/runs/{run_id}/frames": method and route
		if name == "" {
			name = metricMethod(r.Method) + " " + UnmatchedRoute
		}
		span.SetName(name)
		span.SetAttributes(attribute.String("http.route", route), attribute.Int("http.response.status_code", status))
		if ri.runID != "" {
			span.SetAttributes(attribute.String("run_id", ri.runID))
		}
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		span.End()
		d := time.Since(start)
		a.metrics.HTTPRequest(ri.pattern, metricMethod(r.Method), status, d)

		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.String("path", truncate(r.URL.Path, 512)),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(d.Microseconds())/1000),
			slog.Int64("bytes", sw.bytes),
		}
		if ri.runID != "" {
			attrs = append(attrs, slog.String("run_id", ri.runID))
		}
		if ri.sub != "" {
			attrs = append(attrs, slog.String("sub", ri.sub))
		}
		level := slog.LevelInfo
		if status >= 500 {
			level = slog.LevelError
		}
		a.logRequest(ctx, level, "http request", attrs...)
		if ri.aborted {
			panic(http.ErrAbortHandler)
		}
	})
}

// logRequest logs with the request's correlation ids as explicit attributes.
// It passes a bare context on purpose: telemetry.NewLogger's handler adds the
// same ids from the context, and adding them twice would duplicate JSON keys;
// this way any slog handler gets them exactly once.
func (a *api) logRequest(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	ids := []slog.Attr{slog.String(telemetry.LogRequestID, RequestID(ctx))}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ids = append(ids, slog.String(telemetry.LogTraceID, sc.TraceID().String()), slog.String(telemetry.LogSpanID, sc.SpanID().String()))
	}
	a.log.LogAttrs(context.Background(), level, msg, append(ids, attrs...)...)
}

// serveRecovering turns a handler panic into a 500 envelope (when nothing was
// written yet) and a logged stack, so one bad request never kills the server.
func (a *api) serveRecovering(w *statusWriter, r *http.Request, ri *reqInfo) {
	defer func() {
		rec := recover()
		if rec == nil {
			return
		}
		if rec == http.ErrAbortHandler {
			// net/http's own signal to drop the connection quietly: record
			// the request, then re-raise it in observe.
			ri.aborted = true
			return
		}
		ri.panicked = true
		a.logRequest(r.Context(), slog.LevelError, "http handler panic",
			slog.String("panic", fmt.Sprint(rec)), slog.String("stack", string(debug.Stack())))
		if w.status == 0 {
			WriteError(w, http.StatusInternalServerError, CodeInternal, "internal error (request id "+ri.requestID+")")
		}
	}()
	a.serveMux(w, r, ri)
}

// serveMux routes r. Requests that match no pattern get the JSON envelope
// instead of net/http's text answers, with the mux's status (404 or 405, with
// its Allow header) kept.
func (a *api) serveMux(w http.ResponseWriter, r *http.Request, ri *reqInfo) {
	h, pattern := a.mux.Handler(r)
	if _, ok := a.patterns[pattern]; ok {
		a.mux.ServeHTTP(w, r)
		return
	}
	cw := &captureWriter{header: http.Header{}}
	h.ServeHTTP(cw, r)
	switch cw.status {
	case http.StatusNotFound:
		WriteError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	case http.StatusMethodNotAllowed:
		if allow := cw.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		WriteError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
	default: // path-cleaning redirect
		for k, v := range cw.header {
			w.Header()[k] = v
		}
		w.WriteHeader(cw.status)
		_, _ = w.Write(cw.body)
	}
}

// captureWriter holds the mux's answer for an unmatched request.
type captureWriter struct {
	header http.Header
	status int
	body   []byte
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
}
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if len(c.body) < 4096 {
		c.body = append(c.body, b...)
	}
	return len(b), nil
}

// routeLabel is the route as logged and labelled: the pattern without its
// method prefix (method is a label of its own), as telemetry does.
func routeLabel(pattern string) string {
	if pattern == "" {
		return UnmatchedRoute
	}
	if i := strings.IndexByte(pattern, ' '); i > 0 && !strings.Contains(pattern[:i], "/") {
		return strings.TrimSpace(pattern[i+1:])
	}
	return pattern
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// metricMethod keeps the method label in a closed set.
func metricMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
