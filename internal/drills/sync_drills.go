package drills

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/oaruntime/oaruntime/internal/client"
	khalasync "github.com/oaruntime/oaruntime/internal/sync"
	"github.com/oaruntime/oaruntime/internal/sync/token"
)

const syncTopic = token.TopicRunSummaries

// mintViaAPI asks the node for a sync token (POST /api/khala/token, signed
// like the internal API): the way a control plane gets one.
func mintViaAPI(ctx context.Context, c *client.Client, ttl int) (string, error) {
	var out struct {
		Data struct {
			Token string `json:"token"`
		} `json:"data"`
	}
	if _, err := c.Do(ctx, http.MethodPost, "/api/khala/token", map[string]any{"scopes": []string{syncTopic}, "ttl_seconds": ttl}, &out); err != nil {
		return "", fmt.Errorf("mint sync token: %w", err)
	}
	if out.Data.Token == "" {
		return "", errors.New("mint sync token: empty token")
	}
	return out.Data.Token, nil
}

// mintLocal signs a token with the nodes' keyring as if it had been issued
// at issuedAt: how the drills make tokens that are already expired.
func (d *Driver) mintLocal(ctx context.Context, issuedAt time.Time, ttl int64, key string) (string, error) {
	kr, err := token.NewKeyring(token.KeyConfig{KeyID: d.syncKeyID, SigningKey: key})
	if err != nil {
		return "", err
	}
	m := token.NewMinter(token.MinterConfig{Keyring: kr, Now: func() time.Time { return issuedAt }})
	t, err := m.Mint(ctx, token.MintRequest{Subject: drillSub, Scopes: []string{syncTopic}, TTLSeconds: &ttl})
	if err != nil {
		return "", err
	}
	return t.Token, nil
}

// pollPage is the polling fallback's answer.
type pollPage struct {
	Messages       []khalasync.Update `json:"messages"`
	NextCursor     int64              `json:"next_cursor"`
	HeadWatermark  int64              `json:"head_watermark"`
	RetentionFloor int64              `json:"retention_floor"`
	Error          *struct {
		Code string `json:"code"`
	} `json:"error"`
	FullResyncRequired bool `json:"full_resync_required"`
}

func pollOnce(ctx context.Context, addr, tok string, after int64) (int, pollPage, error) {
	var p pollPage
	u := fmt.Sprintf("http://%s/internal/v1/khala/topics/%s/messages?after_seq=%d&limit=%d", addr, syncTopic, after, khalasync.MaxPollLimit)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, p, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, p, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err := json.Unmarshal(b, &p); err != nil {
		return resp.StatusCode, p, fmt.Errorf("poll answer %d: %.200s", resp.StatusCode, b)
	}
	return resp.StatusCode, p, nil
}

// pollAll reads the whole retained stream of the topic for the token's
// owner through the polling endpoint.
func pollAll(ctx context.Context, addr, tok string) ([]khalasync.Update, int64, error) {
	var all []khalasync.Update
	after := int64(0)
	for {
		code, p, err := pollOnce(ctx, addr, tok, after)
		if err != nil {
			return all, 0, err
		}
		if code != http.StatusOK {
			return all, 0, fmt.Errorf("poll after %d: HTTP %d", after, code)
		}
		all = append(all, p.Messages...)
		if len(p.Messages) == 0 || p.NextCursor >= p.HeadWatermark {
			return all, p.HeadWatermark, nil
		}
		after = p.NextCursor
	}
}

// syncReader is one WebSocket subscriber that reconnects and resumes with
// resume_after, as a client of /sync/v1 must.
type syncReader struct {
	name  string
	start int64

	mu         sync.Mutex
	wms        []int64
	hashes     map[int64][]string
	resume     int64
	connects   int
	reconnects int // connections after the first that delivered
	dropped    int // connections that ended without the reader asking
	errs       []string
	fatal      error
	lastBefore int64 // resume position when the first connection dropped
	firstAfter int64 // first watermark delivered after a reconnect
	done       chan struct{}
}

func newSyncReader(name string, start int64) *syncReader {
	return &syncReader{name: name, start: start, resume: start, hashes: map[int64][]string{}, done: make(chan struct{})}
}

func (s *syncReader) position() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resume
}

func (s *syncReader) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.wms)
}

// run connects, subscribes from the current resume position and reads
// until ctx ends, reconnecting whenever the socket drops.
func (s *syncReader) run(ctx context.Context, addr, tok string) {
	defer close(s.done)
	for ctx.Err() == nil {
		err := s.session(ctx, addr, tok)
		if ctx.Err() != nil {
			return
		}
		var fatal *syncFatal
		if errors.As(err, &fatal) {
			s.mu.Lock()
			s.fatal = err
			s.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type syncFatal struct{ msg khalasync.ErrorMessage }

func (e *syncFatal) Error() string { return "sync error " + e.msg.Code + ": " + e.msg.Message }

func (s *syncReader) session(ctx context.Context, addr, tok string) error {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, _, err := websocket.Dial(dctx, "ws://"+addr+"/sync/v1", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	cancel()
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	s.mu.Lock()
	s.connects++
	resume := s.resume
	reconnect := s.connects > 1
	s.mu.Unlock()
	sub := map[string]any{"type": khalasync.TypeSubscribe, "topics": []string{syncTopic}, "resume_after": map[string]int64{syncTopic: resume}}
	if err := writeJSON(ctx, conn, sub); err != nil {
		return err
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		t := time.NewTicker(10 * time.Second) // the server closes sockets silent for 60 s
		defer t.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-t.C:
				_ = writeJSON(hbCtx, conn, map[string]any{"type": khalasync.TypeHeartbeat})
			}
		}
	}()
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.mu.Lock()
				s.dropped++
				if s.dropped == 1 {
					s.lastBefore = s.resume
				}
				s.mu.Unlock()
			}
			return err
		}
		var head struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(data, &head)
		switch head.Type {
		case khalasync.TypeUpdateBatch:
			var b khalasync.UpdateBatch
			if err := json.Unmarshal(data, &b); err != nil {
				return &syncFatal{msg: khalasync.ErrorMessage{Code: "client", Message: "decode update_batch: " + err.Error()}}
			}
			s.mu.Lock()
			for _, u := range b.Updates {
				if u.Topic != syncTopic {
					continue
				}
				if reconnect && s.firstAfter == 0 {
					s.firstAfter = u.Watermark
					s.reconnects++
				}
				s.wms = append(s.wms, u.Watermark)
				s.hashes[u.Watermark] = append(s.hashes[u.Watermark], u.PayloadHash)
				s.resume = max(s.resume, u.Watermark)
			}
			if r, ok := b.ResumeAfter[syncTopic]; ok {
				s.resume = max(s.resume, r)
			}
			s.mu.Unlock()
		case khalasync.TypeHeartbeat:
			var hb khalasync.Heartbeat
			if json.Unmarshal(data, &hb) == nil {
				if r, ok := hb.ResumeAfter[syncTopic]; ok {
					s.mu.Lock()
					s.resume = max(s.resume, r)
					s.mu.Unlock()
				}
			}
		case khalasync.TypeError:
			var e khalasync.ErrorMessage
			_ = json.Unmarshal(data, &e)
			s.mu.Lock()
			s.errs = append(s.errs, e.Code)
			s.mu.Unlock()
			return &syncFatal{msg: e}
		}
	}
}

func writeJSON(ctx context.Context, c *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.Write(wctx, websocket.MessageText, b)
}

// syncCheck compares what a reader received with the polled stream.
type syncCheck struct {
	Received, Missed, Duplicated, OutOfOrder, HashMismatch int
	Problems                                               []string
}

func checkSyncReader(s *syncReader, stream []khalasync.Update) syncCheck {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out syncCheck
	bad := func(format string, a ...any) {
		if len(out.Problems) < 4 {
			out.Problems = append(out.Problems, fmt.Sprintf("sync reader %s from %d: ", s.name, s.start)+fmt.Sprintf(format, a...))
		}
	}
	if s.fatal != nil {
		bad("%v", s.fatal)
	}
	out.Received = len(s.wms)
	seen := map[int64]int{}
	prev := s.start
	for _, w := range s.wms {
		seen[w]++
		if w <= prev {
			out.OutOfOrder++
		}
		prev = max(prev, w)
	}
	byWM := map[int64]string{}
	for _, u := range stream {
		byWM[u.Watermark] = u.PayloadHash
		if u.Watermark > s.start && seen[u.Watermark] == 0 {
			out.Missed++
			bad("update %d never received", u.Watermark)
		}
	}
	for w, n := range seen {
		if n > 1 {
			out.Duplicated += n - 1
			bad("update %d received %d times", w, n)
		}
		h, ok := byWM[w]
		if !ok || w <= s.start {
			out.HashMismatch++
			bad("received update %d that the stream does not hold after %d", w, s.start)
			continue
		}
		for _, got := range s.hashes[w] {
			if got != h {
				out.HashMismatch++
				bad("update %d payload hash %s differs from the stream's %s", w, got, h)
			}
		}
	}
	if out.OutOfOrder > 0 {
		bad("%d updates out of order", out.OutOfOrder)
	}
	return out
}

// summaryOf reads a run_summary payload.
func summaryOf(u khalasync.Update) (runID, status string, seq int64) {
	var p struct {
		RunID         string `json:"run_id"`
		Status        string `json:"status"`
		RuntimeSource struct {
			Seq int64 `json:"seq"`
		} `json:"runtime_source"`
	}
	_ = json.Unmarshal(u.Payload, &p)
	return p.RunID, p.Status, p.RuntimeSource.Seq
}

// syncReconnectReplay (original khala_reconnect_replay): WebSocket
// subscribers of runtime.run_summaries follow runs that are executing; the
// node is killed with SIGKILL and restarted; every subscriber reconnects
// with the token it had (minted before the kill) and resume_after, and must
// end with exactly the stream's updates after its starting point, each once,
// in order, with the stream's payload hashes; a subscriber that resumes from
// watermark 3 during the outage gets exactly the rest. The stream itself
// (read through the polling fallback) is gap-free and ends with every run's
// terminal summary. Then the node restarts with a retention of 1 ms: a
// resume below the new floor gets stale_cursor with full_resync_required,
// on the socket and on the polling endpoint.
func (d *Driver) syncReconnectReplay(ctx context.Context, kind string) Result {
	r := newRec(SyncReconnectReplay, kind)
	passed := false
	ctx, node, finish, ok := d.singleNode(ctx, r, SyncReconnectReplay, kind, 4*time.Minute, nil)
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)
	tok, err := mintViaAPI(ctx, c, 900)
	if err != nil {
		r.failf("%v", err)
		return r.done()
	}
	n, parts, readersN := 16, 10, 6
	if d.cfg.Short {
		n, parts, readersN = 6, 6, 3
	}
	plans := make([]*plannedRun, n)
	for i := range plans {
		tag := fmt.Sprintf("y%02d", i)
		plans[i] = &plannedRun{
			RunID: fmt.Sprintf("run_sync_%s_%s_%s", kind, randHex(4), tag), FrameID: "frame_" + tag,
			Steps: streamScript(tag, parts, 300), WantStatus: "succeeded",
		}
		if err := createRun(ctx, c, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("runs", int64(n))
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	var readers []*syncReader
	for i := range readersN {
		s := newSyncReader(fmt.Sprintf("ws%d", i), 0)
		readers = append(readers, s)
		go s.run(rctx, node.Addr, tok)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ready := 0
		for _, s := range readers {
			if s.count() >= 3 {
				ready++
			}
		}
		if ready == len(readers) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	killAt := node.Kill()
	d.progressf("%s/%s: SIGKILL with %d subscribers", SyncReconnectReplay, kind, len(readers))
	late := newSyncReader("late", 3)
	go late.run(rctx, node.Addr, tok)
	time.Sleep(time.Second)
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-2"); err != nil {
		r.failf("restart: %v", err)
		return r.done()
	}
	r.dur("kill_to_ready", time.Since(killAt))
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return c }, plans)
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	all := append(append([]*syncReader(nil), readers...), late)
	// Wait for the projection to reach every run's end and for every
	// subscriber to reach the stream's head.
	var stream []khalasync.Update
	var head int64
	deadline = time.Now().Add(90 * time.Second)
	for {
		stream, head, err = pollAll(ctx, node.Addr, tok)
		final := map[string]bool{}
		if err == nil {
			for _, u := range stream {
				if id, st, _ := summaryOf(u); st == "succeeded" {
					final[id] = true
				}
			}
		}
		caught := 0
		for _, s := range all {
			if s.position() >= head {
				caught++
			}
		}
		if err == nil && len(final) == n && caught == len(all) {
			r.dur("kill_to_subscribers_caught_up", time.Since(killAt))
			break
		}
		if time.Now().After(deadline) {
			r.failf("after 90 s: %d of %d runs have a terminal summary in the stream, %d of %d subscribers at head %d (%v)", len(final), n, caught, len(all), head, err)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	rcancel()
	for _, s := range all {
		<-s.done
	}
	checkAll(ctx, r, c, plans)
	requireAlive(r, node)

	// The topic's watermarks are gap-free (every row is this drill's).
	r.count("stream_updates", int64(len(stream)))
	r.count("stream_head", head)
	for i, u := range stream {
		if u.Watermark != int64(i+1) {
			r.failf("stream watermark %d at position %d: the topic has a gap or a repeat", u.Watermark, i)
			break
		}
	}
	latest := map[string]khalasync.Update{}
	for _, u := range stream {
		id, _, _ := summaryOf(u)
		latest[id] = u
	}
	for _, p := range plans {
		u, ok := latest[p.RunID]
		_, st, seq := summaryOf(u)
		run, err := c.GetRun(ctx, p.RunID)
		if !ok || err != nil || st != run.Status || seq != run.LatestSeq {
			r.failf("%s: last summary in the stream is %s at seq %d, the run is %s at %d (%v)", p.RunID, st, seq, run.Status, run.LatestSeq, err)
		}
	}
	var problems []string
	for _, s := range all {
		sc := checkSyncReader(s, stream)
		r.add("subscribers", 1)
		r.add("subscriber_updates_received", int64(sc.Received))
		r.add("subscriber_updates_missed", int64(sc.Missed))
		r.add("subscriber_updates_duplicated", int64(sc.Duplicated))
		r.add("subscriber_hash_mismatches", int64(sc.HashMismatch))
		s.mu.Lock()
		r.add("subscriber_connections", int64(s.connects))
		if s.reconnects > 0 {
			r.add("subscribers_resumed", 1)
		}
		if s.start == 0 && s.dropped > 0 && s.firstAfter != 0 && s.firstAfter != s.lastBefore+1 {
			problems = append(problems, fmt.Sprintf("sync reader %s resumed at %d after %d", s.name, s.firstAfter, s.lastBefore))
		}
		s.mu.Unlock()
		problems = append(problems, sc.Problems...)
	}
	for _, p := range limitList(problems, 20) {
		r.failf("%s", p)
	}
	if r.r.Counts["subscribers_resumed"] < int64(len(readers)) {
		r.failf("only %d of %d subscribers resumed after the kill", r.r.Counts["subscribers_resumed"], len(readers))
	}

	// Retention: restart with rows older than 1 ms pruned at start.
	node.Stop()
	node.env = append(node.env, "OA_SYNC_RETENTION=1ms")
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-3"); err != nil {
		r.failf("restart with short retention: %v", err)
		return r.done()
	}
	staleOK := false
	deadline = time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		code, p, err := pollOnce(ctx, node.Addr, tok, 0)
		if err == nil && code == http.StatusGone && p.Error != nil && p.Error.Code == khalasync.CodeStaleCursor && p.FullResyncRequired {
			staleOK = true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !staleOK {
		r.failf("polling from 0 after retention did not answer 410 stale_cursor with full_resync_required")
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	stale := newSyncReader("stale", 0)
	stale.run(sctx, node.Addr, tok)
	scancel()
	var fe *syncFatal
	if !errors.As(stale.fatal, &fe) || fe.msg.Code != khalasync.CodeStaleCursor || !fe.msg.FullResyncRequired || len(fe.msg.StaleTopics) == 0 {
		r.failf("subscribing from 0 after retention: %v, want stale_cursor with full_resync_required and stale_topics", stale.fatal)
	} else {
		r.count("stale_cursor_floor", fe.msg.StaleTopics[0].RetentionFloor)
	}
	res := r.done()
	passed = res.Passed
	return res
}

// wsStatus dials /sync/v1 with tok and reports the HTTP status of the
// handshake (101 when it upgraded) and the error body.
func wsStatus(ctx context.Context, addr, tok string) (int, string) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, "ws://"+addr+"/sync/v1", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err == nil {
		conn.CloseNow()
		return http.StatusSwitchingProtocols, ""
	}
	if resp == nil {
		return 0, err.Error()
	}
	body := ""
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		body = string(b)
	}
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate") + " " + body
}

// syncTokenExpiryGuard (original sync_token_expiry_guard): a token issued
// 600 s ago with a 300 s TTL is refused with 401 "expired" on the socket and
// on the polling endpoint; so is a token signed with another key; a fresh
// token (minted through the API, after a restart of the node) connects and
// replays; and a live session whose token expires is closed with
// token_expired.
func (d *Driver) syncTokenExpiryGuard(ctx context.Context, kind string) Result {
	r := newRec(SyncTokenExpiryGuard, kind)
	passed := false
	ctx, node, finish, ok := d.singleNode(ctx, r, SyncTokenExpiryGuard, kind, 2*time.Minute, nil)
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)
	p := &plannedRun{RunID: "run_tokguard_" + randHex(4), FrameID: "frame_t", Steps: toolScript("t", 0, 10, 10), WantStatus: "succeeded"}
	if err := createRun(ctx, c, p); err != nil {
		r.failf("%v", err)
		return r.done()
	}
	r.count("runs", 1)
	now := time.Now()
	expired, err := d.mintLocal(ctx, now.Add(-600*time.Second), 300, d.syncKey)
	if err != nil {
		r.failf("mint expired token: %v", err)
		return r.done()
	}
	forged, err := d.mintLocal(ctx, now, 300, strings.Repeat("f", 64))
	if err != nil {
		r.failf("mint forged token: %v", err)
		return r.done()
	}
	for _, tc := range []struct{ name, tok, reason string }{
		{"expired", expired, string(token.ReasonExpired)},
		{"forged", forged, string(token.ReasonInvalidToken)},
	} {
		code, body := wsStatus(ctx, node.Addr, tc.tok)
		if code != http.StatusUnauthorized || !strings.Contains(body, tc.reason) {
			r.failf("%s token on /sync/v1: HTTP %d %.200s, want 401 naming %q", tc.name, code, body, tc.reason)
		} else {
			r.add("tokens_rejected", 1)
		}
		pcode, _, _ := pollOnce(ctx, node.Addr, tc.tok, 0)
		if pcode != http.StatusUnauthorized {
			r.failf("%s token on the polling endpoint: HTTP %d, want 401", tc.name, pcode)
		} else {
			r.add("tokens_rejected", 1)
		}
	}
	// A restart must not matter to a fresh token: mint, kill, restart, use.
	fresh, err := mintViaAPI(ctx, c, 300)
	if err != nil {
		r.failf("%v", err)
		return r.done()
	}
	node.Kill()
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-2"); err != nil {
		r.failf("restart: %v", err)
		return r.done()
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return c }, []*plannedRun{p})
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	fctx, fcancel := context.WithCancel(ctx)
	fr := newSyncReader("fresh", 0)
	go fr.run(fctx, node.Addr, fresh)
	deadline := time.Now().Add(20 * time.Second)
	for fr.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	fcancel()
	<-fr.done
	if fr.count() == 0 {
		r.failf("a fresh token minted before the restart did not replay any update after it (%v)", fr.fatal)
	} else {
		r.count("fresh_token_updates", int64(fr.count()))
	}
	// A live session ends when its token does: issued 55 s ago for 60 s.
	short, err := d.mintLocal(ctx, time.Now().Add(-55*time.Second), 60, d.syncKey)
	if err != nil {
		r.failf("mint short token: %v", err)
		return r.done()
	}
	ectx, ecancel := context.WithTimeout(ctx, 20*time.Second)
	er := newSyncReader("expiring", 0)
	start := time.Now()
	er.run(ectx, node.Addr, short)
	ecancel()
	var fe *syncFatal
	if !errors.As(er.fatal, &fe) || fe.msg.Code != khalasync.CodeTokenExpired {
		r.failf("a live session whose token expired was not closed with token_expired (got %v)", er.fatal)
	} else {
		r.dur("session_closed_after_connect", time.Since(start))
	}
	checkAll(ctx, r, c, []*plannedRun{p})
	requireAlive(r, node)
	if slices.Contains(er.errs, khalasync.CodeTokenExpired) {
		r.count("live_sessions_expired", 1)
	}
	res := r.done()
	passed = res.Passed
	return res
}
