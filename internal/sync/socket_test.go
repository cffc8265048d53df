package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

const runs = store.TopicRunSummaries

// watermarksOf lists the updates' watermarks.
func watermarksOf(ups []Update) []int64 {
	out := make([]int64, len(ups))
	for i, u := range ups {
		out[i] = u.Watermark
	}
	return out
}

// docRunID returns the run id of a run_summary update.
func docRunID(t *testing.T, u Update) string {
	t.Helper()
	var doc projection.RunSummary
	if err := json.Unmarshal(u.Payload, &doc); err != nil {
		t.Fatalf("decode payload %s: %v", u.Payload, err)
	}
	if u.DocKey != projection.RunDocKey(doc.RunID) {
		t.Fatalf("doc_key %q does not match run %q", u.DocKey, doc.RunID)
	}
	return doc.RunID
}

// TestReplayInBatchesAndResume writes more than two batches of one user's
// summaries, interleaved with another user's, through the real projector:
// the replay comes in batches of 200, 200 and the rest, only the user's own
// documents, in watermark order; resuming from a watermark returns exactly
// the later rows.
func TestReplayInBatchesAndResume(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore) {
		e := newEnv(t, st)
		var mine []string
		for i := range 3 {
			mine = append(mine, e.createRuns(userA, fmt.Sprintf("a%d", i), 150)...)
			e.createRuns(userB, fmt.Sprintf("b%d", i), 10)
		}
		head := e.head(runs)
		if head != 480 {
			t.Fatalf("head = %d, want 480 rows (450 of alice, 30 of bob)", head)
		}

		c := e.dial(e.token(userA))
		c.subscribe(nil, runs)
		batches := c.replay()
		var sizes []int
		for i, b := range batches {
			sizes = append(sizes, len(b.Updates))
			if b.ReplayComplete != (i == len(batches)-1) {
				t.Fatalf("batch %d replay_complete = %v", i, b.ReplayComplete)
			}
			if last := b.Updates[len(b.Updates)-1].Watermark; b.ResumeAfter[runs] != last && i < len(batches)-1 {
				t.Fatalf("batch %d resume_after %d, want its last watermark %d", i, b.ResumeAfter[runs], last)
			}
		}
		if !slices.Equal(sizes, []int{200, 200, 50}) {
			t.Fatalf("batch sizes = %v, want [200 200 50]", sizes)
		}
		last := batches[len(batches)-1]
		if last.ResumeAfter[runs] != head || last.HeadWatermarks[runs] != head {
			t.Fatalf("final resume_after %v head_watermarks %v, want %d for both", last.ResumeAfter, last.HeadWatermarks, head)
		}
		ups := updatesOf(batches)
		var got []string
		for i, u := range ups {
			if i > 0 && u.Watermark <= ups[i-1].Watermark {
				t.Fatalf("watermarks out of order at %d: %d after %d", i, u.Watermark, ups[i-1].Watermark)
			}
			if u.Topic != runs || u.DocVersion != 0 || !strings.HasPrefix(u.PayloadHash, "sha256:") {
				t.Fatalf("update %+v", u)
			}
			got = append(got, docRunID(t, u))
		}
		if !slices.Equal(got, mine) {
			t.Fatalf("alice received %d documents, want her %d in creation order", len(got), len(mine))
		}

		// Resume after the 100th update: exactly the 350 later ones.
		from := ups[99].Watermark
		c2 := e.dial(e.token(userA))
		c2.subscribe(map[string]int64{runs: from}, runs)
		rest := updatesOf(c2.replay())
		if !slices.Equal(watermarksOf(rest), watermarksOf(ups[100:])) {
			t.Fatalf("resume after %d returned %d updates, want the %d after it", from, len(rest), len(ups)-100)
		}
		// Resuming from a watermark of one of Bob's rows (which Alice never
		// saw) returns exactly her rows after it.
		var bobWM int64
		for i := 1; i < len(ups); i++ {
			if ups[i].Watermark > ups[i-1].Watermark+1 {
				bobWM = ups[i-1].Watermark + 1
				break
			}
		}
		if bobWM == 0 {
			t.Fatal("no gap in alice's watermarks: bob's rows are missing from the stream")
		}
		var wantAfter []int64
		for _, u := range ups {
			if u.Watermark > bobWM {
				wantAfter = append(wantAfter, u.Watermark)
			}
		}
		cb := e.dial(e.token(userA))
		cb.subscribe(map[string]int64{runs: bobWM}, runs)
		if got := watermarksOf(updatesOf(cb.replay())); !slices.Equal(got, wantAfter) {
			t.Fatalf("resume after bob's watermark %d returned %d updates, want %d", bobWM, len(got), len(wantAfter))
		}
		// Resuming at the head replays nothing and still completes.
		c3 := e.dial(e.token(userA))
		c3.subscribe(map[string]int64{runs: head}, runs)
		if b := c3.replay(); len(b) != 1 || len(b[0].Updates) != 0 || b[0].ResumeAfter[runs] != head {
			t.Fatalf("resume at head = %+v, want one empty complete batch", b)
		}
	})
}

// TestLiveUpdatesAndIsolation: two users subscribed at once each receive
// live updates of their own runs only; the resume point moves over the
// other user's rows without delivering them.
func TestLiveUpdatesAndIsolation(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore) {
		e := newEnv(t, st)
		e.createRuns(userA, "a", 2)
		e.createRuns(userB, "b", 3)
		ca := e.dial(e.token(userA))
		cb := e.dial(e.token(userB))
		ca.subscribe(nil, runs)
		cb.subscribe(nil, runs)
		ra, rb := updatesOf(ca.replay()), updatesOf(cb.replay())
		if len(ra) != 2 || len(rb) != 3 {
			t.Fatalf("replays: alice %d, bob %d; want 2 and 3", len(ra), len(rb))
		}
		for _, u := range ra {
			if !strings.HasPrefix(docRunID(t, u), "a-") {
				t.Fatalf("alice got %s", u.DocKey)
			}
		}

		// Bob's event first, then Alice's: Alice must see only hers.
		e.appendEvent("b-0000", "run.started")
		e.waitProjected("b-0000")
		e.appendEvent("a-0001", "run.started")
		e.waitProjected("a-0001")

		live := ca.next()
		if live.Type != TypeUpdateBatch || len(live.Updates) != 1 || docRunID(t, live.Updates[0]) != "a-0001" {
			t.Fatalf("alice live = %+v, want one update of a-0001", live)
		}
		var doc projection.RunSummary
		if err := json.Unmarshal(live.Updates[0].Payload, &doc); err != nil || doc.LatestSeq != 1 || doc.Status != store.StatusRunning {
			t.Fatalf("live summary %+v (%v), want latest_seq 1 running", doc, err)
		}
		head := e.head(runs)
		if live.Updates[0].Watermark != head || live.ResumeAfter[runs] != head || !live.ReplayComplete {
			t.Fatalf("alice live batch watermark %d resume_after %v complete %v, want head %d", live.Updates[0].Watermark, live.ResumeAfter, live.ReplayComplete, head)
		}
		bl := cb.next()
		if len(bl.Updates) != 1 || docRunID(t, bl.Updates[0]) != "b-0000" {
			t.Fatalf("bob live = %+v, want one update of b-0000", bl)
		}
		// Bob's socket moved past Alice's row without seeing it: his
		// heartbeat reports the head as his resume point.
		cb.send(ClientMessage{Type: TypeHeartbeat})
		hb := cb.read(5 * time.Second)
		if hb.Type != TypeHeartbeat || hb.ResumeAfter[runs] != head || hb.HeadWatermarks[runs] != head {
			t.Fatalf("bob heartbeat = %+v, want resume_after = head = %d", hb, head)
		}
		// Nothing else is pending for either.
		for name, c := range map[string]*client{"alice": ca, "bob": cb} {
			c.send(ClientMessage{Type: TypeHeartbeat})
			if m := c.read(5 * time.Second); m.Type != TypeHeartbeat {
				t.Fatalf("%s got %+v, want only the heartbeat answer", name, m)
			}
		}
	})
}

func TestHeartbeatBothWays(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil), withConfig(func(c *Config) { c.Heartbeat = 50 * time.Millisecond }))
	e.createRuns(userA, "a", 1)
	c := e.dial(e.token(userA))
	// Server heartbeats arrive unprompted, even before a subscription.
	if m := c.read(5 * time.Second); m.Type != TypeHeartbeat {
		t.Fatalf("first message %+v, want a server heartbeat", m)
	}
	c.subscribe(nil, runs)
	c.replay()
	for range 2 {
		m := c.read(5 * time.Second)
		if m.Type != TypeHeartbeat || m.ResumeAfter[runs] != 1 || m.HeadWatermarks[runs] != 1 {
			t.Fatalf("heartbeat %+v, want resume_after and head 1", m)
		}
	}
}

func TestIdleClose(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil), withConfig(func(c *Config) {
		c.Heartbeat = 40 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	}))
	silent := e.dial(e.token(userA))
	chatty := e.dial(e.token(userA))
	chattyDone := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		// Sends a heartbeat every 50 ms and drains the answers.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			for {
				if _, _, err := chatty.conn.Read(ctx); err != nil {
					return
				}
			}
		}()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				chattyDone <- nil
				return
			case <-tk.C:
				wctx, wcancel := context.WithTimeout(ctx, time.Second)
				err := chatty.conn.Write(wctx, websocket.MessageText, []byte(`{"type":"heartbeat"}`))
				wcancel()
				if err != nil {
					chattyDone <- err
					return
				}
			}
		}
	}()
	ce, msgs := silent.closeStatus(10 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason != CloseIdleTimeout {
		t.Fatalf("silent socket closed with %v %q, want 1008 %s", ce.Code, ce.Reason, CloseIdleTimeout)
	}
	if len(msgs) == 0 {
		t.Fatal("the silent socket got no server heartbeat before closing")
	}
	// The chatty socket outlived the idle timeout several times over.
	time.Sleep(3 * 300 * time.Millisecond)
	close(stop)
	if err := <-chattyDone; err != nil {
		t.Fatalf("chatty socket failed while sending heartbeats: %v", err)
	}
}

// TestStaleCursorAfterPruning prunes the journal with the retention service
// (store clock moved forward) and checks: a resume below the floor is
// stale_cursor with full_resync_required and the metric; at or above the
// floor resumes exactly; a fresh subscribe replays what is retained.
func TestStaleCursorAfterPruning(t *testing.T) {
	clk := &clock{}
	st := openSQLite(t, clk)
	e := newEnv(t, st)
	e.createRuns(userA, "old", 5)
	clk.advance(2 * time.Hour)
	e.createRuns(userA, "new", 5)
	ret := NewRetention(st, RetentionConfig{MaxAge: time.Hour, Batch: 2, Now: clk.now})
	n, err := ret.Cycle(context.Background())
	if err != nil || n != 5 {
		t.Fatalf("retention cycle = %d, %v; want 5 rows pruned", n, err)
	}

	c := e.dial(e.token(userA))
	c.subscribe(map[string]int64{runs: 3}, runs)
	m := c.next()
	if m.Type != TypeError || m.Code != CodeStaleCursor || !m.FullResyncRequired ||
		len(m.StaleTopics) != 1 || m.StaleTopics[0] != (StaleTopic{Topic: runs, ResumeAfter: 3, RetentionFloor: 5, HeadWatermark: 10}) {
		t.Fatalf("resume below the floor = %+v, want stale_cursor for %s (floor 5, head 10)", m, runs)
	}
	if got := e.metric(telemetry.SyncStaleCursor, nil); got != 1 {
		t.Fatalf("stale cursor metric = %v, want 1", got)
	}
	// The socket stays usable: a resume at the floor works.
	c.subscribe(map[string]int64{runs: 5}, runs)
	if got := watermarksOf(updatesOf(c.replay())); !slices.Equal(got, []int64{6, 7, 8, 9, 10}) {
		t.Fatalf("resume at the floor = %v, want 6..10", got)
	}
	c2 := e.dial(e.token(userA))
	c2.subscribe(map[string]int64{runs: 7}, runs)
	if got := watermarksOf(updatesOf(c2.replay())); !slices.Equal(got, []int64{8, 9, 10}) {
		t.Fatalf("resume after 7 = %v, want 8..10", got)
	}
	c3 := e.dial(e.token(userA))
	c3.subscribe(nil, runs)
	if got := watermarksOf(updatesOf(c3.replay())); !slices.Equal(got, []int64{6, 7, 8, 9, 10}) {
		t.Fatalf("fresh subscribe = %v, want the retained 6..10", got)
	}
	// A cursor ahead of the head was never issued here: stale as well.
	c3.subscribe(map[string]int64{runs: 99}, runs)
	if m := c3.next(); m.Code != CodeStaleCursor || m.StaleTopics[0].HeadWatermark != 10 {
		t.Fatalf("resume ahead of head = %+v, want stale_cursor", m)
	}
}

// TestStaleWhilePruningEverything: with PostgreSQL too, pruning the whole
// journal leaves a floor at the head; resume 0 is stale, a fresh subscribe
// completes empty and gets the next live row.
func TestStaleWhilePruningEverything(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore) {
		e := newEnv(t, st)
		e.createRuns(userA, "a", 3)
		ret := NewRetention(st, RetentionConfig{MaxAge: time.Hour, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
		if n, err := ret.Cycle(context.Background()); err != nil || n != 3 {
			t.Fatalf("retention = %d, %v; want 3", n, err)
		}
		c := e.dial(e.token(userA))
		c.subscribe(map[string]int64{runs: 0}, runs)
		if m := c.next(); m.Code != CodeStaleCursor || m.StaleTopics[0].RetentionFloor != 3 {
			t.Fatalf("resume 0 = %+v, want stale_cursor with floor 3", m)
		}
		c.subscribe(nil, runs)
		if b := c.replay(); len(b) != 1 || len(b[0].Updates) != 0 || b[0].ResumeAfter[runs] != 3 {
			t.Fatalf("fresh subscribe = %+v, want one empty batch resuming after 3", b)
		}
		e.appendEvent("a-0002", "run.started")
		if m := c.next(); len(m.Updates) != 1 || m.Updates[0].Watermark != 4 {
			t.Fatalf("live after prune = %+v, want watermark 4", m)
		}
	})
}

func TestScopeDenied(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	e.createRuns(userA, "a", 1)
	c := e.dial(e.token(userA, token.TopicRunSummaries))
	c.subscribe(nil, runs, token.TopicCodexWorkerSummaries)
	m := c.next()
	if m.Type != TypeError || m.Code != CodeForbiddenTopic || !slices.Equal(m.ForbiddenTopics, []string{token.TopicCodexWorkerSummaries}) {
		t.Fatalf("subscribe beyond scope = %+v, want forbidden_topic naming %s", m, token.TopicCodexWorkerSummaries)
	}
	c.subscribe(nil, "runtime.notifications")
	if m := c.next(); m.Code != CodeForbiddenTopic || !slices.Equal(m.ForbiddenTopics, []string{"runtime.notifications"}) {
		t.Fatalf("unknown topic = %+v, want forbidden_topic", m)
	}
	if got := e.metric(telemetry.SyncAuth, map[string]string{"result": "error", "reason_class": "scope_denied"}); got != 2 {
		t.Fatalf("scope_denied auth metric = %v, want 2", got)
	}
	// Nothing was subscribed by the refused requests; a granted one works.
	c.subscribe(nil, runs)
	if ups := updatesOf(c.replay()); len(ups) != 1 {
		t.Fatalf("granted subscribe replayed %d updates, want 1", len(ups))
	}
}

// TestTokenRefusedBeforeUpgrade: missing, malformed, foreign and expired
// tokens get 401 before any upgrade, with the reason in the metric; a
// fresh token then resumes where the client was.
func TestTokenRefusedBeforeUpgrade(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	e.createRuns(userA, "a", 4)
	now := time.Now()
	expired, _ := e.handToken(userA, now.Add(-1200*time.Second), now.Add(-900*time.Second))
	almost, _ := e.handToken(userA, now.Add(-299*time.Second), now.Add(-1*time.Second)) // inside the verifier's leeway
	cases := []struct {
		name, tok, reason string
	}{
		{"missing", "", "missing_token"},
		{"garbage", "not-a-jwt", "invalid_token"},
		{"expired", expired, "expired"},
		{"expired inside leeway", almost, "expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.metric(telemetry.SyncAuth, map[string]string{"result": "error", "reason_class": tc.reason})
			_, resp, err := e.tryDial(tc.tok)
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				t.Fatalf("dial = %v, HTTP %d; want 401", err, status)
			}
			if got := e.metric(telemetry.SyncAuth, map[string]string{"result": "error", "reason_class": tc.reason}); got != before+1 {
				t.Fatalf("auth metric error/%s = %v, want %v", tc.reason, got, before+1)
			}
		})
	}
	if got := e.metric(telemetry.SyncConnections, nil); got != 0 {
		t.Fatalf("connections gauge = %v after refused dials, want 0", got)
	}
	// The token query parameter works for clients that cannot set headers.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, e.wsURL("token="+e.token(userA)), nil)
	if err != nil {
		t.Fatalf("dial with token query: %v", err)
	}
	c := &client{t: t, conn: conn}
	defer conn.CloseNow()
	c.subscribe(map[string]int64{runs: 2}, runs)
	if got := watermarksOf(updatesOf(c.replay())); !slices.Equal(got, []int64{3, 4}) {
		t.Fatalf("fresh token resume after 2 = %v, want [3 4]", got)
	}
	if got := e.metric(telemetry.SyncAuth, map[string]string{"result": "ok", "reason_class": "authorized"}); got != 1 {
		t.Fatalf("authorized metric = %v, want 1", got)
	}
}

// TestExpiringTokenClosesSocket: the socket closes with 1008 token_expired
// when exp passes, after an error message saying so.
func TestExpiringTokenClosesSocket(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	now := time.Now()
	tok, _ := e.handToken(userA, now.Add(-298*time.Second), now.Add(2*time.Second))
	c := e.dial(tok)
	c.subscribe(nil, runs)
	c.replay()
	if got := e.metric(telemetry.SyncConnections, nil); got != 1 {
		t.Fatalf("connections gauge = %v, want 1", got)
	}
	ce, msgs := c.closeStatus(15 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason != CloseTokenExpired {
		t.Fatalf("close = %v %q, want 1008 %s", ce.Code, ce.Reason, CloseTokenExpired)
	}
	if len(msgs) == 0 || msgs[len(msgs)-1].Code != CodeTokenExpired {
		t.Fatalf("messages before close = %+v, want a token_expired error", msgs)
	}
	if time.Now().Before(time.Unix(now.Add(2*time.Second).Unix(), 0)) { // exp has whole seconds
		t.Fatal("the socket closed before the token expired")
	}
	eventually(t, 5*time.Second, "connections gauge back to 0", func() bool {
		return e.metric(telemetry.SyncConnections, nil) == 0
	})
}

// TestRevokedTokenClosesAtHeartbeat: revocation takes effect on a live
// socket at the next heartbeat.
func TestRevokedTokenClosesAtHeartbeat(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil), withConfig(func(c *Config) { c.Heartbeat = 50 * time.Millisecond }))
	now := time.Now()
	tok, jti := e.handToken(userA, now, now.Add(300*time.Second))
	c := e.dial(tok)
	if m := c.read(5 * time.Second); m.Type != TypeHeartbeat {
		t.Fatalf("got %+v, want a heartbeat while the token is valid", m)
	}
	e.rev.Revoke(jti, now.Add(300*time.Second))
	ce, msgs := c.closeStatus(10 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason != CloseTokenRevoked {
		t.Fatalf("close = %v %q, want 1008 %s", ce.Code, ce.Reason, CloseTokenRevoked)
	}
	if msgs[len(msgs)-1].Code != CodeTokenRevoked {
		t.Fatalf("last message %+v, want token_revoked", msgs[len(msgs)-1])
	}
	if _, resp, err := e.tryDial(tok); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("revoked token dial = %v, want 401", err)
	}
}

// TestBadMessages: protocol errors name the field and keep the socket.
func TestBadMessages(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	c := e.dial(e.token(userA))
	cases := []struct {
		name, msg, code, mention string
	}{
		{"not json", `{"type":`, CodeBadRequest, "message"},
		{"no type", `{}`, CodeBadRequest, "type"},
		{"unknown type", `{"type":"join"}`, CodeBadRequest, "type"},
		{"unknown field", `{"type":"subscribe","topics":["runtime.run_summaries"],"resumeAfter":{}}`, CodeBadRequest, "resumeAfter"},
		{"topics not a list", `{"type":"subscribe","topics":"runtime.run_summaries"}`, CodeBadRequest, "topics"},
		{"cursor not an integer", `{"type":"subscribe","topics":["runtime.run_summaries"],"resume_after":{"runtime.run_summaries":1.5}}`, CodeBadRequest, "resume_after"},
		{"trailing data", `{"type":"heartbeat"} {}`, CodeBadRequest, "trailing"},
		{"no topics", `{"type":"subscribe","topics":[]}`, CodeBadSubscription, "topics"},
		{"duplicate topic", `{"type":"subscribe","topics":["runtime.run_summaries","runtime.run_summaries"]}`, CodeBadSubscription, "topics[1]"},
		{"cursor for another topic", `{"type":"subscribe","topics":["runtime.run_summaries"],"resume_after":{"runtime.codex_worker_summaries":1}}`, CodeBadSubscription, "resume_after.runtime.codex_worker_summaries"},
		{"negative cursor", `{"type":"subscribe","topics":["runtime.run_summaries"],"resume_after":{"runtime.run_summaries":-1}}`, CodeBadSubscription, "resume_after.runtime.run_summaries"},
		{"resume on heartbeat", `{"type":"heartbeat","resume_after":{"runtime.run_summaries":1}}`, CodeBadRequest, "resume_after"},
		{"empty unsubscribe", `{"type":"unsubscribe"}`, CodeBadSubscription, "topics"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.sendRaw(tc.msg)
			m := c.next()
			if m.Type != TypeError || m.Code != tc.code || !strings.Contains(m.Message, tc.mention) {
				t.Fatalf("%s → %+v, want %s mentioning %q", tc.msg, m, tc.code, tc.mention)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageBinary, []byte(`{"type":"heartbeat"}`)); err != nil {
		t.Fatal(err)
	}
	if m := c.next(); m.Code != CodeBadRequest {
		t.Fatalf("binary message → %+v, want bad_request", m)
	}
	// Still open and served.
	c.send(ClientMessage{Type: TypeHeartbeat})
	if m := c.read(5 * time.Second); m.Type != TypeHeartbeat {
		t.Fatalf("after errors got %+v, want a heartbeat answer", m)
	}
}

func TestUnsubscribe(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	e.createRuns(userA, "a", 1)
	c := e.dial(e.token(userA))
	c.subscribe(nil, runs, token.TopicCodexWorkerSummaries)
	if ups := updatesOf(c.replay()); len(ups) != 1 {
		t.Fatalf("replay = %d updates, want 1", len(ups))
	}
	c.send(ClientMessage{Type: TypeUnsubscribe, Topics: []string{runs}})
	if m := c.next(); m.Type != TypeUnsubscribed || !slices.Equal(m.Topics, []string{token.TopicCodexWorkerSummaries}) {
		t.Fatalf("unsubscribe answer %+v", m)
	}
	e.appendEvent("a-0000", "run.started")
	e.waitProjected("a-0000")
	// No update comes for the dropped topic: the next message is the
	// answer to our heartbeat, sent after the row was written.
	time.Sleep(300 * time.Millisecond) // > poll interval: a wrong delivery would have happened
	c.send(ClientMessage{Type: TypeHeartbeat})
	if m := c.read(5 * time.Second); m.Type != TypeHeartbeat {
		t.Fatalf("after unsubscribe got %+v, want only the heartbeat answer", m)
	}
}

// TestStopClosesSockets: Stop closes live sockets with 1001 and later
// requests get 503.
func TestStopClosesSockets(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	c := e.dial(e.token(userA))
	c.subscribe(nil, runs)
	c.replay()
	done := make(chan struct{})
	go func() { e.svc.Stop(); close(done) }()
	ce, _ := c.closeStatus(10 * time.Second)
	if ce.Code != websocket.StatusGoingAway || ce.Reason != CloseServerShutdown {
		t.Fatalf("close = %v %q, want 1001 %s", ce.Code, ce.Reason, CloseServerShutdown)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
	}
	if got := e.metric(telemetry.SyncConnections, nil); got != 0 {
		t.Fatalf("connections gauge = %v after Stop, want 0", got)
	}
	if _, resp, err := e.tryDial(e.token(userA)); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after Stop = %v, want 503", err)
	}
}

func TestPlainGetNeedsUpgrade(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	status, body := e.get("/sync/v1", e.token(userA))
	if status != http.StatusUpgradeRequired || !strings.Contains(string(body), `"upgrade_required"`) {
		t.Fatalf("plain GET = %d %s, want 426 upgrade_required", status, body)
	}
	status, body = e.get("/sync/v1", "")
	if status != http.StatusUnauthorized || !strings.Contains(string(body), "missing_token") {
		t.Fatalf("plain GET without token = %d %s, want 401 naming missing_token", status, body)
	}
}

// TestWakeOnWriteWithoutHub: with no hub and a long poll interval, the
// sink wrapper alone delivers a new row promptly.
func TestWakeOnWrite(t *testing.T) {
	svc := New(nil, nil, nil, nil, Config{})
	inner := &countingSink{}
	s := svc.WakeOnWrite(inner)
	if s.Name() != "counting" {
		t.Fatalf("name = %q", s.Name())
	}
	if _, err := s.Write(context.Background(), store.ProjectionWriteInput{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-svc.wake:
	default:
		t.Fatal("a successful write did not wake the service")
	}
	inner.err = errors.New("sink down")
	if _, err := s.Write(context.Background(), store.ProjectionWriteInput{}); err == nil {
		t.Fatal("the wrapper swallowed the sink error")
	}
	select {
	case <-svc.wake:
		t.Fatal("a failed write woke the service")
	default:
	}
}

type countingSink struct{ err error }

func (*countingSink) Name() string { return "counting" }
func (c *countingSink) Write(context.Context, store.ProjectionWriteInput) (int64, error) {
	if c.err != nil {
		return 0, c.err
	}
	return 1, nil
}
