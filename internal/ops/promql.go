package ops

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// selector renders metric{k="v",...}; matchers are written pre-formatted
// (`status_class="5xx"`) so regex and negative matchers read naturally.
func selector(metric string, matchers ...string) string {
	if len(matchers) == 0 {
		return metric
	}
	return metric + "{" + strings.Join(matchers, ",") + "}"
}

func eq(label, value string) string  { return fmt.Sprintf("%s=%q", label, value) }
func neq(label, value string) string { return fmt.Sprintf("%s!=%q", label, value) }
func match(label string, values ...string) string {
	return fmt.Sprintf("%s=~%q", label, strings.Join(values, "|"))
}

func rangeOf(sel string, window time.Duration) string {
	return sel + "[" + promDuration(window) + "]"
}

func sumRate(sel string, window time.Duration, by ...string) string {
	return aggregate("sum", by, "rate("+rangeOf(sel, window)+")")
}

func aggregate(op string, by []string, inner string) string {
	if len(by) == 0 {
		return op + "(" + inner + ")"
	}
	return op + " by (" + strings.Join(by, ", ") + ") (" + inner + ")"
}

// ratio divides by the denominator only where it is positive: on zero traffic
// the result is empty, so the alert cannot fire, and low traffic is not
// diluted the way clamp_min(den, 1) dilutes it.
func ratio(num, den string) string {
	return num + " / (" + den + " > 0)"
}

// p95 is a per-request quantile from classic histogram buckets, aggregated
// over every series so that replicas and label values pool their requests.
func p95(histogram string, window time.Duration) string {
	return "histogram_quantile(0.95, " + aggregate("sum", []string{"le"}, "rate("+rangeOf(histogram+"_bucket", window)+")") + ")"
}

// countIncrease counts the increments of a counter within the window, per
// series. increase() alone never sees the first increment of a series that is
// born inside the window (it is created at 1, so there is no earlier sample to
// subtract from): the first replay failure after a start would never alert.
// Series that did not exist one window ago are therefore counted by their
// value; older series by their increase.
func countIncrease(sel string, window time.Duration) string {
	w := promDuration(window)
	return "(increase(" + sel + "[" + w + "]) and " + sel + " offset " + w + ") or (" + sel + " unless " + sel + " offset " + w + ")"
}

// promDuration renders a duration the way Prometheus writes it ("10m", "15s").
func promDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	default:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	}
}

// sortedKeys returns a map's keys in order, for deterministic output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
