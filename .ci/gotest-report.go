//go:build ignore

// gotest-report reads `go test -json` on standard input and prints what a
// plain `go test` run would print (package lines, and the whole output of
// every failing test), plus the reason of every skipped test. It writes a
// per-package summary to the file named by -summary, for .ci/run's closing
// report, and exits 1 if any test or package failed or never finished.
//
// It is a file of its own, outside every package (.ci/ is skipped by ./...),
// so that CI needs nothing but the Go toolchain:
//
//	go build -o /tmp/gotest-report .ci/gotest-report.go
//	go test -json ./... | /tmp/gotest-report -summary /tmp/summary.txt
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string // build-output and build-fail events
	FailedBuild string
}

type line struct {
	test, text string
}

type pkgResult struct {
	action                  string // pass, fail, skip; empty while running
	elapsed                 float64
	passed, failed, skipped int
	failedBuild             bool
}

// root is a running top-level test: its output and that of its subtests,
// in order, so that a failure prints as one block.
type root struct {
	lines  []line
	passed map[string]bool // subtests that passed or were skipped
}

type report struct {
	out   io.Writer
	pkgs  map[string]*pkgResult
	roots map[string]*root
	order []string // keys of roots in start order (for unfinished tests)
}

func rootOf(test string) string {
	if i := strings.IndexByte(test, '/'); i >= 0 {
		return test[:i]
	}
	return test
}

func (r *report) pkg(name string) *pkgResult {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgResult{}
		r.pkgs[name] = p
	}
	return p
}

func (r *report) handle(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.out, e.Output)
		return
	case "build-fail":
		if e.ImportPath != "" {
			r.pkg(strings.Fields(e.ImportPath)[0]).failedBuild = true
		}
		return
	}
	if e.Package == "" {
		if e.Output != "" {
			fmt.Fprint(r.out, e.Output)
		}
		return
	}
	p := r.pkg(e.Package)
	if e.Test == "" {
		switch e.Action {
		case "output":
			// "? pkg [no test files]" lines are counted in the summary instead.
			if e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "=== ") && !strings.HasPrefix(e.Output, "?   \t") {
				fmt.Fprint(r.out, e.Output)
			}
		case "pass", "fail", "skip":
			p.action, p.elapsed = e.Action, e.Elapsed
			if e.FailedBuild != "" {
				p.failedBuild = true
			}
			r.flushUnfinished(e.Package)
		}
		return
	}
	key := e.Package + "\x00" + rootOf(e.Test)
	rt := r.roots[key]
	if rt == nil {
		// Only a "run" starts a test; anything else of a test that ended
		// (or never started) is kept in a throwaway root.
		rt = &root{passed: map[string]bool{}}
		if e.Action == "run" && e.Test == rootOf(e.Test) {
			r.roots[key] = rt
			r.order = append(r.order, key)
		}
	}
	switch e.Action {
	case "output":
		rt.lines = append(rt.lines, line{e.Test, e.Output})
	case "pass":
		p.passed++
		rt.passed[e.Test] = true
	case "skip":
		p.skipped++
		rt.passed[e.Test] = true
		for _, l := range rt.lines {
			if l.test == e.Test && !strings.HasPrefix(l.text, "=== ") {
				fmt.Fprint(r.out, l.text)
			}
		}
	case "fail":
		p.failed++
		if e.Test == rootOf(e.Test) {
			rt.print(r.out)
		}
	}
	if (e.Action == "pass" || e.Action == "skip" || e.Action == "fail") && e.Test == rootOf(e.Test) {
		delete(r.roots, key)
	}
}

// print writes what a plain go test run shows of a failed test: the output
// of the test and of its subtests that did not pass, without the "=== RUN"
// lines of -v.
func (rt *root) print(w io.Writer) {
	for _, l := range rt.lines {
		if !rt.passed[l.test] && !strings.HasPrefix(l.text, "=== ") {
			fmt.Fprint(w, l.text)
		}
	}
}

// flushUnfinished prints the output of the tests of pkg (of every package
// when pkg is empty) that never ended, because the test binary crashed or
// was killed, and counts them as failed.
func (r *report) flushUnfinished(pkg string) {
	for _, key := range r.order {
		rt, running := r.roots[key]
		p, test, _ := strings.Cut(key, "\x00")
		if !running || (pkg != "" && p != pkg) {
			continue
		}
		r.pkg(p).failed++
		fmt.Fprintf(r.out, "--- UNFINISHED: %s %s (the test never ended; its output follows)\n", p, test)
		rt.print(r.out)
		delete(r.roots, key)
	}
}

// finish flushes what is left and returns whether everything passed.
func (r *report) finish() bool {
	r.flushUnfinished("")
	ok := true
	for _, p := range r.pkgs {
		if (p.action != "pass" && p.action != "skip") || p.failed > 0 || p.failedBuild {
			ok = false
		}
	}
	return ok
}

func (r *report) writeSummary(w io.Writer) {
	names := make([]string, 0, len(r.pkgs))
	for n := range r.pkgs {
		names = append(names, n)
	}
	sort.Strings(names)
	var passed, failed, skipped, noTests int
	for _, n := range names {
		p := r.pkgs[n]
		passed, failed, skipped = passed+p.passed, failed+p.failed, skipped+p.skipped
		status := "ok"
		switch {
		case p.failedBuild:
			status = "FAIL"
		case p.action == "skip" && p.passed+p.failed+p.skipped == 0:
			noTests++
			continue
		case p.action == "":
			status = "FAIL" // never finished
		case p.action == "fail" || p.failed > 0:
			status = "FAIL"
		}
		detail := fmt.Sprintf("%.2fs  %d passed, %d failed, %d skipped", p.elapsed, p.passed, p.failed, p.skipped)
		switch {
		case p.failedBuild:
			detail = "[build failed]"
		case p.action == "":
			detail = "[no result: the test binary crashed or was killed]"
		}
		fmt.Fprintf(w, "%-4s  %-55s %s\n", status, n, detail)
	}
	if noTests > 0 {
		fmt.Fprintf(w, "      (%d packages without test files)\n", noTests)
	}
	fmt.Fprintf(w, "#counts %d %d %d\n", passed, failed, skipped)
}

func main() {
	summary := flag.String("summary", "", "file to write the per-package summary to")
	flag.Parse()
	r := &report{out: os.Stdout, pkgs: map[string]*pkgResult{}, roots: map[string]*root{}}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not JSON: something go test printed itself (e.g. a vet or
			// setup error). Pass it through.
			fmt.Fprintln(r.out, sc.Text())
			continue
		}
		r.handle(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "gotest-report: reading input:", err)
		os.Exit(2)
	}
	ok := r.finish()
	if *summary != "" {
		f, err := os.Create(*summary)
		if err != nil {
			fmt.Fprintln(os.Stderr, "gotest-report:", err)
			os.Exit(2)
		}
		r.writeSummary(f)
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "gotest-report:", err)
			os.Exit(2)
		}
	}
	if !ok {
		os.Exit(1)
	}
}
