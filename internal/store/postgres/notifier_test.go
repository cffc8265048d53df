package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
)

// A batch larger than one NOTIFY payload is split, every payload fits, and
// the listener's parser gives back every notice in order.
func TestNoticePayloadsRoundTrip(t *testing.T) {
	var in []store.Notice
	for i := range 500 {
		in = append(in, store.Notice{Kind: store.NoticeEvent, RunID: fmt.Sprintf("run_%04d", i), Seq: int64(i + 1)})
	}
	in = append(in, store.Notice{Kind: store.NoticeFrame, RunID: strings.Repeat("x", 9000)}) // too long to travel
	payloads := noticePayloads(in)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for %d notices, want a split", len(payloads), len(in))
	}
	var out []store.Notice
	for _, p := range payloads {
		if len(p) > maxNotifyPayload {
			t.Fatalf("payload of %d bytes exceeds %d", len(p), maxNotifyPayload)
		}
		out = append(out, parseNotices(p)...)
	}
	if len(out) != len(in) {
		t.Fatalf("parsed %d notices, sent %d", len(out), len(in))
	}
	for i := range 500 {
		if out[i] != in[i] {
			t.Fatalf("notice %d: got %+v, want %+v", i, out[i], in[i])
		}
	}
	// The oversized run id becomes a notice for every subscriber of its kind.
	if last := out[len(out)-1]; last.Kind != store.NoticeFrame || last.RunID != "" {
		t.Fatalf("oversized notice parsed as %+v", last)
	}
}

func TestParseNoticesFormats(t *testing.T) {
	everyone := store.Notice{Kind: store.NoticeEvent}
	tests := []struct {
		payload string
		want    []store.Notice
	}{
		{`{"kind":"frame","run_id":"r1"}`, []store.Notice{{Kind: store.NoticeFrame, RunID: "r1"}}},
		{`[{"kind":"event","run_id":"r1","seq":2},{"kind":"worker","run_id":"w1","seq":1}]`,
			[]store.Notice{{Kind: store.NoticeEvent, RunID: "r1", Seq: 2}, {Kind: store.NoticeWorker, RunID: "w1", Seq: 1}}},
		{`[{"kind":"bogus","run_id":"r1"}]`, []store.Notice{everyone}},
		{`not json`, []store.Notice{everyone}},
		{`[1,2`, []store.Notice{everyone}},
	}
	for _, tc := range tests {
		got := parseNotices(tc.payload)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("parseNotices(%q) = %+v, want %+v", tc.payload, got, tc.want)
		}
	}
}
