package alerttest

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/loadgen"
	"github.com/oaruntime/oaruntime/internal/ops"
)

// TestDashboardMetricsAreExported scrapes a running node after a smoke
// workload and checks every metric the dashboard and the alert rules name is
// really exported, so no panel or alert can sit on a series that never exists
// (the original's four dead metrics).
func TestDashboardMetricsAreExported(t *testing.T) {
	rt := StartRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g := loadgen.New(rt.Client)
	// Three failures open the breaker: a transition is recorded.
	for _, name := range []string{"healthy", "mint", "tool-fail", "deny", "budget", "drop-stream", "breaker", "breaker", "breaker", "breaker"} {
		p := loadgen.Profiles()[name]
		if err := g.One(ctx, p); err != nil {
			t.Logf("smoke %s: %v", name, err)
		}
	}
	if g.Stats.Created.Load() == 0 {
		t.Fatal("smoke workload created no runs")
	}
	time.Sleep(500 * time.Millisecond) // let the projector write
	// An operator replay, as after an incident.
	if _, err := rt.Client.Do(ctx, http.MethodPost, "/internal/v1/projectors/reproject", map[string]any{"all": true}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // replay rows are exported within a poll interval
	exported := scrapeNames(t, "http://"+rt.Addr+"/metrics")

	dash, err := ops.DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	qs, err := ops.DashboardQueries(dash)
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, q := range qs {
		exprs = append(exprs, q.Expr)
	}
	for _, a := range ops.Alerts(ops.Options{}) {
		exprs = append(exprs, a.Expr)
	}
	if len(exprs) < 14 {
		t.Fatalf("only %d expressions", len(exprs))
	}
	for _, e := range exprs {
		for _, m := range ops.MetricNames(e) {
			if !exported[m] {
				t.Errorf("metric %s (in %q) is not exported by a running runtime", m, e)
			}
		}
	}
}

// scrapeNames returns the metric family names of a /metrics page, with
// histogram suffixes folded into the family.
func scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			name = strings.TrimSuffix(name, suf)
		}
		out[name] = true
	}
	return out
}
