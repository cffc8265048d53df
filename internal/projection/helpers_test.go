package projection

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// testStore is a driver with both contracts plus raw SQL for corrupting it
// on purpose.
type testStore interface {
	store.Store
	store.ProjectionStore
	store.WorkerStore
	store.WorkerProjectionStore
}

type driver struct {
	name string
	open func(t *testing.T) (testStore, func(t *testing.T, query string))
}

// drivers returns SQLite always and PostgreSQL when OA_TEST_DATABASE_URL is set.
func drivers(t *testing.T) []driver {
	ds := []driver{{name: "sqlite", open: openSQLite}}
	if u := os.Getenv("OA_TEST_DATABASE_URL"); u != "" {
		ds = append(ds, driver{name: "postgres", open: func(t *testing.T) (testStore, func(*testing.T, string)) { return openPostgres(t, u) }})
	} else if os.Getenv("CI") != "" {
		t.Fatal("OA_TEST_DATABASE_URL is unset but CI is set: projection tests must run on PostgreSQL too")
	} else {
		t.Log("SKIPPING the PostgreSQL half of the projection tests: set OA_TEST_DATABASE_URL=postgres://... to run it")
	}
	return ds
}

func forEachDriver(t *testing.T, fn func(t *testing.T, st testStore, exec func(*testing.T, string))) {
	for _, d := range drivers(t) {
		t.Run(d.name, func(t *testing.T) {
			st, exec := d.open(t)
			fn(t, st, exec)
		})
	}
}

func openSQLite(t *testing.T) (testStore, func(*testing.T, string)) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runtime.db")
	s, err := sqlite.Open(context.Background(), path, sqlite.WithMigrate(), sqlite.WithSynchronous("NORMAL"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close(); _ = s.Close() })
	return s, func(t *testing.T, q string) {
		t.Helper()
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("exec %q: %v", q, err)
		}
	}
}

func openPostgres(t *testing.T, dbURL string) (testStore, func(*testing.T, string)) {
	t.Helper()
	ctx := context.Background()
	schema := fmt.Sprintf("oaproj_%d_%06x", time.Now().UnixNano()%1e9, rand.N(1<<24))
	s, err := postgres.Open(ctx, dbURL, postgres.WithSchema(schema), postgres.WithMigrate())
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		conn, err := pgx.Connect(ctx, strings.Split(dbURL, "?schema=")[0])
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return s, func(t *testing.T, q string) {
		t.Helper()
		if _, err := s.Pool().Exec(ctx, q); err != nil {
			t.Fatalf("exec %q: %v", q, err)
		}
	}
}

func newMetrics(t *testing.T) (*telemetry.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test", Revision: "test", SchemaVersion: "10"}), reg
}

// metricValue sums the samples of name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !labelsMatch(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// histogramSum returns the sum of observations of a histogram.
func histogramSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, _ := reg.Gather()
	var sum float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}

func mkRun(t *testing.T, st testStore, runID string, events ...string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := st.CreateRun(ctx, store.CreateRunInput{RunID: runID, ThreadID: "thread-" + runID, OwnerSub: "user:42"}); err != nil {
		t.Fatalf("create run %s: %v", runID, err)
	}
	for _, et := range events {
		appendEv(t, st, runID, et)
	}
}

func appendEv(t *testing.T, st testStore, runID, eventType string) store.Event {
	t.Helper()
	payload := json.RawMessage(`{"text":"x"}`)
	if eventType == "run.finished" {
		payload = json.RawMessage(`{"status":"succeeded","reason_class":"completed","reason":"answered"}`)
	}
	ev, _, err := st.AppendEvent(context.Background(), store.AppendInput{RunID: runID, EventType: eventType, Payload: payload})
	if err != nil {
		t.Fatalf("append %s to %s: %v", eventType, runID, err)
	}
	return ev
}

func checkpoint(t *testing.T, st testStore, runID string) (store.Checkpoint, bool) {
	t.Helper()
	cp, err := st.GetCheckpoint(context.Background(), store.ProjectionRun, runID)
	if err != nil {
		return store.Checkpoint{}, false
	}
	return cp, true
}

func driftRows(t *testing.T, st testStore, reason string) []store.DriftIncident {
	t.Helper()
	ds, err := st.ListDrift(context.Background(), store.DriftQuery{ReasonClass: reason, Limit: 1000})
	if err != nil {
		t.Fatalf("list drift: %v", err)
	}
	return ds
}

// eventually polls cond for up to 20 s (a bound against hangs, not a timing
// assertion).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
