package store

import (
	"context"
	"time"
)

// StreamBounds is the retained range of one topic's replay journal: rows
// with Floor < watermark <= Head exist (watermarks are gap-free, so the
// range is contiguous); rows at or below Floor were pruned by retention.
type StreamBounds struct {
	// Floor is the highest pruned watermark, 0 when nothing was pruned. A
	// subscriber that resumes after a watermark below Floor missed rows and
	// must resync in full.
	Floor int64 `json:"retention_floor"`
	// Head is the highest allocated watermark, 0 for a topic never written.
	Head int64 `json:"head_watermark"`
}

// OwnerStreamQuery reads one owner's rows of one topic.
type OwnerStreamQuery struct {
	Topic    string
	OwnerSub string // only rows with exactly this owner_sub are returned
	// After is the watermark to read after; a negative value means "from
	// the retained floor" (a fresh subscription, never stale).
	After int64
	Limit int // <= 0 means 200
}

// OwnerStreamPage is one page of an owner's rows with the topic's bounds,
// all read from ONE snapshot, so that Through is exact: the rows of other
// owners between After and Through were skipped, not lost.
type OwnerStreamPage struct {
	Rows   []StreamRow
	Bounds StreamBounds
	// After is the position actually read after (the floor when the query
	// asked for it with a negative After).
	After int64
	// Through is the watermark the reader has now seen everything up to:
	// the last row's watermark when the page is full, otherwise
	// max(After, Head). It is the next query's After.
	Through int64
}

// SyncStore is what sync delivery needs beyond ProjectionStore,
// implemented by both drivers' *Store.
type SyncStore interface {
	// ReadOwnerStream returns up to Limit rows of q.Topic owned by
	// q.OwnerSub with watermark > After, in order, with the topic's bounds
	// from the same snapshot. It does not judge staleness: the caller
	// compares After with Bounds.Floor (rows after After were pruned when
	// After < Floor) and Bounds.Head (a cursor ahead of the head was never
	// issued by this database).
	ReadOwnerStream(ctx context.Context, q OwnerStreamQuery) (OwnerStreamPage, error)
	// StreamBounds returns the bounds of topics from one snapshot; nil
	// topics means every topic ever written. Unknown topics get zero bounds.
	StreamBounds(ctx context.Context, topics []string) (map[string]StreamBounds, error)
	// PruneStream deletes up to batch rows (<= 0 means 5000) created before
	// olderThan and returns how many it deleted; fewer than batch means
	// nothing older remains. Per topic it deletes only a prefix in
	// watermark order (stopping at the first younger row), so the retained
	// rows stay contiguous, and it raises the topic's floor to the highest
	// deleted watermark in the same transaction. Concurrent pruners
	// (replicas) are safe: the floor only moves up.
	PruneStream(ctx context.Context, olderThan time.Time, batch int) (int, error)
}
