package drills

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/stream"
	khalasync "github.com/oaruntime/oaruntime/internal/sync"
)

func TestScriptsAreValidAndExpectedLogFollowsTheProvider(t *testing.T) {
	tests := []struct {
		name  string
		steps []provider.Step
		want  []string
	}{
		{
			name:  "tool script with a model sleep",
			steps: toolScript("r1", 400, 1500, 800),
			want: []string{
				"run.started", "run.delta:r1 start",
				"tool.call:fr.call_2", "tool.result:fr.call_2:succeeded",
				"tool.call:fr.call_3", "tool.result:fr.call_3:succeeded",
				"run.delta:r1 mid",
				"tool.call:fr.call_5", "tool.result:fr.call_5:succeeded",
				"run.delta:r1 done:final", "run.finished:succeeded",
			},
		},
		{
			name:  "stream script",
			steps: streamScript("s", 2, 100),
			want: []string{
				"run.started",
				"run.delta:s part 0", "tool.call:fr.call_1", "tool.result:fr.call_1:succeeded",
				"run.delta:s part 1", "tool.call:fr.call_3", "tool.result:fr.call_3:succeeded",
				"run.delta:s done:final", "run.finished:succeeded",
			},
		},
		{
			name:  "script without answer ends after its deltas",
			steps: []provider.Step{{Say: strp("a")}, {Say: strp("b")}},
			want:  []string{"run.started", "run.delta:a", "run.delta:b", "run.finished:succeeded"},
		},
		{
			name:  "empty script answers empty",
			steps: nil,
			want:  []string{"run.started", "run.delta::final", "run.finished:succeeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := json.Marshal(tt.steps)
			if err != nil {
				t.Fatal(err)
			}
			if tt.steps != nil {
				if _, err := provider.ParseScript(raw); err != nil {
					t.Fatalf("the provider rejects the drill's script %s: %v", raw, err)
				}
			}
			if got := expectedLog("fr", tt.steps); !slices.Equal(got, tt.want) {
				t.Fatalf("expectedLog:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestExpectedLogMatchesTheScriptedProvider walks the real scripted provider
// the way the executor does (deltas, then tool calls, results fed back) and
// compares with expectedLog, so the drill's expectation cannot drift from
// the provider's semantics unnoticed.
func TestExpectedLogMatchesTheScriptedProvider(t *testing.T) {
	for _, steps := range [][]provider.Step{toolScript("x", 0, 10, 10), toolScript("y", 5, 10, 10), streamScript("z", 3, 1)} {
		raw, _ := json.Marshal(steps)
		p := &provider.Scripted{}
		msgs := []provider.Message{{Role: "user", Content: "hi", Script: raw}}
		got := []string{"run.started"}
		for call := 1; call < 20; call++ {
			resp, err := p.Complete(context.Background(), provider.Request{Messages: msgs})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range resp.Deltas {
				got = append(got, "run.delta:"+d)
			}
			if len(resp.ToolCalls) == 0 {
				if resp.Answer != "" || len(resp.Deltas) == 0 {
					got = append(got, "run.delta:"+resp.Answer+":final")
				}
				got = append(got, "run.finished:succeeded")
				break
			}
			msgs = append(msgs, provider.Message{Role: "assistant", ToolCalls: resp.ToolCalls})
			for _, tc := range resp.ToolCalls {
				id := "fr." + tc.ID
				got = append(got, "tool.call:"+id, "tool.result:"+id+":succeeded")
				msgs = append(msgs, provider.Message{Role: "tool", ToolCallID: tc.ID, Content: "{}"})
			}
		}
		if want := expectedLog("fr", steps); !slices.Equal(got, want) {
			t.Fatalf("provider walk:\n got %q\nwant %q", got, want)
		}
	}
}

func TestCompareLogical(t *testing.T) {
	want := []string{"a", "b", "c"}
	tests := []struct {
		name                        string
		got                         []string
		lost, dup, unexpected       int
		inOrder                     bool
		missingContains, extraConta string
	}{
		{name: "identical", got: []string{"a", "b", "c"}, inOrder: true},
		{name: "lost", got: []string{"a", "c"}, lost: 1, missingContains: "b"},
		{name: "duplicated", got: []string{"a", "b", "b", "c"}, dup: 1, extraConta: "b"},
		{name: "unexpected", got: []string{"a", "b", "c", "z"}, unexpected: 1, extraConta: "z"},
		{name: "reordered", got: []string{"b", "a", "c"}},
		{name: "everything", got: []string{"a", "a", "z"}, lost: 2, dup: 1, unexpected: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := compareLogical(want, tt.got)
			if d.Lost != tt.lost || d.Duplicated != tt.dup || d.Unexpected != tt.unexpected || d.InOrder != tt.inOrder {
				t.Fatalf("got %+v", d)
			}
			if tt.missingContains != "" && !slices.Contains(d.Missing, tt.missingContains) {
				t.Fatalf("missing %v lacks %q", d.Missing, tt.missingContains)
			}
			if tt.extraConta != "" && !slices.Contains(d.Extra, tt.extraConta) {
				t.Fatalf("extra %v lacks %q", d.Extra, tt.extraConta)
			}
		})
	}
}

func TestCheckSequence(t *testing.T) {
	seqs := func(ns ...int64) []apiEvent {
		out := make([]apiEvent, len(ns))
		for i, n := range ns {
			out[i] = apiEvent{Seq: n}
		}
		return out
	}
	tests := []struct {
		name      string
		evs       []apiEvent
		latest    int64
		gaps      int
		wantProbs bool
	}{
		{"gap free", seqs(1, 2, 3), 3, 0, false},
		{"gap", seqs(1, 3, 4), 4, 3, true},
		{"repeat", seqs(1, 2, 2, 3), 3, 2, true},
		{"tail missing", seqs(1, 2), 4, 2, true},
		{"empty", nil, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gaps, probs := checkSequence(tt.evs, tt.latest)
			if gaps != tt.gaps || (len(probs) > 0) != tt.wantProbs {
				t.Fatalf("gaps %d problems %q", gaps, probs)
			}
		})
	}
}

// chain builds a hash-chained log of (type, payload) pairs.
func chain(runID string, items ...[2]string) []apiEvent {
	var out []apiEvent
	prev := ""
	for i, it := range items {
		payload, err := runs.CanonicalizeRaw([]byte(it[1]))
		if err != nil {
			panic(err)
		}
		seq := int64(i + 1)
		h := runs.EventHash(runID, seq, it[0], payload, prev)
		out = append(out, apiEvent{Seq: seq, EventType: it[0], Payload: payload, PrevHash: prev, EventHash: h, CreatedAt: time.Unix(1700000000+int64(i), 0).UTC()})
		prev = h
	}
	return out
}

// fakeRuntime answers GET run, events and verify for one run from a fixed
// log, the way the internal API does.
func fakeRuntime(t *testing.T, runID, status string, evs []apiEvent, verifyOK bool) *client.Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /internal/v1/runs/{id}", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"run": map[string]any{"run_id": runID, "status": status, "latest_seq": len(evs)}})
	})
	mux.HandleFunc("GET /internal/v1/runs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"events": evs, "next_cursor": nil})
	})
	mux.HandleFunc("GET /internal/v1/runs/{id}/verify", func(w http.ResponseWriter, r *http.Request) {
		head := ""
		if len(evs) > 0 {
			head = evs[len(evs)-1].EventHash
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": verifyOK, "event_count": len(evs), "head_hash": head, "latest_seq": len(evs)})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return client.New(srv.URL, []byte("0123456789abcdef0123456789abcdef"), drillSub)
}

func TestCheckRun(t *testing.T) {
	steps := []provider.Step{{Say: strp("hi")}, {Tool: "echo", Input: rawJSON(map[string]any{})}, {Answer: strp("ok")}}
	plan := &plannedRun{RunID: "run_1", FrameID: "fr", Steps: steps, WantStatus: "succeeded"}
	started := [2]string{"run.started", `{}`}
	delta := [2]string{"run.delta", `{"delta":"hi","frame_id":"fr"}`}
	call := [2]string{"tool.call", `{"tool_call_id":"fr.call_1","tool_name":"echo"}`}
	result := [2]string{"tool.result", `{"tool_call_id":"fr.call_1","status":"succeeded"}`}
	lost := [2]string{"run.executor_lost", `{"lease_owner":"node-1"}`}
	final := [2]string{"run.delta", `{"delta":"ok","final":true}`}
	finished := [2]string{"run.finished", `{"status":"succeeded"}`}
	tests := []struct {
		name                  string
		status                string
		log                   []apiEvent
		verifyOK              bool
		lost, dup, toolDup    int
		executorLost          int
		ok                    bool
		problemSubstr         string
		tamper                func([]apiEvent)
		wantOutOfOrderProblem bool
	}{
		{name: "complete", status: "succeeded", log: chain("run_1", started, delta, call, result, final, finished), verifyOK: true, ok: true},
		{name: "recovered after a kill", status: "succeeded", log: chain("run_1", started, delta, call, lost, result, final, finished), verifyOK: true, executorLost: 1, ok: true},
		{
			// What the database_restart drill found: the tool call of a
			// model call whose delta was logged is lost, and the resumed
			// executor finishes the run as answered without its tools.
			name: "tools skipped after recovery", status: "succeeded",
			log: chain("run_1", started, delta, lost, finished), verifyOK: true, executorLost: 1,
			lost: 3, problemSubstr: "expected events lost",
		},
		{name: "duplicated tool result", status: "succeeded", log: chain("run_1", started, delta, call, result, result, final, finished), verifyOK: true, dup: 1, toolDup: 1, problemSubstr: "2 tool.result events"},
		{name: "wrong status", status: "failed", log: chain("run_1", started, delta, call, result, final, finished), verifyOK: true, problemSubstr: `status "failed"`},
		{name: "server says chain broken", status: "succeeded", log: chain("run_1", started, delta, call, result, final, finished), verifyOK: false, problemSubstr: "GET verify"},
		{
			name: "hash tampered", status: "succeeded", log: chain("run_1", started, delta, call, result, final, finished), verifyOK: true,
			tamper: func(evs []apiEvent) {
				evs[2].Payload = json.RawMessage(`{"tool_call_id":"fr.call_1","tool_name":"other"}`)
			}, problemSubstr: "recomputed",
		},
		{name: "finished not last", status: "succeeded", log: chain("run_1", started, delta, call, result, finished, final), verifyOK: true, problemSubstr: "not the last event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.tamper != nil {
				tt.tamper(tt.log)
			}
			c := fakeRuntime(t, "run_1", tt.status, tt.log, tt.verifyOK)
			rc := checkRun(context.Background(), c, plan)
			if (len(rc.Problems) == 0) != tt.ok {
				t.Fatalf("problems %q, want ok=%v", rc.Problems, tt.ok)
			}
			if tt.problemSubstr != "" && !strings.Contains(strings.Join(rc.Problems, "\n"), tt.problemSubstr) {
				t.Fatalf("problems %q lack %q", rc.Problems, tt.problemSubstr)
			}
			if rc.Lost != tt.lost || rc.Duplicated != tt.dup || rc.DupToolResult != tt.toolDup || rc.ExecutorLost != tt.executorLost {
				t.Fatalf("lost %d dup %d tooldup %d executor_lost %d", rc.Lost, rc.Duplicated, rc.DupToolResult, rc.ExecutorLost)
			}
		})
	}
}

func TestCheckSSE(t *testing.T) {
	log := chain("run_s",
		[2]string{"run.started", `{}`},
		[2]string{"run.delta", `{"delta":"a"}`},
		[2]string{"tool.call", `{"tool_call_id":"x"}`},
		[2]string{"run.finished", `{"status":"succeeded"}`},
	)
	data := func(seq int64) string {
		ev := log[seq-1]
		msgs, err := stream.MapEvent(store.Event{RunID: "run_s", Seq: ev.Seq, EventType: ev.EventType, Payload: ev.Payload})
		if err != nil {
			t.Fatal(err)
		}
		return msgs[0].Data
	}
	reader := func(from int64, ids []int64, done int, mutate func(*sseReader)) *sseReader {
		s := newSSEReader("run_s", from)
		for _, id := range ids {
			s.ids = append(s.ids, id)
			s.data[id] = append(s.data[id], data(id))
		}
		s.done = done
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	tests := []struct {
		name                     string
		s                        *sseReader
		missed, dup, ooo, mismat int
		ok                       bool
	}{
		{name: "exact", s: reader(0, []int64{1, 2, 3, 4}, 1, nil), ok: true},
		{name: "resumed from 2", s: reader(2, []int64{3, 4}, 1, nil), ok: true},
		{name: "gap", s: reader(0, []int64{1, 2, 4}, 1, nil), missed: 1},
		{name: "duplicate after reconnect", s: reader(0, []int64{1, 2, 2, 3, 4}, 1, nil), dup: 1, ooo: 1},
		{name: "before the cursor", s: reader(2, []int64{2, 3, 4}, 1, nil), ooo: 1, mismat: 1},
		{name: "no done", s: reader(0, []int64{1, 2, 3, 4}, 0, nil)},
		{name: "other data under an id", s: reader(0, []int64{1, 2, 3, 4}, 1, func(s *sseReader) { s.data[3] = []string{data(2)} }), mismat: 1},
		{name: "error", s: reader(0, []int64{1, 2, 3, 4}, 1, func(s *sseReader) { s.err = fmt.Errorf("boom") })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkSSE(tt.s, log)
			if c.Missed != tt.missed || c.Duplicated != tt.dup || c.OutOfOrder != tt.ooo || c.DataMismatch != tt.mismat || (len(c.Problems) == 0) != tt.ok {
				t.Fatalf("got %+v", c)
			}
		})
	}
}

func TestParsePostmasterOpts(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{
			name: "ci cluster",
			in:   `/usr/lib/postgresql/15/bin/postgres "-D" "/tmp/oaruntime-ci-pg.abc" "-c" "listen_addresses=127.0.0.1" "-p" "55432" "-k" "/tmp" "-c" "fsync=off"` + "\n",
			want: []string{"-c", "listen_addresses=127.0.0.1", "-p", "55432", "-k", "/tmp", "-c", "fsync=off"},
		},
		{name: "no options", in: "/usr/bin/postgres\n", want: nil},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "unquoted", in: `/bin/postgres -D /x`, wantErr: "unquoted"},
		{name: "unterminated", in: `/bin/postgres "-D`, wantErr: "unterminated"},
		{name: "needs quoting", in: `/bin/postgres "-c" "search_path=a b"`, wantErr: "needs quoting"},
		{name: "shell metacharacter", in: `/bin/postgres "-c" "x=$(id)"`, wantErr: "needs quoting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePostmasterOpts(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	stop, start := at(10), at(20)
	samples := []readySample{
		{At: at(9), Code: 200},
		{At: at(10.2), Code: 503, Failed: "database"},
		{At: at(15), Code: 503, Failed: "database"},
		{At: at(20.5), Code: 503, Failed: "notification_listener"},
		{At: at(21.5), Code: 200},
		{At: at(22), Code: 200},
		{At: at(23), Code: 503, Failed: "database"},
	}
	f := readiness(samples, stop, start)
	if f.Saw503 != 3 || f.NamedFailed != "database" || f.First503 != 200*time.Millisecond || f.First200After != 1500*time.Millisecond || f.Not200AfterRec != 1 {
		t.Fatalf("got %+v", f)
	}
	none := readiness([]readySample{{At: at(11), Code: 0}, {At: at(21), Code: 0}}, stop, start)
	if none.Saw503 != 0 || none.First200After != -1 || none.First503 != -1 {
		t.Fatalf("no answers: %+v", none)
	}
}

func TestWithSchema(t *testing.T) {
	got, err := withSchema("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "drill_x")
	if err != nil || !strings.Contains(got, "schema=drill_x") || !strings.Contains(got, "sslmode=disable") {
		t.Fatalf("%s %v", got, err)
	}
}

func TestSummaryNeverCountsNotRunAsPassed(t *testing.T) {
	ok := newRec(ExecutorRestartRecovery, SQLite)
	ok.count("runs", 3)
	bad := newRec(StreamReconnectResume, SQLite)
	bad.failf("stream of run_x: event 3 never received")
	results := []Result{
		ok.done(), bad.done(),
		notRun(SyncReconnectReplay, "-", "no /sync/v1", false),
		notRun(ReplicaFailover, Postgres, "OA_TEST_DATABASE_URL is not set", true),
	}
	totals, passed := Summarize(results)
	if passed || totals[StatusPassed] != 1 || totals[StatusFailed] != 2 || totals[StatusNotRun] != 1 {
		t.Fatalf("totals %v passed %v", totals, passed)
	}
	if results[3].Status != StatusFailed || !strings.Contains(results[3].Failures[0], "required") {
		t.Fatalf("a required drill that cannot run must fail: %+v", results[3])
	}
	var b bytes.Buffer
	if err := WriteMarkdown(&b, Summary{Harness: Harness, Totals: totals, Passed: passed, Settings: map[string]any{}}, results); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{"FAILED", "| sync_reconnect_replay | - | not_run |", "event 3 never received", "1 passed / 2 failed / 1 not run"} {
		if !strings.Contains(md, want) {
			t.Fatalf("SUMMARY.md lacks %q:\n%s", want, md)
		}
	}
	allOK, passed := Summarize([]Result{ok.done(), notRun(SinkOutageReplay, "-", "x", false)})
	if !passed || allOK[StatusNotRun] != 1 {
		t.Fatalf("not_run alone does not fail the gate: %v", allOK)
	}
}

func TestMetricSum(t *testing.T) {
	expo := `# HELP openagents_runtime_khala_projection_write_failures_total x
# TYPE openagents_runtime_khala_projection_write_failures_total counter
openagents_runtime_khala_projection_write_failures_total{projection="run_summary",reason_class="http_5xx"} 4
openagents_runtime_khala_projection_write_failures_total{projection="codex_worker_summary",reason_class="http_5xx"} 2
openagents_runtime_khala_projection_write_failures_total{projection="run_summary",reason_class="timeout"} 1
openagents_runtime_khala_projection_write_failures_total_extra{reason_class="http_5xx"} 100
openagents_runtime_khala_sink_up 0
`
	tests := []struct {
		name   string
		metric string
		labels []string
		want   float64
		found  bool
	}{
		{"by class", "openagents_runtime_khala_projection_write_failures_total", []string{`reason_class="http_5xx"`}, 6, true},
		{"two labels", "openagents_runtime_khala_projection_write_failures_total", []string{`reason_class="http_5xx"`, `projection="run_summary"`}, 4, true},
		{"all", "openagents_runtime_khala_projection_write_failures_total", nil, 7, true},
		{"no labels", "openagents_runtime_khala_sink_up", nil, 0, true},
		{"absent", "openagents_runtime_khala_sink_down", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found := metricSum(expo, tt.metric, tt.labels...)
			if got != tt.want || found != tt.found {
				t.Fatalf("got %v %v", got, found)
			}
		})
	}
}

func TestFakeKhala(t *testing.T) {
	k := &fakeKhala{key: "k", accepted: map[string][]khalaDoc{}}
	srv := httptest.NewServer(k)
	defer srv.Close()
	post := func(auth string) int {
		body := `{"path":"runtime:upsertRunSummary","format":"khala_encoded_json","args":[{"document_id":"d","summary":{"status":"running","runtime_source":{"seq":3}},"summary_hash":"h"}]}`
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/mutation", strings.NewReader(body))
		req.Header.Set("authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("Khala wrong"); code != http.StatusUnauthorized || k.badAuth != 1 {
		t.Fatalf("bad key: %d %d", code, k.badAuth)
	}
	k.setDown(true)
	if code := post("Khala k"); code != http.StatusServiceUnavailable || k.rejected != 1 {
		t.Fatalf("down: %d %d", code, k.rejected)
	}
	k.setDown(false)
	if code := post("Khala k"); code != http.StatusOK {
		t.Fatalf("up: %d", code)
	}
	if doc, ok := k.latest("d"); !ok || doc.Seq != 3 || doc.Status != "running" || doc.Hash != "h" {
		t.Fatalf("latest %+v %v", doc, ok)
	}
}

func TestCheckSyncReader(t *testing.T) {
	var stream []khalasync.Update
	for w := int64(1); w <= 5; w++ {
		stream = append(stream, khalasync.Update{Topic: syncTopic, Watermark: w, PayloadHash: fmt.Sprintf("h%d", w)})
	}
	reader := func(start int64, wms ...int64) *syncReader {
		s := newSyncReader("r", start)
		for _, w := range wms {
			s.wms = append(s.wms, w)
			s.hashes[w] = append(s.hashes[w], fmt.Sprintf("h%d", w))
		}
		return s
	}
	tests := []struct {
		name                    string
		s                       *syncReader
		missed, dup, ooo, hashM int
		ok                      bool
	}{
		{name: "exact", s: reader(0, 1, 2, 3, 4, 5), ok: true},
		{name: "resumed after 3", s: reader(3, 4, 5), ok: true},
		{name: "gap at the reconnect", s: reader(0, 1, 2, 4, 5), missed: 1},
		{name: "replayed again after the reconnect", s: reader(0, 1, 2, 3, 2, 3, 4, 5), dup: 2, ooo: 2},
		{name: "before the resume point", s: reader(3, 3, 4, 5), ooo: 1, hashM: 1},
		{name: "other payload", s: func() *syncReader { s := reader(0, 1, 2, 3, 4, 5); s.hashes[2] = []string{"x"}; return s }(), hashM: 1},
		{name: "fatal error", s: func() *syncReader {
			s := reader(0, 1, 2, 3, 4, 5)
			s.fatal = &syncFatal{msg: khalasync.ErrorMessage{Code: khalasync.CodeStaleCursor}}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := checkSyncReader(tt.s, stream)
			if c.Missed != tt.missed || c.Duplicated != tt.dup || c.OutOfOrder != tt.ooo || c.HashMismatch != tt.hashM || (len(c.Problems) == 0) != tt.ok {
				t.Fatalf("got %+v", c)
			}
		})
	}
}
