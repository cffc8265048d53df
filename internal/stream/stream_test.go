package stream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

// seedRun creates runID with started, n deltas and, when finish is set,
// run.finished.
func seedRun(st *memStore, runID string, n int, finish bool) {
	st.createRun(runID)
	st.appendEvent(runID, "run.started", `{}`)
	for i := 0; i < n; i++ {
		st.appendEvent(runID, "run.delta", `{"delta":"d`+strconv.Itoa(i)+`"}`)
	}
	if finish {
		st.appendEvent(runID, "run.finished", `{"status":"succeeded"}`)
	}
}

func idRange(from, to int64, done bool) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, strconv.FormatInt(i, 10))
	}
	if done {
		out = append(out, strconv.FormatInt(to, 10)+"+DONE")
	}
	return out
}

func TestWireFormatExact(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	h.st.createRun("r")
	h.st.appendEvent("r", "run.started", `{"phase":"boot"}`)
	h.st.appendEvent("r", "run.finished", `{"status":"succeeded"}`)
	resp, err := http.Get(h.url("r", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("body did not end cleanly: %v", err)
	}
	want := "id: 1\nevent: message\ndata: {\"type\":\"start\",\"runId\":\"r\",\"meta\":{\"phase\":\"boot\"}}\n\n" +
		"id: 2\nevent: message\ndata: {\"type\":\"finish\",\"runId\":\"r\",\"meta\":{\"status\":\"succeeded\"}}\n\n" +
		"id: 2\nevent: message\ndata: [DONE]\n\n"
	if string(body) != want {
		t.Fatalf("body:\n%q\nwant:\n%q", body, want)
	}
}

// TestResume: from every cursor, by query and by Last-Event-ID, the stream
// sends exactly the events above the cursor, then [DONE], then ends.
func TestResume(t *testing.T) {
	h := newHarness(t, Config{BatchSize: 2}, true, true) // small batches exercise paging
	seedRun(h.st, "r", 5, true)                          // seqs 1..7, 7 = run.finished
	for _, cursor := range []int64{0, 1, 3, 6} {
		for _, via := range []string{"query", "header", "both"} {
			t.Run(via+"_"+strconv.FormatInt(cursor, 10), func(t *testing.T) {
				c := strconv.FormatInt(cursor, 10)
				query, header := "", http.Header{}
				if via != "header" {
					query = "cursor=" + c
				}
				if via != "query" {
					header.Set("Last-Event-ID", c)
				}
				resp := get(t, context.Background(), h.url("r", query), header)
				if resp.status != 200 || resp.err != nil {
					t.Fatalf("status %d err %v body %s", resp.status, resp.err, resp.body)
				}
				if got, want := ids(resp.events), idRange(cursor+1, 7, true); !slices.Equal(got, want) {
					t.Fatalf("ids %v, want %v", got, want)
				}
				s := h.session()
				if s.Outcome != OutcomeFinished || s.InitialCursor != cursor || s.Cursor != 7 || s.Events != int(7-cursor) {
					t.Fatalf("session %+v", s)
				}
			})
		}
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	seedRun(h.st, "r", 2, false)
	tests := []struct {
		name, query, lastID string
		wantPrefix          string
	}{
		{"negative", "cursor=-1", "", "cursor: "},
		{"letters", "cursor=abc", "", "cursor: "},
		{"decimal", "cursor=1.5", "", "cursor: "},
		{"plus sign", "cursor=%2B1", "", "cursor: "},
		{"space", "cursor=%201", "", "cursor: "},
		{"overflow", "cursor=9223372036854775808", "", "cursor: "},
		{"huge", "cursor=" + strings.Repeat("9", 500), "", "cursor: "},
		{"header negative", "", "-3", "cursor: "},
		{"header letters", "", "x1", "cursor: "},
		{"disagree", "cursor=1", "2", "cursor: "},
		{"duplicate query", "cursor=1&cursor=1", "", "cursor: "},
		{"tail_ms zero", "tail_ms=0", "", "tail_ms: "},
		{"tail_ms negative", "tail_ms=-5", "", "tail_ms: "},
		{"tail_ms text", "tail_ms=soon", "", "tail_ms: "},
		{"tail_ms empty", "tail_ms=", "", "tail_ms: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			header := http.Header{}
			if tc.lastID != "" {
				header.Set("Last-Event-ID", tc.lastID)
			}
			resp := get(t, context.Background(), h.url("r", tc.query), header)
			if resp.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (body %s)", resp.status, resp.body)
			}
			var env struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(resp.body, &env); err != nil {
				t.Fatalf("body %s: %v", resp.body, err)
			}
			if env.Error.Code != "invalid_request" || !strings.HasPrefix(env.Error.Message, tc.wantPrefix) {
				t.Fatalf("error %+v, want invalid_request with message %q...", env.Error, tc.wantPrefix)
			}
		})
	}
	select {
	case s := <-h.sessions:
		t.Fatalf("a rejected request counted as a session: %+v", s)
	default:
	}
}

func TestStaleCursor(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	seedRun(h.st, "r", 5, true) // 1..7
	h.st.prune("r", 3)
	for _, tc := range []struct {
		cursor string
		status int
	}{{"0", 410}, {"2", 410}, {"3", 200}, {"5", 200}} {
		resp := get(t, context.Background(), h.url("r", "cursor="+tc.cursor), nil)
		if resp.status != tc.status {
			t.Fatalf("cursor %s: status %d, want %d (%s)", tc.cursor, resp.status, tc.status, resp.body)
		}
		if tc.status == 410 {
			var env struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(resp.body, &env); err != nil || env.Error.Code != "stale_cursor" ||
				!strings.HasPrefix(env.Error.Message, "cursor: ") {
				t.Fatalf("cursor %s: body %s (%v)", tc.cursor, resp.body, err)
			}
			continue
		}
		c, _ := strconv.ParseInt(tc.cursor, 10, 64)
		if got, want := ids(resp.events), idRange(c+1, 7, true); !slices.Equal(got, want) {
			t.Fatalf("cursor %s: ids %v, want %v", tc.cursor, got, want)
		}
	}
	// The default cursor (the start) is below the floor too.
	if resp := get(t, context.Background(), h.url("r", ""), nil); resp.status != 410 {
		t.Fatalf("no cursor: status %d, want 410", resp.status)
	}
}

func TestTerminalRunAtHeadAnswers204(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	seedRun(h.st, "r", 1, true) // 1..3
	for _, c := range []string{"3", "10"} {
		if resp := get(t, context.Background(), h.url("r", "cursor="+c), nil); resp.status != http.StatusNoContent {
			t.Fatalf("cursor %s: status %d, want 204", c, resp.status)
		}
	}
	// The sseclient treats 204 as the end, as EventSource does.
	n := 0
	err := sseclient.Stream(context.Background(), h.url("r", ""), nil, "3", func(sseclient.Event) error { n++; return nil })
	if err != nil || n != 0 {
		t.Fatalf("Stream after the end = %v with %d events, want nil and 0", err, n)
	}
}

// TestLiveTail: the stream delivers events appended after it started, in
// order, woken by the hub, and ends after run.finished.
func TestLiveTail(t *testing.T) {
	h := newHarness(t, Config{PollMin: time.Hour, PollMax: time.Hour}, true, true) // only wake-ups can deliver
	h.st.createRun("r")
	h.st.appendEvent("r", "run.started", `{}`)
	var got []string
	err := sseclient.Stream(context.Background(), h.url("r", ""), nil, "", func(e sseclient.Event) error {
		got = append(got, ids([]sseclient.Event{e})[0])
		switch e.ID {
		case "1":
			go func() {
				h.st.appendEvent("r", "run.delta", `{"delta":"a"}`)
				h.st.appendEvent("r", "tool.call", `{"name":"echo"}`)
			}()
		case "3":
			go h.st.appendEvent("r", "run.finished", `{"status":"succeeded"}`)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := idRange(1, 4, true); !slices.Equal(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
	s := h.session()
	if s.Outcome != OutcomeFinished || s.Wakeups == 0 {
		t.Fatalf("session %+v: want finished after at least one wake-up", s)
	}
}

// TestDroppedNotifications: the store publishes nothing (every notice is
// lost); the events still arrive through the poll.
func TestDroppedNotifications(t *testing.T) {
	h := newHarness(t, Config{PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond}, true, false)
	h.st.createRun("r")
	h.st.appendEvent("r", "run.started", `{}`)
	var got []string
	err := sseclient.Stream(context.Background(), h.url("r", ""), nil, "", func(e sseclient.Event) error {
		got = append(got, ids([]sseclient.Event{e})[0])
		if e.ID == "1" {
			go func() {
				h.st.appendEvent("r", "run.delta", `{"delta":"late"}`)
				h.st.appendEvent("r", "run.finished", `{"status":"succeeded"}`)
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := idRange(1, 3, true); !slices.Equal(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
	s := h.session()
	if s.Outcome != OutcomeFinished || s.Wakeups != 0 || s.Polls == 0 {
		t.Fatalf("session %+v: want finished through polls alone", s)
	}
}

func TestTailTimeout(t *testing.T) {
	h := newHarness(t, Config{IdleTimeout: 100 * time.Millisecond, MinTail: time.Millisecond}, true, true)
	seedRun(h.st, "r", 1, false) // 1..2, not finished
	for _, query := range []string{"", "tail_ms=50"} {
		resp := get(t, context.Background(), h.url("r", query), nil)
		if resp.status != 200 || resp.err != nil {
			t.Fatalf("%q: status %d err %v", query, resp.status, resp.err)
		}
		if got, want := ids(resp.events), idRange(1, 2, false); !slices.Equal(got, want) {
			t.Fatalf("%q: ids %v, want %v", query, got, want)
		}
		if s := h.session(); s.Outcome != OutcomeTailTimeout {
			t.Fatalf("%q: outcome %q, want tail_timeout", query, s.Outcome)
		}
	}
}

// TestIdleWindowResetsOnEvents: events keep arriving more often than the
// idle window, so the session outlives several windows and ends finished.
func TestIdleWindowResetsOnEvents(t *testing.T) {
	idle := time.Second
	h := newHarness(t, Config{IdleTimeout: idle}, true, true)
	h.st.createRun("r")
	h.st.appendEvent("r", "run.started", `{}`)
	go func() {
		for i := 0; i < 12; i++ {
			time.Sleep(idle / 10)
			h.st.appendEvent("r", "run.delta", `{"delta":"x"}`)
		}
		h.st.appendEvent("r", "run.finished", `{"status":"succeeded"}`)
	}()
	resp := get(t, context.Background(), h.url("r", ""), nil)
	if got, want := ids(resp.events), idRange(1, 14, true); !slices.Equal(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
	if s := h.session(); s.Outcome != OutcomeFinished {
		t.Fatalf("outcome %q, want finished", s.Outcome)
	}
}

func TestIdleWindowFromTailMS(t *testing.T) {
	s := New(Config{IdleTimeout: 60 * time.Second}, nil, nil, nil, nil)
	tests := []struct {
		query string
		want  time.Duration
	}{
		{"", 60 * time.Second},
		{"tail_ms=1", time.Second}, // raised to MinTail
		{"tail_ms=1500", 1500 * time.Millisecond},
		{"tail_ms=600000", 10 * time.Minute},
		{"tail_ms=99999999999999", 10 * time.Minute}, // clamped, no overflow
	}
	for _, tc := range tests {
		r, _ := http.NewRequest(http.MethodGet, "/x?"+tc.query, nil)
		got, err := s.idleWindow(r.URL.Query())
		if err != nil || got != tc.want {
			t.Errorf("%q: idle %v err %v, want %v", tc.query, got, err, tc.want)
		}
	}
}

func TestClientClosed(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	seedRun(h.st, "r", 1, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := errors.New("seen enough")
	err := (&sseclient.Client{}).Stream(ctx, h.url("r", ""), nil, "", func(e sseclient.Event) error {
		if e.ID == "2" {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Stream = %v, want the callback's error", err)
	}
	if s := h.session(); s.Outcome != OutcomeClientClosed || s.Cursor != 2 {
		t.Fatalf("session %+v, want client_closed at cursor 2", s)
	}
}

func TestServerShutdown(t *testing.T) {
	t.Run("config channel", func(t *testing.T) {
		shutdown := make(chan struct{})
		h := newHarness(t, Config{Shutdown: shutdown}, true, true)
		seedRun(h.st, "r", 1, false)
		testShutdown(t, h, func() { close(shutdown) })
	})
	t.Run("Service.Shutdown via http.Server", func(t *testing.T) {
		h := newHarness(t, Config{}, true, true)
		seedRun(h.st, "r", 1, false)
		h.srv.Config.RegisterOnShutdown(h.svc.Shutdown)
		testShutdown(t, h, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Without the hook the stream would keep Shutdown waiting for
			// the 60 s idle window.
			if err := h.srv.Config.Shutdown(ctx); err != nil {
				t.Errorf("http.Server.Shutdown: %v", err)
			}
		})
	})
}

func testShutdown(t *testing.T, h *harness, shutdown func()) {
	t.Helper()
	var got []string
	err := (&sseclient.Client{MaxAttempts: 1}).Stream(context.Background(), h.url("r", ""), nil, "", func(e sseclient.Event) error {
		got = append(got, e.ID)
		if e.ID == "2" {
			go shutdown()
		}
		return nil
	})
	// The stream ended without [DONE]; the client tried to resume and the
	// server, now shut down, refused or ended that attempt.
	if err == nil {
		t.Fatal("Stream returned nil; want an error after the shutdown")
	}
	if !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("ids %v", got)
	}
	if s := h.session(); s.Outcome != OutcomeServerShutdown {
		t.Fatalf("outcome %q, want server_shutdown", s.Outcome)
	}
}

func TestHeartbeats(t *testing.T) {
	h := newHarness(t, Config{Heartbeat: 10 * time.Millisecond, IdleTimeout: 200 * time.Millisecond}, true, true)
	seedRun(h.st, "r", 0, false)
	resp := get(t, context.Background(), h.url("r", ""), nil)
	if resp.err != nil {
		t.Fatal(resp.err)
	}
	n := 0
	for _, c := range resp.comments {
		if c != "heartbeat" {
			t.Fatalf("unexpected comment %q", c)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no heartbeat comment in a 200 ms session with a 10 ms interval")
	}
	if s := h.session(); s.Outcome != OutcomeTailTimeout || s.Heartbeats != n {
		t.Fatalf("session %+v, client saw %d heartbeats", s, n)
	}
}

// TestPrunedWhileStreaming: retention removes events the session has not
// sent yet; the session ends as stale_cursor instead of skipping ids, and
// the client's resume gets 410.
func TestPrunedWhileStreaming(t *testing.T) {
	// Polls are disabled so that only the explicit publish below wakes the
	// stream, after the prune.
	h := newHarness(t, Config{PollMin: time.Hour, PollMax: time.Hour}, true, true)
	seedRun(h.st, "r", 0, false) // seq 1
	var got []string
	err := (&sseclient.Client{}).Stream(context.Background(), h.url("r", ""), nil, "", func(e sseclient.Event) error {
		got = append(got, e.ID)
		if e.ID == "1" {
			h.st.appendQuiet("r", "run.delta", `{"delta":"a"}`) // 2
			h.st.appendQuiet("r", "run.delta", `{"delta":"b"}`) // 3
			h.st.prune("r", 2)
			h.hub.Publish(store.Notice{Kind: store.NoticeEvent, RunID: "r", Seq: 3})
		}
		return nil
	})
	var he *sseclient.HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusGone || he.Code != "stale_cursor" {
		t.Fatalf("Stream = %v, want HTTP 410 stale_cursor on resume", err)
	}
	if !slices.Equal(got, []string{"1"}) {
		t.Fatalf("ids %v, want [1]", got)
	}
	if s := h.session(); s.Outcome != OutcomeStaleCursor || s.Cursor != 1 {
		t.Fatalf("session %+v, want stale_cursor at 1", s)
	}
}

// TestManyClients mirrors the original load test: 8 concurrent clients of a
// live run each receive ids 1..6 and [DONE].
func TestManyClients(t *testing.T) {
	h := newHarness(t, Config{}, true, true)
	h.st.createRun("r")
	h.st.appendEvent("r", "run.started", `{}`)
	const clients = 8
	results := make(chan []string, clients)
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			var got []string
			err := sseclient.Stream(context.Background(), h.url("r", ""), nil, "", func(e sseclient.Event) error {
				got = append(got, ids([]sseclient.Event{e})[0])
				return nil
			})
			errs <- err
			results <- got
		}()
	}
	for h.svc.Active() < clients {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 4; i++ {
		h.st.appendEvent("r", "run.delta", `{"delta":"x"}`)
	}
	h.st.appendEvent("r", "run.finished", `{"status":"succeeded"}`)
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if got, want := <-results, idRange(1, 6, true); !slices.Equal(got, want) {
			t.Fatalf("client ids %v, want %v", got, want)
		}
	}
	// The response ends a few statements before Serve returns.
	for h.svc.Active() != 0 {
		time.Sleep(time.Millisecond)
	}
	if n := h.hub.Subscribers(); n != 0 {
		t.Fatalf("%d hub subscriptions leaked after all sessions ended", n)
	}
}
