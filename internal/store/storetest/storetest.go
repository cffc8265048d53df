// Package storetest is the one conformance suite every store driver runs
// (River style): the semantics of store.Store are what these tests assert.
//
// A driver's test calls Run with a constructor that returns a fresh,
// migrated, empty store per call and closes it with t.Cleanup.
//
// Clock: the suite uses the wall clock. Lease expiry is reached either by a
// short TTL followed by a sleep past the returned ExpiresAt, or, for the
// janitor, by passing ReclaimExpired a "now" far in the future. A live lease
// is always taken with a long TTL, so no assertion depends on scheduling.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// Run runs the conformance suite against the driver newStore builds.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Basics", testBasics},
		{"CreateRun", testCreateRun},
		{"CreateRunConcurrent", testCreateRunConcurrent},
		{"CreateRunWithInput", testCreateRunWithInput},
		{"CreateLeasedRun", testCreateLeasedRun},
		{"GetRunNotFound", testGetRunNotFound},
		{"Frames", testFrames},
		{"FramesConcurrent", testFramesConcurrent},
		{"NextFrame", testNextFrame},
		{"AppendChain", testAppendChain},
		{"AppendConcurrent", testAppendConcurrent},
		{"AppendUnknownRun", testAppendUnknownRun},
		{"IdempotencyKey", testIdempotencyKey},
		{"ExpectedPreviousSeq", testExpectedPreviousSeq},
		{"Transitions", testTransitions},
		{"TerminalFields", testTerminalFields},
		{"TerminalRepeatReplays", testTerminalRepeatReplays},
		{"ProcessedFrameID", testProcessedFrameID},
		{"TraceContext", testTraceContext},
		{"ConcurrentCancels", testConcurrentCancels},
		{"Fencing", testFencing},
		{"Leases", testLeases},
		{"LeaseSteal", testLeaseSteal},
		{"TerminalReleasesLease", testTerminalReleasesLease},
		{"AppendEvents", testAppendEvents},
		{"ClaimRunnable", testClaimRunnable},
		{"ClaimRunnableConcurrent", testClaimRunnableConcurrent},
		{"ReclaimExpired", testReclaimExpired},
		{"ReclaimExhausted", testReclaimExhausted},
		{"ReclaimProgressResets", testReclaimProgressResets},
		{"ReclaimSkips", testReclaimSkips},
		{"ReclaimConcurrent", testReclaimConcurrent},
		{"ListEventsPaging", testListEventsPaging},
		{"PruneEvents", testPruneEvents},
		{"FindEventByType", testFindEventByType},
		{"Watch", testWatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

// ---- helpers ----

const (
	owner  = "user:1"
	thread = "thread-1"
	// longTTL keeps a lease live for the whole test.
	longTTL = time.Minute
	// shortTTL is waited out with sleepPast.
	shortTTL = 20 * time.Millisecond
)

func ptr[T any](v T) *T { return &v }

func mustRun(t *testing.T, s store.Store, runID string) store.Run {
	t.Helper()
	r, created, err := s.CreateRun(t.Context(), store.CreateRunInput{RunID: runID, ThreadID: thread, OwnerSub: owner})
	if err != nil {
		t.Fatalf("CreateRun(%s): %v", runID, err)
	}
	if !created {
		t.Fatalf("CreateRun(%s): created=false for a new run", runID)
	}
	return r
}

func mustGet(t *testing.T, s store.Store, runID string) store.Run {
	t.Helper()
	r, err := s.GetRun(t.Context(), runID)
	if err != nil {
		t.Fatalf("GetRun(%s): %v", runID, err)
	}
	return r
}

func mustFrame(t *testing.T, s store.Store, runID, frameID, typ, payload string) store.Frame {
	t.Helper()
	f, inserted, err := s.InsertFrame(t.Context(), store.InsertFrameInput{
		RunID: runID, FrameID: frameID, Type: typ, Payload: json.RawMessage(payload)})
	if err != nil {
		t.Fatalf("InsertFrame(%s/%s): %v", runID, frameID, err)
	}
	if !inserted {
		t.Fatalf("InsertFrame(%s/%s): inserted=false for a new frame", runID, frameID)
	}
	return f
}

func mustAppend(t *testing.T, s store.Store, in store.AppendInput) store.Event {
	t.Helper()
	if in.Payload == nil {
		in.Payload = json.RawMessage(`{}`)
	}
	ev, replay, err := s.AppendEvent(t.Context(), in)
	if err != nil {
		t.Fatalf("AppendEvent(%s %s): %v", in.RunID, in.EventType, err)
	}
	if replay {
		t.Fatalf("AppendEvent(%s %s): unexpected replay of seq %d", in.RunID, in.EventType, ev.Seq)
	}
	return ev
}

func appendType(t *testing.T, s store.Store, runID, eventType, payload string) store.Event {
	t.Helper()
	return mustAppend(t, s, store.AppendInput{RunID: runID, EventType: eventType, Payload: json.RawMessage(payload)})
}

func mustAcquire(t *testing.T, s store.Store, runID, who string, ttl time.Duration, want string) store.Lease {
	t.Helper()
	g, err := s.AcquireLease(t.Context(), runID, who, ttl)
	if err != nil {
		t.Fatalf("AcquireLease(%s, %s): %v", runID, who, err)
	}
	if g.Result != want {
		t.Fatalf("AcquireLease(%s, %s) result = %q, want %q", runID, who, g.Result, want)
	}
	if g.Lease.RunID != runID || g.Lease.Owner != who {
		t.Fatalf("AcquireLease(%s, %s) lease = %+v", runID, who, g.Lease)
	}
	return g.Lease
}

func allEvents(t *testing.T, s store.Store, runID string) []store.Event {
	t.Helper()
	evs, err := s.ListEvents(t.Context(), runID, 0, 100000)
	if err != nil {
		t.Fatalf("ListEvents(%s): %v", runID, err)
	}
	return evs
}

// sleepPast waits until the wall clock is past tm.
func sleepPast(tm time.Time) {
	time.Sleep(time.Until(tm) + 5*time.Millisecond)
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

// verifyChain checks seq 1..n without gap or duplicate and the hash chain.
func verifyChain(t *testing.T, runID string, evs []store.Event) {
	t.Helper()
	prev := ""
	for i, e := range evs {
		if e.RunID != runID {
			t.Fatalf("event %d: run_id = %q, want %q", i, e.RunID, runID)
		}
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d: seq = %d, want %d (gap or duplicate)", i, e.Seq, i+1)
		}
		if e.PrevHash != prev {
			t.Fatalf("seq %d: prev_hash = %q, want %q", e.Seq, e.PrevHash, prev)
		}
		if want := runs.EventHash(runID, e.Seq, e.EventType, e.Payload, e.PrevHash); e.EventHash != want {
			t.Fatalf("seq %d: event_hash = %q, want runs.EventHash = %q", e.Seq, e.EventHash, want)
		}
		prev = e.EventHash
	}
}

func checkTime(t *testing.T, what string, tm time.Time) {
	t.Helper()
	if tm.IsZero() {
		t.Fatalf("%s is zero", what)
	}
	if tm.Location() != time.UTC {
		t.Fatalf("%s = %v: not UTC", what, tm)
	}
	if !tm.Equal(tm.Truncate(time.Microsecond)) {
		t.Fatalf("%s = %v: finer than microseconds", what, tm)
	}
}

func sameEvent(t *testing.T, what string, got, want store.Event) {
	t.Helper()
	if got.RunID != want.RunID || got.Seq != want.Seq || got.EventType != want.EventType ||
		!bytes.Equal(got.Payload, want.Payload) || got.PrevHash != want.PrevHash ||
		got.EventHash != want.EventHash || got.IdempotencyKey != want.IdempotencyKey ||
		got.Trace != want.Trace || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Fatalf("%s:\n got  %+v (payload %s)\n want %+v (payload %s)", what, got, got.Payload, want, want.Payload)
	}
}

// ---- tests ----

func testBasics(t *testing.T, s store.Store) {
	ctx := t.Context()
	if d := s.Dialect(); d != "sqlite" && d != "postgres" {
		t.Fatalf("Dialect() = %q", d)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatalf("SchemaVersion: %v", err)
	}
	if v <= 0 {
		t.Fatalf("SchemaVersion = %d, want > 0 on a migrated store", v)
	}
}

func testCreateRun(t *testing.T, s store.Store) {
	ctx := t.Context()
	in := store.CreateRunInput{
		RunID: "run-1", ThreadID: thread, OwnerSub: owner,
		Provider:     json.RawMessage(`{"name":"scripted"}`),
		Tools:        json.RawMessage(`["echo"]`),
		Metadata:     json.RawMessage(`{"b":1,"a":{"y":2,"x":"<&>"}}`),
		OutputSchema: json.RawMessage(`{"type":"object"}`),
	}
	before := time.Now().UTC().Truncate(time.Microsecond)
	r, created, err := s.CreateRun(ctx, in)
	if err != nil || !created {
		t.Fatalf("CreateRun = created %v, err %v; want created", created, err)
	}
	if r.RunID != "run-1" || r.ThreadID != thread || r.OwnerSub != owner || r.Status != store.StatusCreated ||
		r.LatestSeq != 0 || r.LastProcessedFrameID != 0 || r.RetentionFloorSeq != 0 || r.RecoveryAttempts != 0 ||
		r.TerminalAt != nil || r.TerminalReasonClass != "" || r.LastRecoveryAt != nil {
		t.Fatalf("new run = %+v", r)
	}
	// JSON documents come back canonical (keys sorted, no whitespace, no HTML escaping).
	if got, want := string(r.Metadata), `{"a":{"x":"<&>","y":2},"b":1}`; got != want {
		t.Fatalf("metadata = %s, want %s", got, want)
	}
	if string(r.Provider) != `{"name":"scripted"}` || string(r.Tools) != `["echo"]` || string(r.OutputSchema) != `{"type":"object"}` {
		t.Fatalf("documents = %s %s %s", r.Provider, r.Tools, r.OutputSchema)
	}
	if r.Authorization != nil {
		t.Fatalf("absent authorization = %q, want nil", r.Authorization)
	}
	checkTime(t, "created_at", r.CreatedAt)
	checkTime(t, "updated_at", r.UpdatedAt)
	if r.CreatedAt.Before(before) || r.CreatedAt.After(time.Now()) {
		t.Fatalf("created_at %v outside the call", r.CreatedAt)
	}

	got := mustGet(t, s, "run-1")
	if string(got.Metadata) != string(r.Metadata) || !got.CreatedAt.Equal(r.CreatedAt) || got.Status != r.Status {
		t.Fatalf("GetRun = %+v, want %+v", got, r)
	}

	// Identical repeats (also with differently formatted but equal JSON) replay.
	for _, repeat := range []store.CreateRunInput{in, func() store.CreateRunInput {
		c := in
		c.Metadata = json.RawMessage(`{ "a": {"x": "<&>", "y": 2}, "b": 1 }`)
		return c
	}()} {
		r2, created, err := s.CreateRun(ctx, repeat)
		if err != nil || created {
			t.Fatalf("identical CreateRun = created %v, err %v; want created=false", created, err)
		}
		if r2.RunID != r.RunID || !r2.CreatedAt.Equal(r.CreatedAt) || string(r2.Metadata) != string(r.Metadata) {
			t.Fatalf("replayed run = %+v, want %+v", r2, r)
		}
	}

	conflicts := map[string]func(c *store.CreateRunInput){
		"thread":          func(c *store.CreateRunInput) { c.ThreadID = "other" },
		"owner":           func(c *store.CreateRunInput) { c.OwnerSub = "user:2" },
		"metadata":        func(c *store.CreateRunInput) { c.Metadata = json.RawMessage(`{"b":2}`) },
		"metadata absent": func(c *store.CreateRunInput) { c.Metadata = nil },
		"authorization":   func(c *store.CreateRunInput) { c.Authorization = json.RawMessage(`{"mode":"x"}`) },
		"provider":        func(c *store.CreateRunInput) { c.Provider = json.RawMessage(`{"name":"openai"}`) },
		"output schema":   func(c *store.CreateRunInput) { c.OutputSchema = nil },
		"tools":           func(c *store.CreateRunInput) { c.Tools = json.RawMessage(`[]`) },
	}
	for name, mutate := range conflicts {
		c := in
		mutate(&c)
		_, created, err := s.CreateRun(ctx, c)
		if created || !errors.Is(err, store.ErrConflict) {
			t.Fatalf("CreateRun with other %s = created %v, err %v; want ErrConflict", name, created, err)
		}
	}
}

// A run created with its first input frame: both in one transaction, the
// frame claimable at once; a replay adds nothing; the same frame id with
// another payload conflicts; an invalid input stores nothing at all.
func testCreateRunWithInput(t *testing.T, s store.Store) {
	ctx := t.Context()
	input := func(payload string) *store.InsertFrameInput {
		return &store.InsertFrameInput{FrameID: "f1", Type: "user_message", Payload: json.RawMessage(payload),
			Trace: store.TraceContext{RequestID: "req-1"}}
	}
	in := store.CreateRunInput{RunID: "run-in", ThreadID: thread, OwnerSub: owner, Input: input(`{ "text": "hi" }`)}
	r, created, err := s.CreateRun(ctx, in)
	if err != nil || !created || r.Status != store.StatusCreated {
		t.Fatalf("CreateRun with input = %+v created %v, err %v", r, created, err)
	}
	f, err := s.NextFrame(ctx, "run-in", 0)
	if err != nil || f.FrameID != "f1" || f.Type != "user_message" || string(f.Payload) != `{"text":"hi"}` ||
		f.Trace.RequestID != "req-1" || f.PayloadHash != runs.PayloadHash([]byte(`{"text":"hi"}`)) {
		t.Fatalf("input frame = %+v, %v", f, err)
	}
	if in.Input.RunID != "" {
		t.Fatalf("CreateRun changed its input: %+v", in.Input)
	}
	grants, err := s.ClaimRunnable(ctx, "exec-1", time.Minute, 10)
	if err != nil || len(grants) != 1 || grants[0].Lease.RunID != "run-in" {
		t.Fatalf("claim after create with input = %+v, %v", grants, err)
	}
	if n := grants[0].Next; grants[0].Run != nil && (n == nil || n.FrameID != "f1") {
		t.Fatalf("claim's pending frame = %+v", n)
	}

	// A replay: same run, same input.
	if _, created, err := s.CreateRun(ctx, in); err != nil || created {
		t.Fatalf("replay = created %v, err %v", created, err)
	}
	if f2, err := s.NextFrame(ctx, "run-in", f.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replay added a frame: %+v %v", f2, err)
	}
	// The same frame id with another payload.
	other := in
	other.Input = input(`{"text":"other"}`)
	if _, _, err := s.CreateRun(ctx, other); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("replay with another input payload: %v, want ErrConflict", err)
	}
	// An existing run without frames takes the input as a new frame.
	mustRun(t, s, "run-bare")
	bare := store.CreateRunInput{RunID: "run-bare", ThreadID: thread, OwnerSub: owner, Input: input(`{"text":"late"}`)}
	if _, created, err := s.CreateRun(ctx, bare); err != nil || created {
		t.Fatalf("create replay with input on a bare run = created %v, err %v", created, err)
	}
	if f, err := s.NextFrame(ctx, "run-bare", 0); err != nil || f.FrameID != "f1" {
		t.Fatalf("bare run's frame = %+v, %v", f, err)
	}
	// Invalid input: neither the run nor a frame.
	for _, bad := range []*store.InsertFrameInput{
		{FrameID: "", Type: "user_message", Payload: json.RawMessage(`{}`)},
		{FrameID: "f1", Type: "", Payload: json.RawMessage(`{}`)},
		{FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{"a":`)},
	} {
		if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "run-bad", ThreadID: thread, OwnerSub: owner, Input: bad}); err == nil {
			t.Fatalf("create with input %+v succeeded", bad)
		}
		if _, err := s.GetRun(ctx, "run-bad"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("create with invalid input %+v left a run: %v", bad, err)
		}
	}
}

func testCreateRunConcurrent(t *testing.T, s store.Store) {
	const n = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		errs    []error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.CreateRun(t.Context(), store.CreateRunInput{RunID: "run-c", ThreadID: thread, OwnerSub: owner})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if c {
				created++
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("concurrent identical CreateRun errors: %v", errs)
	}
	if created != 1 {
		t.Fatalf("concurrent identical CreateRun created %d runs, want 1", created)
	}
}

func testGetRunNotFound(t *testing.T, s store.Store) {
	_, err := s.GetRun(t.Context(), "no-such-run")
	wantErr(t, "GetRun(unknown)", err, store.ErrNotFound)
}

func testFrames(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	in := store.InsertFrameInput{RunID: "run-1", FrameID: "f1", Type: "user_message",
		Payload: json.RawMessage(`{"text":"hi"}`)}
	f, inserted, err := s.InsertFrame(ctx, in)
	if err != nil || !inserted {
		t.Fatalf("InsertFrame = inserted %v, err %v", inserted, err)
	}
	if f.ID <= 0 || f.RunID != "run-1" || f.FrameID != "f1" || f.Type != "user_message" || string(f.Payload) != `{"text":"hi"}` {
		t.Fatalf("frame = %+v", f)
	}
	if want := runs.PayloadHash([]byte(`{"text":"hi"}`)); f.PayloadHash != want {
		t.Fatalf("payload_hash = %q, want %q", f.PayloadHash, want)
	}
	checkTime(t, "frame created_at", f.CreatedAt)

	f2, inserted, err := s.InsertFrame(ctx, in)
	if err != nil || inserted {
		t.Fatalf("identical InsertFrame = inserted %v, err %v; want replay", inserted, err)
	}
	if f2.ID != f.ID || f2.PayloadHash != f.PayloadHash || !f2.CreatedAt.Equal(f.CreatedAt) {
		t.Fatalf("replayed frame = %+v, want %+v", f2, f)
	}

	cases := []struct {
		name string
		in   store.InsertFrameInput
		want error
	}{
		{"other payload", store.InsertFrameInput{RunID: "run-1", FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{"text":"ho"}`)}, store.ErrConflict},
		{"other type", store.InsertFrameInput{RunID: "run-1", FrameID: "f1", Type: "cancel", Payload: json.RawMessage(`{"text":"hi"}`)}, store.ErrConflict},
		{"unknown run", store.InsertFrameInput{RunID: "nope", FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{}`)}, store.ErrNotFound},
	}
	for _, c := range cases {
		_, inserted, err := s.InsertFrame(ctx, c.in)
		if inserted || !errors.Is(err, c.want) {
			t.Fatalf("InsertFrame(%s) = inserted %v, err %v; want %v", c.name, inserted, err, c.want)
		}
	}
	// The same frame id on another run is another frame.
	mustRun(t, s, "run-2")
	if g := mustFrame(t, s, "run-2", "f1", "user_message", `{"text":"hi"}`); g.ID <= f.ID {
		t.Fatalf("second frame id %d not above %d", g.ID, f.ID)
	}
}

func testFramesConcurrent(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	const n = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		inserted int
		ids      = map[int64]bool{}
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, ins, err := s.InsertFrame(t.Context(), store.InsertFrameInput{RunID: "run-1", FrameID: "f", Type: "user_message", Payload: json.RawMessage(`{"text":"x"}`)})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("concurrent InsertFrame: %v", err)
				return
			}
			ids[f.ID] = true
			if ins {
				inserted++
			}
		}()
	}
	wg.Wait()
	if inserted != 1 || len(ids) != 1 {
		t.Fatalf("concurrent identical InsertFrame: inserted %d, distinct ids %d; want 1 and 1", inserted, len(ids))
	}
}

func testNextFrame(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	mustRun(t, s, "run-2")
	a := mustFrame(t, s, "run-1", "a", "user_message", `{"text":"1"}`)
	mustFrame(t, s, "run-2", "x", "user_message", `{"text":"other run"}`)
	b := mustFrame(t, s, "run-1", "b", "user_message", `{"text":"2"}`)
	c := mustFrame(t, s, "run-1", "c", "cancel", `{}`)
	if !(a.ID < b.ID && b.ID < c.ID) {
		t.Fatalf("frame ids not increasing: %d %d %d", a.ID, b.ID, c.ID)
	}
	var got []string
	after := int64(0)
	for {
		f, err := s.NextFrame(ctx, "run-1", after)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("NextFrame: %v", err)
		}
		got = append(got, f.FrameID)
		after = f.ID
	}
	if fmt.Sprint(got) != "[a b c]" {
		t.Fatalf("frames in order = %v, want [a b c]", got)
	}
	if f, err := s.NextFrame(ctx, "run-1", a.ID); err != nil || f.FrameID != "b" || string(f.Payload) != `{"text":"2"}` {
		t.Fatalf("NextFrame after a = %+v, %v", f, err)
	}
	_, err := s.NextFrame(ctx, "nope", 0)
	wantErr(t, "NextFrame(unknown run)", err, store.ErrNotFound)
}

func testAppendChain(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	payloads := []struct{ typ, payload string }{
		{"run.started", `{}`},
		{"run.delta", `{"delta":"he"}`},
		{"tool.call", `{"input":{"a":[1,2.5,"<x>"]},"tool_call_id":"t1","tool_name":"echo"}`},
		{"run.delta", `{"delta":"llo"}`},
	}
	var appended []store.Event
	for _, p := range payloads {
		ev := appendType(t, s, "run-1", p.typ, p.payload)
		if string(ev.Payload) != p.payload {
			t.Fatalf("returned payload = %s, want %s", ev.Payload, p.payload)
		}
		checkTime(t, "event created_at", ev.CreatedAt)
		appended = append(appended, ev)
	}
	if appended[0].PrevHash != "" {
		t.Fatalf("seq 1 prev_hash = %q, want empty", appended[0].PrevHash)
	}
	verifyChain(t, "run-1", appended)
	listed := allEvents(t, s, "run-1")
	if len(listed) != len(appended) {
		t.Fatalf("ListEvents returned %d events, want %d", len(listed), len(appended))
	}
	for i := range listed {
		// Stored bytes are the hashed bytes: a driver that re-encodes JSON
		// (jsonb) would break verification here.
		sameEvent(t, fmt.Sprintf("listed seq %d", i+1), listed[i], appended[i])
	}
	r := mustGet(t, s, "run-1")
	if r.LatestSeq != int64(len(payloads)) || r.Status != store.StatusRunning {
		t.Fatalf("run after appends: latest_seq %d status %s", r.LatestSeq, r.Status)
	}
	if !r.UpdatedAt.After(r.CreatedAt) && !r.UpdatedAt.Equal(r.CreatedAt) {
		t.Fatalf("updated_at %v before created_at %v", r.UpdatedAt, r.CreatedAt)
	}
	if _, _, err := s.AppendEvent(t.Context(), store.AppendInput{RunID: "run-1", EventType: "  ", Payload: json.RawMessage(`{}`)}); err == nil {
		t.Fatalf("AppendEvent with blank event_type succeeded")
	}
}

func testAppendConcurrent(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	appendType(t, s, "run-1", "run.started", `{}`)
	const goroutines, each = 32, 4
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		seqs  []int64
	)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range each {
				ev, replay, err := s.AppendEvent(t.Context(), store.AppendInput{RunID: "run-1", EventType: "run.delta",
					Payload: json.RawMessage(fmt.Sprintf(`{"delta":"g%d-%d"}`, g, i))})
				if err != nil || replay {
					t.Errorf("concurrent AppendEvent: replay %v, err %v", replay, err)
					return
				}
				mu.Lock()
				seqs = append(seqs, ev.Seq)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, seq := range seqs {
		if seq != int64(i+2) {
			t.Fatalf("returned seqs have a gap or duplicate at %d: %d", i, seq)
		}
	}
	evs := allEvents(t, s, "run-1")
	if len(evs) != goroutines*each+1 {
		t.Fatalf("log has %d events, want %d", len(evs), goroutines*each+1)
	}
	verifyChain(t, "run-1", evs)
	if r := mustGet(t, s, "run-1"); r.LatestSeq != int64(goroutines*each+1) {
		t.Fatalf("latest_seq = %d, want %d", r.LatestSeq, goroutines*each+1)
	}
}

func testAppendUnknownRun(t *testing.T, s store.Store) {
	_, _, err := s.AppendEvent(t.Context(), store.AppendInput{RunID: "nope", EventType: "run.started", Payload: json.RawMessage(`{}`)})
	wantErr(t, "AppendEvent(unknown run)", err, store.ErrNotFound)
}

func testIdempotencyKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	orig := mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{"delta":"a"}`), IdempotencyKey: "k1"})
	if orig.IdempotencyKey != "k1" {
		t.Fatalf("idempotency_key = %q", orig.IdempotencyKey)
	}
	appendType(t, s, "run-1", "run.delta", `{"delta":"b"}`)

	replays := []struct {
		name string
		in   store.AppendInput
	}{
		{"same", store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{"delta":"a"}`), IdempotencyKey: "k1"}},
		{"other content", store.AppendInput{RunID: "run-1", EventType: "tool.call", Payload: json.RawMessage(`{"x":1}`), IdempotencyKey: "k1"}},
		{"key trimmed", store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{}`), IdempotencyKey: "  k1 "}},
		{"stale expected seq (key checked first)", store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{}`), IdempotencyKey: "k1", ExpectedPreviousSeq: ptr(int64(0))}},
		{"stale fence (key checked first)", store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{}`), IdempotencyKey: "k1", Fence: &store.Fence{Owner: "gone", Generation: 7}}},
	}
	for _, c := range replays {
		ev, replay, err := s.AppendEvent(ctx, c.in)
		if err != nil || !replay {
			t.Fatalf("%s: replay %v, err %v; want replay", c.name, replay, err)
		}
		sameEvent(t, c.name, ev, orig)
	}
	if r := mustGet(t, s, "run-1"); r.LatestSeq != 2 {
		t.Fatalf("latest_seq after replays = %d, want 2", r.LatestSeq)
	}

	// A replay wins even after the run became terminal.
	cancel := mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.cancel_requested", Payload: json.RawMessage(`{"reason":"x"}`), IdempotencyKey: "run.cancel_requested"})
	appendType(t, s, "run-1", "run.finished", `{"status":"canceled","reason_class":"cancel_requested"}`)
	ev, replay, err := s.AppendEvent(ctx, store.AppendInput{RunID: "run-1", EventType: "run.cancel_requested", Payload: json.RawMessage(`{"reason":"again"}`), IdempotencyKey: "run.cancel_requested"})
	if err != nil || !replay || ev.Seq != cancel.Seq {
		t.Fatalf("cancel replay after terminal = seq %d, replay %v, err %v; want seq %d replay", ev.Seq, replay, err, cancel.Seq)
	}

	// Keys are per run.
	mustRun(t, s, "run-2")
	if ev := mustAppend(t, s, store.AppendInput{RunID: "run-2", EventType: "run.delta", Payload: json.RawMessage(`{}`), IdempotencyKey: "k1"}); ev.Seq != 1 {
		t.Fatalf("same key on another run: seq %d, want 1", ev.Seq)
	}
}

func testExpectedPreviousSeq(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	steps := []struct {
		expect  int64
		wantSeq int64 // 0: ErrSeqConflict
	}{
		{0, 1}, {0, 0}, {1, 2}, {5, 0}, {1, 0}, {2, 3},
	}
	for _, st := range steps {
		ev, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "run-1", EventType: "run.delta",
			Payload: json.RawMessage(`{}`), ExpectedPreviousSeq: ptr(st.expect)})
		if st.wantSeq == 0 {
			wantErr(t, fmt.Sprintf("expected_previous_seq %d", st.expect), err, store.ErrSeqConflict)
			continue
		}
		if err != nil || ev.Seq != st.wantSeq {
			t.Fatalf("expected_previous_seq %d: seq %d, err %v; want seq %d", st.expect, ev.Seq, err, st.wantSeq)
		}
	}
	if r := mustGet(t, s, "run-1"); r.LatestSeq != 3 {
		t.Fatalf("latest_seq = %d, want 3", r.LatestSeq)
	}
}

func testTransitions(t *testing.T, s store.Store) {
	finished := func(status string) string { return fmt.Sprintf(`{"status":%q}`, status) }
	cases := []struct {
		name    string
		setup   [][2]string // event type, payload
		typ     string
		payload string
		want    string // status after; "" = ErrIllegalTransition
	}{
		{"created start", nil, "run.started", `{}`, store.StatusRunning},
		{"running start again", [][2]string{{"run.started", `{}`}}, "run.started", `{}`, store.StatusRunning},
		{"created cancel", nil, "run.cancel_requested", `{}`, store.StatusCanceling},
		{"running cancel", [][2]string{{"run.started", `{}`}}, "run.cancel_requested", `{}`, store.StatusCanceling},
		{"canceling cancel again", [][2]string{{"run.cancel_requested", `{}`}}, "run.cancel_requested", `{}`, store.StatusCanceling},
		{"running other event", [][2]string{{"run.started", `{}`}}, "tool.call", `{}`, store.StatusRunning},
		{"created succeed", nil, "run.finished", finished("succeeded"), store.StatusSucceeded},
		{"running fail", [][2]string{{"run.started", `{}`}}, "run.finished", finished("failed"), store.StatusFailed},
		{"canceling canceled", [][2]string{{"run.cancel_requested", `{}`}}, "run.finished", finished("canceled"), store.StatusCanceled},
		{"canceling failed", [][2]string{{"run.cancel_requested", `{}`}}, "run.finished", finished("failed"), store.StatusFailed},
		{"british cancelled", nil, "run.finished", finished("cancelled"), store.StatusCanceled},
		{"canceling succeed", [][2]string{{"run.cancel_requested", `{}`}}, "run.finished", finished("succeeded"), ""},
		{"canceling start", [][2]string{{"run.cancel_requested", `{}`}}, "run.started", `{}`, ""},
		{"cancel after succeeded", [][2]string{{"run.finished", finished("succeeded")}}, "run.cancel_requested", `{}`, ""},
		{"event after failed", [][2]string{{"run.finished", finished("failed")}}, "run.delta", `{}`, ""},
		{"start after canceled", [][2]string{{"run.finished", finished("canceled")}}, "run.started", `{}`, ""},
		{"other finish after failed", [][2]string{{"run.finished", finished("failed")}}, "run.finished", finished("succeeded"), ""},
		{"finish without status", nil, "run.finished", `{}`, ""},
		{"finish with unknown status", nil, "run.finished", finished("done"), ""},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := fmt.Sprintf("run-%d", i)
			mustRun(t, s, id)
			for _, st := range c.setup {
				appendType(t, s, id, st[0], st[1])
			}
			before := mustGet(t, s, id)
			ev, replay, err := s.AppendEvent(t.Context(), store.AppendInput{RunID: id, EventType: c.typ, Payload: json.RawMessage(c.payload)})
			after := mustGet(t, s, id)
			if c.want == "" {
				wantErr(t, c.name, err, store.ErrIllegalTransition)
				if after.Status != before.Status || after.LatestSeq != before.LatestSeq {
					t.Fatalf("rejected event changed the run: %s/%d -> %s/%d", before.Status, before.LatestSeq, after.Status, after.LatestSeq)
				}
				return
			}
			if err != nil || replay {
				t.Fatalf("AppendEvent: replay %v, err %v", replay, err)
			}
			if after.Status != c.want || ev.Seq != before.LatestSeq+1 || after.LatestSeq != ev.Seq {
				t.Fatalf("after %s: status %s seq %d latest %d; want status %s seq %d", c.typ, after.Status, ev.Seq, after.LatestSeq, c.want, before.LatestSeq+1)
			}
		})
	}
}

func testTerminalFields(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	appendType(t, s, "run-1", "run.started", `{}`)
	r := mustGet(t, s, "run-1")
	if r.TerminalAt != nil || r.TerminalReasonClass != "" {
		t.Fatalf("running run has terminal fields: %+v", r)
	}
	ev := appendType(t, s, "run-1", "run.finished", `{"reason":"model said no","reason_class":"provider_error","status":"failed"}`)
	r = mustGet(t, s, "run-1")
	if r.Status != store.StatusFailed || r.TerminalReasonClass != "provider_error" || r.TerminalReason != "model said no" {
		t.Fatalf("terminal fields = %s %q %q", r.Status, r.TerminalReasonClass, r.TerminalReason)
	}
	if r.TerminalAt == nil {
		t.Fatalf("terminal_at not set")
	}
	checkTime(t, "terminal_at", *r.TerminalAt)
	if r.TerminalAt.Before(ev.CreatedAt.Add(-time.Second)) {
		t.Fatalf("terminal_at %v long before the event %v", r.TerminalAt, ev.CreatedAt)
	}
}

func testTerminalRepeatReplays(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	appendType(t, s, "run-1", "run.cancel_requested", `{"reason":"user"}`)
	fin := appendType(t, s, "run-1", "run.finished", `{"reason":"user","reason_class":"cancel_requested","status":"canceled"}`)
	for _, p := range []string{
		`{"reason":"user","reason_class":"cancel_requested","status":"canceled"}`,
		`{"reason":"other","reason_class":"x","status":"cancelled"}`,
	} {
		ev, replay, err := s.AppendEvent(ctx, store.AppendInput{RunID: "run-1", EventType: "run.finished", Payload: json.RawMessage(p)})
		if err != nil || !replay {
			t.Fatalf("same-status run.finished: replay %v, err %v; want replay", replay, err)
		}
		sameEvent(t, "replayed run.finished", ev, fin)
	}
	r := mustGet(t, s, "run-1")
	if r.LatestSeq != fin.Seq || r.TerminalReasonClass != "cancel_requested" || r.TerminalReason != "user" {
		t.Fatalf("run after replays: latest %d class %q reason %q", r.LatestSeq, r.TerminalReasonClass, r.TerminalReason)
	}
	_, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "run-1", EventType: "run.finished", Payload: json.RawMessage(`{"status":"failed"}`)})
	wantErr(t, "other-status run.finished after canceled", err, store.ErrIllegalTransition)
}

func testProcessedFrameID(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	f1 := mustFrame(t, s, "run-1", "f1", "user_message", `{"text":"1"}`)
	f2 := mustFrame(t, s, "run-1", "f2", "user_message", `{"text":"2"}`)
	steps := []struct {
		processed, want int64
	}{
		{f1.ID, f1.ID}, {0, f1.ID}, {f2.ID, f2.ID}, {f1.ID, f2.ID}, // never moves back
	}
	for _, st := range steps {
		mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{}`), ProcessedFrameID: st.processed})
		if got := mustGet(t, s, "run-1").LastProcessedFrameID; got != st.want {
			t.Fatalf("after ProcessedFrameID %d: last_processed_frame_id = %d, want %d", st.processed, got, st.want)
		}
	}
	appendType(t, s, "run-1", "run.started", `{}`)
	mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded"}`), ProcessedFrameID: f2.ID})
	if r := mustGet(t, s, "run-1"); r.LastProcessedFrameID != f2.ID || r.Status != store.StatusSucceeded {
		t.Fatalf("after terminal append: %d %s", r.LastProcessedFrameID, r.Status)
	}
}

func testTraceContext(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	tc := store.TraceContext{TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", TraceState: "vendor=x", RequestID: "req-1"}
	ev := mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.started", Payload: json.RawMessage(`{}`), Trace: tc})
	if ev.Trace != tc {
		t.Fatalf("returned event trace = %+v", ev.Trace)
	}
	if evs := allEvents(t, s, "run-1"); len(evs) != 1 || evs[0].Trace != tc {
		t.Fatalf("listed event trace = %+v", evs)
	}
	found, err := s.FindEventByType(ctx, "run-1", "run.started")
	if err != nil || found.Trace != tc {
		t.Fatalf("FindEventByType trace = %+v, %v", found.Trace, err)
	}
	f, _, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: "run-1", FrameID: "f", Type: "user_message", Payload: json.RawMessage(`{}`), Trace: tc})
	if err != nil || f.Trace != tc {
		t.Fatalf("inserted frame trace = %+v, %v", f.Trace, err)
	}
	next, err := s.NextFrame(ctx, "run-1", 0)
	if err != nil || next.Trace != tc {
		t.Fatalf("NextFrame trace = %+v, %v", next.Trace, err)
	}
}

func testConcurrentCancels(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	appendType(t, s, "run-1", "run.started", `{}`)
	const n = 10
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		created int
		seqs    = map[int64]bool{}
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ev, replay, err := s.AppendEvent(t.Context(), store.AppendInput{RunID: "run-1", EventType: "run.cancel_requested",
				Payload: json.RawMessage(fmt.Sprintf(`{"reason":"caller %d"}`, i)), IdempotencyKey: "run.cancel_requested"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("concurrent cancel: %v", err)
				return
			}
			seqs[ev.Seq] = true
			if !replay {
				created++
			}
		}()
	}
	close(start)
	wg.Wait()
	if created != 1 || len(seqs) != 1 {
		t.Fatalf("concurrent cancels: %d created, %d distinct seqs; want 1 and 1", created, len(seqs))
	}
	r := mustGet(t, s, "run-1")
	if r.Status != store.StatusCanceling || r.LatestSeq != 2 {
		t.Fatalf("after cancels: status %s latest %d", r.Status, r.LatestSeq)
	}
}

func testFencing(t *testing.T, s store.Store) {
	ctx := t.Context()
	fencedAppend := func(t *testing.T, runID string, f *store.Fence, want error) {
		t.Helper()
		before := mustGet(t, s, runID).LatestSeq
		_, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: runID, EventType: "run.delta", Payload: json.RawMessage(`{}`), Fence: f})
		if want == nil {
			if err != nil {
				t.Fatalf("append with valid fence %+v: %v", f, err)
			}
			return
		}
		wantErr(t, fmt.Sprintf("append with fence %+v", f), err, want)
		if after := mustGet(t, s, runID).LatestSeq; after != before {
			t.Fatalf("fenced append changed latest_seq %d -> %d", before, after)
		}
	}

	t.Run("no lease", func(t *testing.T) {
		mustRun(t, s, "r-none")
		fencedAppend(t, "r-none", &store.Fence{Owner: "a", Generation: 1}, store.ErrFenced)
	})
	t.Run("wrong owner or generation", func(t *testing.T) {
		mustRun(t, s, "r-wrong")
		l := mustAcquire(t, s, "r-wrong", "a", longTTL, store.LeaseAcquired)
		fencedAppend(t, "r-wrong", l.Fence(), nil)
		fencedAppend(t, "r-wrong", &store.Fence{Owner: "a", Generation: l.Generation + 1}, store.ErrFenced)
		fencedAppend(t, "r-wrong", &store.Fence{Owner: "b", Generation: l.Generation}, store.ErrFenced)
	})
	t.Run("after steal", func(t *testing.T) {
		mustRun(t, s, "r-steal")
		old := mustAcquire(t, s, "r-steal", "a", shortTTL, store.LeaseAcquired)
		sleepPast(old.ExpiresAt)
		cur := mustAcquire(t, s, "r-steal", "b", longTTL, store.LeaseStolen)
		fencedAppend(t, "r-steal", old.Fence(), store.ErrFenced)
		fencedAppend(t, "r-steal", cur.Fence(), nil)
	})
	t.Run("after reclaim", func(t *testing.T) {
		mustRun(t, s, "r-reclaim")
		l := mustAcquire(t, s, "r-reclaim", "a", longTTL, store.LeaseAcquired)
		if _, err := s.ReclaimExpired(ctx, time.Now().Add(time.Hour), 3, 100); err != nil {
			t.Fatalf("ReclaimExpired: %v", err)
		}
		fencedAppend(t, "r-reclaim", l.Fence(), store.ErrFenced)
	})
	t.Run("after release", func(t *testing.T) {
		mustRun(t, s, "r-release")
		l := mustAcquire(t, s, "r-release", "a", longTTL, store.LeaseAcquired)
		if err := s.ReleaseLease(ctx, l); err != nil {
			t.Fatalf("ReleaseLease: %v", err)
		}
		fencedAppend(t, "r-release", l.Fence(), store.ErrFenced)
	})
	t.Run("expired, then renewed", func(t *testing.T) {
		// An expired lease fences writes even before anyone takes it; a
		// renewal while nobody has acted on it makes the holder live again.
		mustRun(t, s, "r-expired")
		l := mustAcquire(t, s, "r-expired", "a", shortTTL, store.LeaseAcquired)
		sleepPast(l.ExpiresAt)
		fencedAppend(t, "r-expired", l.Fence(), store.ErrFenced)
		renewed, err := s.RenewLease(ctx, l, longTTL)
		if err != nil {
			t.Fatalf("RenewLease of an expired, untaken lease: %v", err)
		}
		if renewed.Generation != l.Generation {
			t.Fatalf("renew changed generation %d -> %d", l.Generation, renewed.Generation)
		}
		fencedAppend(t, "r-expired", renewed.Fence(), nil)
	})
}

func testLeases(t *testing.T, s store.Store) {
	ctx := t.Context()
	_, err := s.AcquireLease(ctx, "nope", "a", longTTL)
	wantErr(t, "AcquireLease(unknown run)", err, store.ErrNotFound)

	mustRun(t, s, "run-1")
	before := time.Now()
	l := mustAcquire(t, s, "run-1", "a", longTTL, store.LeaseAcquired)
	after := time.Now()
	if l.Generation != 1 {
		t.Fatalf("first generation = %d, want 1", l.Generation)
	}
	checkTime(t, "expires_at", l.ExpiresAt)
	if l.ExpiresAt.Before(before.Add(longTTL).Add(-time.Millisecond)) || l.ExpiresAt.After(after.Add(longTTL)) {
		t.Fatalf("expires_at %v not about now+ttl", l.ExpiresAt)
	}

	again := mustAcquire(t, s, "run-1", "a", longTTL, store.LeaseRenewed)
	if again.Generation != l.Generation || again.ExpiresAt.Before(l.ExpiresAt) {
		t.Fatalf("re-acquire by holder = %+v, want generation %d and a later expiry", again, l.Generation)
	}

	g, err := s.AcquireLease(ctx, "run-1", "b", longTTL)
	wantErr(t, "AcquireLease by another owner", err, store.ErrLeaseHeld)
	if g.Result != store.LeaseHeld {
		t.Fatalf("held result = %q", g.Result)
	}

	renewed, err := s.RenewLease(ctx, again, 2*longTTL)
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	if renewed.Generation != l.Generation || !renewed.ExpiresAt.After(again.ExpiresAt) || renewed.Owner != "a" {
		t.Fatalf("renewed = %+v", renewed)
	}
	checkTime(t, "renewed expires_at", renewed.ExpiresAt)

	if err := s.ReleaseLease(ctx, renewed); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	_, err = s.RenewLease(ctx, renewed, longTTL)
	wantErr(t, "RenewLease after release", err, store.ErrFenced)
	if err := s.ReleaseLease(ctx, renewed); err != nil {
		t.Fatalf("second ReleaseLease (no-op): %v", err)
	}

	b := mustAcquire(t, s, "run-1", "b", longTTL, store.LeaseAcquired)
	if b.Generation != 2 {
		t.Fatalf("generation after release + acquire = %d, want 2", b.Generation)
	}
	// The former holder re-acquiring after its release is a new acquire too.
	if err := s.ReleaseLease(ctx, b); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	if a := mustAcquire(t, s, "run-1", "a", longTTL, store.LeaseAcquired); a.Generation != 3 {
		t.Fatalf("generation = %d, want 3", a.Generation)
	}
}

// A run that becomes terminal releases its lease in the same write, fenced
// or not: nobody has to call ReleaseLease, the janitor never sees it again,
// and the former holder's fence is dead.
func testTerminalReleasesLease(t *testing.T, s store.Store) {
	ctx := t.Context()
	finished := json.RawMessage(`{"status":"succeeded","reason_class":"completed","reason":"done"}`)
	for _, fenced := range []bool{true, false} {
		id := fmt.Sprintf("run-fenced-%t", fenced)
		mustRun(t, s, id)
		l := mustAcquire(t, s, id, "a", longTTL, store.LeaseAcquired)
		// Twice before finishing: drivers that remember the run head take
		// their quick path from the second append on.
		for _, typ := range []string{"run.started", "run.delta"} {
			mustAppend(t, s, store.AppendInput{RunID: id, EventType: typ, Fence: l.Fence()})
		}
		in := store.AppendInput{RunID: id, EventType: "run.finished", Payload: finished}
		if fenced {
			in.Fence = l.Fence()
		}
		mustAppend(t, s, in)
		_, err := s.RenewLease(ctx, l, longTTL)
		wantErr(t, "RenewLease after the run finished", err, store.ErrFenced)
		// Another owner acquires (neither held nor stolen): the live lease
		// was released.
		mustAcquire(t, s, id, "b", longTTL, store.LeaseAcquired)
	}
}

// AppendEvents: consecutive events in one transaction, each as AppendEvent
// would append it, all or none.
func testAppendEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	l := mustAcquire(t, s, "run-1", "a", longTTL, store.LeaseAcquired)
	mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.started", Fence: l.Fence()})
	batch := []store.AppendInput{
		{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{"delta":"hi","final":true}`), IdempotencyKey: "k-answer", Fence: l.Fence()},
		{RunID: "run-1", EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded","reason_class":"completed","reason":"done"}`), IdempotencyKey: "run.finished", Fence: l.Fence()},
	}
	res, err := s.AppendEvents(ctx, batch)
	if err != nil {
		t.Fatalf("AppendEvents: %v", err)
	}
	if len(res) != 2 || res[0].Replay || res[1].Replay || res[0].Event.Seq != 2 || res[1].Event.Seq != 3 {
		t.Fatalf("AppendEvents = %+v, want new events 2 and 3", res)
	}
	evs, err := s.ListEvents(ctx, "run-1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	verifyChain(t, "run-1", evs)
	for i, r := range res {
		if got := evs[i+1]; got.EventHash != r.Event.EventHash || !got.CreatedAt.Equal(r.Event.CreatedAt) || got.IdempotencyKey != r.Event.IdempotencyKey {
			t.Fatalf("returned event %+v, stored %+v", r.Event, got)
		}
	}
	if r := mustGet(t, s, "run-1"); r.Status != store.StatusSucceeded || r.LatestSeq != 3 {
		t.Fatalf("run after the batch: %+v", r)
	}
	// The same batch again replays both.
	again, err := s.AppendEvents(ctx, batch)
	if err != nil || len(again) != 2 || !again[0].Replay || !again[1].Replay || again[1].Event.Seq != 3 {
		t.Fatalf("repeated AppendEvents = %+v, %v; want two replays", again, err)
	}

	// All or none: a refused second event leaves the first unwritten.
	mustRun(t, s, "run-2")
	mustAppend(t, s, store.AppendInput{RunID: "run-2", EventType: "run.started"})
	wrong := int64(99)
	_, err = s.AppendEvents(ctx, []store.AppendInput{
		{RunID: "run-2", EventType: "run.delta", Payload: json.RawMessage(`{"i":1}`)},
		{RunID: "run-2", EventType: "run.delta", Payload: json.RawMessage(`{"i":2}`), ExpectedPreviousSeq: &wrong},
	})
	wantErr(t, "AppendEvents with a wrong expected seq on the second event", err, store.ErrSeqConflict)
	_, err = s.AppendEvents(ctx, []store.AppendInput{
		{RunID: "run-2", EventType: "run.delta", Payload: json.RawMessage(`{"i":1}`)},
		{RunID: "run-2", EventType: "run.finished", Payload: json.RawMessage(`{"status":"bogus"}`)},
	})
	wantErr(t, "AppendEvents with an illegal second event", err, store.ErrIllegalTransition)
	if r := mustGet(t, s, "run-2"); r.LatestSeq != 1 {
		t.Fatalf("after refused batches the run has latest_seq %d, want 1 (nothing written)", r.LatestSeq)
	}
	// One run per call; an empty call is refused.
	mustRun(t, s, "run-3")
	if _, err := s.AppendEvents(ctx, []store.AppendInput{{RunID: "run-2", EventType: "run.delta"}, {RunID: "run-3", EventType: "run.delta"}}); err == nil {
		t.Fatal("AppendEvents across two runs succeeded")
	}
	if _, err := s.AppendEvents(ctx, nil); err == nil {
		t.Fatal("AppendEvents of nothing succeeded")
	}
}

func testLeaseSteal(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	a := mustAcquire(t, s, "run-1", "a", shortTTL, store.LeaseAcquired)
	sleepPast(a.ExpiresAt)
	b := mustAcquire(t, s, "run-1", "b", longTTL, store.LeaseStolen)
	if b.Generation != a.Generation+1 {
		t.Fatalf("stolen generation = %d, want %d", b.Generation, a.Generation+1)
	}
	_, err := s.RenewLease(ctx, a, longTTL)
	wantErr(t, "RenewLease by the robbed holder", err, store.ErrFenced)
	if err := s.ReleaseLease(ctx, a); err != nil {
		t.Fatalf("ReleaseLease of a lost lease must be a no-op, got %v", err)
	}
	// b still holds it: the stale release did nothing.
	_, err = s.AcquireLease(ctx, "run-1", "c", longTTL)
	wantErr(t, "AcquireLease after a stale release", err, store.ErrLeaseHeld)
	_, err = s.AcquireLease(ctx, "run-1", "a", longTTL)
	wantErr(t, "AcquireLease by the robbed holder", err, store.ErrLeaseHeld)
	if b2 := mustAcquire(t, s, "run-1", "b", longTTL, store.LeaseRenewed); b2.Generation != b.Generation {
		t.Fatalf("renew generation = %d, want %d", b2.Generation, b.Generation)
	}
}

func grantIDs(gs []store.LeaseGrant) []string {
	var ids []string
	for _, g := range gs {
		ids = append(ids, g.Lease.RunID)
	}
	sort.Strings(ids)
	return ids
}

func testClaimRunnable(t *testing.T, s store.Store) {
	ctx := t.Context()
	// idle: no frames. pending: an unprocessed frame. processed: its frame is done.
	// canceling: cancel requested, no frames. terminal: finished with a frame.
	// held: pending but leased live. released: pending, lease released.
	for _, id := range []string{"idle", "pending", "processed", "canceling", "terminal", "held", "released"} {
		mustRun(t, s, id)
	}
	mustFrame(t, s, "pending", "f", "user_message", `{"text":"x"}`)
	pf := mustFrame(t, s, "processed", "f", "user_message", `{"text":"x"}`)
	mustAppend(t, s, store.AppendInput{RunID: "processed", EventType: "run.started", Payload: json.RawMessage(`{}`), ProcessedFrameID: pf.ID})
	appendType(t, s, "canceling", "run.cancel_requested", `{}`)
	mustFrame(t, s, "terminal", "f", "user_message", `{"text":"x"}`)
	appendType(t, s, "terminal", "run.finished", `{"status":"failed"}`)
	mustFrame(t, s, "held", "f", "user_message", `{"text":"x"}`)
	mustAcquire(t, s, "held", "other", longTTL, store.LeaseAcquired)
	mustFrame(t, s, "released", "f", "user_message", `{"text":"x"}`)
	rel := mustAcquire(t, s, "released", "other", longTTL, store.LeaseAcquired)
	if err := s.ReleaseLease(ctx, rel); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}

	if gs, err := s.ClaimRunnable(ctx, "me", longTTL, 0); err != nil || len(gs) != 0 {
		t.Fatalf("ClaimRunnable(limit 0) = %v, %v; want nothing", grantIDs(gs), err)
	}
	first, err := s.ClaimRunnable(ctx, "me", longTTL, 2)
	if err != nil {
		t.Fatalf("ClaimRunnable: %v", err)
	}
	if len(first) != 2 {
		t.Fatalf("ClaimRunnable(limit 2) returned %d grants", len(first))
	}
	rest, err := s.ClaimRunnable(ctx, "me", longTTL, 10)
	if err != nil {
		t.Fatalf("ClaimRunnable: %v", err)
	}
	all := append(first, rest...)
	if got := fmt.Sprint(grantIDs(all)); got != "[canceling pending released]" {
		t.Fatalf("claimed runs = %s, want [canceling pending released]", got)
	}
	for _, g := range all {
		wantGen, wantResult := int64(1), store.LeaseAcquired
		if g.Lease.RunID == "released" {
			wantGen = rel.Generation + 1
		}
		if g.Result != wantResult || g.Lease.Owner != "me" || g.Lease.Generation != wantGen {
			t.Fatalf("grant %+v, want result %s generation %d owner me", g, wantResult, wantGen)
		}
		checkTime(t, "claimed expires_at", g.Lease.ExpiresAt)
		// A driver that returns the run with the claim returns what a read
		// right after it gives: the row and the first pending frame.
		if g.Run != nil {
			if got, want := fmt.Sprintf("%+v", *g.Run), fmt.Sprintf("%+v", mustGet(t, s, g.Lease.RunID)); got != want {
				t.Fatalf("claimed run %s:\n got %s\nwant %s", g.Lease.RunID, got, want)
			}
			next, err := s.NextFrame(ctx, g.Lease.RunID, g.Run.LastProcessedFrameID)
			switch {
			case errors.Is(err, store.ErrNotFound):
				if g.Next != nil {
					t.Fatalf("claimed run %s: next frame %+v, want none", g.Lease.RunID, *g.Next)
				}
			case err != nil:
				t.Fatalf("NextFrame: %v", err)
			case g.Next == nil || fmt.Sprintf("%+v", *g.Next) != fmt.Sprintf("%+v", next):
				t.Fatalf("claimed run %s: next frame %+v, want %+v", g.Lease.RunID, g.Next, next)
			}
		} else if g.Next != nil {
			t.Fatalf("claimed run %s: a next frame without the run", g.Lease.RunID)
		}
		// A claim is a real lease: others are held off and the fence works.
		_, err := s.AcquireLease(ctx, g.Lease.RunID, "intruder", longTTL)
		wantErr(t, "AcquireLease of a claimed run", err, store.ErrLeaseHeld)
		mustAppend(t, s, store.AppendInput{RunID: g.Lease.RunID, EventType: "run.delta", Payload: json.RawMessage(`{}`), Fence: g.Lease.Fence()})
	}
	if gs, err := s.ClaimRunnable(ctx, "other-node", longTTL, 10); err != nil || len(gs) != 0 {
		t.Fatalf("second claimer got %v, %v; want nothing (all live)", grantIDs(gs), err)
	}
	// An expired lease is not claimable until the janitor reclaimed it, so
	// that every lost executor is recorded as run.executor_lost first.
	mustRun(t, s, "expired")
	mustFrame(t, s, "expired", "f", "user_message", `{"text":"x"}`)
	exp := mustAcquire(t, s, "expired", "dead", shortTTL, store.LeaseAcquired)
	sleepPast(exp.ExpiresAt)
	if gs, err := s.ClaimRunnable(ctx, "other-node", longTTL, 10); err != nil || len(gs) != 0 {
		t.Fatalf("claim of an expired, unreclaimed lease got %v, %v; want nothing", grantIDs(gs), err)
	}
	// A new frame on an idle run makes it claimable.
	mustFrame(t, s, "idle", "f", "user_message", `{"text":"x"}`)
	gs, err := s.ClaimRunnable(ctx, "other-node", longTTL, 10)
	if err != nil || fmt.Sprint(grantIDs(gs)) != "[idle]" {
		t.Fatalf("claim after new frame = %v, %v; want [idle]", grantIDs(gs), err)
	}
}

func testClaimRunnableConcurrent(t *testing.T, s store.Store) {
	const runsN, claimers = 50, 8
	for i := range runsN {
		id := fmt.Sprintf("run-%02d", i)
		mustRun(t, s, id)
		mustFrame(t, s, id, "f", "user_message", `{"text":"x"}`)
	}
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		claimed = map[string]string{}
	)
	for c := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			who := fmt.Sprintf("node-%d", c)
			<-start
			// Bounded so that a driver handing out live leases fails instead of spinning.
			for range runsN {
				gs, err := s.ClaimRunnable(t.Context(), who, longTTL, 3)
				if err != nil {
					t.Errorf("ClaimRunnable(%s): %v", who, err)
					return
				}
				if len(gs) == 0 {
					return
				}
				mu.Lock()
				for _, g := range gs {
					if prev, dup := claimed[g.Lease.RunID]; dup {
						t.Errorf("run %s claimed by %s and %s", g.Lease.RunID, prev, who)
					}
					claimed[g.Lease.RunID] = who
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(claimed) != runsN {
		t.Fatalf("claimed %d distinct runs, want %d", len(claimed), runsN)
	}
}

func lostPayload(t *testing.T, ev store.Event) (owner string, expires, detected time.Time, progress int64) {
	t.Helper()
	var p struct {
		LeaseOwner      string `json:"lease_owner"`
		LeaseExpiresAt  string `json:"lease_expires_at"`
		DetectedAt      string `json:"detected_at"`
		LastProgressSeq *int64 `json:"last_progress_seq"`
	}
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		t.Fatalf("run.executor_lost payload %s: %v", ev.Payload, err)
	}
	exp, err1 := time.Parse(time.RFC3339Nano, p.LeaseExpiresAt)
	det, err2 := time.Parse(time.RFC3339Nano, p.DetectedAt)
	if err1 != nil || err2 != nil || p.LastProgressSeq == nil || p.LeaseOwner == "" {
		t.Fatalf("run.executor_lost payload %s: want lease_owner, RFC 3339 lease_expires_at and detected_at, last_progress_seq", ev.Payload)
	}
	return p.LeaseOwner, exp, det, *p.LastProgressSeq
}

func reclaimOne(t *testing.T, s store.Store, now time.Time, maxAttempts int, runID string) store.Reclaim {
	t.Helper()
	recs, err := s.ReclaimExpired(t.Context(), now, maxAttempts, 100)
	if err != nil {
		t.Fatalf("ReclaimExpired: %v", err)
	}
	if len(recs) != 1 || recs[0].RunID != runID {
		t.Fatalf("ReclaimExpired = %+v, want one reclaim of %s", recs, runID)
	}
	return recs[0]
}

func claimOne(t *testing.T, s store.Store, who, runID, want string) store.Lease {
	t.Helper()
	gs, err := s.ClaimRunnable(t.Context(), who, longTTL, 10)
	if err != nil {
		t.Fatalf("ClaimRunnable: %v", err)
	}
	if len(gs) != 1 || gs[0].Lease.RunID != runID || gs[0].Result != want {
		t.Fatalf("ClaimRunnable = %+v, want %s with result %s", gs, runID, want)
	}
	return gs[0].Lease
}

func testReclaimExpired(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	mustFrame(t, s, "run-1", "f", "user_message", `{"text":"x"}`)
	l := claimOne(t, s, "exec-a", "run-1", store.LeaseAcquired)
	started := mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.started", Payload: json.RawMessage(`{}`), Fence: l.Fence()})

	if recs, err := s.ReclaimExpired(ctx, time.Now(), 3, 100); err != nil || len(recs) != 0 {
		t.Fatalf("ReclaimExpired before expiry = %+v, %v; want nothing", recs, err)
	}
	now := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	rec := reclaimOne(t, s, now, 3, "run-1")
	if rec.Owner != "exec-a" || rec.Attempts != 1 || rec.Outcome != store.ReclaimResumed {
		t.Fatalf("reclaim = %+v, want owner exec-a, 1 attempt, resumed", rec)
	}
	lost, err := s.FindEventByType(ctx, "run-1", "run.executor_lost")
	if err != nil {
		t.Fatalf("run.executor_lost not appended: %v", err)
	}
	if lost.Seq != started.Seq+1 {
		t.Fatalf("run.executor_lost seq %d, want %d", lost.Seq, started.Seq+1)
	}
	o, exp, det, progress := lostPayload(t, lost)
	if o != "exec-a" || !exp.Equal(l.ExpiresAt) || !det.Equal(now) || progress != started.Seq {
		t.Fatalf("run.executor_lost payload %s: want owner exec-a, expires %v, detected %v, progress %d",
			lost.Payload, l.ExpiresAt, now, started.Seq)
	}
	r := mustGet(t, s, "run-1")
	if r.RecoveryAttempts != 1 || r.LastRecoveryAt == nil || !r.LastRecoveryAt.Equal(now) || r.Status != store.StatusRunning {
		t.Fatalf("run after reclaim: attempts %d last_recovery_at %v status %s", r.RecoveryAttempts, r.LastRecoveryAt, r.Status)
	}
	verifyChain(t, "run-1", allEvents(t, s, "run-1"))

	// Reclaimed once: a second scan does not reclaim it again.
	if recs, err := s.ReclaimExpired(ctx, now.Add(time.Minute), 3, 100); err != nil || len(recs) != 0 {
		t.Fatalf("second ReclaimExpired = %+v, %v; want nothing", recs, err)
	}
	// The reclaimed lease goes to a live executor as a steal.
	b := claimOne(t, s, "exec-b", "run-1", store.LeaseStolen)
	if b.Generation != l.Generation+1 {
		t.Fatalf("generation after reclaim + claim = %d, want %d", b.Generation, l.Generation+1)
	}
	if err := s.ReleaseLease(ctx, b); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	// AcquireLease of a reclaimed lease is a steal as well.
	mustRun(t, s, "run-2")
	l2 := mustAcquire(t, s, "run-2", "exec-a", longTTL, store.LeaseAcquired)
	if recs, err := s.ReclaimExpired(ctx, now, 3, 100); err != nil || len(recs) != 1 {
		t.Fatalf("ReclaimExpired = %+v, %v", recs, err)
	}
	if g := mustAcquire(t, s, "run-2", "exec-a", longTTL, store.LeaseStolen); g.Generation != l2.Generation+1 {
		t.Fatalf("generation = %d, want %d", g.Generation, l2.Generation+1)
	}
}

func testReclaimExhausted(t *testing.T, s store.Store) {
	ctx := t.Context()
	const maxAttempts = 3
	mustRun(t, s, "run-1")
	mustFrame(t, s, "run-1", "f", "user_message", `{"text":"x"}`)
	claimOne(t, s, "exec-0", "run-1", store.LeaseAcquired)
	far := time.Now().Add(time.Hour)
	for i := 1; i <= maxAttempts; i++ {
		rec := reclaimOne(t, s, far, maxAttempts, "run-1")
		if rec.Attempts != i || rec.Outcome != store.ReclaimResumed {
			t.Fatalf("reclaim %d = %+v, want %d attempts, resumed", i, rec, i)
		}
		// Claimed, then lost again without appending anything.
		claimOne(t, s, fmt.Sprintf("exec-%d", i), "run-1", store.LeaseStolen)
	}
	rec := reclaimOne(t, s, far, maxAttempts, "run-1")
	if rec.Attempts != maxAttempts+1 || rec.Outcome != store.ReclaimExhausted {
		t.Fatalf("final reclaim = %+v, want %d attempts, exhausted", rec, maxAttempts+1)
	}
	r := mustGet(t, s, "run-1")
	if r.Status != store.StatusFailed || r.TerminalReasonClass != "executor_recovery_exhausted" || r.TerminalAt == nil {
		t.Fatalf("exhausted run: status %s class %q", r.Status, r.TerminalReasonClass)
	}
	evs := allEvents(t, s, "run-1")
	verifyChain(t, "run-1", evs)
	var lost, finished int
	for _, e := range evs {
		switch e.EventType {
		case "run.executor_lost":
			lost++
		case "run.finished":
			finished++
			var p struct {
				Status      string `json:"status"`
				ReasonClass string `json:"reason_class"`
			}
			if err := json.Unmarshal(e.Payload, &p); err != nil {
				t.Fatalf("run.finished payload %s: %v", e.Payload, err)
			}
			if p.Status != store.StatusFailed || p.ReasonClass != "executor_recovery_exhausted" {
				t.Fatalf("run.finished payload %s", e.Payload)
			}
		}
	}
	if lost != maxAttempts+1 || finished != 1 || evs[len(evs)-1].EventType != "run.finished" {
		t.Fatalf("log has %d run.executor_lost and %d run.finished (last %s); want %d, 1, run.finished last",
			lost, finished, evs[len(evs)-1].EventType, maxAttempts+1)
	}
	if gs, err := s.ClaimRunnable(ctx, "exec-x", longTTL, 10); err != nil || len(gs) != 0 {
		t.Fatalf("ClaimRunnable after exhaustion = %v, %v; want nothing", grantIDs(gs), err)
	}
}

func testReclaimProgressResets(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	mustFrame(t, s, "run-1", "f", "user_message", `{"text":"x"}`)
	claimOne(t, s, "exec-0", "run-1", store.LeaseAcquired)
	far := time.Now().Add(time.Hour)
	// progress: whether the executor holding the lease appends before it is lost.
	steps := []struct {
		progress     bool
		wantAttempts int
	}{
		{false, 1}, {false, 2}, {true, 1}, {false, 2}, {false, 3}, {true, 1},
	}
	for i, st := range steps {
		if i > 0 {
			l := claimOne(t, s, fmt.Sprintf("exec-%d", i), "run-1", store.LeaseStolen)
			if st.progress {
				mustAppend(t, s, store.AppendInput{RunID: "run-1", EventType: "run.delta", Payload: json.RawMessage(`{"delta":"x"}`), Fence: l.Fence()})
			}
		}
		rec := reclaimOne(t, s, far, 3, "run-1")
		if rec.Attempts != st.wantAttempts || rec.Outcome != store.ReclaimResumed {
			t.Fatalf("step %d (progress %v): reclaim %+v, want %d attempts, resumed", i, st.progress, rec, st.wantAttempts)
		}
		if got := mustGet(t, s, "run-1").RecoveryAttempts; got != st.wantAttempts {
			t.Fatalf("step %d: run recovery_attempts %d, want %d", i, got, st.wantAttempts)
		}
	}
	// Appends by others (not under the executor's fence) are not progress.
	claimOne(t, s, "exec-n", "run-1", store.LeaseStolen)
	appendType(t, s, "run-1", "run.delta", `{"delta":"api"}`)
	if rec := reclaimOne(t, s, far, 3, "run-1"); rec.Attempts != 2 {
		t.Fatalf("unfenced append counted as progress: attempts %d, want 2", rec.Attempts)
	}
}

func testReclaimSkips(t *testing.T, s store.Store) {
	ctx := t.Context()
	far := time.Now().Add(time.Hour)
	// released: given up cleanly. terminal: finished while leased.
	// live: expires after "now". expired: the only one to reclaim.
	for _, id := range []string{"released", "terminal", "live", "expired", "never"} {
		mustRun(t, s, id)
	}
	rel := mustAcquire(t, s, "released", "a", longTTL, store.LeaseAcquired)
	if err := s.ReleaseLease(ctx, rel); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	term := mustAcquire(t, s, "terminal", "a", longTTL, store.LeaseAcquired)
	mustAppend(t, s, store.AppendInput{RunID: "terminal", EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded"}`), Fence: term.Fence()})
	mustAcquire(t, s, "live", "a", 3*time.Hour, store.LeaseAcquired)
	mustAcquire(t, s, "expired", "a", longTTL, store.LeaseAcquired)

	reclaimOne(t, s, far, 3, "expired")
	for _, id := range []string{"released", "terminal", "live", "never"} {
		if _, err := s.FindEventByType(ctx, id, "run.executor_lost"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("run %s got run.executor_lost (err %v)", id, err)
		}
	}

	// limit bounds one scan.
	for i := range 3 {
		id := fmt.Sprintf("lim-%d", i)
		mustRun(t, s, id)
		mustAcquire(t, s, id, "a", longTTL, store.LeaseAcquired)
	}
	recs, err := s.ReclaimExpired(ctx, far, 3, 2)
	if err != nil || len(recs) != 2 {
		t.Fatalf("ReclaimExpired(limit 2) = %+v, %v; want 2", recs, err)
	}
	recs, err = s.ReclaimExpired(ctx, far, 3, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("ReclaimExpired after limit = %+v, %v; want the remaining 1", recs, err)
	}
}

// testReclaimConcurrent runs several janitors at once (one per replica):
// every expired lease is reclaimed exactly once.
func testReclaimConcurrent(t *testing.T, s store.Store) {
	const runsN, janitors = 12, 4
	for i := range runsN {
		id := fmt.Sprintf("run-%02d", i)
		mustRun(t, s, id)
		mustAcquire(t, s, id, "dead", longTTL, store.LeaseAcquired)
	}
	far := time.Now().Add(time.Hour)
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		seen  = map[string]int{}
	)
	for range janitors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			recs, err := s.ReclaimExpired(t.Context(), far, 3, 100)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("concurrent ReclaimExpired: %v", err)
			}
			for _, r := range recs {
				seen[r.RunID]++
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(seen) != runsN {
		t.Fatalf("reclaimed %d distinct runs, want %d: %v", len(seen), runsN, seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("run %s reported reclaimed %d times", id, n)
		}
		lost := 0
		for _, e := range allEvents(t, s, id) {
			if e.EventType == "run.executor_lost" {
				lost++
			}
		}
		if lost != 1 {
			t.Fatalf("run %s has %d run.executor_lost events, want 1", id, lost)
		}
	}
}

func testListEventsPaging(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	for i := range 10 {
		appendType(t, s, "run-1", "run.delta", fmt.Sprintf(`{"delta":"%d"}`, i))
	}
	var pages [][]int64
	after := int64(0)
	for {
		evs, err := s.ListEvents(ctx, "run-1", after, 3)
		if err != nil {
			t.Fatalf("ListEvents: %v", err)
		}
		if len(evs) == 0 {
			break
		}
		var page []int64
		for _, e := range evs {
			page = append(page, e.Seq)
		}
		pages = append(pages, page)
		after = evs[len(evs)-1].Seq
	}
	if got := fmt.Sprint(pages); got != "[[1 2 3] [4 5 6] [7 8 9] [10]]" {
		t.Fatalf("pages = %s", got)
	}
	if evs, err := s.ListEvents(ctx, "run-1", 100, 3); err != nil || len(evs) != 0 {
		t.Fatalf("ListEvents beyond the head = %d events, %v", len(evs), err)
	}
	_, err := s.ListEvents(ctx, "nope", 0, 10)
	wantErr(t, "ListEvents(unknown run)", err, store.ErrNotFound)
	mustRun(t, s, "empty")
	if evs, err := s.ListEvents(ctx, "empty", 0, 10); err != nil || len(evs) != 0 {
		t.Fatalf("ListEvents(empty run) = %d, %v", len(evs), err)
	}
}

func testPruneEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	err := s.PruneEvents(ctx, "nope", 1)
	wantErr(t, "PruneEvents(unknown run)", err, store.ErrNotFound)

	mustRun(t, s, "run-1")
	var evs []store.Event
	evs = append(evs, appendType(t, s, "run-1", "run.started", `{}`))
	for i := range 9 {
		evs = append(evs, appendType(t, s, "run-1", "run.delta", fmt.Sprintf(`{"delta":"%d"}`, i)))
	}
	steps := []struct {
		through, wantFloor int64
	}{
		{4, 4}, {2, 4}, {4, 4}, {100, 10},
	}
	for _, st := range steps {
		if err := s.PruneEvents(ctx, "run-1", st.through); err != nil {
			t.Fatalf("PruneEvents(%d): %v", st.through, err)
		}
		if got := mustGet(t, s, "run-1").RetentionFloorSeq; got != st.wantFloor {
			t.Fatalf("after PruneEvents(%d): floor %d, want %d", st.through, got, st.wantFloor)
		}
		left := allEvents(t, s, "run-1")
		if int64(len(left)) != 10-st.wantFloor || (len(left) > 0 && left[0].Seq != st.wantFloor+1) {
			t.Fatalf("after PruneEvents(%d): %d events left", st.through, len(left))
		}
		if st.wantFloor == 4 {
			if _, err := s.FindEventByType(ctx, "run-1", "run.started"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("pruned run.started still found: %v", err)
			}
		}
	}
	// The chain continues from the pruned head.
	next := appendType(t, s, "run-1", "run.delta", `{"delta":"after"}`)
	if next.Seq != 11 || next.PrevHash != evs[9].EventHash {
		t.Fatalf("append after prune: seq %d prev %q; want 11 and %q", next.Seq, next.PrevHash, evs[9].EventHash)
	}
	if r := mustGet(t, s, "run-1"); r.LatestSeq != 11 || r.RetentionFloorSeq != 10 {
		t.Fatalf("run after prune + append: latest %d floor %d", r.LatestSeq, r.RetentionFloorSeq)
	}
}

func testFindEventByType(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustRun(t, s, "run-1")
	appendType(t, s, "run-1", "run.delta", `{"delta":"1"}`)
	appendType(t, s, "run-1", "tool.call", `{}`)
	last := appendType(t, s, "run-1", "run.delta", `{"delta":"2"}`)
	appendType(t, s, "run-1", "tool.result", `{}`)
	got, err := s.FindEventByType(ctx, "run-1", "run.delta")
	if err != nil {
		t.Fatalf("FindEventByType: %v", err)
	}
	sameEvent(t, "latest run.delta", got, last)
	_, err = s.FindEventByType(ctx, "run-1", "run.finished")
	wantErr(t, "FindEventByType(absent type)", err, store.ErrNotFound)
	_, err = s.FindEventByType(ctx, "nope", "run.delta")
	wantErr(t, "FindEventByType(unknown run)", err, store.ErrNotFound)
}

// testCreateLeasedRun: a new run with input may be born leased to the
// creating executor (no claim); leased or not, it ends up leased exactly once,
// and a leased one behaves as a claimed one: fenced appends work, other
// owners cannot take it, the janitor reclaims it when its holder dies.
func testCreateLeasedRun(t *testing.T, s store.Store) {
	ctx := t.Context()
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	in := store.CreateRunInput{RunID: "run-l", ThreadID: thread, OwnerSub: owner,
		Input: &store.InsertFrameInput{FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{"text":"hi"}`)}}
	g, created, err := s.CreateLeasedRun(ctx, in, "exec-1", time.Minute)
	if err != nil || !created || g.Run == nil || g.Run.RunID != "run-l" || g.Run.Status != store.StatusCreated {
		t.Fatalf("CreateLeasedRun = %+v created %v, err %v", g, created, err)
	}
	// A lone create is batched alone and leased (the fallback that is not
	// is for a refused batch; the executor handles both).
	if g.Lease.RunID != "run-l" || g.Lease.Owner != "exec-1" || g.Lease.Generation != 1 || g.Result != store.LeaseAcquired ||
		g.Next == nil || g.Next.FrameID != "f1" || g.Next.ID == 0 || string(g.Next.Payload) != `{"text":"hi"}` {
		t.Fatalf("leased grant = %+v (next %+v)", g, g.Next)
	}
	// The notice of its input says there is nothing to claim.
	timeout := time.After(10 * time.Second)
	for seen := false; !seen; {
		select {
		case n := <-ch:
			if n.Kind == store.NoticeFrame && n.RunID == "run-l" {
				if !n.Leased {
					t.Fatalf("notice of a leased run's input = %+v, want Leased", n)
				}
				seen = true
			}
		case <-timeout:
			t.Fatal("no notice of the leased run's input within 10s")
		}
	}
	// Nobody else gets it while the lease lives.
	if grants, err := s.ClaimRunnable(ctx, "exec-2", time.Minute, 10); err != nil || len(grants) != 0 {
		t.Fatalf("claim of a leased run = %+v, %v; want none", grants, err)
	}
	_, err = s.AcquireLease(ctx, "run-l", "exec-2", time.Minute)
	wantErr(t, "AcquireLease of a run born leased", err, store.ErrLeaseHeld)
	// Its fence holds.
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "run-l", EventType: "run.started",
		Payload: json.RawMessage(`{}`), Fence: g.Lease.Fence()}); err != nil {
		t.Fatalf("fenced append under the born lease: %v", err)
	}
	// Its holder dies: reclaimed, then claimed by another with a new
	// generation, and the old fence no longer writes.
	recs, err := s.ReclaimExpired(ctx, time.Now().Add(time.Hour), 3, 100)
	if err != nil || len(recs) != 1 || recs[0].RunID != "run-l" || recs[0].Owner != "exec-1" {
		t.Fatalf("reclaim of the expired born lease = %+v, %v", recs, err)
	}
	grants, err := s.ClaimRunnable(ctx, "exec-2", time.Minute, 10)
	if err != nil || len(grants) != 1 || grants[0].Lease.Generation != 2 || grants[0].Result != store.LeaseStolen {
		t.Fatalf("claim after reclaim = %+v, %v", grants, err)
	}
	_, _, err = s.AppendEvent(ctx, store.AppendInput{RunID: "run-l", EventType: "run.delta",
		Payload: json.RawMessage(`{"delta":"x"}`), Fence: g.Lease.Fence()})
	wantErr(t, "append under the reclaimed born lease", err, store.ErrFenced)

	// A replay takes no lease and adds no frame.
	g2, created, err := s.CreateLeasedRun(ctx, in, "exec-3", time.Minute)
	if err != nil || created || g2.Lease.Owner != "" || g2.Run == nil || g2.Run.RunID != "run-l" {
		t.Fatalf("replay of CreateLeasedRun = %+v created %v, err %v", g2, created, err)
	}
	if _, err := s.NextFrame(ctx, "run-l", 1<<40); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("NextFrame past every frame: %v", err)
	}
	// Without input there is nothing to execute: no lease.
	g3, created, err := s.CreateLeasedRun(ctx, store.CreateRunInput{RunID: "run-noin", ThreadID: thread, OwnerSub: owner}, "exec-1", time.Minute)
	if err != nil || !created || g3.Lease.Owner != "" || g3.Run == nil {
		t.Fatalf("CreateLeasedRun without input = %+v created %v, err %v", g3, created, err)
	}
	if _, err := s.AcquireLease(ctx, "run-noin", "exec-2", time.Minute); err != nil {
		t.Fatalf("AcquireLease of a run created without input: %v", err)
	}
	// Bad arguments name what is wrong.
	in.RunID = "run-bad"
	if _, _, err := s.CreateLeasedRun(ctx, in, "", time.Minute); err == nil || !strings.Contains(err.Error(), "owner") {
		t.Fatalf("CreateLeasedRun without owner: %v", err)
	}
	if _, _, err := s.CreateLeasedRun(ctx, in, "exec-1", 0); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Fatalf("CreateLeasedRun with ttl 0: %v", err)
	}
	if _, err := s.GetRun(ctx, "run-bad"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused CreateLeasedRun left a run: %v", err)
	}
}

// testWatch requires that a write committed after Watch returned is
// delivered (a driver's Watch returns only once its listener is ready).
func testWatch(t *testing.T, s store.Store) {
	mustRun(t, s, "run-1")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if !s.ListenerUp() {
		t.Fatalf("ListenerUp() = false after Watch returned")
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
			case <-timeout:
				t.Fatalf("no notice %+v within 10s", want)
			}
		}
	}
	ev := appendType(t, s, "run-1", "run.started", `{}`)
	waitNotice(store.Notice{Kind: store.NoticeEvent, RunID: "run-1", Seq: ev.Seq})
	mustFrame(t, s, "run-1", "f", "user_message", `{"text":"x"}`)
	waitNotice(store.Notice{Kind: store.NoticeFrame, RunID: "run-1"})

	cancel()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("watch channel not closed within 10s of its context ending")
		}
	}
}
