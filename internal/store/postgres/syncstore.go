package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.SyncStore = (*Store)(nil)

func streamBounds(ctx context.Context, tx pgx.Tx, topic string) (store.StreamBounds, error) {
	var b store.StreamBounds
	err := tx.QueryRow(ctx, `SELECT
		COALESCE((SELECT last_watermark FROM khala_topic_watermarks WHERE topic = $1), 0),
		COALESCE((SELECT floor_watermark FROM khala_stream_floors WHERE topic = $1), 0)`,
		topic).Scan(&b.Head, &b.Floor)
	return b, err
}

// readSnapshot runs fn in a read-only REPEATABLE READ transaction: one
// snapshot for the bounds and the rows. Every row up to the head seen in
// it is visible in it, because a watermark is allocated (under the topic
// row's lock) in the transaction that inserts its row.
func (s *Store) readSnapshot(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// ReadOwnerStream implements store.SyncStore.
func (s *Store) ReadOwnerStream(ctx context.Context, q store.OwnerStreamQuery) (store.OwnerStreamPage, error) {
	if q.Limit <= 0 {
		q.Limit = 200
	}
	page := store.OwnerStreamPage{After: q.After}
	if !storable(q.Topic) || !storable(q.OwnerSub) {
		// Nothing unstorable was ever written: an empty topic.
		page.After = max(page.After, 0)
		page.Through = page.After
		return page, nil
	}
	err := s.readSnapshot(ctx, func(tx pgx.Tx) error {
		b, err := streamBounds(ctx, tx, q.Topic)
		if err != nil {
			return fmt.Errorf("bounds: %w", err)
		}
		page.Bounds = b
		if page.After < 0 {
			page.After = b.Floor
		}
		rows, err := tx.Query(ctx, `SELECT topic, watermark, doc_key, owner_sub, doc_version,
			payload, payload_hash, created_at FROM khala_stream_events
			WHERE topic = $1 AND owner_sub = $2 AND watermark > $3 ORDER BY watermark LIMIT $4`,
			q.Topic, q.OwnerSub, page.After, q.Limit)
		if err != nil {
			return err
		}
		page.Rows, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.StreamRow, error) {
			var (
				r       store.StreamRow
				payload []byte
			)
			err := row.Scan(&r.Topic, &r.Watermark, &r.DocKey, &r.OwnerSub, &r.DocVersion, &payload, &r.PayloadHash, &r.CreatedAt)
			r.Payload = json.RawMessage(payload)
			r.CreatedAt = r.CreatedAt.UTC()
			return r, err
		})
		return err
	})
	if err != nil {
		return store.OwnerStreamPage{}, fmt.Errorf("postgres: read owner stream %s: %w", q.Topic, err)
	}
	if len(page.Rows) == q.Limit {
		page.Through = page.Rows[len(page.Rows)-1].Watermark
	} else {
		page.Through = max(page.After, page.Bounds.Head)
	}
	return page, nil
}

// StreamBounds implements store.SyncStore.
func (s *Store) StreamBounds(ctx context.Context, topics []string) (map[string]store.StreamBounds, error) {
	out := make(map[string]store.StreamBounds)
	err := s.readSnapshot(ctx, func(tx pgx.Tx) error {
		if topics != nil {
			for _, t := range topics {
				if !storable(t) {
					out[t] = store.StreamBounds{}
					continue
				}
				b, err := streamBounds(ctx, tx, t)
				if err != nil {
					return fmt.Errorf("%s: %w", t, err)
				}
				out[t] = b
			}
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT w.topic, w.last_watermark, COALESCE(f.floor_watermark, 0)
			FROM khala_topic_watermarks w LEFT JOIN khala_stream_floors f ON f.topic = w.topic`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				t string
				b store.StreamBounds
			)
			if err := rows.Scan(&t, &b.Head, &b.Floor); err != nil {
				return err
			}
			out[t] = b
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: stream bounds: %w", err)
	}
	return out, nil
}

const defaultPruneBatch = 5000

// PruneStream implements store.SyncStore. Concurrent pruners compute the
// same prefix; the second one's DELETE waits on the first's row locks and
// then finds those rows gone, and the floor only moves up (GREATEST).
func (s *Store) PruneStream(ctx context.Context, olderThan time.Time, batch int) (int, error) {
	if batch <= 0 {
		batch = defaultPruneBatch
	}
	bounds, err := s.StreamBounds(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("postgres: prune stream: %w", err)
	}
	topics := make([]string, 0, len(bounds))
	for t := range bounds {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	deleted := 0
	for _, t := range topics {
		for deleted < batch {
			n, done, err := s.pruneTopic(ctx, t, olderThan, batch-deleted)
			if err != nil {
				return deleted, fmt.Errorf("postgres: prune stream %s: %w", t, err)
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
// were created before cutoff, and raises the floor in the same transaction.
// created_at is the writing transaction's start time, so it is not strictly
// ordered by watermark; stopping at the first younger row keeps the
// retained rows contiguous (an older row behind it waits one more cycle).
func (s *Store) pruneTopic(ctx context.Context, topic string, cutoff time.Time, limit int) (n int, done bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT watermark, created_at < $1 FROM khala_stream_events
			WHERE topic = $2 ORDER BY watermark LIMIT $3`, cutoff, topic, limit)
		if err != nil {
			return err
		}
		type row struct {
			wm  int64
			old bool
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var v row
			return v, r.Scan(&v.wm, &v.old)
		})
		if err != nil {
			return err
		}
		var last int64
		prefix := 0
		for _, r := range got {
			if !r.old {
				break
			}
			last = r.wm
			prefix++
		}
		done = prefix < len(got) || len(got) < limit
		if prefix == 0 {
			done = true
			return nil
		}
		tag, err := tx.Exec(ctx, `DELETE FROM khala_stream_events WHERE topic = $1 AND watermark <= $2`, topic, last)
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		n = int(tag.RowsAffected())
		if _, err := tx.Exec(ctx, `INSERT INTO khala_stream_floors (topic, floor_watermark, updated_at)
			VALUES ($1, $2, now())
			ON CONFLICT (topic) DO UPDATE SET
				floor_watermark = GREATEST(khala_stream_floors.floor_watermark, excluded.floor_watermark),
				updated_at = excluded.updated_at`, topic, last); err != nil {
			return fmt.Errorf("raise floor: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return n, done, nil
}
