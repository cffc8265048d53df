package runs

import (
	"strings"
	"testing"
)

// buildChain makes n correctly chained events for run r, starting after prev.
func buildChain(r string, firstSeq int64, n int, prev string) []ChainEvent {
	var out []ChainEvent
	for i := 0; i < n; i++ {
		seq := firstSeq + int64(i)
		p := []byte(`{"i":` + string(rune('0'+i%10)) + `}`)
		h := EventHash(r, seq, "run.delta", p, prev)
		out = append(out, ChainEvent{Seq: seq, EventType: "run.delta", Payload: p, PrevHash: prev, EventHash: h})
		prev = h
	}
	return out
}

func TestVerifyChain(t *testing.T) {
	const run = "run_1"
	good := buildChain(run, 1, 5, "")
	tail := buildChain(run, 41, 3, "abc123") // head pruned through seq 40

	mutate := func(evs []ChainEvent, f func([]ChainEvent)) []ChainEvent {
		cp := append([]ChainEvent(nil), evs...)
		f(cp)
		return cp
	}
	tests := []struct {
		name       string
		events     []ChainEvent
		floor      string
		wantOK     bool
		wantCount  int
		wantHead   string
		wantBroken int64
		wantReason string
	}{
		{"empty", nil, "", true, 0, "", 0, ""},
		{"intact", good, "", true, 5, good[4].EventHash, 0, ""},
		{"intact after floor", tail, "abc123", true, 3, tail[2].EventHash, 0, ""},
		{"non-canonical payload still verifies", mutate(good, func(e []ChainEvent) { e[0].Payload = []byte(` { "i" : 0 } `) }), "", true, 5, good[4].EventHash, 0, ""},
		{"floor mismatch", tail, "zzz", false, 0, "zzz", 41, BrokenPrevHash},
		{"missing head", good[1:], "", false, 0, "", 2, BrokenSeqGap},
		{"gap", append(append([]ChainEvent(nil), good[:2]...), good[3:]...), "", false, 2, good[1].EventHash, 4, BrokenSeqGap},
		{"payload tampered", mutate(good, func(e []ChainEvent) { e[2].Payload = []byte(`{"i":9}`) }), "", false, 2, good[1].EventHash, 3, BrokenEventHash},
		{"type tampered", mutate(good, func(e []ChainEvent) { e[3].EventType = "run.finished" }), "", false, 3, good[2].EventHash, 4, BrokenEventHash},
		{"prev tampered", mutate(good, func(e []ChainEvent) { e[1].PrevHash = "x" }), "", false, 1, good[0].EventHash, 2, BrokenPrevHash},
		{"hash tampered", mutate(good, func(e []ChainEvent) { e[4].EventHash = strings.Repeat("0", 64) }), "", false, 4, good[3].EventHash, 5, BrokenEventHash},
		{"invalid payload", mutate(good, func(e []ChainEvent) { e[0].Payload = []byte(`{`) }), "", false, 0, "", 1, BrokenInvalidPayload},
		{"other run", buildChain("run_2", 1, 2, ""), "", false, 0, "", 1, BrokenEventHash},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := VerifyChain(run, tc.events, tc.floor)
			if got.OK != tc.wantOK || got.EventCount != tc.wantCount || got.HeadHash != tc.wantHead || got.BrokenSeq != tc.wantBroken {
				t.Fatalf("got %+v, want ok=%v count=%d head=%q broken=%d", got, tc.wantOK, tc.wantCount, tc.wantHead, tc.wantBroken)
			}
			if !strings.HasPrefix(got.Reason, tc.wantReason) || (tc.wantReason == "") != (got.Reason == "") {
				t.Fatalf("reason = %q, want prefix %q", got.Reason, tc.wantReason)
			}
		})
	}
}

func TestChainStopsAtFirstBreak(t *testing.T) {
	evs := buildChain("r", 1, 3, "")
	c := NewChain("r", "")
	if !c.Add(evs[0]) {
		t.Fatal("first event rejected")
	}
	if c.Add(evs[2]) {
		t.Fatal("gap accepted")
	}
	if c.Add(evs[1]) {
		t.Fatal("chain continued after a break")
	}
	if r := c.Result(); r.OK || r.BrokenSeq != 3 {
		t.Fatalf("result %+v", r)
	}
}
