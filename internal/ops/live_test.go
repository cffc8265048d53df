package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// lockedBuffer collects a child process's output for the failure message.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

type liveAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (a liveAlert) key() string {
	k := a.Labels["alertname"]
	if p := a.Labels["provider"]; p != "" {
		k += "{provider=" + p + "}"
	}
	return k + " " + a.State
}

func fetchAlerts(ctx context.Context, base string) ([]liveAlert, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/alerts", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Alerts []liveAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode alerts: %w", err)
	}
	return body.Data.Alerts, nil
}

func queryScalar(ctx context.Context, base, q string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	if len(body.Data.Result) == 0 || len(body.Data.Result[0].Value) < 2 {
		return "", nil
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	return s, nil
}

// waitFor polls cond until it holds or the deadline passes. The deadline
// only bounds a hung run; it is not a latency target.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s; last state: %s", what, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// The time-scaled rules, loaded into a real Prometheus that scrapes the real
// telemetry package: incidents recorded through telemetry.Metrics fire their
// alerts, and with no traffic elsewhere nothing else is even pending.
func TestLivePrometheusFiresScaledAlertsFromTelemetry(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not on PATH and CI is set: install Prometheus (Debian: apt-get install prometheus)")
		}
		t.Skip("SKIPPING: prometheus not on PATH; the scaled rules are NOT run against a live Prometheus")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test", Revision: "test", SchemaVersion: "test"})
	target := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer target.Close()

	dir := t.TempDir()
	rules, err := RuleFile(Options{TimeDivisor: 60, EvaluationInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: oaruntime
    static_configs:
      - targets: [%q]
`, strings.TrimPrefix(target.URL, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var logs lockedBuffer
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	}()
	base := "http://" + addr

	waitFor(ctx, t, "the target to be scraped", func() (bool, string) {
		v, err := queryScalar(ctx, base, `up{job="oaruntime"}`)
		return err == nil && v == "1", fmt.Sprintf("up=%q err=%v", v, err)
	})
	// One full window of zero traffic first: nothing may fire on it.
	waitFor(ctx, t, "a window of samples", func() (bool, string) {
		v, err := queryScalar(ctx, base, `count_over_time(up{job="oaruntime"}[15s])`)
		n, perr := strconv.ParseFloat(v, 64)
		return err == nil && perr == nil && n >= 10, v
	})

	m.BreakerState("openai", telemetry.BreakerOpen)
	m.ProjectionReplay(telemetry.ScopeRun, "error", time.Second)
	m.ProjectionDrift(telemetry.ProjectionRunSummary, telemetry.DriftSummaryHashMismatch)

	want := []string{
		"OpenAgentsRuntimeCircuitBreakerOpen{provider=openai} firing",
		"OpenAgentsRuntimeKhalaProjectionHashMismatchDetected firing",
		"OpenAgentsRuntimeKhalaProjectionReplayFailures firing",
	}
	waitFor(ctx, t, "the three alerts to fire", func() (bool, string) {
		alerts, err := fetchAlerts(ctx, base)
		if err != nil {
			return false, err.Error()
		}
		var got []string
		for _, a := range alerts {
			got = append(got, a.key())
		}
		sort.Strings(got)
		// Exactly these: every other alert stays inactive on zero traffic.
		return strings.Join(got, "\n") == strings.Join(want, "\n"), strings.Join(got, "; ")
	})
}
