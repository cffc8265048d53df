package drills

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/stream"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

// sseReader is one SSE client reading a run's stream to its end.
type sseReader struct {
	RunID string
	From  int64 // the Last-Event-ID it started from (0 = the start)

	mu         sync.Mutex
	ids        []int64
	data       map[int64][]string
	done       int
	reconnects int
	lastBefore int64     // last id received before the first reconnect
	firstAfter int64     // first id received after the first reconnect
	resumedAt  time.Time // when that first id after the reconnect arrived
	err        error
	finished   chan struct{}
}

func newSSEReader(runID string, from int64) *sseReader {
	return &sseReader{RunID: runID, From: from, data: map[int64][]string{}, finished: make(chan struct{})}
}

// run streams until [DONE], a fatal error or ctx ends. Each attempt is
// signed anew (the signature's nonce is single use) and resumes with
// Last-Event-ID, as a browser EventSource behind a signing proxy would.
func (s *sseReader) run(ctx context.Context, c *client.Client) {
	defer close(s.finished)
	sc := &sseclient.Client{
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
		Prepare: func(r *http.Request) error {
			r.Header.Set("X-OA-RUNTIME-SIGNATURE", c.Sign())
			return nil
		},
		OnReconnect: func(int, string, error) {
			s.mu.Lock()
			if s.reconnects == 0 && len(s.ids) > 0 {
				s.lastBefore = s.ids[len(s.ids)-1]
			}
			s.reconnects++
			s.mu.Unlock()
		},
	}
	last := ""
	if s.From > 0 {
		last = strconv.FormatInt(s.From, 10)
	}
	u := c.BaseURL + "/internal/v1/runs/" + url.PathEscape(s.RunID) + "/stream"
	err := sc.Stream(ctx, u, nil, last, func(ev sseclient.Event) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ev.Done() {
			s.done++
			return nil
		}
		id, err := strconv.ParseInt(ev.ID, 10, 64)
		if err != nil {
			return fmt.Errorf("event id %q: %w", ev.ID, err)
		}
		if s.reconnects > 0 && s.firstAfter == 0 {
			s.firstAfter, s.resumedAt = id, time.Now()
		}
		s.ids = append(s.ids, id)
		s.data[id] = append(s.data[id], ev.Data)
		return nil
	})
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

func (s *sseReader) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// sseCheck compares what a reader received with the run's log: exactly the
// events after its starting id, each once, in order, with the data the
// stream mapping gives for the logged event, then [DONE] once.
type sseCheck struct {
	Received, Missed, Duplicated, OutOfOrder, DataMismatch int
	Problems                                               []string
}

func checkSSE(s *sseReader, evs []apiEvent) sseCheck {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out sseCheck
	bad := func(format string, a ...any) {
		if len(out.Problems) < 4 {
			out.Problems = append(out.Problems, fmt.Sprintf("stream of %s from %d: ", s.RunID, s.From)+fmt.Sprintf(format, a...))
		}
	}
	out.Received = len(s.ids)
	if s.err != nil {
		bad("ended with error: %v", s.err)
	}
	if s.done != 1 {
		bad("[DONE] received %d times", s.done)
	}
	seen := map[int64]int{}
	prev := s.From
	for _, id := range s.ids {
		seen[id]++
		if id <= prev {
			out.OutOfOrder++
		}
		prev = max(prev, id)
	}
	logged := map[int64]apiEvent{}
	for _, ev := range evs {
		logged[ev.Seq] = ev
	}
	for _, ev := range evs {
		if ev.Seq <= s.From {
			continue
		}
		if seen[ev.Seq] == 0 {
			out.Missed++
			bad("event %d (%s) never received", ev.Seq, ev.EventType)
		}
	}
	for id, n := range seen {
		if n > 1 {
			out.Duplicated += n - 1
			bad("event %d received %d times", id, n)
		}
		ev, ok := logged[id]
		if !ok || id <= s.From {
			out.DataMismatch++
			bad("received id %d that the log does not hold after %d", id, s.From)
			continue
		}
		msgs, err := stream.MapEvent(store.Event{RunID: s.RunID, Seq: ev.Seq, EventType: ev.EventType, Payload: ev.Payload})
		if err != nil || len(msgs) == 0 {
			bad("map logged event %d: %v", id, err)
			continue
		}
		for _, got := range s.data[id] {
			if got != msgs[0].Data {
				out.DataMismatch++
				bad("event %d data %s differs from the log's %s", id, got, msgs[0].Data)
			}
		}
	}
	if out.OutOfOrder > 0 {
		bad("%d ids out of order", out.OutOfOrder)
	}
	return out
}

// streamReconnectResume: SSE clients read runs that are still executing;
// the node is killed with SIGKILL and started again; the clients reconnect
// with Last-Event-ID and must receive exactly the events they had not
// received: compared id by id (and data by data) with the log, no gap, no
// duplicate. Clients that connect during the outage from a mid-stream id
// must get exactly the rest. Every run completes.
func (d *Driver) streamReconnectResume(ctx context.Context, kind string) Result {
	r := newRec(StreamReconnectResume, kind)
	passed := false
	ctx, node, finish, ok := d.singleNode(ctx, r, StreamReconnectResume, kind, 4*time.Minute, nil)
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)

	n, parts := 24, 10
	if d.cfg.Short {
		n, parts = 8, 6
	}
	plans := make([]*plannedRun, n)
	for i := range plans {
		tag := fmt.Sprintf("s%02d", i)
		plans[i] = &plannedRun{
			RunID: fmt.Sprintf("run_stream_%s_%s_%s", kind, randHex(4), tag), FrameID: "frame_" + tag,
			Steps: streamScript(tag, parts, 350), WantStatus: "succeeded",
		}
		if err := createRun(ctx, c, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("runs", int64(n))

	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	defer scancel()
	var readers []*sseReader
	for _, p := range plans {
		s := newSSEReader(p.RunID, 0)
		readers = append(readers, s)
		go s.run(sctx, c)
	}
	// Kill once every client has some events but (with these scripts) none
	// has its run's end.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ready := 0
		for _, s := range readers {
			if s.received() >= 3 {
				ready++
			}
		}
		if ready == len(readers) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	openAtKill := 0
	for _, s := range readers {
		select {
		case <-s.finished:
		default:
			openAtKill++
		}
	}
	r.count("streams_open_at_kill", int64(openAtKill))
	killAt := node.Kill()
	d.progressf("%s/%s: SIGKILL with %d streams open", StreamReconnectResume, kind, openAtKill)

	// Late clients connect while the node is down, from a mid-stream id.
	var late []*sseReader
	for i, p := range plans {
		if i%4 == 0 {
			s := newSSEReader(p.RunID, 2)
			late = append(late, s)
			go s.run(sctx, c)
		}
	}
	time.Sleep(time.Second)
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-2"); err != nil {
		r.failf("restart: %v", err)
		return r.done()
	}
	r.dur("kill_to_ready", time.Since(killAt))

	all := append(append([]*sseReader(nil), readers...), late...)
	for _, s := range all {
		select {
		case <-s.finished:
		case <-sctx.Done():
		}
	}
	r.dur("kill_to_all_streams_done", time.Since(killAt))
	scancel()

	requireAlive(r, node)
	checks := checkAll(ctx, r, c, plans)
	logs := map[string][]apiEvent{}
	for _, rc := range checks {
		logs[rc.RunID] = rc.Events
	}
	var resumeDelays []time.Duration
	var problems []string
	for _, s := range all {
		sc := checkSSE(s, logs[s.RunID])
		r.add("stream_clients", 1)
		r.add("stream_events_received", int64(sc.Received))
		r.add("stream_events_missed", int64(sc.Missed))
		r.add("stream_events_duplicated", int64(sc.Duplicated))
		r.add("stream_events_out_of_order", int64(sc.OutOfOrder))
		r.add("stream_data_mismatches", int64(sc.DataMismatch))
		s.mu.Lock()
		r.add("stream_reconnects", int64(s.reconnects))
		if s.reconnects > 0 && s.firstAfter > 0 {
			r.add("stream_clients_resumed", 1)
			if s.lastBefore > 0 && s.firstAfter != s.lastBefore+1 {
				problems = append(problems, fmt.Sprintf("stream of %s resumed at %d after %d", s.RunID, s.firstAfter, s.lastBefore))
			}
			if s.From == 0 {
				resumeDelays = append(resumeDelays, s.resumedAt.Sub(killAt))
			}
		}
		s.mu.Unlock()
		problems = append(problems, sc.Problems...)
	}
	for _, pr := range limitList(problems, 20) {
		r.failf("%s", pr)
	}
	if r.r.Counts["stream_clients_resumed"] == 0 {
		r.failf("no stream client reconnected and resumed after the kill")
	}
	if len(resumeDelays) > 0 {
		_, p50, _, hi := percentiles(resumeDelays)
		r.dur("kill_to_first_resumed_event_p50", p50)
		r.dur("kill_to_first_resumed_event_max", hi)
	}
	d.recoveryFigures(r, checks, killAt, "", "kill", budgetTTLJanitor, d.recoveryBudget())
	res := r.done()
	passed = res.Passed
	return res
}
