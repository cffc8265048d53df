package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// WorkerDriver is a driver that implements both contracts.
type WorkerDriver interface {
	store.Store
	store.WorkerStore
}

// RunWorkers runs the codex worker sub-suite (store.WorkerStore). newStore
// returns a fresh, migrated, empty store per call.
func RunWorkers(t *testing.T, newStore func(t *testing.T) WorkerDriver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s WorkerDriver)
	}{
		{"CreateAndGet", wkTestCreateAndGet},
		{"CreateIdempotent", wkTestCreateIdempotent},
		{"Unknown", wkTestUnknown},
		{"Heartbeat", wkTestHeartbeat},
		{"AppendEvents", wkTestAppendEvents},
		{"IdempotencyKey", wkTestIdempotencyKey},
		{"Lifecycle", wkTestLifecycle},
		{"Failed", wkTestFailed},
		{"Stop", wkTestStop},
		{"StopFromStopping", wkTestStopFromStopping},
		{"Reattach", wkTestReattach},
		{"AppendConcurrentGapFree", wkTestAppendConcurrent},
		{"IdempotencyConcurrent", wkTestIdempotencyConcurrent},
		{"CreateConcurrent", wkTestCreateConcurrent},
		{"StopConcurrent", wkTestStopConcurrent},
		{"ListAndLoad", wkTestListAndLoad},
		{"ListWorkerIDs", wkTestListWorkerIDs},
		{"Watch", wkTestWatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

const wkOwner = "user:1"

func wkCreate(t *testing.T, s WorkerDriver, id string) store.Worker {
	t.Helper()
	w, outcome, err := s.CreateWorker(context.Background(), store.CreateWorkerInput{WorkerID: id, OwnerSub: wkOwner})
	if err != nil {
		t.Fatalf("create worker %s: %v", id, err)
	}
	if outcome != store.WorkerCreated {
		t.Fatalf("create worker %s: outcome %q, want created", id, outcome)
	}
	return w
}

func wkGet(t *testing.T, s WorkerDriver, id string) store.Worker {
	t.Helper()
	w, err := s.GetWorker(context.Background(), id)
	if err != nil {
		t.Fatalf("get worker %s: %v", id, err)
	}
	return w
}

func wkAppend(t *testing.T, s WorkerDriver, id, typ, payload string) store.WorkerEvent {
	t.Helper()
	ev, replay, err := s.AppendWorkerEvent(context.Background(), store.WorkerEventInput{WorkerID: id, EventType: typ, Payload: json.RawMessage(payload)})
	if err != nil {
		t.Fatalf("append %s to %s: %v", typ, id, err)
	}
	if replay {
		t.Fatalf("append %s to %s: replay without a key", typ, id)
	}
	return ev
}

func wkEvents(t *testing.T, s WorkerDriver, id string) []store.WorkerEvent {
	t.Helper()
	evs, err := s.ListWorkerEvents(context.Background(), id, 0, 10000)
	if err != nil {
		t.Fatalf("list events of %s: %v", id, err)
	}
	return evs
}

// wkTypes lists the event types in order, checking seqs are 1..n.
func wkTypes(t *testing.T, evs []store.WorkerEvent) []string {
	t.Helper()
	out := make([]string, len(evs))
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: seqs are not gap-free from 1", i, e.Seq)
		}
		out[i] = e.EventType
	}
	return out
}

func wkEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func wkRecent(t *testing.T, what string, tm time.Time) {
	t.Helper()
	if tm.IsZero() || tm.Location() != time.UTC || time.Since(tm) > time.Hour || time.Until(tm) > time.Hour {
		t.Fatalf("%s = %v: want a recent UTC time", what, tm)
	}
	if tm.Nanosecond()%1000 != 0 {
		t.Fatalf("%s = %v: finer than the microseconds the database keeps", what, tm)
	}
}

func wkTestCreateAndGet(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	w, outcome, err := s.CreateWorker(ctx, store.CreateWorkerInput{
		WorkerID: "w1", OwnerSub: "guest:scope-a", WorkspaceRef: "ws://repo", CodexHomeRef: "home/1", Adapter: "in_memory",
		Metadata: json.RawMessage(` { "b": 1, "a": "<x>" } `),
	})
	if err != nil || outcome != store.WorkerCreated {
		t.Fatalf("create: outcome %q err %v", outcome, err)
	}
	if w.WorkerID != "w1" || w.OwnerSub != "guest:scope-a" || w.Status != store.WorkerStarting || w.LatestSeq != 1 ||
		w.WorkspaceRef != "ws://repo" || w.CodexHomeRef != "home/1" || w.Adapter != "in_memory" ||
		string(w.Metadata) != `{"a":"<x>","b":1}` || w.LastHeartbeatAt != nil || w.StoppedAt != nil || w.StoppedReason != "" {
		t.Fatalf("created worker = %+v (metadata %s)", w, w.Metadata)
	}
	wkRecent(t, "created_at", w.CreatedAt)
	if !w.StartedAt.Equal(w.CreatedAt) || !w.UpdatedAt.Equal(w.CreatedAt) {
		t.Fatalf("started_at %v updated_at %v, want created_at %v", w.StartedAt, w.UpdatedAt, w.CreatedAt)
	}
	got := wkGet(t, s, "w1")
	if got.Status != w.Status || got.LatestSeq != w.LatestSeq || !got.CreatedAt.Equal(w.CreatedAt) || string(got.Metadata) != string(w.Metadata) {
		t.Fatalf("get = %+v, want %+v", got, w)
	}
	evs := wkEvents(t, s, "w1")
	if !wkEqual(wkTypes(t, evs), []string{store.WorkerEventStarted}) {
		t.Fatalf("events after create: %+v", evs)
	}
	if string(evs[0].Payload) != `{"reason":"create"}` || evs[0].WorkerID != "w1" {
		t.Fatalf("worker.started = %+v (payload %s)", evs[0], evs[0].Payload)
	}
	wkRecent(t, "event created_at", evs[0].CreatedAt)

	// No metadata is the empty object, so a summary never shows null.
	w2 := wkCreate(t, s, "w2")
	if string(w2.Metadata) != `{}` {
		t.Fatalf("default metadata = %s, want {}", w2.Metadata)
	}
	for _, bad := range []string{`[1]`, `"x"`, `{"a":`} {
		if _, _, err := s.CreateWorker(ctx, store.CreateWorkerInput{WorkerID: "w3", OwnerSub: wkOwner, Metadata: json.RawMessage(bad)}); err == nil {
			t.Fatalf("metadata %s accepted", bad)
		}
	}
	if _, err := s.GetWorker(ctx, "w3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a rejected create left a worker: %v", err)
	}
	for _, in := range []store.CreateWorkerInput{{OwnerSub: wkOwner}, {WorkerID: "w4"}} {
		if _, _, err := s.CreateWorker(ctx, in); err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("create %+v: err %v, want a validation error", in, err)
		}
	}
}

func wkTestCreateIdempotent(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	base := store.CreateWorkerInput{WorkerID: "w1", OwnerSub: wkOwner, Adapter: "a", WorkspaceRef: "ws", CodexHomeRef: "h",
		Metadata: json.RawMessage(`{"x":1,"y":[1,2]}`)}
	first, outcome, err := s.CreateWorker(ctx, base)
	if err != nil || outcome != store.WorkerCreated {
		t.Fatalf("create: %q %v", outcome, err)
	}
	same := base
	same.Metadata = json.RawMessage("{ \"y\" : [1,2],\n \"x\": 1 }")
	again, outcome, err := s.CreateWorker(ctx, same)
	if err != nil || outcome != store.WorkerExisting {
		t.Fatalf("identical create: outcome %q err %v, want existing", outcome, err)
	}
	if again.LatestSeq != 1 || !again.UpdatedAt.Equal(first.UpdatedAt) {
		t.Fatalf("identical create changed the worker: %+v", again)
	}
	// Absent, null and {} metadata are the same document.
	wkCreate(t, s, "w2")
	for _, m := range []string{``, `null`, `{}`} {
		if _, outcome, err := s.CreateWorker(ctx, store.CreateWorkerInput{WorkerID: "w2", OwnerSub: wkOwner, Metadata: json.RawMessage(m)}); err != nil || outcome != store.WorkerExisting {
			t.Fatalf("metadata %q on replay: %q %v", m, outcome, err)
		}
	}
	for name, mut := range map[string]func(*store.CreateWorkerInput){
		"owner":          func(in *store.CreateWorkerInput) { in.OwnerSub = "user:2" },
		"adapter":        func(in *store.CreateWorkerInput) { in.Adapter = "b" },
		"workspace_ref":  func(in *store.CreateWorkerInput) { in.WorkspaceRef = "other" },
		"codex_home_ref": func(in *store.CreateWorkerInput) { in.CodexHomeRef = "" },
		"metadata":       func(in *store.CreateWorkerInput) { in.Metadata = json.RawMessage(`{"x":2,"y":[1,2]}`) },
	} {
		in := base
		mut(&in)
		if _, _, err := s.CreateWorker(ctx, in); !errors.Is(err, store.ErrConflict) {
			t.Errorf("create with another %s: err %v, want ErrConflict", name, err)
		}
	}
	if n := len(wkEvents(t, s, "w1")); n != 1 {
		t.Fatalf("replays and conflicts appended events: %d events", n)
	}
}

func wkTestUnknown(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "known")
	for name, call := range map[string]func(id string) error{
		"GetWorker":        func(id string) error { _, err := s.GetWorker(ctx, id); return err },
		"HeartbeatWorker":  func(id string) error { _, _, err := s.HeartbeatWorker(ctx, id, store.TraceContext{}); return err },
		"ListWorkerEvents": func(id string) error { _, err := s.ListWorkerEvents(ctx, id, 0, 10); return err },
		"StopWorker":       func(id string) error { _, _, err := s.StopWorker(ctx, id, "", store.TraceContext{}); return err },
		"LoadWorkerLog":    func(id string) error { _, _, err := s.LoadWorkerLog(ctx, id); return err },
		"AppendWorkerEvent": func(id string) error {
			_, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: id, EventType: "worker.response"})
			return err
		},
	} {
		for _, id := range []string{"nope", "", "w\x00", "w\xff"} {
			if err := call(id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s(%q): err %v, want ErrNotFound", name, id, err)
			}
		}
	}
	// A run with the id is not a worker.
	mustRun(t, s, "run-as-worker")
	if _, err := s.GetWorker(ctx, "run-as-worker"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("run found as worker: %v", err)
	}
}

func wkTestHeartbeat(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	created := wkCreate(t, s, "w1")
	w, ev, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{RequestID: "req-1"})
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if w.Status != store.WorkerRunning || w.LatestSeq != 2 || w.LastHeartbeatAt == nil {
		t.Fatalf("after first heartbeat: %+v", w)
	}
	if ev.Seq != 2 || ev.EventType != store.WorkerEventHeartbeat || string(ev.Payload) != `{}` || ev.Trace.RequestID != "req-1" {
		t.Fatalf("heartbeat event: %+v", ev)
	}
	if w.LastHeartbeatAt.Before(created.CreatedAt) || !w.UpdatedAt.Equal(*w.LastHeartbeatAt) || !ev.CreatedAt.Equal(*w.LastHeartbeatAt) {
		t.Fatalf("heartbeat times: last_heartbeat_at %v updated_at %v event %v created %v", w.LastHeartbeatAt, w.UpdatedAt, ev.CreatedAt, created.CreatedAt)
	}
	first := *w.LastHeartbeatAt
	w2, ev2, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{})
	if err != nil {
		t.Fatalf("second heartbeat: %v", err)
	}
	if w2.Status != store.WorkerRunning || w2.LatestSeq != 3 || ev2.Seq != 3 || w2.LastHeartbeatAt.Before(first) {
		t.Fatalf("after second heartbeat: %+v event %+v", w2, ev2)
	}
	if got := wkGet(t, s, "w1"); got.LatestSeq != 3 || got.LastHeartbeatAt == nil || !got.LastHeartbeatAt.Equal(*w2.LastHeartbeatAt) {
		t.Fatalf("stored after heartbeats: %+v", got)
	}
}

func wkTestAppendEvents(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	ev := wkAppend(t, s, "w1", "worker.request.received", `{"b":2,"a":{"d":1,"c":"<&>"}}`)
	if ev.Seq != 2 || ev.WorkerID != "w1" || string(ev.Payload) != `{"a":{"c":"<&>","d":1},"b":2}` {
		t.Fatalf("event = %+v payload %s", ev, ev.Payload)
	}
	w := wkGet(t, s, "w1")
	if w.Status != store.WorkerRunning || w.LatestSeq != 2 || w.LastHeartbeatAt == nil || !w.LastHeartbeatAt.Equal(ev.CreatedAt) {
		t.Fatalf("an event from the worker must prove it alive: %+v", w)
	}
	if ev := wkAppend(t, s, "w1", " worker.response ", ``); ev.EventType != "worker.response" || string(ev.Payload) != `{}` || ev.Seq != 3 {
		t.Fatalf("trimmed type / empty payload: %+v %s", ev, ev.Payload)
	}
	for _, typ := range []string{"run.delta", "worker.", "worker", "", "workers.x", store.WorkerEventStarted} {
		if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: typ}); !errors.Is(err, store.ErrIllegalTransition) {
			t.Errorf("event type %q: err %v, want ErrIllegalTransition", typ, err)
		}
	}
	if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "worker.x", Payload: json.RawMessage(`{"a":`)}); err == nil {
		t.Fatal("malformed payload accepted")
	}
	if got := wkTypes(t, wkEvents(t, s, "w1")); !wkEqual(got, []string{"worker.started", "worker.request.received", "worker.response"}) {
		t.Fatalf("rejected appends left events: %v", got)
	}
	if w := wkGet(t, s, "w1"); w.LatestSeq != 3 || w.Status != store.WorkerRunning {
		t.Fatalf("rejected appends changed the worker: %+v", w)
	}
}

func wkTestIdempotencyKey(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	wkCreate(t, s, "w2")
	in := store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(`{"id":1}`), IdempotencyKey: "k1"}
	first, replay, err := s.AppendWorkerEvent(ctx, in)
	if err != nil || replay || first.IdempotencyKey != "k1" {
		t.Fatalf("first: %+v replay %v err %v", first, replay, err)
	}
	in.Payload = json.RawMessage(` { "id" : 1 } `)
	again, replay, err := s.AppendWorkerEvent(ctx, in)
	if err != nil || !replay || again.Seq != first.Seq || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Fatalf("replay: %+v replay %v err %v", again, replay, err)
	}
	for name, other := range map[string]store.WorkerEventInput{
		"payload": {WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(`{"id":2}`), IdempotencyKey: "k1"},
		"type":    {WorkerID: "w1", EventType: "worker.error", Payload: json.RawMessage(`{"id":1}`), IdempotencyKey: "k1"},
	} {
		if _, _, err := s.AppendWorkerEvent(ctx, other); !errors.Is(err, store.ErrConflict) {
			t.Errorf("same key, other %s: err %v, want ErrConflict", name, err)
		}
	}
	// Keys are per worker.
	if ev, replay, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w2", EventType: "worker.response", Payload: json.RawMessage(`{"id":1}`), IdempotencyKey: "k1"}); err != nil || replay || ev.WorkerID != "w2" {
		t.Fatalf("same key on another worker: %+v %v %v", ev, replay, err)
	}
	// A retry that arrives after the worker stopped still gets its answer.
	if _, _, err := s.StopWorker(ctx, "w1", "done", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	in.Payload = json.RawMessage(`{"id":1}`)
	if ev, replay, err := s.AppendWorkerEvent(ctx, in); err != nil || !replay || ev.Seq != first.Seq {
		t.Fatalf("replay after stop: %+v %v %v", ev, replay, err)
	}
	in.IdempotencyKey = "k2"
	if _, _, err := s.AppendWorkerEvent(ctx, in); !errors.Is(err, store.ErrIllegalTransition) {
		t.Fatalf("new key after stop: %v, want ErrIllegalTransition", err)
	}
}

func wkTestLifecycle(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	wkAppend(t, s, "w1", store.WorkerEventStopping, `{"reason":"draining"}`)
	if w := wkGet(t, s, "w1"); w.Status != store.WorkerStopping || w.StoppedAt != nil {
		t.Fatalf("after worker.stopping: %+v", w)
	}
	if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: store.WorkerEventStopping}); !errors.Is(err, store.ErrIllegalTransition) {
		t.Fatalf("stopping twice: %v", err)
	}
	// A draining worker still reports and heartbeats.
	wkAppend(t, s, "w1", "worker.response", `{}`)
	if w, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil || w.Status != store.WorkerStopping {
		t.Fatalf("heartbeat while stopping: %+v %v", w, err)
	}
	ev := wkAppend(t, s, "w1", store.WorkerEventStopped, `{"reason":"session closed"}`)
	w := wkGet(t, s, "w1")
	if w.Status != store.WorkerStopped || w.StoppedAt == nil || !w.StoppedAt.Equal(ev.CreatedAt) || w.StoppedReason != "session closed" || w.LatestSeq != ev.Seq {
		t.Fatalf("after worker.stopped: %+v", w)
	}
	for _, typ := range []string{"worker.response", store.WorkerEventStopped, store.WorkerEventFailed, store.WorkerEventHeartbeat} {
		if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: typ}); !errors.Is(err, store.ErrIllegalTransition) {
			t.Errorf("%s on a stopped worker: %v, want ErrIllegalTransition", typ, err)
		}
	}
	if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); !errors.Is(err, store.ErrIllegalTransition) {
		t.Fatalf("heartbeat on a stopped worker: %v", err)
	}
	want := []string{"worker.started", "worker.heartbeat", "worker.stopping", "worker.response", "worker.heartbeat", "worker.stopped"}
	if got := wkTypes(t, wkEvents(t, s, "w1")); !wkEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func wkTestFailed(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	// A failure straight from starting, with a non-string reason.
	wkAppend(t, s, "w1", store.WorkerEventFailed, `{"reason":{"code":-32000}}`)
	w := wkGet(t, s, "w1")
	if w.Status != store.WorkerFailed || w.StoppedAt == nil || w.StoppedReason != "" || w.LatestSeq != 2 {
		t.Fatalf("after worker.failed: %+v", w)
	}
	got, stopped, err := s.StopWorker(ctx, "w1", "late", store.TraceContext{})
	if err != nil || stopped || got.Status != store.WorkerFailed || got.LatestSeq != 2 {
		t.Fatalf("stop of a failed worker: %+v stopped=%v err=%v", got, stopped, err)
	}
}

func wkTestStop(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	w, stopped, err := s.StopWorker(ctx, "w1", "  user asked  ", store.TraceContext{RequestID: "req-stop"})
	if err != nil || !stopped {
		t.Fatalf("stop: stopped=%v err=%v", stopped, err)
	}
	if w.Status != store.WorkerStopped || w.StoppedReason != "user asked" || w.StoppedAt == nil || w.LatestSeq != 4 {
		t.Fatalf("stopped worker: %+v", w)
	}
	evs := wkEvents(t, s, "w1")
	if got := wkTypes(t, evs); !wkEqual(got, []string{"worker.started", "worker.heartbeat", "worker.stopping", "worker.stopped"}) {
		t.Fatalf("events %v", got)
	}
	for _, e := range evs[2:] {
		if string(e.Payload) != `{"reason":"user asked"}` || e.Trace.RequestID != "req-stop" {
			t.Fatalf("%s: payload %s trace %+v", e.EventType, e.Payload, e.Trace)
		}
	}
	again, stopped, err := s.StopWorker(ctx, "w1", "other", store.TraceContext{})
	if err != nil || stopped || again.LatestSeq != 4 || again.StoppedReason != "user asked" || !again.UpdatedAt.Equal(w.UpdatedAt) {
		t.Fatalf("second stop: %+v stopped=%v err=%v", again, stopped, err)
	}
	// Without a reason, and straight from starting.
	wkCreate(t, s, "w2")
	w2, stopped, err := s.StopWorker(ctx, "w2", "", store.TraceContext{})
	if err != nil || !stopped || w2.StoppedReason != store.DefaultStopReason || w2.LatestSeq != 3 {
		t.Fatalf("stop from starting: %+v %v %v", w2, stopped, err)
	}
}

func wkTestStopFromStopping(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	wkAppend(t, s, "w1", store.WorkerEventStopping, `{}`)
	w, stopped, err := s.StopWorker(ctx, "w1", "r", store.TraceContext{})
	if err != nil || !stopped || w.Status != store.WorkerStopped || w.LatestSeq != 3 {
		t.Fatalf("stop of a stopping worker: %+v %v %v", w, stopped, err)
	}
	if got := wkTypes(t, wkEvents(t, s, "w1")); !wkEqual(got, []string{"worker.started", "worker.stopping", "worker.stopped"}) {
		t.Fatalf("events %v", got)
	}
}

func wkTestReattach(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	in := store.CreateWorkerInput{WorkerID: "w1", OwnerSub: wkOwner, Adapter: "a", Metadata: json.RawMessage(`{"k":"v"}`)}
	if _, _, err := s.CreateWorker(ctx, in); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	stoppedW, _, err := s.StopWorker(ctx, "w1", "bye", store.TraceContext{})
	if err != nil {
		t.Fatal(err)
	}
	conflicting := in
	conflicting.Adapter = "b"
	if _, _, err := s.CreateWorker(ctx, conflicting); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("reattach with other fields: %v, want ErrConflict", err)
	}
	w, outcome, err := s.CreateWorker(ctx, in)
	if err != nil || outcome != store.WorkerReattached {
		t.Fatalf("reattach: %q %v", outcome, err)
	}
	if w.Status != store.WorkerStarting || w.LatestSeq != 5 || w.StoppedAt != nil || w.StoppedReason != "" ||
		w.LastHeartbeatAt != nil || w.StartedAt.Before(stoppedW.UpdatedAt) || !w.CreatedAt.Equal(stoppedW.CreatedAt) {
		t.Fatalf("reattached worker: %+v (stopped one %+v)", w, stoppedW)
	}
	evs := wkEvents(t, s, "w1")
	last := evs[len(evs)-1]
	if last.Seq != 5 || last.EventType != store.WorkerEventStarted || string(last.Payload) != `{"previous_status":"stopped","reason":"reattach"}` {
		t.Fatalf("reattach event: %+v payload %s", last, last.Payload)
	}
	// Now live again: an identical create is a plain replay.
	if _, outcome, err := s.CreateWorker(ctx, in); err != nil || outcome != store.WorkerExisting {
		t.Fatalf("create after reattach: %q %v", outcome, err)
	}
	if w, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil || w.Status != store.WorkerRunning {
		t.Fatalf("heartbeat after reattach: %+v %v", w, err)
	}
	// A failed worker reattaches too.
	wkAppend(t, s, "w1", store.WorkerEventFailed, `{"reason":"crash"}`)
	if _, outcome, err := s.CreateWorker(ctx, in); err != nil || outcome != store.WorkerReattached {
		t.Fatalf("reattach after failure: %q %v", outcome, err)
	}
	evs = wkEvents(t, s, "w1")
	if string(evs[len(evs)-1].Payload) != `{"previous_status":"failed","reason":"reattach"}` {
		t.Fatalf("reattach-after-failure payload %s", evs[len(evs)-1].Payload)
	}
}

// concurrency is the number of goroutines of the concurrent tests.
const wkConcurrency = 16

func wkTestAppendConcurrent(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	const each = 10
	var wg sync.WaitGroup
	errs := make(chan error, wkConcurrency*each)
	for g := range wkConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				in := store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(fmt.Sprintf(`{"g":%d,"i":%d}`, g, i))}
				if i%3 == 0 {
					if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
						errs <- err
					}
					continue
				}
				if _, _, err := s.AppendWorkerEvent(ctx, in); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent append: %v", err)
	}
	evs := wkEvents(t, s, "w1")
	wkTypes(t, evs) // gap-free 1..n
	total := 1 + wkConcurrency*each
	if len(evs) != total {
		t.Fatalf("%d events, want %d", len(evs), total)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if e.EventType == "worker.response" {
			if seen[string(e.Payload)] {
				t.Fatalf("payload %s stored twice", e.Payload)
			}
			seen[string(e.Payload)] = true
		}
	}
	if want := wkConcurrency * (each - (each+2)/3); len(seen) != want {
		t.Fatalf("%d distinct responses, want %d", len(seen), want)
	}
	if w := wkGet(t, s, "w1"); w.LatestSeq != int64(total) || w.Status != store.WorkerRunning {
		t.Fatalf("worker after concurrent appends: %+v", w)
	}
}

func wkTestIdempotencyConcurrent(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		fresh   int
		seqs    = map[int64]bool{}
		errList []error
	)
	for range wkConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, replay, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(`{"n":1}`), IdempotencyKey: "same"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errList = append(errList, err)
				return
			}
			if !replay {
				fresh++
			}
			seqs[ev.Seq] = true
		}()
	}
	wg.Wait()
	if len(errList) > 0 {
		t.Fatalf("concurrent same-key appends: %v", errList)
	}
	if fresh != 1 || len(seqs) != 1 || !seqs[2] {
		t.Fatalf("same-key appends: %d fresh, seqs %v; want exactly one fresh at seq 2", fresh, seqs)
	}
	if n := len(wkEvents(t, s, "w1")); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}

func wkTestCreateConcurrent(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[string]int{}
		errList  []error
	)
	for range wkConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, outcome, err := s.CreateWorker(ctx, store.CreateWorkerInput{WorkerID: "w1", OwnerSub: wkOwner, Metadata: json.RawMessage(`{"a":1}`)})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errList = append(errList, err)
				return
			}
			outcomes[outcome]++
		}()
	}
	wg.Wait()
	if len(errList) > 0 {
		t.Fatalf("concurrent creates: %v", errList)
	}
	if outcomes[store.WorkerCreated] != 1 || outcomes[store.WorkerExisting] != wkConcurrency-1 {
		t.Fatalf("outcomes %v: want one created, the rest existing", outcomes)
	}
	if n := len(wkEvents(t, s, "w1")); n != 1 {
		t.Fatalf("%d events after concurrent creates, want 1", n)
	}
}

func wkTestStopConcurrent(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		stops   int
		errList []error
	)
	for g := range wkConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			var stopped bool
			if g%2 == 0 {
				_, stopped, err = s.StopWorker(ctx, "w1", fmt.Sprintf("r%d", g), store.TraceContext{})
			} else {
				// Events racing the stop either land before it or are refused.
				_, _, err = s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response"})
				if errors.Is(err, store.ErrIllegalTransition) {
					err = nil
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errList = append(errList, err)
			}
			if stopped {
				stops++
			}
		}()
	}
	wg.Wait()
	if len(errList) > 0 {
		t.Fatalf("concurrent stops: %v", errList)
	}
	if stops != 1 {
		t.Fatalf("%d stops took effect, want 1", stops)
	}
	types := wkTypes(t, wkEvents(t, s, "w1"))
	if types[len(types)-1] != store.WorkerEventStopped {
		t.Fatalf("last event %s, want worker.stopped (events %v)", types[len(types)-1], types)
	}
	n := 0
	for _, typ := range types {
		if typ == store.WorkerEventStopped {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d worker.stopped events, want 1", n)
	}
}

func wkTestListAndLoad(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	wkCreate(t, s, "w1")
	for i := range 9 {
		wkAppend(t, s, "w1", "worker.response", fmt.Sprintf(`{"i":%d}`, i))
	}
	page, err := s.ListWorkerEvents(ctx, "w1", 3, 4)
	if err != nil || len(page) != 4 || page[0].Seq != 4 || page[3].Seq != 7 {
		t.Fatalf("page after 3 limit 4: %+v %v", page, err)
	}
	if tail, err := s.ListWorkerEvents(ctx, "w1", 10, 5); err != nil || len(tail) != 0 {
		t.Fatalf("after the head: %+v %v", tail, err)
	}
	if all, err := s.ListWorkerEvents(ctx, "w1", 0, 0); err != nil || len(all) != 10 {
		t.Fatalf("default limit: %d events %v", len(all), err)
	}
	w, evs, err := s.LoadWorkerLog(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	if w.LatestSeq != 10 || len(evs) != 10 || evs[9].Seq != w.LatestSeq {
		t.Fatalf("load: worker seq %d, %d events", w.LatestSeq, len(evs))
	}
	wkTypes(t, evs)

	// Loads racing appends always see a worker row and events that agree.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 40 {
			if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(fmt.Sprintf(`{"j":%d}`, i))}); err != nil {
				t.Errorf("append: %v", err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		w, evs, err := s.LoadWorkerLog(ctx, "w1")
		if err != nil {
			t.Fatalf("load during appends: %v", err)
		}
		if int64(len(evs)) != w.LatestSeq || evs[len(evs)-1].Seq != w.LatestSeq {
			t.Fatalf("inconsistent snapshot: latest_seq %d, %d events", w.LatestSeq, len(evs))
		}
	}
}

func wkTestListWorkerIDs(t *testing.T, s WorkerDriver) {
	ctx := context.Background()
	ids := []string{"w-b", "w-a", "W-c", "w_d", "w.e", "w:f", "w-a1"}
	for _, id := range ids {
		wkCreate(t, s, id)
	}
	want := append([]string(nil), ids...)
	sort.Strings(want) // byte order on both drivers
	var got []string
	after := ""
	for {
		page, err := s.ListWorkerIDs(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 3 {
			t.Fatalf("page of %d over limit 3", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !wkEqual(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
}

func wkTestWatch(t *testing.T, s WorkerDriver) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	waitNotice := func(want store.Notice) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case n, ok := <-ch:
				if !ok {
					t.Fatalf("watch channel closed while waiting for %+v", want)
				}
				if n == want {
					return
				}
				if n.Kind == store.NoticeWorker && n.RunID == want.RunID && n.Seq > want.Seq {
					t.Fatalf("notice %+v arrived before %+v", n, want)
				}
			case <-timeout:
				t.Fatalf("no notice %+v within 10s", want)
			}
		}
	}
	wkCreate(t, s, "w1")
	waitNotice(store.Notice{Kind: store.NoticeWorker, RunID: "w1", Seq: 1})
	if _, _, err := s.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	waitNotice(store.Notice{Kind: store.NoticeWorker, RunID: "w1", Seq: 2})
	// Rejected writes must not notify: the next notice is the stop's.
	if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "run.delta"}); err == nil {
		t.Fatal("run.delta accepted")
	}
	if _, _, err := s.StopWorker(ctx, "w1", "", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-ch:
		if n != (store.Notice{Kind: store.NoticeWorker, RunID: "w1", Seq: 4}) {
			t.Fatalf("notice after a rejected append and a stop: %+v, want the stop's at seq 4", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notice for the stop")
	}
}
