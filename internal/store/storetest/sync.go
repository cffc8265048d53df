package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// SyncDriver is a driver with the projection and sync contracts.
type SyncDriver interface {
	store.Store
	store.ProjectionStore
	store.SyncStore
}

// RunSync runs the sync delivery sub-suite (store.SyncStore).
func RunSync(t *testing.T, newStore func(t *testing.T) SyncDriver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s SyncDriver)
	}{
		{"EmptyTopic", syTestEmpty},
		{"OwnerFilterAndThrough", syTestOwnerFilter},
		{"BoundsAllTopics", syTestBoundsAll},
		{"PruneByAgeKeepsContiguousSuffix", syTestPruneByAge},
		{"PruneInBatchesToEmpty", syTestPruneBatches},
		{"PruneConcurrent", syTestPruneConcurrent},
		{"PagingUnderConcurrentWrites", syTestPagingConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

const syHash = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

// syWrite appends one stream row for a new entity of owner in topic and
// returns its watermark.
func syWrite(t *testing.T, s SyncDriver, topic, owner, entity string) int64 {
	t.Helper()
	wm, err := syTryWrite(s, topic, owner, entity)
	if err != nil {
		t.Fatal(err)
	}
	return wm
}

func syTryWrite(s SyncDriver, topic, owner, entity string) (int64, error) {
	wm, err := s.WriteProjection(context.Background(), store.ProjectionWriteInput{
		Projection: store.ProjectionRun,
		EntityID:   topic + "/" + entity,
		Topic:      topic,
		DocKey:     "doc:" + entity,
		OwnerSub:   owner,
		Doc:        json.RawMessage(fmt.Sprintf(`{"entity":%q,"owner":%q}`, entity, owner)),
		Hash:       syHash,
		Version:    "khala_summary_v1",
		SourceSeq:  1,
		ExpectSeq:  -1,
	})
	if err != nil {
		return 0, fmt.Errorf("write %s/%s: %w", topic, entity, err)
	}
	return wm, nil
}

func syRead(t *testing.T, s SyncDriver, q store.OwnerStreamQuery) store.OwnerStreamPage {
	t.Helper()
	p, err := s.ReadOwnerStream(context.Background(), q)
	if err != nil {
		t.Fatalf("ReadOwnerStream(%+v): %v", q, err)
	}
	return p
}

func syBounds(t *testing.T, s SyncDriver, topic string) store.StreamBounds {
	t.Helper()
	m, err := s.StreamBounds(context.Background(), []string{topic})
	if err != nil {
		t.Fatalf("StreamBounds(%s): %v", topic, err)
	}
	b, ok := m[topic]
	if !ok || len(m) != 1 {
		t.Fatalf("StreamBounds(%s) = %v, want exactly that topic", topic, m)
	}
	return b
}

func syWatermarks(rows []store.StreamRow) []int64 {
	out := make([]int64, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.Watermark)
	}
	return out
}

func syEqual(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func syTestEmpty(t *testing.T, s SyncDriver) {
	ctx := context.Background()
	all, err := s.StreamBounds(ctx, nil)
	if err != nil || len(all) != 0 {
		t.Fatalf("StreamBounds(nil) on an empty store = %v, %v; want empty", all, err)
	}
	if b := syBounds(t, s, store.TopicRunSummaries); b != (store.StreamBounds{}) {
		t.Fatalf("bounds of an unwritten topic = %+v, want zero", b)
	}
	for _, after := range []int64{-1, 0} {
		p := syRead(t, s, store.OwnerStreamQuery{Topic: store.TopicRunSummaries, OwnerSub: "user:1", After: after})
		if len(p.Rows) != 0 || p.After != 0 || p.Through != 0 || p.Bounds != (store.StreamBounds{}) {
			t.Fatalf("read after %d of an empty topic = %+v", after, p)
		}
	}
	if n, err := s.PruneStream(ctx, time.Now().Add(time.Hour), 10); err != nil || n != 0 {
		t.Fatalf("PruneStream on an empty store = %d, %v", n, err)
	}
}

func syTestOwnerFilter(t *testing.T, s SyncDriver) {
	topic := store.TopicRunSummaries
	var mine []int64
	for i := range 10 {
		owner := "user:2"
		if i%3 == 0 {
			owner = "user:1"
		}
		wm := syWrite(t, s, topic, owner, fmt.Sprintf("e%d", i))
		if owner == "user:1" {
			mine = append(mine, wm)
		}
	}
	// Another topic's rows never leak in.
	syWrite(t, s, store.TopicCodexWorkerSummaries, "user:1", "w")

	p := syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: 0, Limit: 100})
	if got := syWatermarks(p.Rows); !syEqual(got, mine) {
		t.Fatalf("user:1 rows = %v, want %v", got, mine)
	}
	for _, r := range p.Rows {
		if r.OwnerSub != "user:1" || r.Topic != topic || r.DocVersion != 1 || len(r.Payload) == 0 || r.PayloadHash == "" {
			t.Fatalf("row %+v", r)
		}
	}
	if p.Bounds != (store.StreamBounds{Floor: 0, Head: 10}) || p.Through != 10 || p.After != 0 {
		t.Fatalf("page bounds %+v through %d after %d, want head 10, through 10", p.Bounds, p.Through, p.After)
	}

	// A full page ends at its last row: the rows of others after it were
	// not looked at yet.
	p = syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: 0, Limit: 2})
	if got := syWatermarks(p.Rows); !syEqual(got, mine[:2]) || p.Through != mine[1] {
		t.Fatalf("limit 2: rows %v through %d, want %v through %d", got, p.Through, mine[:2], mine[1])
	}
	// Paging by Through visits every row of the owner exactly once.
	var paged []int64
	after := int64(-1)
	for range 20 {
		p = syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: after, Limit: 1})
		paged = append(paged, syWatermarks(p.Rows)...)
		if p.Through == after {
			break
		}
		after = p.Through
	}
	if !syEqual(paged, mine) || after != 10 {
		t.Fatalf("paged rows %v ending at %d, want %v ending at 10", paged, after, mine)
	}

	// An owner with no rows still advances to the head.
	p = syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:3", After: 4})
	if len(p.Rows) != 0 || p.Through != 10 {
		t.Fatalf("user:3 page = %+v, want no rows through 10", p)
	}
	// A cursor beyond the head is reported as read (the caller judges it).
	p = syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: 50})
	if len(p.Rows) != 0 || p.Through != 50 || p.Bounds.Head != 10 {
		t.Fatalf("read after 50 = %+v", p)
	}
}

func syTestBoundsAll(t *testing.T, s SyncDriver) {
	for i := range 3 {
		syWrite(t, s, store.TopicRunSummaries, "user:1", fmt.Sprintf("r%d", i))
	}
	syWrite(t, s, store.TopicCodexWorkerSummaries, "user:1", "w")
	all, err := s.StreamBounds(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]store.StreamBounds{
		store.TopicRunSummaries:         {Head: 3},
		store.TopicCodexWorkerSummaries: {Head: 1},
	}
	if len(all) != len(want) || all[store.TopicRunSummaries] != want[store.TopicRunSummaries] ||
		all[store.TopicCodexWorkerSummaries] != want[store.TopicCodexWorkerSummaries] {
		t.Fatalf("StreamBounds(nil) = %v, want %v", all, want)
	}
	some, err := s.StreamBounds(context.Background(), []string{store.TopicCodexWorkerEvents, store.TopicRunSummaries})
	if err != nil || len(some) != 2 || some[store.TopicCodexWorkerEvents] != (store.StreamBounds{}) || some[store.TopicRunSummaries].Head != 3 {
		t.Fatalf("StreamBounds(two) = %v, %v", some, err)
	}
}

func syTestPruneByAge(t *testing.T, s SyncDriver) {
	ctx := context.Background()
	topic := store.TopicRunSummaries
	for i := range 5 {
		syWrite(t, s, topic, "user:1", fmt.Sprintf("old%d", i))
	}
	// The cutoff is taken from the stored timestamps, so the test does not
	// depend on the database clock agreeing with ours.
	time.Sleep(5 * time.Millisecond)
	for i := range 5 {
		syWrite(t, s, topic, "user:1", fmt.Sprintf("new%d", i))
	}
	rows, err := s.ReadStream(ctx, topic, 0, 100)
	if err != nil || len(rows) != 10 {
		t.Fatalf("ReadStream = %d rows, %v", len(rows), err)
	}
	cutoff := rows[5].CreatedAt
	if !rows[4].CreatedAt.Before(cutoff) {
		t.Fatalf("row 5 created %v is not before row 6 created %v", rows[4].CreatedAt, cutoff)
	}
	n, err := s.PruneStream(ctx, cutoff, 0)
	if err != nil || n != 5 {
		t.Fatalf("PruneStream = %d, %v; want 5", n, err)
	}
	if b := syBounds(t, s, topic); b != (store.StreamBounds{Floor: 5, Head: 10}) {
		t.Fatalf("bounds after prune = %+v, want floor 5 head 10", b)
	}
	if n, err := s.PruneStream(ctx, cutoff, 0); err != nil || n != 0 {
		t.Fatalf("second PruneStream = %d, %v; want 0", n, err)
	}
	p := syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: -1})
	if got := syWatermarks(p.Rows); !syEqual(got, []int64{6, 7, 8, 9, 10}) || p.After != 5 || p.Through != 10 {
		t.Fatalf("fresh read after prune: rows %v after %d through %d", got, p.After, p.Through)
	}
	// Reading after a pruned position still returns what is left; the
	// bounds tell the caller it is stale.
	p = syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: 2})
	if p.Bounds.Floor != 5 || len(p.Rows) != 5 {
		t.Fatalf("read after 2 = %+v", p)
	}
	// New writes continue the sequence above the floor.
	if wm := syWrite(t, s, topic, "user:1", "later"); wm != 11 {
		t.Fatalf("watermark after prune = %d, want 11", wm)
	}
}

func syTestPruneBatches(t *testing.T, s SyncDriver) {
	ctx := context.Background()
	for i := range 7 {
		syWrite(t, s, store.TopicRunSummaries, "user:1", fmt.Sprintf("r%d", i))
	}
	syWrite(t, s, store.TopicCodexWorkerSummaries, "user:2", "w0")
	syWrite(t, s, store.TopicCodexWorkerSummaries, "user:2", "w1")
	future := time.Now().Add(time.Hour)
	var got []int
	for range 10 {
		n, err := s.PruneStream(ctx, future, 3)
		if err != nil {
			t.Fatalf("PruneStream: %v", err)
		}
		got = append(got, n)
		if n < 3 {
			break
		}
	}
	total := 0
	for _, n := range got {
		if n > 3 {
			t.Fatalf("a batch of 3 deleted %d rows (%v)", n, got)
		}
		total += n
	}
	if total != 9 || got[len(got)-1] >= 3 {
		t.Fatalf("prune batches %v, want 9 rows in total ending with a short batch", got)
	}
	if b := syBounds(t, s, store.TopicRunSummaries); b != (store.StreamBounds{Floor: 7, Head: 7}) {
		t.Fatalf("run topic bounds = %+v, want floor 7 head 7", b)
	}
	if b := syBounds(t, s, store.TopicCodexWorkerSummaries); b != (store.StreamBounds{Floor: 2, Head: 2}) {
		t.Fatalf("worker topic bounds = %+v, want floor 2 head 2", b)
	}
	// A topic pruned to empty still knows its floor.
	p := syRead(t, s, store.OwnerStreamQuery{Topic: store.TopicRunSummaries, OwnerSub: "user:1", After: -1})
	if len(p.Rows) != 0 || p.After != 7 || p.Through != 7 {
		t.Fatalf("fresh read of a pruned topic = %+v, want after 7 through 7", p)
	}
	if rows, err := s.ReadStream(ctx, store.TopicRunSummaries, 0, 100); err != nil || len(rows) != 0 {
		t.Fatalf("rows left = %d, %v", len(rows), err)
	}
}

func syTestPruneConcurrent(t *testing.T, s SyncDriver) {
	ctx := context.Background()
	const rows = 40
	for i := range rows {
		syWrite(t, s, store.TopicRunSummaries, "user:1", fmt.Sprintf("r%d", i))
	}
	future := time.Now().Add(time.Hour)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
		errs  []error
	)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				n, err := s.PruneStream(ctx, future, 7)
				mu.Lock()
				total += n
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
				if err != nil || n == 0 {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("concurrent prune errors: %v", errs)
	}
	if total != rows {
		t.Fatalf("concurrent pruners deleted %d rows in total, want exactly %d", total, rows)
	}
	if b := syBounds(t, s, store.TopicRunSummaries); b != (store.StreamBounds{Floor: rows, Head: rows}) {
		t.Fatalf("bounds = %+v, want floor = head = %d", b, rows)
	}
}

// syTestPagingUnderConcurrentWrites: a reader that pages by Through while
// writers append sees every row of its owner exactly once, in order. This
// is the property resume depends on: Through never passes a row that a
// later read would still reveal.
func syTestPagingConcurrent(t *testing.T, s SyncDriver) {
	topic := store.TopicRunSummaries
	const writers, perWriter = 3, 20
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				owner := "user:other"
				if i%2 == 0 {
					owner = "user:1"
				}
				if _, err := syTryWrite(s, topic, owner, fmt.Sprintf("w%d-%d", w, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()

	var seen []int64
	after := int64(-1)
	finished := false
	for !finished {
		select {
		case <-done:
			finished = true // one more read after the writers stopped
		default:
		}
		p := syRead(t, s, store.OwnerStreamQuery{Topic: topic, OwnerSub: "user:1", After: after, Limit: 3})
		seen = append(seen, syWatermarks(p.Rows)...)
		if p.Through < max(after, 0) {
			t.Fatalf("Through moved back from %d to %d", after, p.Through)
		}
		after = p.Through
		if len(p.Rows) == 3 {
			finished = false // a full page: there may be more right now
		}
	}
	all, err := s.ReadStream(context.Background(), topic, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for _, r := range all {
		if r.OwnerSub == "user:1" {
			want = append(want, r.Watermark)
		}
	}
	if len(want) != writers*perWriter/2 || !syEqual(seen, want) {
		t.Fatalf("paged %v, want %v", seen, want)
	}
}
