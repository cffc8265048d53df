package projection

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// A summary built from a log whose first events were counted, not read
// (store.RunLog.Elided), is the one built from the whole log, for every
// split of complete logs above any floor.
func TestBuildRunSummaryElided(t *testing.T) {
	created := time.Date(2026, 2, 19, 10, 0, 0, 0, time.UTC)
	now := created.Add(time.Hour)
	for _, floor := range []int64{0, 3} {
		for n := int64(1); n <= 6; n++ {
			run := store.Run{RunID: "r1", ThreadID: "t1", OwnerSub: "user:42", Status: store.StatusRunning,
				LatestSeq: floor + n, RetentionFloorSeq: floor, CreatedAt: created}
			var evs []store.Event
			for seq := floor + 1; seq <= floor+n; seq++ {
				evs = append(evs, store.Event{RunID: "r1", Seq: seq, EventType: fmt.Sprintf("run.e%d", seq), CreatedAt: created.Add(time.Duration(seq) * time.Second)})
			}
			want, wantGaps := BuildRunSummary(run, evs, "v1", nil, now)
			for elided := int64(0); elided < n; elided++ {
				got, gaps := buildRunSummary(run, elided, evs[elided:], "v1", nil, now)
				if !reflect.DeepEqual(got, want) || len(gaps) != len(wantGaps) {
					t.Fatalf("floor %d, %d events, %d elided: %+v (gaps %v), want %+v (gaps %v)", floor, n, elided, got, gaps, want, wantGaps)
				}
			}
		}
	}
}

// End to end on each driver: a long, pruned run projected through the
// projector's read (which elides on PostgreSQL) gets the summary a rebuild
// from its whole log gets, and the parity auditor, which rebuilds from the
// whole log, finds nothing.
func TestProjectedSummaryOfLongRunMatchesFullRebuild(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		mkRun(t, st, "long", "run.started")
		for range 40 {
			appendEv(t, st, "long", "run.delta")
		}
		if err := st.PruneEvents(ctx, "long", 10); err != nil {
			t.Fatal(err)
		}
		appendEv(t, st, "long", "run.finished")
		p := New(st, nil, nil, nil, Config{})
		if _, err := p.ProjectRun(ctx, "long"); err != nil {
			t.Fatal(err)
		}
		run, evs, err := st.LoadRunLog(ctx, "long")
		if err != nil {
			t.Fatal(err)
		}
		want, _ := BuildRunSummary(run, evs, p.Version(), nil, time.Now())
		_, wantHash, err := encodeSummary(want)
		if err != nil {
			t.Fatal(err)
		}
		cp, ok := checkpoint(t, st, "long")
		if !ok || cp.LastSeq != 42 || cp.SummaryHash != wantHash {
			t.Fatalf("checkpoint %+v, want seq 42 and hash %s", cp, wantHash)
		}
		doc, err := st.GetDocument(ctx, store.TopicRunSummaries, RunDocKey("long"))
		if err != nil {
			t.Fatal(err)
		}
		var got RunSummary
		if err := json.Unmarshal(doc.Payload, &got); err != nil || got.EventCount != 42 || got.LatestEventType == nil || *got.LatestEventType != "run.finished" {
			t.Fatalf("document %s (%v)", doc.Payload, err)
		}
		if rep, err := p.Audit(ctx, 10); err != nil || rep.Status != "ok" || rep.Mismatches != 0 {
			t.Fatalf("audit = %+v, %v", rep, err)
		}
	})
}
