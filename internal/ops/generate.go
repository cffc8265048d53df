package ops

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Paths of the generated files, relative to the repository root.
const (
	PrometheusRulePath = "deploy/monitoring/prometheus/runtime-alert-rules.yaml"
	RuleFilePath       = "deploy/monitoring/prometheus/runtime-alert-rules.rules.yml"
	DashboardPath      = "deploy/monitoring/grafana/runtime-ops-dashboard.json"
	// PromtoolTestDir holds the promtool unit tests of RuleFilePath. They are
	// generated from AlertCases so their annotations follow the rules, but
	// their inputs and expected values are written by hand there.
	PromtoolTestDir = "deploy/monitoring/prometheus/tests"
)

// GeneratedFiles renders every generated file, keyed by its path relative to
// the repository root (slash-separated).
func GeneratedFiles() (map[string][]byte, error) {
	rules, err := RuleFile(Options{})
	if err != nil {
		return nil, err
	}
	crd, err := PrometheusRuleFile(Options{})
	if err != nil {
		return nil, err
	}
	dash, err := DashboardJSON()
	if err != nil {
		return nil, err
	}
	tests, err := PromtoolTests()
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		PromtoolTestPath:   tests,
		RuleFilePath:       rules,
		PrometheusRulePath: crd,
		DashboardPath:      dash,
	}, nil
}

// Generate writes every generated file under dir (the repository root).
func Generate(dir string) error {
	files, err := GeneratedFiles()
	if err != nil {
		return err
	}
	for _, rel := range sortedKeys(files) {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("create directory for %s: %w", rel, err)
		}
		if err := os.WriteFile(path, files[rel], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", rel, err)
		}
	}
	return nil
}

// Check compares the files under dir with what Generate would write and
// returns the relative paths that are missing or differ (empty when all are
// up to date).
func Check(dir string) ([]string, error) {
	files, err := GeneratedFiles()
	if err != nil {
		return nil, err
	}
	var drifted []string
	for _, rel := range sortedKeys(files) {
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
		if errors.Is(err, fs.ErrNotExist) {
			drifted = append(drifted, rel)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", rel, err)
		}
		if !bytes.Equal(got, files[rel]) {
			drifted = append(drifted, rel)
		}
	}
	return drifted, nil
}
