package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The bench module cannot import the product's internal packages, so the
// request signature (DESIGN section 4, internal/auth) is written again
// here: v1.<b64url(claims)>.<b64url(HMAC-SHA256(secret, claims segment))>.

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// api is a signed client of one server, acting as one subject.
type api struct{ *benchutil.Client }

func newAPI(addr string, secret []byte, sub string) *api {
	return &api{Client: benchutil.NewClient(addr, secret, sub, 1024)}
}

// createOpenRun creates a keep_open run owned by the api's subject.
func (a *api) createOpenRun(ctx context.Context, runID string) error {
	return a.Do(ctx, http.MethodPost, "/internal/v1/runs", map[string]any{
		"run_id": runID, "thread_id": "thread_" + runID, "metadata": map[string]any{"keep_open": true}}, nil)
}

// appendDelta appends one run.delta and returns its seq.
func (a *api) appendDelta(ctx context.Context, runID string, i int) (int64, error) {
	var out struct {
		Event struct {
			Seq int64 `json:"seq"`
		} `json:"event"`
	}
	err := a.Do(ctx, http.MethodPost, "/internal/v1/runs/"+runID+"/events",
		map[string]any{"event_type": "run.delta", "payload": map[string]any{"delta": "khala bench delta", "i": i}}, &out)
	return out.Event.Seq, err
}

func (a *api) latestSeq(ctx context.Context, runID string) (int64, error) {
	var out struct {
		Run struct {
			LatestSeq int64 `json:"latest_seq"`
		} `json:"run"`
	}
	err := a.Do(ctx, http.MethodGet, "/internal/v1/runs/"+runID, nil, &out)
	return out.Run.LatestSeq, err
}

// scrape returns the /metrics text.
func (a *api) scrape(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := a.HC.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return string(raw), err
}

// histogram is one cumulative Prometheus histogram: upper bound -> count.
type histogram struct {
	bounds []float64 // ascending, +Inf last
	counts []float64
}

// parseHistogram reads name's _bucket series whose labels contain every
// given label pair.
func parseHistogram(text, name string, labels ...string) histogram {
	m := map[float64]float64{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name+"_bucket{")
		if !ok {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		i := strings.Index(rest, `le="`)
		if i < 0 {
			continue
		}
		leStr := rest[i+4:]
		leStr = leStr[:strings.Index(leStr, `"`)]
		le := math.Inf(1)
		if leStr != "+Inf" {
			le, _ = strconv.ParseFloat(leStr, 64)
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, _ := strconv.ParseFloat(f[0], 64)
		m[le] += v
	}
	var h histogram
	for le := range m {
		h.bounds = append(h.bounds, le)
	}
	sort.Float64s(h.bounds)
	for _, le := range h.bounds {
		h.counts = append(h.counts, m[le])
	}
	return h
}

func (h histogram) total() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// sub returns h - prev (bucket deltas over an interval).
func (h histogram) sub(prev histogram) histogram {
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	pm := map[float64]float64{}
	for i, le := range prev.bounds {
		pm[le] = prev.counts[i]
	}
	for i, le := range h.bounds {
		out.counts[i] = h.counts[i] - pm[le]
	}
	return out
}

// quantile interpolates linearly inside the bucket, as PromQL's
// histogram_quantile does.
func (h histogram) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	lower, below := 0.0, 0.0
	for i, le := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(le, 1) {
				return lower // the highest finite bound, as PromQL does
			}
			in := h.counts[i] - below
			if in == 0 {
				return le
			}
			return lower + (le-lower)*(rank-below)/in
		}
		lower, below = le, h.counts[i]
	}
	return lower
}

// fractionAtMost is the share of observations <= le (le must be a bound);
// "p95 <= 25" holds exactly when fractionAtMost(25) >= 0.95.
func (h histogram) fractionAtMost(le float64) float64 {
	n := h.total()
	if n == 0 {
		return math.NaN()
	}
	for i, b := range h.bounds {
		if b == le {
			return h.counts[i] / n
		}
	}
	return math.NaN()
}

// server is one `oaruntime serve` child process.
type server struct {
	name    string
	addr    string
	secret  []byte
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startServer launches `bin serve` with settings (the parent's OA_* and
// OTEL_* variables are dropped) and waits for /readyz.
func startServer(ctx context.Context, bin, name, logDir string, settings map[string]string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	secret := "khala-bench-secret-" + randHex(16)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OA_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	s := map[string]string{"OA_RUNTIME_ADDR": addr, "OA_RUNTIME_SIGNATURE_SECRET": secret, "OA_RUNTIME_LOG_LEVEL": "warn"}
	for k, v := range settings {
		s[k] = v
	}
	for k, v := range s {
		env = append(env, k+"="+v)
	}
	logPath := filepath.Join(logDir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s serve: %w", bin, err)
	}
	srv := &server{name: name, addr: addr, secret: []byte(secret), logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(srv.exited) }()
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return srv, nil
			}
		}
		select {
		case <-srv.exited:
			return nil, fmt.Errorf("%s exited before ready: %s", name, benchutil.TailFile(logPath, 800))
		case <-rctx.Done():
			srv.stop()
			return nil, fmt.Errorf("%s not ready: %s", name, benchutil.TailFile(logPath, 800))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// stop ends the process with SIGTERM (SIGKILL after 20 s).
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.exited
	}
}

func (s *server) api(sub string) *api { return newAPI(s.addr, s.secret, sub) }

// procCPU is the user+system CPU time of pid (0 = this process).
func procCPU(pid int) time.Duration {
	p := "/proc/self/stat"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100)
}

// machineBusy is the CPU time all cores spent neither idle nor in iowait.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * (time.Second / 100)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// saveJSON writes v as the section key of the JSON object at path.
func saveJSON(path, key string, v any) error {
	doc := map[string]json.RawMessage{}
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &doc)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	doc[key] = b
	host, _ := json.Marshal(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "loadavg_at_save": loadavg(), "cpus": numCPU()})
	doc["machine"] = host
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + map[bool]int{true: 1}[strings.HasPrefix(string(b), "processor")]
}
