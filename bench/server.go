package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// moduleRoot finds the directory of Parley's go.mod, from the working
// directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/parleydesk/parley\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the benchmark inside the Parley module (go run ./bench)")
		}
		dir = parent
	}
}

// buildServer compiles ./server into dir and returns the binary's path.
func buildServer(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "parley")
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./server")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./server: %v\n%s", err, out)
	}
	logf("built the server in %.1fs", time.Since(start).Seconds())
	return bin, nil
}

// freeAddr returns a free loopback address.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// serverProc is a running Parley server process.
type serverProc struct {
	cmd     *exec.Cmd
	pid     int
	addr    string
	base    string
	logPath string
	done    chan struct{}
	waitErr error
}

const (
	adminEmail = "admin@bench.parley"
	benchPass  = "bench-password-1"
)

// startServer starts the binary on a free loopback port with the database
// and waits until it is ready.
func startServer(ctx context.Context, bin, databaseURL, dataDir, fakeURL string, extraEnv ...string) (*serverProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PARLEY_") || strings.HasPrefix(kv, "DATABASE_URL=") || strings.HasPrefix(kv, "GOGC=") ||
			strings.HasPrefix(kv, "GOMAXPROCS=") || strings.HasPrefix(kv, "GOMEMLIMIT=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"DATABASE_URL="+databaseURL,
		"PARLEY_ADDR="+addr,
		"PARLEY_DATA_DIR="+dataDir,
		"PARLEY_ADMIN_EMAIL="+adminEmail,
		"PARLEY_ADMIN_PASSWORD="+benchPass,
		"PARLEY_ADMIN_NAME=Bench Admin",
		"PARLEY_LOG_LEVEL=warn",
		// The outbound side is not benchmarked: provider calls (profile
		// fetches of new contacts) go to a fake on loopback.
		"PARLEY_TELEGRAM_API_URL="+fakeURL,
		"PARLEY_GRAPH_API_URL="+fakeURL,
	)
	env = append(env, extraEnv...)
	logPath := filepath.Join(dataDir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start server: %w", err)
	}
	s := &serverProc{cmd: cmd, pid: cmd.Process.Pid, addr: addr, base: "http://" + addr, logPath: logPath, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	deadline := time.Now().Add(90 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-s.done:
			return nil, fmt.Errorf("server exited at start (%v):\n%s", s.waitErr, s.logTail(30))
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		default:
		}
		resp, err := client.Get(s.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("server not ready after 90s:\n%s", s.logTail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a graceful shutdown (SIGKILL after 20s).
func (s *serverProc) stop() {
	if s == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// alive reports whether the process still runs.
func (s *serverProc) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// logTail returns the last n lines of the server's log.
func (s *serverProc) logTail(n int) string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSummary counts the server's WARN and ERROR lines by message.
func (s *serverProc) logSummary() map[string]int {
	f, err := os.Open(s.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		level := ""
		switch {
		case strings.Contains(line, "level=WARN"):
			level = "WARN"
		case strings.Contains(line, "level=ERROR"):
			level = "ERROR"
		default:
			continue
		}
		msg := line
		if i := strings.Index(line, "msg="); i >= 0 {
			msg = line[i+4:]
			if strings.HasPrefix(msg, `"`) {
				if j := strings.Index(msg[1:], `"`); j >= 0 {
					msg = msg[1 : j+1]
				}
			} else if j := strings.IndexByte(msg, ' '); j >= 0 {
				msg = msg[:j]
			}
		}
		if i := strings.Index(line, " err="); i >= 0 {
			e := line[i+5:]
			if len(e) > 100 {
				e = e[:100]
			}
			msg += ": " + e
		}
		out[level+" "+msg]++
	}
	return out
}

// logCount counts the server log lines at a level (WARN, ERROR).
func (s *serverProc) logCount(level string) int {
	f, err := os.Open(s.logPath)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "level="+level) {
			n++
		}
	}
	return n
}

// rss is the resident memory of a process in bytes (/proc/<pid>/status).
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuTime is the user+system CPU time a process used (/proc/<pid>/stat).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// commCPU is the CPU time used by every process whose command name is comm
// (postgres: the database's backends and background processes).
func commCPU(comm string) time.Duration {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		total += cpuTime(pid)
	}
	return total
}

// cpuSplit measures, over a phase, the CPU used by the server, PostgreSQL,
// this load generator and everything else on the machine.
type cpuSplit struct {
	start            time.Time
	server, pg, self time.Duration
	machine          cpuSample
	serverPID        int
}

func startCPUSplit(serverPID int) cpuSplit {
	return cpuSplit{start: time.Now(), server: cpuTime(serverPID), pg: commCPU("postgres"), self: cpuTime(os.Getpid()),
		machine: readCPU(), serverPID: serverPID}
}

// finish reports the cores each used (1.00: one CPU busy for the whole phase).
func (c cpuSplit) finish() string {
	el := time.Since(c.start).Seconds()
	server := (cpuTime(c.serverPID) - c.server).Seconds() / el
	pg := (commCPU("postgres") - c.pg).Seconds() / el
	self := (cpuTime(os.Getpid()) - c.self).Seconds() / el
	busy := busyBetween(c.machine, readCPU()) * float64(runtime.NumCPU())
	other := max(0, busy-server-pg-self)
	return fmt.Sprintf("server %.2f, PostgreSQL %.2f, load generator %.2f, other %.2f (of %d cores)", server, pg, self, other, runtime.NumCPU())
}

// perMessage is the CPU time the server, PostgreSQL (on this machine) and
// this load generator used per message of the n the phase sent, from its
// start until now: work done after a message's acknowledgement (its events'
// delivery, its jobs) counts when it is done by then. Unlike latencies, it
// hardly moves with the machine's noise. It ends with how busy the whole
// machine was meanwhile: a latency measured on a machine close to
// saturation is mostly queueing for a CPU.
func (c cpuSplit) perMessage(n int) string {
	if n == 0 {
		return "no message"
	}
	per := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", d.Seconds()*1000/float64(n)) }
	return fmt.Sprintf("server %s, PostgreSQL %s, load generator %s; the machine %.0f%% busy", per(cpuTime(c.serverPID)-c.server),
		per(commCPU("postgres")-c.pg), per(cpuTime(os.Getpid())-c.self), 100*busyBetween(c.machine, readCPU()))
}

// machineBusy samples /proc/stat: the fraction of all CPUs busy between two
// calls.
type cpuSample struct{ busy, total uint64 }

func readCPU() cpuSample {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var s cpuSample
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s
}

func busyBetween(a, b cpuSample) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
