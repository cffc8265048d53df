package drills

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Store kinds.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// Drill names (results.jsonl "name").
const (
	ExecutorRestartRecovery = "executor_restart_recovery"
	StreamReconnectResume   = "stream_reconnect_resume"
	ReplicaFailover         = "replica_failover"
	DatabaseRestart         = "database_restart"
	SyncReconnectReplay     = "sync_reconnect_replay"
	SyncTokenExpiryGuard    = "sync_token_expiry_guard"
	SinkOutageReplay        = "sink_outage_replay"
)

// Config of a drill run.
type Config struct {
	Bin      string // the oaruntime binary to run as `serve`
	Revision string // its source revision, for the summary
	OutDir   string // artifacts: results.jsonl, summary.json, SUMMARY.md, logs/
	Short    bool   // CI load: fewer runs and clients
	CI       bool   // PostgreSQL drills must run: a missing prerequisite fails

	PGURL  string // OA_TEST_DATABASE_URL; empty skips the PostgreSQL drills (fails under CI)
	PGBin  string // OA_TEST_PG_BIN, for database_restart
	PGData string // OA_TEST_PG_DATA, for database_restart
	// PGStopMode forces pg_ctl's stop mode (immediate or fast); empty
	// chooses from the server's synchronous_commit (see stopMode).
	PGStopMode string

	// Lease and janitor settings given to every node; the recovery
	// figures are reported against LeaseTTL + JanitorInterval.
	LeaseTTL, LeaseRenew, JanitorInterval time.Duration

	Only   []string // drill names to run; empty = all
	Stores []string // sqlite, postgres; empty = both

	Progress io.Writer // one line per step; nil = silent
}

// Driver runs drills and writes their artifacts.
type Driver struct {
	cfg    Config
	secret string
	logDir string
	// The sync token keyring every node gets, so that the drills can sign
	// tokens of their own (already expired ones, for instance).
	syncKeyID, syncKey string
}

// New prepares the output folder.
func New(cfg Config) (*Driver, error) {
	if cfg.Bin == "" {
		return nil, fmt.Errorf("drills: no oaruntime binary given")
	}
	if _, err := os.Stat(cfg.Bin); err != nil {
		return nil, fmt.Errorf("drills: binary: %w", err)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.LeaseRenew <= 0 {
		cfg.LeaseRenew = 3 * time.Second
	}
	if cfg.JanitorInterval <= 0 {
		cfg.JanitorInterval = 2 * time.Second
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	d := &Driver{cfg: cfg, secret: "drill-" + randHex(24), logDir: filepath.Join(cfg.OutDir, "logs"), syncKeyID: "drill-k1", syncKey: randHex(32)}
	for _, dir := range []string{cfg.OutDir, d.logDir, filepath.Join(cfg.OutDir, "work")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("drills: %w", err)
		}
	}
	return d, nil
}

func (d *Driver) logPath(name string) string { return filepath.Join(d.logDir, name+".log") }

func (d *Driver) progressf(format string, a ...any) {
	fmt.Fprintf(d.cfg.Progress, "%s drills: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// budgetTTLJanitor names the recovery budget in results.
const budgetTTLJanitor = "lease_ttl_plus_janitor_interval"

// recoveryBudget is the design target for a run whose executor died: it
// resumes within lease TTL + janitor interval.
func (d *Driver) recoveryBudget() time.Duration { return d.cfg.LeaseTTL + d.cfg.JanitorInterval }

// database prepares a fresh database for one drill and returns the node
// settings that point at it and a cleanup to call with the drill's outcome.
func (d *Driver) database(ctx context.Context, kind, drill string) (map[string]string, func(passed bool), error) {
	dataDir := filepath.Join(d.cfg.OutDir, "work", drill+"-"+kind)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, nil, err
	}
	s := map[string]string{"OA_RUNTIME_DATA_DIR": dataDir}
	if kind == SQLite {
		s["OA_RUNTIME_DATABASE_URL"] = "sqlite:" + filepath.Join(dataDir, "runtime.db")
		return s, func(bool) {}, nil
	}
	schema := "drill_" + drill + "_" + randHex(3)
	u, err := withSchema(d.cfg.PGURL, schema)
	if err != nil {
		return nil, nil, err
	}
	s["OA_RUNTIME_DATABASE_URL"] = u
	return s, func(passed bool) {
		if !passed {
			d.progressf("%s/%s failed: keeping schema %s for inspection", drill, kind, schema)
			return
		}
		if err := dropSchema(context.WithoutCancel(ctx), d.cfg.PGURL, schema); err != nil {
			d.progressf("cleanup: %v", err)
		}
	}, nil
}

type drillFunc func(ctx context.Context, kind string) Result

type drillDef struct {
	name   string
	stores []string
	fn     drillFunc
	// needsPGCtl: the drill restarts PostgreSQL itself.
	needsPGCtl bool
}

func (d *Driver) drills() []drillDef {
	return []drillDef{
		{name: ExecutorRestartRecovery, stores: []string{SQLite, Postgres}, fn: d.executorRestartRecovery},
		{name: StreamReconnectResume, stores: []string{SQLite, Postgres}, fn: d.streamReconnectResume},
		{name: ReplicaFailover, stores: []string{Postgres}, fn: d.replicaFailover},
		{name: DatabaseRestart, stores: []string{Postgres}, fn: d.databaseRestart, needsPGCtl: true},
		{name: SinkOutageReplay, stores: []string{SQLite, Postgres}, fn: d.sinkOutageReplay},
		{name: SyncReconnectReplay, stores: []string{SQLite, Postgres}, fn: d.syncReconnectReplay},
		{name: SyncTokenExpiryGuard, stores: []string{SQLite, Postgres}, fn: d.syncTokenExpiryGuard},
	}
}

func (d *Driver) wanted(name, store string) bool {
	if len(d.cfg.Only) > 0 && !slices.Contains(d.cfg.Only, name) {
		return false
	}
	if store != "-" && len(d.cfg.Stores) > 0 && !slices.Contains(d.cfg.Stores, store) {
		return false
	}
	return true
}

// RunAll runs every selected drill in turn, appending each result to
// results.jsonl as it finishes, then writes summary.json and SUMMARY.md. It
// returns the results; the caller exits non-zero when any failed.
func (d *Driver) RunAll(ctx context.Context) ([]Result, error) {
	started := time.Now()
	jf, err := os.Create(filepath.Join(d.cfg.OutDir, "results.jsonl"))
	if err != nil {
		return nil, fmt.Errorf("drills: %w", err)
	}
	defer jf.Close()
	var results []Result
	emit := func(r Result) error {
		results = append(results, r)
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if _, err := jf.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("write results.jsonl: %w", err)
		}
		if r.Status == StatusNotRun {
			d.progressf("%s/%s: not_run (%s)", r.Name, r.Store, r.NotRunReason)
		} else {
			d.progressf("%s/%s: %s in %s %s", r.Name, r.Store, r.Status, time.Duration(r.DurationMS)*time.Millisecond, joinOr(limitList(r.Failures, 3), ""))
		}
		return nil
	}
	for _, def := range d.drills() {
		for _, kind := range def.stores {
			if !d.wanted(def.name, kind) {
				continue
			}
			if ctx.Err() != nil {
				return results, ctx.Err()
			}
			var r Result
			switch {
			case kind == Postgres && d.cfg.PGURL == "":
				r = notRun(def.name, kind, "OA_TEST_DATABASE_URL is not set (PostgreSQL drills need a server)", d.cfg.CI)
			case def.needsPGCtl && (d.cfg.PGBin == "" || d.cfg.PGData == ""):
				r = notRun(def.name, kind, "OA_TEST_PG_BIN and OA_TEST_PG_DATA are not set (the drill restarts the PostgreSQL server with pg_ctl)", d.cfg.CI)
			default:
				d.progressf("%s/%s: start", def.name, kind)
				r = def.fn(ctx, kind)
			}
			if err := emit(r); err != nil {
				return results, err
			}
		}
	}
	return results, d.writeSummary(started, results)
}

// singleNode prepares the drill's database and starts one node on it with
// extra settings: the prologue every single-node drill shares. finish stops
// the node and releases the database (kept for inspection when the drill
// failed); on ok=false the failure is already recorded in r.
func (d *Driver) singleNode(ctx context.Context, r *rec, drill, kind string, timeout time.Duration, extra map[string]string) (context.Context, *Node, func(passed bool), bool) {
	settings, cleanup, err := d.database(ctx, kind, drill)
	if err != nil {
		r.failf("database: %v", err)
		return ctx, nil, nil, false
	}
	for k, v := range extra {
		settings[k] = v
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	node, err := d.newNode(drill+"-"+kind, settings)
	if err != nil {
		cancel()
		cleanup(false)
		r.failf("%v", err)
		return ctx, nil, nil, false
	}
	finish := func(passed bool) {
		node.Stop()
		cancel()
		cleanup(passed)
	}
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-1"); err != nil {
		finish(false)
		r.failf("first start: %v", err)
		return ctx, nil, nil, false
	}
	return ctx, node, finish, true
}
