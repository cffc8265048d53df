package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.SyncStore = (*Store)(nil)

// queryer is what both *sql.Tx and *sql.DB offer.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func streamBounds(ctx context.Context, q queryer, topic string) (store.StreamBounds, error) {
	var b store.StreamBounds
	err := q.QueryRowContext(ctx, `SELECT
		COALESCE((SELECT last_watermark FROM khala_topic_watermarks WHERE topic = ?), 0),
		COALESCE((SELECT floor_watermark FROM khala_stream_floors WHERE topic = ?), 0)`,
		topic, topic).Scan(&b.Head, &b.Floor)
	return b, err
}

// ReadOwnerStream implements store.SyncStore. One read transaction on a WAL
// reader is one snapshot: every row up to the head read here is visible in
// it, because a watermark is allocated in the transaction that inserts its
// row.
func (s *Store) ReadOwnerStream(ctx context.Context, q store.OwnerStreamQuery) (store.OwnerStreamPage, error) {
	if q.Limit <= 0 {
		q.Limit = 200
	}
	tx, err := s.reader.BeginTx(ctx, nil)
	if err != nil {
		return store.OwnerStreamPage{}, fmt.Errorf("sqlite: read owner stream %s: %w", q.Topic, err)
	}
	defer func() { _ = tx.Rollback() }()
	b, err := streamBounds(ctx, tx, q.Topic)
	if err != nil {
		return store.OwnerStreamPage{}, fmt.Errorf("sqlite: read owner stream %s: bounds: %w", q.Topic, err)
	}
	page := store.OwnerStreamPage{Bounds: b, After: q.After}
	if page.After < 0 {
		page.After = b.Floor
	}
	rows, err := tx.QueryContext(ctx, `SELECT topic, watermark, doc_key, owner_sub, doc_version,
		payload, payload_hash, created_at FROM khala_stream_events
		WHERE topic = ? AND owner_sub = ? AND watermark > ? ORDER BY watermark LIMIT ?`,
		q.Topic, q.OwnerSub, page.After, q.Limit)
	if err != nil {
		return store.OwnerStreamPage{}, fmt.Errorf("sqlite: read owner stream %s: %w", q.Topic, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			r           store.StreamRow
			payload, ts string
		)
		if err := rows.Scan(&r.Topic, &r.Watermark, &r.DocKey, &r.OwnerSub, &r.DocVersion, &payload, &r.PayloadHash, &ts); err != nil {
			return store.OwnerStreamPage{}, fmt.Errorf("sqlite: read owner stream %s: %w", q.Topic, err)
		}
		r.Payload = []byte(payload)
		if r.CreatedAt, err = parseTS(ts); err != nil {
			return store.OwnerStreamPage{}, err
		}
		page.Rows = append(page.Rows, r)
	}
	if err := rows.Err(); err != nil {
		return store.OwnerStreamPage{}, fmt.Errorf("sqlite: read owner stream %s: %w", q.Topic, err)
	}
	if len(page.Rows) == q.Limit {
		page.Through = page.Rows[len(page.Rows)-1].Watermark
	} else {
		page.Through = max(page.After, b.Head)
	}
	return page, nil
}

// StreamBounds implements store.SyncStore.
func (s *Store) StreamBounds(ctx context.Context, topics []string) (map[string]store.StreamBounds, error) {
	tx, err := s.reader.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlite: stream bounds: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	out := make(map[string]store.StreamBounds)
	if topics != nil {
		for _, t := range topics {
			b, err := streamBounds(ctx, tx, t)
			if err != nil {
				return nil, fmt.Errorf("sqlite: stream bounds %s: %w", t, err)
			}
			out[t] = b
		}
		return out, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT w.topic, w.last_watermark, COALESCE(f.floor_watermark, 0)
		FROM khala_topic_watermarks w LEFT JOIN khala_stream_floors f ON f.topic = w.topic`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: stream bounds: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			t string
			b store.StreamBounds
		)
		if err := rows.Scan(&t, &b.Head, &b.Floor); err != nil {
			return nil, fmt.Errorf("sqlite: stream bounds: %w", err)
		}
		out[t] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: stream bounds: %w", err)
	}
	return out, nil
}

// defaultPruneBatch is PruneStream's batch when the caller passes <= 0.
const defaultPruneBatch = 5000

// PruneStream implements store.SyncStore.
func (s *Store) PruneStream(ctx context.Context, olderThan time.Time, batch int) (int, error) {
	if batch <= 0 {
		batch = defaultPruneBatch
	}
	bounds, err := s.StreamBounds(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("sqlite: prune stream: %w", err)
	}
	topics := make([]string, 0, len(bounds))
	for t := range bounds {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	cutoff := formatTS(olderThan)
	deleted := 0
	for _, t := range topics {
		for deleted < batch {
			n, done, err := s.pruneTopic(ctx, t, cutoff, batch-deleted)
			if err != nil {
				return deleted, fmt.Errorf("sqlite: prune stream %s: %w", t, err)
			}
			deleted += n
			if done {
				break
			}
		}
	}
	return deleted, nil
}

// pruneTopic deletes the oldest rows of topic, up to limit, as long as they
// are older than cutoff, and raises the floor. done reports that the topic
// has nothing older left.
func (s *Store) pruneTopic(ctx context.Context, topic, cutoff string, limit int) (n int, done bool, err error) {
	err = s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		rows, err := tx.QueryContext(ctx, `SELECT watermark, created_at < ? FROM khala_stream_events
			WHERE topic = ? ORDER BY watermark LIMIT ?`, cutoff, topic, limit)
		if err != nil {
			return err
		}
		var (
			last  int64
			total int
		)
		prefix := true
		for rows.Next() {
			var (
				wm  int64
				old bool
			)
			if err := rows.Scan(&wm, &old); err != nil {
				_ = rows.Close()
				return err
			}
			total++
			if prefix && old {
				last = wm
				n++
			} else {
				prefix = false
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		done = !prefix || total < limit
		if n == 0 {
			done = true
			return nil
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM khala_stream_events WHERE topic = ? AND watermark <= ?`, topic, last)
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if got, err := res.RowsAffected(); err == nil {
			n = int(got)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO khala_stream_floors (topic, floor_watermark, updated_at)
			VALUES (?, ?, ?)
			ON CONFLICT (topic) DO UPDATE SET floor_watermark = MAX(floor_watermark, excluded.floor_watermark),
				updated_at = excluded.updated_at`, topic, last, formatTS(s.now())); err != nil {
			return fmt.Errorf("raise floor: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return n, done, nil
}
