package sync

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

const pollPath = "/internal/v1/khala/topics/runtime.run_summaries/messages"

func decodePoll(t *testing.T, body []byte) PollResponse {
	t.Helper()
	var p PollResponse
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return p
}

// TestPollOwnerFilteredPaging pages one user's rows among another's: every
// own row exactly once, none of the other's, next_cursor ends at the head.
func TestPollOwnerFilteredPaging(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore) {
		e := newEnv(t, st)
		a1 := e.createRuns(userA, "a1", 3)
		e.createRuns(userB, "b", 4)
		a2 := e.createRuns(userA, "a2", 2)
		want := append(slices.Clone(a1), a2...)
		tok := e.token(userA, token.TopicRunSummaries)

		var got []string
		path := pollPath + "?limit=2"
		var last PollResponse
		for range 10 {
			status, body := e.get(path, tok)
			if status != http.StatusOK {
				t.Fatalf("GET %s = %d %s", path, status, body)
			}
			last = decodePoll(t, body)
			for _, m := range last.Messages {
				got = append(got, docRunID(t, m))
			}
			if last.NextCursor == last.HeadWatermark {
				break
			}
			path = pollPath + "?limit=2&after_seq=" + itoa(last.NextCursor)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("alice polled %v, want %v", got, want)
		}
		if last.HeadWatermark != 9 || last.NextCursor != 9 || last.RetentionFloor != 0 {
			t.Fatalf("last page %+v, want head 9 next_cursor 9", last)
		}
		// Bob, with the token in the query, sees his four only.
		status, body := e.get(pollPath+"?after_seq=0&token="+e.token(userB), "")
		p := decodePoll(t, body)
		if status != http.StatusOK || len(p.Messages) != 4 || p.NextCursor != 9 {
			t.Fatalf("bob poll = %d %+v, want his 4 messages through 9", status, p)
		}
		for _, m := range p.Messages {
			if !strings.HasPrefix(docRunID(t, m), "b-") {
				t.Fatalf("bob got %s", m.DocKey)
			}
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestPollErrors(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	e.createRuns(userA, "a", 3)
	// Prune everything so a stale cursor exists.
	ret := NewRetention(e.st, RetentionConfig{MaxAge: time.Hour, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if n, err := ret.Cycle(context.Background()); err != nil || n != 3 {
		t.Fatalf("retention = %d, %v", n, err)
	}
	e.createRuns(userA, "later", 1) // watermark 4
	good := e.token(userA, token.TopicRunSummaries)
	now := time.Now()
	expired, _ := e.handToken(userA, now.Add(-1200*time.Second), now.Add(-900*time.Second))

	cases := []struct {
		name    string
		path    string
		tok     string
		status  int
		code    string
		mention string
	}{
		{"no token", pollPath, "", 401, "unauthorized", "missing_token"},
		{"expired token", pollPath, expired, 401, "unauthorized", "expired"},
		{"bad token", pollPath, "abc.def.ghi", 401, "unauthorized", "invalid_token"},
		{"unknown topic", "/internal/v1/khala/topics/runtime.nope/messages", good, 404, "not_found", "topic"},
		{"topic not granted", "/internal/v1/khala/topics/runtime.codex_worker_summaries/messages", good, 403, CodeForbiddenTopic, "topic"},
		{"after_seq not a number", pollPath + "?after_seq=x", good, 400, "invalid_request", "after_seq"},
		{"after_seq negative", pollPath + "?after_seq=-1", good, 400, "invalid_request", "after_seq"},
		{"after_seq twice", pollPath + "?after_seq=1&after_seq=2", good, 400, "invalid_request", "after_seq"},
		{"limit zero", pollPath + "?limit=0", good, 400, "invalid_request", "limit"},
		{"limit too big", pollPath + "?limit=201", good, 400, "invalid_request", "limit"},
		{"limit not a number", pollPath + "?limit=ten", good, 400, "invalid_request", "limit"},
		{"unknown parameter", pollPath + "?cursor=3", good, 400, "invalid_request", "cursor"},
		{"stale cursor", pollPath + "?after_seq=1", good, 410, CodeStaleCursor, "after_seq"},
		{"cursor ahead of head", pollPath + "?after_seq=50", good, 410, CodeStaleCursor, "after_seq"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.get(tc.path, tc.tok)
			var env struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(body, &env); err != nil {
				t.Fatalf("body %s is not the error envelope: %v", body, err)
			}
			if status != tc.status || env.Error.Code != tc.code || !strings.Contains(env.Error.Message, tc.mention) {
				t.Fatalf("GET %s = %d %s, want %d %s mentioning %q", tc.path, status, body, tc.status, tc.code, tc.mention)
			}
			if tc.code == CodeStaleCursor {
				var st StaleResponse
				if err := json.Unmarshal(body, &st); err != nil || !st.FullResyncRequired ||
					len(st.StaleTopics) != 1 || st.StaleTopics[0].RetentionFloor != 3 || st.StaleTopics[0].HeadWatermark != 4 {
					t.Fatalf("stale body %s", body)
				}
			}
		})
	}
	if got := e.metric(telemetry.SyncStaleCursor, nil); got != 2 {
		t.Fatalf("stale cursor metric = %v, want 2", got)
	}
	if got := e.metric(telemetry.SyncAuth, map[string]string{"result": "error", "reason_class": "scope_denied"}); got != 1 {
		t.Fatalf("scope_denied metric = %v, want 1", got)
	}
	if got := e.metric(telemetry.SyncAuth, map[string]string{"result": "error", "reason_class": "expired"}); got != 1 {
		t.Fatalf("expired metric = %v, want 1", got)
	}
	// At the floor, and fresh (no after_seq), the retained row comes back.
	for _, path := range []string{pollPath + "?after_seq=3", pollPath} {
		status, body := e.get(path, good)
		p := decodePoll(t, body)
		if status != http.StatusOK || len(p.Messages) != 1 || p.Messages[0].Watermark != 4 || p.NextCursor != 4 || p.RetentionFloor != 3 {
			t.Fatalf("GET %s = %d %s, want the one retained row", path, status, body)
		}
	}
}
