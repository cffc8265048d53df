package postgres

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// The notifier sends the notices of committed run writes in batches, after
// the commit, instead of a pg_notify inside every write transaction.
//
// Why: PostgreSQL serializes the commits of transactions that issued
// NOTIFY (one lock for the whole database, held through the WAL flush). With
// a NOTIFY in every event append and frame insert, that lock capped the
// whole node at a few thousand writes per second, whatever the pool size.
// Sent from one goroutine, a batch holds the lock once for everything
// committed while the previous batch was in flight.
//
// Every notice goes this way: run writes publish after their commit, other
// writes note theirs in writeTx.
//
// Notices are hints (see store.Notice): a batch lost to a crash between the
// commit and the send, or to a failed send, only delays readers until their
// next poll. Every notice is kept as it is (no merging by run): filters
// downstream look at each seq.
type notifier struct {
	s    *Store
	mu   sync.Mutex
	buf  []store.Notice
	all  bool // the buffer overflowed: send one notice that wakes everyone
	kick chan struct{}
}

// maxNotifyPayload stays under PostgreSQL's 8000-byte NOTIFY limit.
const maxNotifyPayload = 7900

// maxPendingNotices bounds the buffer while the database is unreachable;
// past it the pending notices collapse into one wake-everyone notice.
const maxPendingNotices = 10_000

func newNotifier(s *Store) *notifier {
	return &notifier{s: s, kick: make(chan struct{}, 1)}
}

// publish queues notices of a committed write. It never blocks.
func (n *notifier) publish(ns ...store.Notice) {
	n.mu.Lock()
	if len(n.buf)+len(ns) > maxPendingNotices {
		n.buf, n.all = n.buf[:0], true
	} else {
		n.buf = append(n.buf, ns...)
	}
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *notifier) take() ([]store.Notice, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	buf, all := n.buf, n.all
	n.buf, n.all = nil, false
	return buf, all
}

// run sends batches until done closes, then sends what is left.
func (n *notifier) run(done <-chan struct{}) {
	for {
		select {
		case <-done:
			n.flush()
			return
		case <-n.kick:
			n.flush()
		}
	}
}

func (n *notifier) flush() {
	buf, all := n.take()
	if all {
		buf = []store.Notice{{Kind: store.NoticeEvent}} // no run id: every subscriber re-reads
	}
	if len(buf) == 0 {
		return
	}
	payloads := noticePayloads(buf)
	var sql strings.Builder
	args := []any{n.s.channel}
	sql.WriteString("SELECT ")
	for i, p := range payloads {
		if i > 0 {
			sql.WriteString(", ")
		}
		args = append(args, p)
		sql.WriteString("pg_notify($1, $")
		sql.WriteString(strconv.Itoa(len(args)))
		sql.WriteString(")")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.s.pool.Exec(ctx, sql.String(), args...); err != nil {
		n.s.cfg.logger.Warn("postgres notifier: notices lost; listeners catch up at their next poll",
			"notices", len(buf), "err", err)
	}
}

// noticePayloads packs notices into JSON arrays that each fit a NOTIFY
// payload.
func noticePayloads(ns []store.Notice) []string {
	var out []string
	var b strings.Builder
	for _, x := range ns {
		one, err := json.Marshal(x)
		if err != nil || len(one) > maxNotifyPayload-2 {
			// An oversized run id cannot travel; an empty one wakes every
			// subscriber, which re-reads and so still finds the write.
			one, _ = json.Marshal(store.Notice{Kind: x.Kind, Seq: x.Seq})
		}
		if b.Len() > 0 && b.Len()+1+len(one)+1 > maxNotifyPayload {
			b.WriteByte(']')
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteByte('[')
		} else {
			b.WriteByte(',')
		}
		b.Write(one)
	}
	if b.Len() > 0 {
		b.WriteByte(']')
		out = append(out, b.String())
	}
	return out
}
