// Package alerttest proves the runbook's alerts against a real Prometheus:
// it starts an oaruntime node and a Prometheus server that scrapes it and
// evaluates the generated rules (with windows scaled down), drives load and
// faults through the runtime, and reads alert states from Prometheus's API.
package alerttest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/app"
	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/ops"
)

// TimeDivisor scales the runbook's windows for the test: 10m becomes 5s.
const TimeDivisor = 120

// Runtime is an in-process oaruntime node on a real socket.
type Runtime struct {
	Srv    *app.Server
	Addr   string
	Client *client.Client
	cancel context.CancelFunc
	done   chan error
}

// StartRuntime starts a node on a temporary SQLite database with fault
// endpoints enabled and short lease/breaker timings.
func StartRuntime(t testing.TB) *Runtime {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{
		Addr: "127.0.0.1:0", DataDir: dir, DatabaseURL: "sqlite:" + filepath.Join(dir, "rt.db"),
		SignatureSecret: "alerttest-secret-0123456789abcdef", KhalaSink: "builtin", LogLevel: "error",
		LeaseTTL: 3 * time.Second, LeaseRenew: 500 * time.Millisecond, JanitorInterval: 250 * time.Millisecond,
		JanitorMaxAttempts: 3, ExecutorConcurrency: 256, BreakerCooldown: 4 * time.Second,
		StreamIdle: 30 * time.Second, StreamHeartbeat: 5 * time.Second, ShutdownGrace: 5 * time.Second,
		EnableFaults: true, OperatorSubs: "user:alerttest",
	}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := app.NewServer(ctx, cfg, io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	rt := &Runtime{Srv: srv, Addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { rt.done <- srv.Serve(ctx, ln) }()
	rt.Client = client.New("http://"+rt.Addr, []byte(cfg.SignatureSecret), "user:alerttest")
	t.Cleanup(rt.Stop)
	return rt
}

// Stop shuts the node down cleanly.
func (r *Runtime) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	<-r.done
}

// Prometheus is a real Prometheus server scraping one target.
type Prometheus struct {
	URL string
	cmd *exec.Cmd
	log *os.File
}

// PrometheusBinary finds the prometheus binary: skip loudly locally, fail in CI.
func PrometheusBinary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("prometheus not on PATH but CI is set: .ci/run must install it (%v)", err)
		}
		t.Skip("SKIPPING: prometheus binary not on PATH (apt-get install prometheus); CI runs this test for real")
	}
	return p
}

// StartPrometheus starts Prometheus scraping target every second and
// evaluating rules every second.
func StartPrometheus(t testing.TB, bin, target string, rules []byte) *Prometheus {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: oaruntime
    static_configs:
      - targets: [%q]
`, filepath.Join(dir, "rules.yml"), target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr,
		"--web.enable-lifecycle")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Prometheus{URL: "http://" + addr, cmd: cmd, log: logf}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("prometheus log tail:\n%s", b)
		}
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ScaledRules are the generated rules with windows divided by TimeDivisor.
func ScaledRules(t testing.TB) []byte {
	t.Helper()
	b, err := ops.RuleFile(ops.Options{TimeDivisor: TimeDivisor, EvaluationInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// AlertState is one active alert as Prometheus reports it.
type AlertState struct {
	Name   string
	State  string // pending or firing
	Labels map[string]string
}

func (a AlertState) String() string {
	var extra []string
	for k, v := range a.Labels {
		if k != "alertname" && k != "severity" && k != "service" {
			extra = append(extra, k+"="+v)
		}
	}
	sort.Strings(extra)
	return fmt.Sprintf("%s{%s}:%s", a.Name, strings.Join(extra, ","), a.State)
}

// Alerts returns the active (pending or firing) alerts.
func (p *Prometheus) Alerts(ctx context.Context) ([]AlertState, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/alerts", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	var out []AlertState
	for _, a := range body.Data.Alerts {
		out = append(out, AlertState{Name: a.Labels["alertname"], State: a.State, Labels: a.Labels})
	}
	return out, nil
}

// Query runs an instant query and returns the first sample's value, or
// "none".
func (p *Prometheus) Query(ctx context.Context, q string) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?query="+url.QueryEscape(q), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "error: " + err.Error()
	}
	if body.Error != "" {
		return "error: " + body.Error
	}
	if len(body.Data.Result) == 0 {
		return "none"
	}
	var parts []string
	for _, r := range body.Data.Result {
		parts = append(parts, fmt.Sprintf("%v=%v", r.Metric, r.Value[1]))
	}
	return strings.Join(parts, " ")
}
