// Command bench measures Parley against the limits of the machine it runs
// on. It builds and starts a real server process, drives it over HTTP and
// websockets exactly as providers (signed Telegram and WhatsApp webhooks) and
// operators (GraphQL, panel subscriptions) do, and prints each figure beside
// the bare limit of the same machine measured in the same run: the insert
// rate of the database itself, a bare websocket server's memory and push
// latency, the empty database. See bench/README.md.
//
//	go run ./bench                          every scenario, PostgreSQL and SQLite
//	go run ./bench -db postgres -scenario ingest
//	go run ./bench -quick -db sqlite        the CI smoke run (no targets enforced)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var stderr io.Writer = os.Stderr

func main() {
	if os.Getenv(bareEnv) == "1" {
		runBareServer()
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Scenarios, in the order they run.
var allScenarios = []string{"baseline", "ingest", "panel", "offer", "subscribers", "growth"}

type options struct {
	dbs           []string
	scenarios     []string
	quick         bool
	duration      time.Duration
	pgURL         string
	subscribers   []int
	seedMessages  int
	seedOpenChats int
	operators     int
	keep          bool
	seedOnly      bool
	serverBin     string
	profileDir    string
	panelRate     float64
	cpuProfile    string
}

func (o options) has(s string) bool { return slices.Contains(o.scenarios, s) }

func parseOptions(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", "both", "postgres, sqlite or both")
	scenario := fs.String("scenario", "all", "all, or a comma-separated list of "+strings.Join(allScenarios, ", "))
	quick := fs.Bool("quick", false, "a short run that keeps the harness working (CI): small sizes, no targets enforced")
	duration := fs.Duration("duration", 0, "length of each measured phase (default 5s, 1s with -quick)")
	pgURL := fs.String("pg-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL on loopback: a fresh database (or schema) is created in it and dropped")
	subs := fs.String("subscribers", "", "subscription counts to hold (default 2000,10000; 100,300 with -quick)")
	seedMessages := fs.Int("seed-messages", 0, "messages the growth scenario's seed step writes (default 1000000; 20000 with -quick)")
	seedOpen := fs.Int("seed-open-chats", 0, "open chats the growth scenario's seed step writes (default 50000; 1000 with -quick)")
	operators := fs.Int("operators", 4, "operators per queue, each with a panel subscription in the latency scenarios")
	keep := fs.Bool("keep", false, "keep the temporary directory (server logs) and the databases")
	seedOnly := fs.Bool("seed", false, "only the growth scenario's seed step: write the data set into a fresh database and keep it")
	serverBin := fs.String("server-bin", "", "a prebuilt server binary (default: go build ./server)")
	profileDir := fs.String("profile-dir", "", "sample PostgreSQL waits and record `perf` of the server during ingest at c=8 into this directory")
	panelRate := fs.Float64("panel-rate", 0, "messages/s of the webhook → panel scenario's c=8 phase (default: half the measured ingest capacity)")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile to this file (go tool pprof)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	o := options{quick: *quick, duration: *duration, pgURL: *pgURL, seedMessages: *seedMessages, seedOpenChats: *seedOpen,
		operators: *operators, keep: *keep, serverBin: *serverBin, profileDir: *profileDir, seedOnly: *seedOnly,
		panelRate: *panelRate, cpuProfile: *cpuProfile}
	switch *db {
	case "both":
		o.dbs = []string{dbPostgres, dbSQLite}
	case "postgres", "pg", "postgresql":
		o.dbs = []string{dbPostgres}
	case "sqlite":
		o.dbs = []string{dbSQLite}
	default:
		return o, fmt.Errorf("-db: %q is not postgres, sqlite or both", *db)
	}
	for _, s := range strings.Split(*scenario, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "all":
			o.scenarios = allScenarios
		case slices.Contains(allScenarios, s):
			if !slices.Contains(o.scenarios, s) {
				o.scenarios = append(o.scenarios, s)
			}
		default:
			return o, fmt.Errorf("-scenario: unknown %q (want all or %s)", s, strings.Join(allScenarios, ", "))
		}
	}
	if o.seedOnly {
		o.scenarios = []string{"seed"}
		o.keep = true
	}
	// Figures are reported beside the machine's bare limits: the insert
	// baseline runs whenever a scenario compares with it.
	if !o.seedOnly && !o.has("baseline") && (o.has("ingest") || o.has("panel") || o.has("offer")) {
		o.scenarios = append([]string{"baseline"}, o.scenarios...)
	}
	slices.SortStableFunc(o.scenarios, func(a, b string) int {
		return slices.Index(allScenarios, a) - slices.Index(allScenarios, b)
	})
	if o.duration <= 0 {
		o.duration = 5 * time.Second
		if o.quick {
			o.duration = time.Second
		}
	}
	if o.duration > 2*time.Minute {
		return o, errors.New("-duration: at most 2m per phase")
	}
	if *subs == "" {
		*subs = "2000,10000"
		if o.quick {
			*subs = "100,300"
		}
	}
	for _, s := range strings.Split(*subs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 50_000 {
			return o, fmt.Errorf("-subscribers: %q is not a count between 1 and 50000", s)
		}
		o.subscribers = append(o.subscribers, n)
	}
	slices.Sort(o.subscribers)
	if o.seedMessages <= 0 {
		o.seedMessages = 1_000_000
		if o.quick {
			o.seedMessages = 20_000
		}
	}
	if o.seedOpenChats <= 0 {
		o.seedOpenChats = 50_000
		if o.quick {
			o.seedOpenChats = 1_000
		}
	}
	if o.seedOpenChats < 2*openChatsPerOperator*10 {
		return o, fmt.Errorf("-seed-open-chats: at least %d", 2*openChatsPerOperator*10)
	}
	if o.operators < 1 || o.operators > 50 {
		return o, errors.New("-operators: between 1 and 50")
	}
	if slices.Contains(o.dbs, dbPostgres) {
		if err := checkLoopback(o.pgURL); err != nil {
			return o, err
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	raiseFileLimit(o.subscribers[len(o.subscribers)-1])
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	tmp, err := os.MkdirTemp("", "parley-bench-")
	if err != nil {
		return err
	}
	r := &runner{opt: o, rep: &report{quick: o.quick}, tmp: tmp, base: map[string]map[int]baseStat{},
		bare: map[string]*bareInserts{}, capacity: map[string]float64{}, pipe: map[string]pipeLimit{}}
	defer func() {
		if o.keep {
			logf("kept %s", tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()
	logf("parley bench: db %s, scenarios %s, %s phases%s; machine: %d CPUs, load %s",
		strings.Join(o.dbs, "+"), strings.Join(o.scenarios, ","), o.duration, map[bool]string{true: ", quick", false: ""}[o.quick],
		numCPU(), loadAvg())
	started := time.Now()
	r.fake = newFakeProviders()
	defer r.fake.srv.Close()
	if slices.ContainsFunc(o.scenarios, func(s string) bool { return s != "baseline" }) {
		if o.serverBin != "" {
			r.bin = o.serverBin
		} else if r.bin, err = buildServer(ctx, tmp); err != nil {
			return err
		}
	}
	var errs []error
	for _, kind := range o.dbs {
		if err := r.runDB(ctx, kind); err != nil {
			logf("%s: %v", kind, err)
			errs = append(errs, fmt.Errorf("%s: %w", kind, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	r.rep.note("Run: %s on %d CPUs, %s phases, finished in %s; load average at the end %s.",
		strings.Join(o.scenarios, ", "), numCPU(), o.duration, time.Since(started).Round(time.Second), loadAvg())
	r.rep.print(out)
	return errors.Join(errs...)
}

// runDB runs the selected scenarios on one database.
func (r *runner) runDB(ctx context.Context, kind string) error {
	o := r.opt
	// Other work on the machine depresses every figure: say how busy it was.
	c0 := readCPU()
	time.Sleep(time.Second)
	if busy := busyBetween(c0, readCPU()); busy > 0.1 {
		r.rep.note("%s: before the run the machine was %.0f%% busy with other work (load average %s): figures are lower than on a quiet machine.",
			dbLabel(kind), 100*busy, loadAvg())
	}
	if kind == dbPostgres {
		free, facts, err := pgServerFacts(ctx, o.pgURL)
		if err != nil {
			return fmt.Errorf("PostgreSQL at %s: %w", redact(o.pgURL), err)
		}
		logf("%s", facts)
		r.rep.note("The database server: %s.", facts)
		if free < 40 {
			r.rep.note("PostgreSQL had only %d free connections at the start (the server's pool takes up to 32; the c=32 baseline 32).", free)
		}
	}
	if o.seedOnly {
		e, err := r.startEnv(ctx, kind, "seed")
		if err != nil {
			return err
		}
		defer e.close()
		return r.seedOnly(ctx, e)
	}
	if o.has("baseline") {
		if err := r.baseline(ctx, kind); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		defer func() {
			if b := r.bare[kind]; b != nil {
				b.close()
				delete(r.bare, kind)
			}
		}()
	}
	main := []string{"ingest", "panel", "offer"}
	if slices.ContainsFunc(main, o.has) {
		e, err := r.startEnv(ctx, kind, "main")
		if err != nil {
			return err
		}
		err = func() error {
			defer e.close()
			defer r.noteLog(e)
			for _, s := range main {
				if !o.has(s) {
					continue
				}
				var err error
				switch s {
				case "ingest":
					err = r.ingest(ctx, e)
				case "panel":
					err = r.panelLatency(ctx, e)
				case "offer":
					err = r.offerLatency(ctx, e)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", s, err)
				}
				if err := e.died(); err != nil {
					return fmt.Errorf("%s: %w", s, err)
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	if o.has("subscribers") {
		// A server of its own, without the garbage collector's heap floor
		// (PARLEY_GC_HEAP_FLOOR_BYTES): with it, the memory before the
		// subscriptions would hold whatever garbage the floor lets
		// earlier work leave (up to 128 MB), and the difference per
		// subscription would measure that, not the subscriptions. With
		// 10,000 of them the live heap is above half the floor, where the
		// floor changes nothing.
		if err := r.inEnv(ctx, kind, "subscribers", r.subscribers, "PARLEY_GC_HEAP_FLOOR_BYTES=0"); err != nil {
			return err
		}
	}
	if o.has("growth") {
		if err := r.inEnv(ctx, kind, "growth", r.growth); err != nil {
			return err
		}
	}
	return nil
}

// inEnv runs a scenario on a server of its own (label), started with
// extraEnv.
func (r *runner) inEnv(ctx context.Context, kind, label string, scenario func(context.Context, *env) error, extraEnv ...string) error {
	e, err := r.startEnv(ctx, kind, label, extraEnv...)
	if err != nil {
		return err
	}
	defer e.close()
	defer r.noteLog(e)
	err = scenario(ctx, e)
	if died := e.died(); died != nil {
		err = died // what the scenario saw follows from it
	}
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	return nil
}

func raiseFileLimit(subs int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if need := uint64(subs + 1000); lim.Cur < need {
		logf("warning: the file-descriptor limit is %d; %d subscriptions need about %d (raise the hard limit: ulimit -Hn)", lim.Cur, subs, need)
	}
}

func numCPU() int { return runtime.NumCPU() }
