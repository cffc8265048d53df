package sseclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func parseAll(t *testing.T, raw string) ([]Event, []string, *Parser) {
	t.Helper()
	p := NewParser(strings.NewReader(raw))
	var evs []Event
	var comments []string
	for {
		ev, err := p.Next()
		comments = append(comments, p.Comments()...)
		if errors.Is(err, io.EOF) {
			return evs, comments, p
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev != nil {
			evs = append(evs, *ev)
		}
	}
}

func TestParser(t *testing.T) {
	tests := []struct {
		name     string
		raw      string
		want     []Event
		comments []string
		lastID   string
		retry    time.Duration
	}{
		{
			name: "runtime wire format",
			raw:  "id: 1\nevent: message\ndata: {\"a\":1}\n\nid: 1\nevent: message\ndata: [DONE]\n\n",
			want: []Event{{"1", "message", `{"a":1}`}, {"1", "message", "[DONE]"}}, lastID: "1",
		},
		{
			name: "CRLF and CR line ends",
			raw:  "id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r",
			want: []Event{{"1", "message", "a"}, {"2", "message", "b"}}, lastID: "2",
		},
		{
			name: "multi-line data and no space after colon",
			raw:  "data:x\ndata: y\ndata\n\n",
			want: []Event{{"", "message", "x\ny\n"}},
		},
		{
			name: "id persists and event type resets",
			raw:  "id: 7\nevent: custom\ndata: a\n\ndata: b\n\n",
			want: []Event{{"7", "custom", "a"}, {"7", "message", "b"}}, lastID: "7",
		},
		{
			name:     "comments and heartbeats",
			raw:      ": heartbeat\n\n:no space\ndata: a\n\n",
			want:     []Event{{"", "message", "a"}},
			comments: []string{"heartbeat", "no space"},
		},
		{
			name: "blank block without data dispatches nothing but keeps id",
			raw:  "id: 3\n\ndata: z\n\n",
			want: []Event{{"3", "message", "z"}}, lastID: "3",
		},
		{
			name: "id with NUL is ignored",
			raw:  "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
			want: []Event{{"1", "message", "a"}, {"1", "message", "b"}}, lastID: "1",
		},
		{
			name: "retry digits only",
			raw:  "retry: 2500\nretry: 1x\nretry: -1\ndata: a\n\n",
			want: []Event{{"", "message", "a"}}, retry: 2500 * time.Millisecond,
		},
		{
			name: "unterminated message at EOF is discarded",
			raw:  "data: complete\n\ndata: partial\n",
			want: []Event{{"", "message", "complete"}},
		},
		{
			name: "leading BOM and unknown field",
			raw:  "\uFEFFdata: a\nfoo: bar\n\n",
			want: []Event{{"", "message", "a"}},
		},
		{
			name: "empty id resets",
			raw:  "id: 5\ndata: a\n\nid\ndata: b\n\n",
			want: []Event{{"5", "message", "a"}, {"", "message", "b"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, comments, p := parseAll(t, tc.raw)
			if !reflect.DeepEqual(evs, tc.want) {
				t.Errorf("events %q, want %q", evs, tc.want)
			}
			if !reflect.DeepEqual(comments, tc.comments) {
				t.Errorf("comments %q, want %q", comments, tc.comments)
			}
			if p.LastEventID() != tc.lastID {
				t.Errorf("last id %q, want %q", p.LastEventID(), tc.lastID)
			}
			if p.Retry() != tc.retry {
				t.Errorf("retry %v, want %v", p.Retry(), tc.retry)
			}
		})
	}
}

// flakyServer serves ids 1..total, cutting the connection after perConn
// messages; it finishes with [DONE]. It records every Last-Event-ID and
// every signature header it received.
type flakyServer struct {
	total, perConn int
	mu             sync.Mutex
	lastIDs        []string
	sigs           []string
}

func (f *flakyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.lastIDs = append(f.lastIDs, r.Header.Get("Last-Event-ID"))
	f.sigs = append(f.sigs, r.Header.Get("X-Sig"))
	f.mu.Unlock()
	start := 0
	fmt.Sscan(r.Header.Get("Last-Event-ID"), &start)
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(200)
	for i, sent := start+1, 0; i <= f.total && sent < f.perConn; i, sent = i+1, sent+1 {
		fmt.Fprintf(w, "id: %d\nevent: message\ndata: {\"n\":%d}\n\n", i, i)
		if i == f.total {
			fmt.Fprintf(w, "id: %d\nevent: message\ndata: [DONE]\n\n", i)
		}
	}
}

func TestStreamReconnectsWithLastEventID(t *testing.T) {
	fs := &flakyServer{total: 5, perConn: 2}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	n := 0
	c := &Client{
		MinBackoff: time.Millisecond,
		Prepare: func(r *http.Request) error {
			n++
			r.Header.Set("X-Sig", fmt.Sprint("sig-", n))
			return nil
		},
	}
	var got []string
	err := c.Stream(context.Background(), srv.URL, http.Header{"X-Static": {"1"}}, "", func(e Event) error {
		got = append(got, e.ID+":"+e.Data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`1:{"n":1}`, `2:{"n":2}`, `3:{"n":3}`, `4:{"n":4}`, `5:{"n":5}`, "5:[DONE]"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if wantIDs := []string{"", "2", "4"}; !reflect.DeepEqual(fs.lastIDs, wantIDs) {
		t.Fatalf("Last-Event-ID per attempt %q, want %q", fs.lastIDs, wantIDs)
	}
	if wantSigs := []string{"sig-1", "sig-2", "sig-3"}; !reflect.DeepEqual(fs.sigs, wantSigs) {
		t.Fatalf("Prepare must run per attempt: %q, want %q", fs.sigs, wantSigs)
	}
}

func TestStreamStartsFromGivenID(t *testing.T) {
	fs := &flakyServer{total: 3, perConn: 10}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	var got []string
	if err := Stream(context.Background(), srv.URL, nil, "2", func(e Event) error {
		got = append(got, e.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []string{"3", "3"}) || fs.lastIDs[0] != "2" {
		t.Fatalf("got %v, sent Last-Event-ID %q", got, fs.lastIDs)
	}
}

func TestStreamStops(t *testing.T) {
	envelope := func(status int, code string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"code":%q,"message":"m"}}`, code)
		}
	}
	tests := []struct {
		name     string
		h        http.Handler
		wantHTTP int    // 0: no HTTPError
		wantCode string // envelope code
		wantErr  bool
		attempts int
	}{
		{"204 ends quietly", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }), 0, "", false, 1},
		{"410 stale", envelope(410, "stale_cursor"), 410, "stale_cursor", true, 1},
		{"401 unauthorized", envelope(401, "unauthorized"), 401, "unauthorized", true, 1},
		{"200 not a stream", envelope(200, "x"), 200, "", true, 1},
		{"503 retried until MaxAttempts", envelope(503, "unavailable"), 503, "unavailable", true, 3},
		{"empty stream retried until MaxAttempts", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, ": heartbeat\n\n")
		}), 0, "", true, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			calls := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				calls++
				mu.Unlock()
				tc.h.ServeHTTP(w, r)
			}))
			defer srv.Close()
			c := &Client{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxAttempts: 3}
			err := c.Stream(context.Background(), srv.URL, nil, "", func(Event) error { return nil })
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			var he *HTTPError
			if tc.wantHTTP != 0 {
				if !errors.As(err, &he) || he.StatusCode != tc.wantHTTP || he.Code != tc.wantCode {
					t.Fatalf("err = %#v, want HTTP %d %q", err, tc.wantHTTP, tc.wantCode)
				}
			}
			if calls != tc.attempts {
				t.Fatalf("%d attempts, want %d", calls, tc.attempts)
			}
		})
	}
}

func TestStreamCallbackErrorAndContext(t *testing.T) {
	fs := &flakyServer{total: 5, perConn: 5}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	boom := errors.New("boom")
	err := Stream(context.Background(), srv.URL, nil, "", func(e Event) error {
		if e.ID == "2" {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}

	// A server that never answers: ctx ends the call.
	block := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := Stream(ctx, hang.URL, nil, "", func(Event) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestOnCommentAndOnReconnect(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns++
		first := conns == 1
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if first {
			fmt.Fprint(w, ": heartbeat\n\nid: 1\ndata: a\n\n")
			return
		}
		fmt.Fprint(w, "id: 2\ndata: [DONE]\n\n")
	}))
	defer srv.Close()
	var comments []string
	var reconnects []string
	c := &Client{
		MinBackoff:  time.Millisecond,
		OnComment:   func(s string) { comments = append(comments, s) },
		OnReconnect: func(n int, id string, err error) { reconnects = append(reconnects, fmt.Sprint(n, id)) },
	}
	if err := c.Stream(context.Background(), srv.URL, nil, "", func(Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(comments, []string{"heartbeat"}) || !reflect.DeepEqual(reconnects, []string{"11"}) {
		t.Fatalf("comments %q reconnects %q", comments, reconnects)
	}
}
