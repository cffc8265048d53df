package correlation_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/oaruntime/oaruntime/internal/app"
	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/config"
)

// span is one span as the collector received it.
type span struct {
	Name    string
	TraceID string
	SpanID  string
	Parent  string // "" for a root span
	Kind    string
	Attrs   map[string]string
}

// collector is a fake OTLP/HTTP trace collector: it decodes the protobuf
// export requests the node's otlptracehttp exporter posts to /v1/traces.
// app.NewServer builds its tracer provider from cfg.OTLPEndpoint and has no
// hook for an in-memory exporter, so the test observes spans on the wire,
// exactly as a real collector would.
type collector struct {
	URL string

	mu    sync.Mutex
	spans []span
	errs  []string
}

func newCollector(t *testing.T) *collector {
	t.Helper()
	c := &collector{}
	srv := httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(srv.Close)
	c.URL = srv.URL
	return c
}

func (c *collector) fail(format string) {
	c.mu.Lock()
	c.errs = append(c.errs, format)
	c.mu.Unlock()
}

func (c *collector) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		c.fail("unexpected " + r.Method + " " + r.URL.Path)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			c.fail("gzip: " + err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		c.fail("read: " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		c.fail("decode export request: " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var got []span
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := span{
					Name: s.GetName(), TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					Kind: s.GetKind().String(), Attrs: map[string]string{},
				}
				if p := s.GetParentSpanId(); len(p) > 0 {
					sp.Parent = hex.EncodeToString(p)
				}
				for _, kv := range s.GetAttributes() {
					sp.Attrs[kv.GetKey()] = anyValue(kv.GetValue())
				}
				got = append(got, sp)
			}
		}
	}
	c.mu.Lock()
	c.spans = append(c.spans, got...)
	c.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func anyValue(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	default:
		b, _ := json.Marshal(v.GetValue())
		return string(b)
	}
}

func (c *collector) Spans() ([]span, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]span(nil), c.spans...), append([]string(nil), c.errs...)
}

// logBuffer collects the node's JSON log output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Lines decodes every log line; a line that is not a JSON object fails the
// test (the contract is JSON lines).
func (l *logBuffer) Lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	data := append([]byte(nil), l.buf.Bytes()...)
	l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("log line is not a JSON object: %v: %s", err, line)
			continue
		}
		// The raw line is kept (under a key no JSON log can produce) so
		// that duplicate keys, which decoding hides, can be counted.
		m["\x00raw"] = string(line)
		out = append(out, m)
	}
	return out
}

// node is an in-process oaruntime on a real socket and a temporary SQLite
// database (the pattern of alerttest.StartRuntime), with its logs captured
// and traces sent to otlp.
type node struct {
	Srv    *app.Server
	Base   string
	Secret []byte
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, otlpEndpoint string, logs io.Writer) *node {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{
		Addr: "127.0.0.1:0", DataDir: dir, DatabaseURL: "sqlite:" + filepath.Join(dir, "rt.db"),
		SignatureSecret: "correlation-secret-0123456789abcdef", KhalaSink: "builtin",
		// The production default: the walkthrough must work at the level
		// operators run, not only with debug logs.
		LogLevel:     "info",
		OTLPEndpoint: otlpEndpoint,
		LeaseTTL:     2 * time.Second, LeaseRenew: 500 * time.Millisecond, JanitorInterval: 500 * time.Millisecond,
		JanitorMaxAttempts: 3, ExecutorConcurrency: 8, BreakerCooldown: 5 * time.Second,
		StreamIdle: 10 * time.Second, StreamHeartbeat: 5 * time.Second, ShutdownGrace: 5 * time.Second,
	}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := app.NewServer(ctx, cfg, logs)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	n := &node{Srv: srv, Base: "http://" + ln.Addr().String(), Secret: []byte(cfg.SignatureSecret), cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(n.Stop)
	n.waitReady(t)
	return n
}

// Stop shuts the node down; Serve returns only after the tracer provider
// has flushed its spans to the collector.
func (n *node) Stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	<-n.done
}

func (n *node) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(n.Base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// call sends one signed request as sub with extra headers and returns the
// response with its body read.
func (n *node) call(t *testing.T, method, path, sub string, hdr map[string]string, body any) (*http.Response, []byte) {
	t.Helper()
	c := client.New(n.Base, n.Secret, sub)
	req, err := c.NewRequest(context.Background(), method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, raw
}

// get sends an unsigned GET.
func (n *node) get(t *testing.T, path string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(n.Base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, raw
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func names(spans []span) string {
	var b strings.Builder
	for _, s := range spans {
		b.WriteString("\n  " + s.Name + " trace=" + s.TraceID + " span=" + s.SpanID + " parent=" + s.Parent)
	}
	return b.String()
}
