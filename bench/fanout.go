package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type fanoutRun struct {
	Store          string             `json:"store"`
	Target         int                `json:"target_streams"`
	Opened         int                `json:"streams_opened"`
	OpenSeconds    float64            `json:"open_seconds"`
	OpenError      string             `json:"open_error,omitempty"`
	Dropped        int64              `json:"streams_dropped_during_measurement"`
	RSSBaselineMiB float64            `json:"server_rss_before_mib"`
	RSSOpenMiB     float64            `json:"server_rss_with_streams_mib"`
	RSSPeakMiB     float64            `json:"server_rss_peak_mib"`
	KiBPerStream   float64            `json:"server_kib_per_stream"`
	Events         int                `json:"events_appended"`
	Deliveries     int                `json:"deliveries"`
	Missing        int                `json:"deliveries_missing"`
	CommitToClient benchutil.DurStats `json:"commit_to_client"`
	PerEventP99MS  []float64          `json:"per_event_p99_ms"`
	ClientFDLimit  uint64             `json:"client_fd_limit"`
}

type fanoutResult struct {
	Config map[string]any `json:"config"`
	Runs   []fanoutRun    `json:"results"`
}

func fanoutCmd(ctx context.Context, args []string) error {
	var c common
	fs := flag.NewFlagSet("fanout", flag.ContinueOnError)
	c.register(fs)
	streams := fs.Int("streams", 10000, "concurrent SSE streams on one run")
	events := fs.Int("events", 10, "events appended while the streams are open")
	gap := fs.Duration("gap", 3*time.Second, "pause between appended events")
	stores := fs.String("stores", "sqlite,postgres", "stores to measure")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.prepare(); err != nil {
		return err
	}
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	res := fanoutResult{Config: map[string]any{
		"streams": *streams, "events": *events, "gap": gap.String(),
		"stream":  "GET /internal/v1/runs/{id}/stream?tail_ms=600000, all streams on one run, HTTP/1.1 over loopback, one connection each",
		"latency": "client receive time of the SSE message with id=seq minus the event's created_at (set inside the append transaction, same machine clock)",
		"rss":     "VmRSS of the serve process from /proc",
	}}
	for _, st := range strings.Split(*stores, ",") {
		var dbURL string
		switch st {
		case "sqlite":
			dbURL = "sqlite:" + filepath.Join(c.work, "fanout-"+randHex(3)+".db")
		case "postgres":
			schema := "oabench_fanout_" + randHex(4)
			defer dropSchema(ctx, c.pg, schema)
			u, err := benchutil.PGURL(c.pg, map[string]string{"schema": schema})
			if err != nil {
				return err
			}
			dbURL = u
		default:
			return fmt.Errorf("--stores: unknown %q", st)
		}
		r, err := fanoutOne(ctx, &c, st, dbURL, *streams, *events, *gap)
		if err != nil {
			return fmt.Errorf("%s: %w", st, err)
		}
		r.ClientFDLimit = lim.Cur
		fmt.Printf("fanout %s: %d/%d streams open (%s), server RSS %.0f -> %.0f MiB (%.1f KiB/stream), commit-to-client p50 %.0f ms p99 %.0f ms max %.0f ms, missing %d\n",
			st, r.Opened, r.Target, r.OpenError, r.RSSBaselineMiB, r.RSSOpenMiB, r.KiBPerStream, r.CommitToClient.P50MS, r.CommitToClient.P99MS, r.CommitToClient.MaxMS, r.Missing)
		res.Runs = append(res.Runs, r)
	}
	return saveSection(c.out, func(r *results) { r.Fanout = res })
}

type sseConn struct {
	conn net.Conn
	recv []atomic.Int64 // unix nanos of receipt, by event index
}

func fanoutOne(ctx context.Context, c *common, name, dbURL string, streams, events int, gap time.Duration) (fanoutRun, error) {
	srv, err := startServer(ctx, c.bin, "fanout-"+name, c.work, map[string]string{"OA_RUNTIME_DATABASE_URL": dbURL,
		"OA_RUNTIME_DATA_DIR": filepath.Join(c.work, "data-fanout-"+name)})
	if err != nil {
		return fanoutRun{}, err
	}
	defer srv.stop()
	a := srv.api()
	runID := "run_fanout_" + randHex(6)
	if err := a.createRun(ctx, runID); err != nil {
		return fanoutRun{}, err
	}
	// One event before the streams open, so that every stream has a cursor
	// position and the measured events are live ones.
	first, err := a.appendEvent(ctx, runID, map[string]any{"text": "opening"})
	if err != nil {
		return fanoutRun{}, err
	}
	time.Sleep(time.Second)
	r := fanoutRun{Store: name, Target: streams, RSSBaselineMiB: mib(benchutil.RSSBytes(srv.pid())), Events: events}
	peak := benchutil.RSSBytes(srv.pid())
	var peakMu sync.Mutex
	samplePeak := func() {
		v := benchutil.RSSBytes(srv.pid())
		peakMu.Lock()
		peak = max(peak, v)
		peakMu.Unlock()
	}

	conns := make([]*sseConn, 0, streams)
	var connsMu sync.Mutex
	var dropped atomic.Int64
	var openErr atomic.Value
	path := fmt.Sprintf("/internal/v1/runs/%s/stream?tail_ms=600000&cursor=%d", runID, first.Seq)
	open := func() (*sseConn, error) {
		conn, err := net.DialTimeout("tcp", srv.addr, 10*time.Second)
		if err != nil {
			return nil, err
		}
		req := "GET " + path + " HTTP/1.1\r\nHost: " + srv.addr + "\r\nAccept: text/event-stream\r\nX-OA-RUNTIME-SIGNATURE: " + benchutil.Sign(srv.secret, "user:bench") + "\r\n\r\n"
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := conn.Write([]byte(req)); err != nil {
			conn.Close()
			return nil, err
		}
		br := bufio.NewReaderSize(conn, 2048)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			conn.Close()
			return nil, err
		}
		if resp.StatusCode != 200 {
			conn.Close()
			return nil, fmt.Errorf("stream answered %d", resp.StatusCode)
		}
		_ = conn.SetDeadline(time.Time{})
		sc := &sseConn{conn: conn, recv: make([]atomic.Int64, events)}
		go func() {
			defer conn.Close()
			lr := bufio.NewReaderSize(resp.Body, 2048)
			id := int64(-1)
			for {
				line, err := lr.ReadString('\n')
				if err != nil {
					if ctx.Err() == nil {
						dropped.Add(1)
					}
					return
				}
				line = strings.TrimRight(line, "\r\n")
				switch {
				case strings.HasPrefix(line, "id:"):
					id, _ = strconv.ParseInt(strings.TrimSpace(line[3:]), 10, 64)
				case line == "":
					if i := id - first.Seq - 1; i >= 0 && i < int64(events) && sc.recv[i].Load() == 0 {
						sc.recv[i].Store(time.Now().UnixNano())
					}
				}
			}
		}()
		return sc, nil
	}
	// Open the streams with bounded parallelism; stop at the first wall
	// (descriptor limit, refused connections) and report how far it got.
	openStart := time.Now()
	var next atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for !stop.Load() {
				if next.Add(1) > int64(streams) {
					return
				}
				sc, err := open()
				if err != nil {
					openErr.CompareAndSwap(nil, err.Error())
					stop.Store(true)
					return
				}
				connsMu.Lock()
				conns = append(conns, sc)
				n := len(conns)
				connsMu.Unlock()
				if n%1000 == 0 {
					samplePeak()
					logf("fanout %s: %d streams open", name, n)
				}
			}
		})
	}
	wg.Wait()
	r.OpenSeconds = time.Since(openStart).Seconds()
	r.Opened = len(conns)
	if v, ok := openErr.Load().(string); ok {
		r.OpenError = v
		if errors.Is(ctx.Err(), context.Canceled) {
			return r, ctx.Err()
		}
	}
	defer func() {
		for _, sc := range conns {
			sc.conn.Close()
		}
	}()
	time.Sleep(2 * time.Second)
	r.RSSOpenMiB = mib(benchutil.RSSBytes(srv.pid()))
	samplePeak()
	if r.Opened > 0 {
		r.KiBPerStream = (r.RSSOpenMiB - r.RSSBaselineMiB) * 1024 / float64(r.Opened)
	}
	logf("fanout %s: %d streams open in %.1fs, RSS %.0f MiB", name, r.Opened, r.OpenSeconds, r.RSSOpenMiB)

	committed := make([]time.Time, events)
	for i := range events {
		ev, err := a.appendEvent(ctx, runID, map[string]any{"text": "fan-out", "i": i})
		if err != nil {
			return r, err
		}
		if ev.Seq != first.Seq+int64(i)+1 {
			return r, fmt.Errorf("appended seq %d, want %d", ev.Seq, first.Seq+int64(i)+1)
		}
		committed[i] = ev.CreatedAt
		// Wait for every stream (or the gap), sampling RSS.
		deadline := time.Now().Add(max(gap, 30*time.Second))
		for time.Now().Before(deadline) {
			samplePeak()
			all := true
			for _, sc := range conns {
				if sc.recv[i].Load() == 0 {
					all = false
					break
				}
			}
			if all {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(gap)
	}
	var lat []time.Duration
	perEvent := make([][]time.Duration, events)
	for _, sc := range conns {
		for i := range events {
			v := sc.recv[i].Load()
			if v == 0 {
				r.Missing++
				continue
			}
			d := time.Unix(0, v).Sub(committed[i])
			lat = append(lat, d)
			perEvent[i] = append(perEvent[i], d)
		}
	}
	for i := range events {
		r.PerEventP99MS = append(r.PerEventP99MS, benchutil.Summarize(perEvent[i]).P99MS)
	}
	r.Deliveries = len(lat)
	r.CommitToClient = benchutil.Summarize(lat)
	r.Dropped = dropped.Load()
	r.RSSPeakMiB = mib(peak)
	return r, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
