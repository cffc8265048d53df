package auth

import (
	"container/heap"
	"sync"
)

// nonceCache remembers each nonce until its token's exp. Entries are pruned
// by expiry through a min-heap, so a use costs O(log n) and memory is bounded
// by capacity. The cache is node-local: with several replicas a token could be
// replayed once against each replica; the short lifetime bounds that.
type nonceCache struct {
	mu       sync.Mutex
	capacity int
	exp      map[string]int64
	order    expHeap
}

func newNonceCache(capacity int) *nonceCache {
	return &nonceCache{capacity: capacity, exp: make(map[string]int64)}
}

// use records nonce until exp, or fails when it is already live.
func (c *nonceCache) use(nonce string, exp, now int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.order) > 0 && c.order[0].exp <= now {
		e := heap.Pop(&c.order).(nonceEntry)
		// The map may hold a later exp only if the nonce was reused after it
		// expired; keep that newer entry.
		if c.exp[e.nonce] == e.exp {
			delete(c.exp, e.nonce)
		}
	}
	if exp0, ok := c.exp[nonce]; ok && exp0 > now {
		return ErrNonceUsed
	}
	if len(c.order) >= c.capacity {
		return ErrNonceCacheFull
	}
	c.exp[nonce] = exp
	heap.Push(&c.order, nonceEntry{nonce: nonce, exp: exp})
	return nil
}

func (c *nonceCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.exp)
}

type nonceEntry struct {
	nonce string
	exp   int64
}

type expHeap []nonceEntry

func (h expHeap) Len() int           { return len(h) }
func (h expHeap) Less(i, j int) bool { return h[i].exp < h[j].exp }
func (h expHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expHeap) Push(x any)        { *h = append(*h, x.(nonceEntry)) }
func (h *expHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	*h = old[:n-1]
	return e
}
