package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// openReplica opens a second store on a's schema: another node whose head
// cache knows nothing of a's writes.
func openReplica(t *testing.T, a *Store) *Store {
	t.Helper()
	b, err := Open(context.Background(), testURL(t), WithSchema(a.schema))
	if err != nil {
		t.Fatalf("open replica: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// The fast path remembers heads per node; two nodes appending to one run
// in turn and at once must still produce one gap-free, chained log.
func TestAppendFastPathAcrossReplicas(t *testing.T) {
	a := newTestStore(t)
	b := openReplica(t, a)
	ctx := context.Background()
	mustCreateRun(t, a, "r1")
	for i := range 6 { // in turn: each node's remembered head is stale every time
		s := []*Store{a, b}[i%2]
		ev, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
		if err != nil || ev.Seq != int64(i+1) {
			t.Fatalf("append %d: seq %d, %v", i, ev.Seq, err)
		}
	}
	appendConcurrently(t, []*Store{a, b}, "r1", 8, 10)
	checkChain(t, a, "r1")
	if r, err := a.GetRun(ctx, "r1"); err != nil || r.LatestSeq != 86 {
		t.Fatalf("got %d events, want 86 (%v)", r.LatestSeq, err)
	}
}

// Every outcome the full path decides must come out the same when the
// driver remembers the head: a lost fence, a replayed key, an expected seq
// that does not match, an illegal transition.
func TestAppendFastPathDefersToFullPath(t *testing.T) {
	a := newTestStore(t)
	b := openReplica(t, a)
	ctx := context.Background()
	mustCreateRun(t, a, "r1")
	mustFrame(t, a, "r1", "f1")
	g, err := a.AcquireLease(ctx, "r1", "node-a", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first, _, err := a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started", Payload: json.RawMessage(`{}`),
		IdempotencyKey: "k1", Fence: g.Lease.Fence()})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.heads.get("r1"); !ok {
		t.Fatal("the driver does not remember the head after its own append")
	}

	// The lease expires and node b steals it: node a's remembered head is
	// still current, but its fence is not.
	time.Sleep(1100 * time.Millisecond)
	g2, err := b.AcquireLease(ctx, "r1", "node-b", 10*time.Second)
	if err != nil || g2.Result != store.LeaseStolen {
		t.Fatalf("steal: %+v %v", g2, err)
	}
	if _, ok := a.heads.get("r1"); !ok {
		t.Fatal("head forgotten before the fenced append: the test would miss the fast path")
	}
	if _, _, err := a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(`{"late":true}`),
		Fence: g.Lease.Fence()}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("append under the stolen fence: %v, want ErrFenced", err)
	}
	// Each of these finds the head remembered and must defer to the full path.
	// The same key again: the original comes back as a replay.
	a.heads.put("r1", head{seq: first.Seq, hash: first.EventHash, status: store.StatusRunning})
	ev, replay, err := a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started", Payload: json.RawMessage(`{}`),
		IdempotencyKey: "k1", Fence: g2.Lease.Fence()})
	if err != nil || !replay || ev.Seq != first.Seq || ev.EventHash != first.EventHash {
		t.Fatalf("replay: %+v replay=%t err=%v", ev, replay, err)
	}

	a.heads.put("r1", head{seq: first.Seq, hash: first.EventHash, status: store.StatusRunning})
	// A wrong expected seq is a sequence conflict, not an append.
	wrong := int64(7)
	if _, _, err := a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(`{}`),
		ExpectedPreviousSeq: &wrong}); !errors.Is(err, store.ErrSeqConflict) {
		t.Fatalf("expected previous seq 7: %v, want ErrSeqConflict", err)
	}

	a.heads.put("r1", head{seq: first.Seq, hash: first.EventHash, status: store.StatusRunning})
	// An illegal transition is refused.
	if _, _, err := a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.finished", Payload: json.RawMessage(`{"status":"bogus"}`)}); !errors.Is(err, store.ErrIllegalTransition) {
		t.Fatalf("run.finished{bogus}: %v, want ErrIllegalTransition", err)
	}

	ev, _, err = b.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(`{"new":true}`),
		Fence: g2.Lease.Fence()})
	if err != nil || ev.Seq != 2 {
		t.Fatalf("append by the new holder: seq %d, %v", ev.Seq, err)
	}
	// Node a's next append (unfenced) finds its head stale and still lands
	// at the right place in the chain.
	a.heads.put("r1", head{seq: first.Seq, hash: first.EventHash, status: store.StatusRunning})
	ev, _, err = a.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(`{}`)})
	if err != nil || ev.Seq != 3 || ev.PrevHash == "" {
		t.Fatalf("append from a stale head: %+v %v", ev, err)
	}
	r, err := a.GetRun(ctx, "r1")
	if err != nil || r.LatestSeq != 3 || r.Status != store.StatusRunning {
		t.Fatalf("run after the appends: %+v %v", r, err)
	}
}
