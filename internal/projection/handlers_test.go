package projection

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

func serve(t *testing.T, p *Projector, faults bool) http.Handler {
	t.Helper()
	mux := http.NewServeMux()
	for _, r := range p.Routes(faults) {
		mux.Handle(r.Pattern, r.Handler)
	}
	return mux
}

func do(t *testing.T, h http.Handler, method, target, body string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: body %q is not JSON: %v", method, target, rec.Body.String(), err)
	}
	if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("%s %s answered %d", method, target, rec.Code)
	}
	return rec.Code, out
}

func errMessage(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

func TestHandlers(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		mkRun(t, st, "r1", "run.started", "run.delta")
		if _, err := p.ProjectRun(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		appendEv(t, st, "r1", "run.delta")
		h := serve(t, p, false)

		code, out := do(t, h, "GET", "/internal/v1/projectors/checkpoints/r1", "")
		if code != 200 || out["lag_events"] != 1.0 || out["runtime_latest_seq"] != 3.0 {
			t.Fatalf("checkpoint view = %d %v", code, out)
		}
		if cp, _ := out["checkpoint"].(map[string]any); cp["last_seq"] != 2.0 || len(cp["summary_hash"].(string)) != 64 {
			t.Fatalf("checkpoint = %v", out["checkpoint"])
		}
		if doc, _ := out["document"].(map[string]any); doc["runtime_source_seq"] != 2.0 {
			t.Fatalf("document = %v", out["document"])
		}
		if code, _ := do(t, h, "GET", "/internal/v1/projectors/checkpoints/nope", ""); code != 404 {
			t.Fatalf("unknown run = %d", code)
		}
		if code, out := do(t, h, "GET", "/internal/v1/projectors/checkpoints/"+strings.Repeat("x", 201), ""); code != 400 || !strings.HasPrefix(errMessage(out), "run_id") {
			t.Fatalf("long run id = %d %v", code, out)
		}

		// Drift: one incident, then the view filters by reason.
		exec(t, `UPDATE khala_documents SET payload = '{"x":1}'`)
		code, out = do(t, h, "POST", "/internal/v1/projectors/verify", `{"sample":10}`)
		if code != 200 || out["ok"] != false {
			t.Fatalf("verify = %d %v", code, out)
		}
		// The checkpoint also lags the log (seq 2 of 3), so the finding is
		// hash_and_lag_drift, not a plain mismatch.
		code, out = do(t, h, "GET", "/internal/v1/projectors/drift?reason_class=summary_hash_mismatch", "")
		if inc, _ := out["incidents"].([]any); code != 200 || len(inc) != 0 {
			t.Fatalf("drift = %d %v", code, out)
		}
		code, out = do(t, h, "GET", "/internal/v1/projectors/drift?reason_class=hash_and_lag_drift", "")
		if inc, _ := out["incidents"].([]any); code != 200 || len(inc) != 1 {
			t.Fatalf("drift by reason = %d %v", code, out)
		}
		code, out = do(t, h, "GET", "/internal/v1/projectors/drift?reason_class=checkpoint_ahead", "")
		if inc, _ := out["incidents"].([]any); code != 200 || len(inc) != 0 {
			t.Fatalf("drift of another reason = %d %v", code, out)
		}
		for _, q := range []string{"limit=0", "limit=abc", "after_id=-1", "reason_class=DROP%20TABLE", "entity_id=" + strings.Repeat("y", 300)} {
			code, out := do(t, h, "GET", "/internal/v1/projectors/drift?"+q, "")
			field := strings.SplitN(q, "=", 2)[0]
			if code != 400 || !strings.HasPrefix(errMessage(out), field) {
				t.Fatalf("drift?%s = %d %v", q, code, out)
			}
		}

		code, out = do(t, h, "POST", "/internal/v1/projectors/reproject", `{"run_id":"r1"}`)
		if code != 200 || out["ok"] != true {
			t.Fatalf("reproject = %d %v", code, out)
		}
		assertConverged(t, st, p, "r1")
		code, out = do(t, h, "POST", "/internal/v1/projectors/verify", ``)
		if code != 200 || out["ok"] != true {
			t.Fatalf("verify after reproject = %d %v", code, out)
		}
		for body, field := range map[string]string{
			`{}`:                         "all",
			`{"all":true,"run_id":"r1"}`: "all",
			`{"all":"yes"}`:              "all",
			`{"run_id":"r1","extra":1}`:  "extra",
			`{"run_id":"r1"} {}`:         "body",
			`[`:                          "body",
		} {
			code, out := do(t, h, "POST", "/internal/v1/projectors/reproject", body)
			if code != 400 || !strings.HasPrefix(errMessage(out), field) {
				t.Fatalf("reproject %s = %d %v, want 400 naming %s", body, code, out, field)
			}
		}
		if code, _ := do(t, h, "POST", "/internal/v1/projectors/reproject", `{"run_id":"nope"}`); code != 404 {
			t.Fatalf("reproject unknown run = %d", code)
		}
		if code, out := do(t, h, "POST", "/internal/v1/projectors/verify", `{"sample":-1}`); code != 400 || !strings.HasPrefix(errMessage(out), "sample") {
			t.Fatalf("verify sample -1 = %d %v", code, out)
		}
		big := `{"run_id":"` + strings.Repeat("a", 2<<20) + `"}`
		if code, _ := do(t, h, "POST", "/internal/v1/projectors/reproject", big); code != 413 {
			t.Fatalf("oversized body = %d", code)
		}

		// The fault endpoint exists only when faults are enabled.
		req := httptest.NewRequest("POST", "/internal/v1/ops/faults/projection", strings.NewReader(`{}`))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 404 {
			t.Fatalf("fault endpoint without faults = %d", rec.Code)
		}
		hf := serve(t, p, true)
		code, out = do(t, hf, "POST", "/internal/v1/ops/faults/projection", `{"fail_rate":1,"delay_ms":5,"replay_fail":true}`)
		if code != 200 || out["fail_rate"] != 1.0 || out["delay_ms"] != 5.0 || out["replay_fail"] != true {
			t.Fatalf("set faults = %d %v", code, out)
		}
		code, out = do(t, hf, "POST", "/internal/v1/projectors/reproject", `{"all":true}`)
		if code != 200 || out["ok"] != false {
			t.Fatalf("reproject under replay fault = %d %v", code, out)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"result": "error"}); got != 1 {
			t.Fatalf("replay errors = %v", got)
		}
		appendEv(t, st, "r1", "run.delta")
		if _, err := p.ProjectRun(ctx, "r1"); err == nil {
			t.Fatal("write succeeded under fail_rate 1")
		}
		code, out = do(t, hf, "POST", "/internal/v1/ops/faults/projection", `{"fail_rate":0}`)
		if code != 200 || out["fail_rate"] != 0.0 || out["replay_fail"] != true {
			t.Fatalf("partial update = %d %v", code, out)
		}
		for body, field := range map[string]string{`{"fail_rate":1.5}`: "fail_rate", `{"delay_ms":-1}`: "delay_ms", `{"replay_fail":1}`: "replay_fail", `{"x":1}`: "x"} {
			if code, out := do(t, hf, "POST", "/internal/v1/ops/faults/projection", body); code != 400 || !strings.HasPrefix(errMessage(out), field) {
				t.Fatalf("faults %s = %d %v", body, code, out)
			}
		}
		if _, d, _ := p.Faults(); d != 5*time.Millisecond {
			t.Fatalf("delay = %v", d)
		}
	})
}

func TestCommand(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		run := func(tty bool, args ...string) (int, string, string) {
			var out, errb bytes.Buffer
			code := Command(ctx, st, nil, args, &out, &errb, tty)
			return code, out.String(), errb.String()
		}
		for _, args := range [][]string{{}, {"bogus"}, {"reproject"}, {"reproject", "--all", "--run-id", "x"}, {"verify", "--sample", "0"}, {"reproject", "--all", "extra"}} {
			if code, _, _ := run(false, args...); code != 2 {
				t.Fatalf("%v: exit %d, want 2", args, code)
			}
		}
		code, _, errOut := run(false, "reproject", "--worker-id", "w1")
		if code != 1 || !strings.Contains(errOut, "not found") {
			t.Fatalf("--worker-id of an unknown worker: %d %q", code, errOut)
		}

		for _, id := range []string{"a", "b", "c"} {
			mkRun(t, st, id, "run.started")
		}
		code, out, errOut := run(false, "reproject", "--all", "--dry-run")
		if code != 0 || !strings.Contains(out, "total=3 succeeded=3 failed=0 changed=3 dry_run=true") {
			t.Fatalf("dry run: %d %q %q", code, out, errOut)
		}
		code, out, errOut = run(true, "reproject", "--all")
		if code != 0 || !strings.Contains(errOut, "\rreproject [") || !strings.Contains(errOut, "3/3") || !strings.Contains(out, "failed=0") {
			t.Fatalf("tty reproject: %d %q %q", code, out, errOut)
		}
		code, out, _ = run(false, "verify")
		if code != 0 || !strings.Contains(out, "verify status=ok sampled=3 mismatches=0") {
			t.Fatalf("verify: %d %q", code, out)
		}
		exec(t, `DELETE FROM khala_documents WHERE doc_key = 'runtime/run_summary:b'`)
		code, out, _ = run(false, "verify", "--sample", "10")
		if code != 1 || !strings.Contains(out, "entity=b reason_class=khala_missing") || !strings.Contains(out, "mismatches=1") {
			t.Fatalf("verify with a missing document: %d %q", code, out)
		}
		code, out, _ = run(false, "reproject", "--run-id", "b")
		if code != 0 || !strings.Contains(out, "reproject scope=run entity=b result=ok changed=false") {
			t.Fatalf("reproject b: %d %q", code, out)
		}
		if code, _, errOut := run(false, "reproject", "--run-id", "zzz"); code != 1 || !strings.Contains(errOut, "not found") {
			t.Fatalf("reproject unknown: %d %q", code, errOut)
		}
		// The command's rows wait uncounted for the serving process.
		rs, _ := st.ListReplays(ctx, 0, 100)
		ds, _ := st.ListDrift(ctx, store.DriftQuery{})
		if len(rs) != 4 || len(ds) != 1 {
			t.Fatalf("rows: %d replays, %d drift", len(rs), len(ds))
		}
		for _, r := range rs {
			if r.Counted || !strings.HasPrefix(r.Origin, "cli:") {
				t.Fatalf("replay row %+v", r)
			}
		}
	})
}

// TestCommandReplayFailureExitCode: a replay failure makes the command exit
// non-zero (the original exited 0) and reaches the server's metrics.
func TestCommandReplayFailureExitCode(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		mkRun(t, st, "a", "run.started")
		// A failing sink in the command's process.
		var out, errb bytes.Buffer
		code := CommandWith(ctx, st, nil, CommandConfig{Sink: &HTTPSink{BaseURL: "http://127.0.0.1:1", Timeout: 200 * time.Millisecond, Store: st}},
			[]string{"reproject", "--all"}, &out, &errb, false)
		if code != 1 || !strings.Contains(errb.String(), "result=error") || !strings.Contains(out.String(), "failed=1") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
		}
		m, reg := newMetrics(t)
		New(st, nil, nil, m, Config{Serving: true}).exportRecorded(ctx)
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"result": "error", "scope": "run"}); got != 1 {
			t.Fatalf("server's replay error metric = %v", got)
		}
	})
}
