package drills

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// pendingDrills lists the drills of the original gate that this runner does
// not implement yet, as not_run, never as passed. Their reason states what a
// probe of a real node found, so the report says whether the missing part
// is the server's or only the drill's.
func (d *Driver) pendingDrills(ctx context.Context) []Result {
	probe := d.probeSurfaces(ctx)
	return []Result{
		notRun(SyncReconnectReplay, "-", "WebSocket sync delivery (GET /sync/v1, DESIGN section 8) is not implemented by the drill runner; "+probe.sync, false),
		notRun(SyncTokenExpiryGuard, "-", "needs a sync delivery surface that verifies tokens (WebSocket /sync/v1 or the polling endpoint) to present an expired token to; "+probe.sync+"; "+probe.poll, false),
	}
}

type surfaceProbe struct{ sync, poll string }

// probeSurfaces starts a throwaway SQLite node and asks it for the sync
// delivery surfaces.
func (d *Driver) probeSurfaces(ctx context.Context) surfaceProbe {
	p := surfaceProbe{sync: "probe of /sync/v1 not done", poll: "probe of the polling endpoint not done"}
	settings, cleanup, err := d.database(ctx, SQLite, "probe")
	if err != nil {
		return p
	}
	defer cleanup(true)
	node, err := d.newNode("probe-sqlite", settings)
	if err != nil {
		return p
	}
	defer node.Stop()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := node.Start(ctx, d.cfg.Bin, "probe"); err != nil {
		p.sync = "probe node did not start: " + err.Error()
		return p
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) string {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+node.Addr+path, nil)
		if err != nil {
			return err.Error()
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Sprintf("HTTP %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	p.sync = "a running node answers GET /sync/v1 with " + get("/sync/v1")
	p.poll = "GET /internal/v1/khala/topics/runtime.run_summaries/messages answers " + get("/internal/v1/khala/topics/runtime.run_summaries/messages?after_seq=0")
	return p
}
