package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

const topic = "runtime.run_summaries"

type fanoutConfig struct {
	bin, work   string
	subscribers int
	runs        int
	events      int
	interval    time.Duration
	cliMint     int // subscribers whose token comes from `oaruntime token mint`
}

type fanoutResult struct {
	Store       string  `json:"store"`
	Subscribers int     `json:"subscribers_requested"`
	Open        int     `json:"subscribers_open"`
	OpenError   string  `json:"open_error,omitempty"`
	OpenSeconds float64 `json:"open_seconds"`
	CLITokens   int     `json:"tokens_from_cli"`
	Runs        int     `json:"runs"`
	Events      int     `json:"events"`
	IntervalMS  int64   `json:"event_interval_ms"`
	// Latency of each (event, subscriber) pair: from the append's HTTP
	// response to the subscriber reading the update_batch whose run
	// summary carries runtime_source.seq >= the appended seq.
	Latency      benchutil.DurStats `json:"commit_to_client"`
	Deliveries   int                `json:"deliveries"`
	Missing      int                `json:"missing"`
	PerEventP99  benchutil.DurStats `json:"per_event_last_subscriber"` // the slowest subscriber of each event
	Closed       int64              `json:"sockets_closed_early"`
	CloseReason  string             `json:"first_close_reason,omitempty"`
	RSSIdleMiB   float64            `json:"server_rss_before_mib"`
	RSSOpenMiB   float64            `json:"server_rss_sockets_open_mib"`
	RSSPeakMiB   float64            `json:"server_rss_peak_mib"`
	ServerCPU    float64            `json:"server_cpu_cores_during_events"`
	ClientCPU    float64            `json:"bench_client_cpu_cores_during_events"`
	MachineCPU   float64            `json:"machine_cpu_cores_during_events"`
	SyncConnsGau float64            `json:"server_sync_connections_gauge"`
	Loadavg      string             `json:"loadavg_after"`
}

type recv struct {
	seq int64
	at  time.Time
}

// subscriber is one socket; its reader records when each run's summary
// arrived, in arrival order (per run, watermark order = seq order).
type subscriber struct {
	conn   *websocket.Conn
	mu     sync.Mutex
	seen   map[string][]recv
	ready  chan struct{}
	closed chan string
}

type wireBatch struct {
	Type           string `json:"type"`
	ReplayComplete bool   `json:"replay_complete"`
	Code           string `json:"code"`
	Message        string `json:"message"`
	Updates        []struct {
		Payload struct {
			RuntimeSource struct {
				RunID string `json:"run_id"`
				Seq   int64  `json:"seq"`
			} `json:"runtime_source"`
		} `json:"payload"`
	} `json:"updates"`
}

func (s *subscriber) read(ctx context.Context) {
	readyOnce := sync.OnceFunc(func() { close(s.ready) })
	for {
		_, data, err := s.conn.Read(ctx)
		at := time.Now()
		if err != nil {
			s.closed <- err.Error()
			return
		}
		var b wireBatch
		if err := json.Unmarshal(data, &b); err != nil {
			s.closed <- "bad message: " + err.Error()
			return
		}
		switch b.Type {
		case "update_batch":
			s.mu.Lock()
			for _, u := range b.Updates {
				rs := u.Payload.RuntimeSource
				s.seen[rs.RunID] = append(s.seen[rs.RunID], recv{rs.Seq, at})
			}
			s.mu.Unlock()
			if b.ReplayComplete {
				readyOnce()
			}
		case "error":
			s.closed <- b.Code + ": " + b.Message
			return
		}
	}
}

// firstAtLeast is when the summary of run with seq >= seq arrived.
func (s *subscriber) firstAtLeast(run string, seq int64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.seen[run] {
		if r.seq >= seq {
			return r.at, true
		}
	}
	return time.Time{}, false
}

func mintHTTP(ctx context.Context, a *api) (string, error) {
	var out struct {
		Data struct {
			Token string `json:"token"`
		} `json:"data"`
	}
	err := a.Do(ctx, http.MethodPost, "/api/khala/token", map[string]any{"scopes": []string{topic}, "ttl_seconds": 900}, &out)
	return out.Data.Token, err
}

func dial(ctx context.Context, addr, tok string) (*subscriber, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, "ws://"+addr+"/sync/v1", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial: HTTP %d: %w", resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	conn.SetReadLimit(1 << 22)
	s := &subscriber{conn: conn, seen: map[string][]recv{}, ready: make(chan struct{}), closed: make(chan string, 1)}
	go s.read(context.WithoutCancel(ctx))
	msg, _ := json.Marshal(map[string]any{"type": "subscribe", "topics": []string{topic}})
	if err := conn.Write(dctx, websocket.MessageText, msg); err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	select {
	case <-s.ready:
		return s, nil
	case why := <-s.closed:
		conn.CloseNow()
		return nil, fmt.Errorf("closed before replay_complete: %s", why)
	case <-dctx.Done():
		conn.CloseNow()
		return nil, fmt.Errorf("no replay_complete within 30 s")
	}
}

func fanoutStore(ctx context.Context, c fanoutConfig, name, dbURL string, cliMint func(sub string) (string, error)) (fanoutResult, error) {
	res := fanoutResult{Store: name, Subscribers: c.subscribers, Runs: c.runs, Events: c.events, IntervalMS: c.interval.Milliseconds()}
	srv, err := startServer(ctx, c.bin, "khala-fanout-"+name, c.work, map[string]string{
		"OA_RUNTIME_DATABASE_URL": dbURL, "OA_RUNTIME_DATA_DIR": c.work + "/data-fanout-" + name,
		"OA_SYNC_TOKEN_KEY_ID": keyID, "OA_SYNC_TOKEN_SIGNING_KEY": signingKey,
	})
	if err != nil {
		return res, err
	}
	defer srv.stop()
	const user = "user:fanout"
	a := srv.api(user)
	ids := make([]string, c.runs)
	for i := range ids {
		ids[i] = fmt.Sprintf("run_fanout_%d_%s", i, randHex(3))
		if err := a.createOpenRun(ctx, ids[i]); err != nil {
			return res, err
		}
		if _, err := a.appendDelta(ctx, ids[i], -1); err != nil {
			return res, err
		}
	}
	if _, err := settle(ctx, a, 60*time.Second); err != nil {
		return res, err
	}
	time.Sleep(time.Second)
	res.RSSIdleMiB = mib(benchutil.RSSBytes(srv.pid()))

	// Tokens: each subscriber its own, for the same user.
	toks := make([]string, c.subscribers)
	for i := range toks {
		if i < c.cliMint && cliMint != nil {
			toks[i], err = cliMint(user)
			res.CLITokens++
		} else {
			toks[i], err = mintHTTP(ctx, a)
		}
		if err != nil {
			return res, fmt.Errorf("mint token %d: %w", i, err)
		}
	}
	subs := make([]*subscriber, c.subscribers)
	var openErr atomic.Value
	t0 := time.Now()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range subs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s, err := dial(ctx, srv.addr, toks[i])
			if err != nil {
				openErr.CompareAndSwap(nil, err.Error())
				return
			}
			subs[i] = s
		})
	}
	wg.Wait()
	res.OpenSeconds = time.Since(t0).Seconds()
	var open []*subscriber
	for _, s := range subs {
		if s != nil {
			open = append(open, s)
		}
	}
	res.Open = len(open)
	if v, ok := openErr.Load().(string); ok {
		res.OpenError = v
	}
	logf("fanout %s: %d/%d subscribers open in %.1fs", name, res.Open, c.subscribers, res.OpenSeconds)
	defer func() {
		for _, s := range open {
			_ = s.conn.Close(websocket.StatusNormalClosure, "bench done")
		}
	}()
	if len(open) == 0 {
		return res, fmt.Errorf("no subscriber could open: %s", res.OpenError)
	}
	time.Sleep(2 * time.Second)
	res.RSSOpenMiB = mib(benchutil.RSSBytes(srv.pid()))

	// Client heartbeats keep sockets past the server's idle timeout.
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	for _, s := range open {
		go func() {
			t := time.NewTicker(20 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-hbCtx.Done():
					return
				case <-t.C:
					wctx, cancel := context.WithTimeout(hbCtx, 10*time.Second)
					_ = s.conn.Write(wctx, websocket.MessageText, []byte(`{"type":"heartbeat"}`))
					cancel()
				}
			}
		}()
	}
	var peak atomic.Int64
	peak.Store(benchutil.RSSBytes(srv.pid()))
	go func() {
		for hbCtx.Err() == nil {
			if r := benchutil.RSSBytes(srv.pid()); r > peak.Load() {
				peak.Store(r)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	type appended struct {
		run string
		seq int64
		at  time.Time
	}
	var evs []appended
	cpu0, self0, busy0 := procCPU(srv.pid()), procCPU(0), machineBusy()
	start := time.Now()
	for i := range c.events {
		if d := time.Until(start.Add(time.Duration(i) * c.interval)); d > 0 {
			time.Sleep(d)
		}
		run := ids[i%len(ids)]
		seq, err := a.appendDelta(ctx, run, i)
		if err != nil {
			return res, fmt.Errorf("append %d: %w", i, err)
		}
		evs = append(evs, appended{run, seq, time.Now()})
	}
	// Wait for the last events to reach everyone (at most 30 s).
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		all := true
		for _, e := range evs[max(len(evs)-len(ids), 0):] {
			for _, s := range open {
				if _, ok := s.firstAtLeast(e.run, e.seq); !ok {
					all = false
					break
				}
			}
			if !all {
				break
			}
		}
		if all {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	el := time.Since(start).Seconds()
	res.ServerCPU = round3((procCPU(srv.pid()) - cpu0).Seconds() / el)
	res.ClientCPU = round3((procCPU(0) - self0).Seconds() / el)
	res.MachineCPU = round3((machineBusy() - busy0).Seconds() / el)
	res.RSSPeakMiB = mib(peak.Load())
	if text, err := a.scrape(ctx); err == nil {
		for _, line := range strings.Split(text, "\n") {
			if rest, ok := strings.CutPrefix(line, "openagents_runtime_sync_connections "); ok {
				fmt.Sscanf(rest, "%g", &res.SyncConnsGau)
			}
		}
	}

	var lat, perEvent []time.Duration
	for _, e := range evs {
		var worst time.Duration
		complete := true
		for _, s := range open {
			at, ok := s.firstAtLeast(e.run, e.seq)
			if !ok {
				res.Missing++
				complete = false
				continue
			}
			d := at.Sub(e.at)
			lat = append(lat, d)
			worst = max(worst, d)
		}
		if complete {
			perEvent = append(perEvent, worst)
		}
	}
	res.Deliveries = len(lat)
	res.Latency, res.PerEventP99 = benchutil.Summarize(lat), benchutil.Summarize(perEvent)
	for _, s := range open {
		select {
		case why := <-s.closed:
			res.Closed++
			if res.CloseReason == "" {
				res.CloseReason = why
			}
		default:
		}
	}
	res.Loadavg = loadavg()
	return res, nil
}

func mib(b int64) float64 { return round1(float64(b) / (1 << 20)) }
