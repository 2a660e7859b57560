package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// samples is a set of latencies; percentiles sort a copy.
type samples []time.Duration

func (s samples) pct(p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	i := int(math.Ceil(p/100*float64(len(c)))) - 1
	return c[max(0, min(i, len(c)-1))]
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// p50p99 formats the median and the 99th percentile.
func p50p99(s samples) string {
	if len(s) == 0 {
		return "no samples"
	}
	return ms(s.pct(50)) + " / " + ms(s.pct(99))
}

// num formats a number with thousands separators.
func num(v float64) string {
	neg := v < 0
	if neg {
		v = -v
	}
	s := fmt.Sprintf("%.0f", v)
	if v < 100 && v != math.Trunc(v) {
		s = fmt.Sprintf("%.1f", v)
		if v < 10 {
			s = fmt.Sprintf("%.2f", v)
		}
	}
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, r := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// count formats an integer with thousands separators.
func count[T ~int | ~int64](n T) string { return num(float64(n)) }

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	r := a / b
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

func pctOf(a, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", 100*a/b)
}

// row is one line of the result table.
type row struct {
	DB, Figure, Value, Limit, Ratio, Target, Result string
}

// report collects the rows of a run.
type report struct {
	mu    sync.Mutex
	rows  []row
	notes []string
	quick bool
}

func (r *report) add(x row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range []*string{&x.Value, &x.Limit, &x.Ratio, &x.Target, &x.Result} {
		if *p == "" {
			*p = "—"
		}
	}
	r.rows = append(r.rows, x)
	logf("%-8s %-52s %-28s limit %-22s %-8s %s %s", x.DB, x.Figure, x.Value, x.Limit, x.Ratio, x.Target, x.Result)
}

func (r *report) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// verdict returns PASS or FAIL for a target line, or "—" where targets are
// not enforced (quick mode).
func (r *report) verdict(ok bool) string {
	if r.quick {
		return "(quick)"
	}
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// print writes the markdown table (and the notes) that can be pasted into
// the README.
func (r *report) print(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| db | figure | value | machine limit | ratio | target | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, x := range r.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", x.DB, x.Figure, x.Value, x.Limit, x.Ratio, x.Target, x.Result)
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
	pass, fail := 0, 0
	for _, x := range r.rows {
		switch x.Result {
		case "PASS":
			pass++
		case "FAIL":
			fail++
		}
	}
	fmt.Fprintf(w, "\nTargets: %d PASS, %d FAIL\n", pass, fail)
}

var logMu sync.Mutex
var logStart = time.Now()

// logf prints a progress line on standard error.
func logf(format string, args ...any) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(stderr, "[%6.1fs] %s\n", time.Since(logStart).Seconds(), fmt.Sprintf(format, args...))
}
