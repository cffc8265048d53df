package drills

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// fakeKhala is an external Khala mutation endpoint (projection.MutationPath)
// the drill controls: up, it acknowledges every upsert and keeps what it
// accepted; down, it answers 503 like a Khala in trouble.
type fakeKhala struct {
	key string

	mu       sync.Mutex
	down     bool
	accepted map[string][]khalaDoc // document_id -> accepted upserts, in order
	rejected int                   // upserts answered 503
	badAuth  int
}

type khalaDoc struct {
	Seq    int64
	Status string
	Hash   string
	At     time.Time
}

func (k *fakeKhala) setDown(down bool) {
	k.mu.Lock()
	k.down = down
	k.mu.Unlock()
}

func (k *fakeKhala) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != projection.MutationPath {
		http.NotFound(w, r)
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if r.Header.Get("authorization") != "Khala "+k.key {
		k.badAuth++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if k.down {
		k.rejected++
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var req projection.MutationRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Args) != 1 {
		w.Header().Set("content-type", "application/json")
		_ = json.NewEncoder(w).Encode(projection.MutationResponse{Status: "error", ErrorMessage: "bad request"})
		return
	}
	var sum struct {
		Status        string `json:"status"`
		RuntimeSource struct {
			Seq int64 `json:"seq"`
		} `json:"runtime_source"`
	}
	_ = json.Unmarshal(req.Args[0].Summary, &sum)
	a := req.Args[0]
	k.accepted[a.DocumentID] = append(k.accepted[a.DocumentID], khalaDoc{Seq: sum.RuntimeSource.Seq, Status: sum.Status, Hash: a.SummaryHash, At: time.Now()})
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(projection.MutationResponse{Status: "success"})
}

// latest returns the last accepted upsert of a document.
func (k *fakeKhala) latest(docID string) (khalaDoc, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	docs := k.accepted[docID]
	if len(docs) == 0 {
		return khalaDoc{}, false
	}
	return docs[len(docs)-1], true
}

// metricSum adds the samples of a metric family whose labels contain every
// given label="value" pair, from a Prometheus text exposition.
func metricSum(exposition, name string, labels ...string) (float64, bool) {
	sum, found := 0.0, false
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue // another metric sharing the prefix
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

func scrape(ctx context.Context, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(b), err
}

// checkpointView is GET /internal/v1/projectors/checkpoints/{run_id}.
type checkpointView struct {
	RuntimeLatestSeq int64 `json:"runtime_latest_seq"`
	LagEvents        int64 `json:"lag_events"`
	Checkpoint       *struct {
		LastSeq     int64  `json:"last_seq"`
		SummaryHash string `json:"summary_hash"`
		DocKey      string `json:"document_id"`
	} `json:"checkpoint"`
}

// sinkOutageReplay: the node projects run summaries through the http sink
// to an external Khala (a fake the drill controls). With runs in flight
// Khala goes down (503); the runs finish during the outage, and the node is
// killed with SIGKILL and restarted, still during the outage. When Khala
// comes back, the projector must replay what it could not write: every
// run's document at Khala ends at the run's last seq and terminal status,
// the local checkpoint equals what Khala acknowledged (same seq and hash),
// no document ever moves backwards at Khala, and the outage is visible in
// the metrics (write failures classed http_5xx, khala_sink_up 0).
func (d *Driver) sinkOutageReplay(ctx context.Context, kind string) Result {
	r := newRec(SinkOutageReplay, kind)
	passed := false
	kh := &fakeKhala{key: "drill-khala-" + randHex(8), accepted: map[string][]khalaDoc{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.failf("fake khala: %v", err)
		return r.done()
	}
	hs := &http.Server{Handler: kh, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	ctx, node, finish, ok := d.singleNode(ctx, r, SinkOutageReplay, kind, 5*time.Minute, map[string]string{
		"OA_KHALA_SINK": "http", "OA_KHALA_URL": "http://" + ln.Addr().String(), "OA_KHALA_ADMIN_KEY": kh.key,
	})
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)
	n := 24
	if d.cfg.Short {
		n = 8
	}
	plans := make([]*plannedRun, n)
	for i := range plans {
		tag := fmt.Sprintf("k%02d", i)
		plans[i] = &plannedRun{
			RunID: fmt.Sprintf("run_sink_%s_%s_%s", kind, randHex(4), tag), FrameID: "frame_" + tag,
			Steps: toolScript(tag, 0, 1500+(i%4)*300, 500), WantStatus: "succeeded",
		}
		if err := createRun(ctx, c, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("runs", int64(n))
	docID := func(runID string) string { return projection.RunDocKey(runID) }
	// While Khala is up, every run reaches it.
	deadline := time.Now().Add(15 * time.Second)
	for {
		missing := 0
		for _, p := range plans {
			if _, ok := kh.latest(docID(p.RunID)); !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			r.failf("%d runs never reached Khala while it was up", missing)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	outageAt := time.Now()
	kh.setDown(true)
	d.progressf("%s/%s: Khala down (503)", SinkOutageReplay, kind)
	time.Sleep(time.Second)
	killAt := node.Kill()
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-2"); err != nil {
		r.failf("restart: %v", err)
		return r.done()
	}
	r.dur("kill_to_ready", time.Since(killAt))
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return c }, plans)
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	// Every run finished while Khala was down: the restarted projector has
	// tried (and failed) to write their terminal summaries.
	time.Sleep(2 * time.Second)
	expo, err := scrape(ctx, node.Addr)
	if err != nil {
		r.failf("scrape during the outage: %v", err)
	}
	fails, _ := metricSum(expo, telemetry.KhalaProjectionWriteFailures, `reason_class="http_5xx"`)
	up, upFound := metricSum(expo, telemetry.KhalaSinkUp)
	r.count("write_failures_http_5xx_after_restart", int64(fails))
	if fails == 0 {
		r.failf("the restarted node counted no http_5xx projection write failure while Khala answered 503")
	}
	if !upFound || up != 0 {
		r.failf("%s is %v (found %v) during the outage, want 0", telemetry.KhalaSinkUp, up, upFound)
	}
	behind := 0
	for _, p := range plans {
		if doc, _ := kh.latest(docID(p.RunID)); doc.Status != "succeeded" {
			behind++
		}
	}
	r.count("runs_behind_at_khala_during_outage", int64(behind))
	if behind == 0 {
		r.failf("every run's terminal summary reached Khala before the outage: the drill proved nothing")
	}

	recoverAt := time.Now()
	kh.setDown(false)
	r.dur("outage", recoverAt.Sub(outageAt))
	d.progressf("%s/%s: Khala back; %d runs behind", SinkOutageReplay, kind, behind)
	runsByID := map[string]client.Run{}
	deadline = time.Now().Add(90 * time.Second)
	for {
		pending := 0
		for _, p := range plans {
			run, ok := runsByID[p.RunID]
			if !ok {
				got, err := c.GetRun(ctx, p.RunID)
				if err != nil {
					pending++
					continue
				}
				run, runsByID[p.RunID] = got, got
			}
			if doc, ok := kh.latest(docID(p.RunID)); !ok || doc.Seq != run.LatestSeq || doc.Status != run.Status {
				pending++
			}
		}
		if pending == 0 {
			r.dur("recovery_to_khala_converged", time.Since(recoverAt))
			break
		}
		if time.Now().After(deadline) {
			r.failf("%d runs still behind at Khala %s after it came back", pending, time.Since(recoverAt).Round(time.Second))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	requireAlive(r, node)
	checks := checkAll(ctx, r, c, plans)
	d.recoveryFigures(r, checks, killAt, "", "kill", budgetTTLJanitor, d.recoveryBudget())
	kh.mu.Lock()
	r.count("khala_upserts_rejected_during_outage", int64(kh.rejected))
	r.count("khala_bad_auth", int64(kh.badAuth))
	regressions, repeats, upserts := 0, 0, 0
	for _, docs := range kh.accepted {
		for i := range docs {
			upserts++
			if i == 0 {
				continue
			}
			switch {
			case docs[i].Seq < docs[i-1].Seq:
				regressions++
			case docs[i].Seq == docs[i-1].Seq && docs[i].Hash == docs[i-1].Hash:
				repeats++
			}
		}
	}
	kh.mu.Unlock()
	r.count("khala_upserts_accepted", int64(upserts))
	r.count("khala_document_regressions", int64(regressions))
	r.count("khala_idempotent_repeats", int64(repeats))
	if regressions > 0 {
		r.failf("%d upserts moved a document backwards at Khala", regressions)
	}
	if kh.badAuth > 0 {
		r.failf("%d upserts reached Khala without the admin key", kh.badAuth)
	}
	for _, p := range plans {
		var cv checkpointView
		if _, err := c.Do(ctx, http.MethodGet, "/internal/v1/projectors/checkpoints/"+url.PathEscape(p.RunID), nil, &cv); err != nil {
			r.failf("%s: checkpoint: %v", p.RunID, err)
			continue
		}
		doc, _ := kh.latest(docID(p.RunID))
		switch {
		case cv.Checkpoint == nil:
			r.failf("%s: no checkpoint after recovery", p.RunID)
		case cv.Checkpoint.LastSeq != cv.RuntimeLatestSeq || cv.LagEvents != 0:
			r.failf("%s: checkpoint at %d, run at %d (lag %d)", p.RunID, cv.Checkpoint.LastSeq, cv.RuntimeLatestSeq, cv.LagEvents)
		case cv.Checkpoint.LastSeq != doc.Seq || cv.Checkpoint.SummaryHash != doc.Hash:
			r.failf("%s: local checkpoint (seq %d, %s) differs from what Khala acknowledged (seq %d, %s)", p.RunID, cv.Checkpoint.LastSeq, cv.Checkpoint.SummaryHash, doc.Seq, doc.Hash)
		}
	}
	if expo, err := scrape(ctx, node.Addr); err == nil {
		if up, _ := metricSum(expo, telemetry.KhalaSinkUp); up != 1 {
			r.failf("%s is %v after recovery, want 1", telemetry.KhalaSinkUp, up)
		}
	}
	res := r.done()
	passed = res.Passed
	return res
}
