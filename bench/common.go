package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The bench is its own module, so it cannot import the product's internal
// packages: it speaks the public HTTP API, signing requests the way
// DESIGN section 4 specifies (the same wire format as internal/auth).

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// api is a minimal signed client of one server.
type api struct {
	*benchutil.Client
	pid int // the server process, when the bench started it
}

func newAPI(addr string, secret []byte) *api {
	return &api{Client: benchutil.NewClient(addr, secret, "user:bench", 512)}
}

type runDoc struct {
	RunID     string `json:"run_id"`
	Status    string `json:"status"`
	LatestSeq int64  `json:"latest_seq"`
}

type eventDoc struct {
	Seq       int64           `json:"seq"`
	EventType string          `json:"event_type"`
	Payload   json.RawMessage `json:"payload"`
	CreatedAt time.Time       `json:"created_at"`
}

func (a *api) createRun(ctx context.Context, runID string) error {
	return a.Do(ctx, http.MethodPost, "/internal/v1/runs", map[string]any{"run_id": runID, "thread_id": "thread_" + runID}, nil)
}

// startRun creates a run with its first message in one request (the input
// field of POST /runs).
func (a *api) startRun(ctx context.Context, runID string, payload any) error {
	return a.Do(ctx, http.MethodPost, "/internal/v1/runs", map[string]any{"run_id": runID, "thread_id": "thread_" + runID,
		"input": map[string]any{"frame_id": "frame_" + randHex(6), "type": "user_message", "payload": payload}}, nil)
}

func (a *api) sendFrame(ctx context.Context, runID string, payload any) error {
	return a.Do(ctx, http.MethodPost, "/internal/v1/runs/"+runID+"/frames",
		map[string]any{"frame_id": "frame_" + randHex(6), "type": "user_message", "payload": payload}, nil)
}

func (a *api) getRun(ctx context.Context, runID string) (runDoc, error) {
	var out struct {
		Run runDoc `json:"run"`
	}
	err := a.Do(ctx, http.MethodGet, "/internal/v1/runs/"+runID, nil, &out)
	return out.Run, err
}

func (a *api) events(ctx context.Context, runID string, after int64) ([]eventDoc, error) {
	var out struct {
		Events []eventDoc `json:"events"`
	}
	err := a.Do(ctx, http.MethodGet, fmt.Sprintf("/internal/v1/runs/%s/events?after_seq=%d&limit=1000", runID, after), nil, &out)
	return out.Events, err
}

func (a *api) appendEvent(ctx context.Context, runID string, payload any) (eventDoc, error) {
	var out struct {
		Event eventDoc `json:"event"`
	}
	err := a.Do(ctx, http.MethodPost, "/internal/v1/runs/"+runID+"/events", map[string]any{"event_type": "run.delta", "payload": payload}, &out)
	return out.Event, err
}

// metricSum scrapes /metrics and sums the samples of name whose labels
// contain every label=value pair given.
func (a *api) metricSum(ctx context.Context, name string, labels ...string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.HC.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, nil
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

// startServer launches `bin serve` with the given OA_* settings (the
// parent's OA_*/OTEL_* variables are dropped) and waits for /readyz.
func startServer(ctx context.Context, bin, name, logDir string, settings map[string]string, extraArgs ...string) (*server, error) {
	addr := settings["OA_RUNTIME_ADDR"]
	if addr == "" {
		var err error
		if addr, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	secret := settings["OA_RUNTIME_SIGNATURE_SECRET"]
	if secret == "" {
		secret = "bench-secret-" + randHex(16)
	}
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OA_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	s := map[string]string{"OA_RUNTIME_ADDR": addr, "OA_RUNTIME_SIGNATURE_SECRET": secret, "OA_RUNTIME_LOG_LEVEL": "warn"}
	if v := os.Getenv("OA_RUNTIME_PPROF_ADDR"); v != "" {
		s["OA_RUNTIME_PPROF_ADDR"] = v // profiling the server under the bench
	}
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
	cmd := exec.Command(bin, append([]string{"serve"}, extraArgs...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s serve: %w", bin, err)
	}
	srv := &server{name: name, addr: addr, secret: []byte(secret), logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(srv.exited) }()
	if err := srv.waitReady(ctx, 90*time.Second); err != nil {
		srv.kill()
		return nil, err
	}
	return srv, nil
}

func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited before ready: %s", s.name, benchutil.TailFile(s.logPath, 800))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %s", s.name, benchutil.TailFile(s.logPath, 800))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// kill sends SIGKILL and waits until the process is gone.
func (s *server) kill() time.Time {
	at := time.Now()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	return at
}

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
		s.kill()
	}
}

func (s *server) api() *api { return newAPI(s.addr, s.secret) }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// results is the JSON file every subcommand updates (its own section).
type results struct {
	Machine  map[string]any `json:"machine,omitempty"`
	Runs     any            `json:"runs_per_second,omitempty"`
	Rescue   any            `json:"rescue,omitempty"`
	Append   any            `json:"append_latency,omitempty"`
	Fanout   any            `json:"sse_fanout,omitempty"`
	Executor any            `json:"executor_overhead,omitempty"`
}

var resultsMu sync.Mutex

// saveSection merges one section into the JSON file at path.
func saveSection(path string, set func(*results)) error {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var r results
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	set(&r)
	r.Machine = machineInfo()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func machineInfo() map[string]any {
	m := map[string]any{"date": time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "processor") {
				n++
			}
			if strings.HasPrefix(line, "model name") && m["cpu_model"] == nil {
				m["cpu_model"] = strings.TrimSpace(line[strings.Index(line, ":")+1:])
			}
		}
		m["cpus"] = n
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			m["mem_total_mib"] = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m["loadavg_at_save"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	return m
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// procCPU returns the user+system CPU time of pid (0 = this process).
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
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// machineBusy returns the CPU time all cores spent not idle (from /proc/stat).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += n
	}
	return time.Duration(busy) * (time.Second / 100)
}
