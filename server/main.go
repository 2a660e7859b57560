// Command server runs Parley. Without configuration it serves GraphQL on
// :8080 over an embedded SQLite file in ./data; see the README for the
// environment variables.
//
//	go run ./server                 start the server
//	go run ./server -demo           start with demo data and printed logins
//	go run ./server create-admin -email a@example.com -name "Ada"
//	                                create an administrator (password from
//	                                PARLEY_ADMIN_PASSWORD or standard input)
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/parleydesk/parley/server/app"
	"github.com/parleydesk/parley/server/gcfloor"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "parley:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg, err := app.LoadConfig(os.Getenv)
	if err != nil {
		return err
	}
	if len(args) > 0 && args[0] == "create-admin" {
		return createAdmin(cfg, args[1:])
	}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	demo := fs.Bool("demo", cfg.Demo, "seed demo data and print logins; enables the playground")
	addr := fs.String("addr", cfg.Addr, "listen address (PARLEY_ADDR)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Addr = *addr
	if *demo {
		cfg.Demo, cfg.Introspection = true, true
	}
	log := cfg.Logger()
	if t := gcFloor(cfg, os.LookupEnv); t != nil {
		defer t.Stop()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	if len(a.DemoCredentials) > 0 {
		fmt.Println("Demo mode. Log in with one of these (passwords change at every start):")
		for _, c := range a.DemoCredentials {
			fmt.Printf("  %-10s %-22s %s\n", c.Role, c.Email, c.Password)
		}
		fmt.Printf("Playground: http://localhost%s/playground\n", portOf(cfg.Addr))
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	return a.Run(ctx, ln)
}

// gcFloor starts the garbage collector's heap floor
// (PARLEY_GC_HEAP_FLOOR_BYTES), unless it is 0 or the operator set GOGC,
// which is then theirs to keep.
func gcFloor(cfg app.Config, lookupEnv func(string) (string, bool)) *gcfloor.Tuner {
	if _, set := lookupEnv("GOGC"); set || cfg.GCHeapFloor <= 0 {
		return nil
	}
	return gcfloor.Start(uint64(cfg.GCHeapFloor))
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i:]
	}
	return addr
}

func createAdmin(cfg app.Config, args []string) error {
	fs := flag.NewFlagSet("create-admin", flag.ContinueOnError)
	email := fs.String("email", cfg.AdminEmail, "the administrator's email")
	name := fs.String("name", cfg.AdminName, "the administrator's name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *email == "" {
		return errors.New("create-admin: -email is required")
	}
	password := cfg.AdminPassword
	if password == "" {
		fmt.Fprint(os.Stderr, "Password (8 to 72 characters): ")
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return errors.New("create-admin: no password on standard input")
		}
		password = strings.TrimRight(line, "\r\n")
	}
	cfg.AdminEmail, cfg.AdminName, cfg.AdminPassword, cfg.Demo = "", "", "", false
	ctx := context.Background()
	a, err := app.New(ctx, cfg, cfg.Logger())
	if err != nil {
		return err
	}
	defer a.Close()
	created, err := a.Desk.EnsureAdmin(ctx, *email, *name, password)
	if err != nil {
		return fmt.Errorf("create-admin: %w", err)
	}
	if !created {
		return fmt.Errorf("create-admin: an operator with email %s exists", *email)
	}
	fmt.Println("administrator created:", *email)
	return nil
}
