// Package files keeps the files Parley stores for itself (inbound media,
// contact photos, operators' uploads) because provider URLs expire. Store is
// the interface; Dir is the default, a local directory.
package files

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Store keeps files under opaque keys.
type Store interface {
	// Put stores r under a new key and returns the key and the size. At most
	// max bytes are accepted (ErrTooLarge beyond).
	Put(ctx context.Context, prefix string, r io.Reader, max int64) (key string, size int64, err error)
	// Open returns the file of a key (ErrNotFound when there is none).
	Open(ctx context.Context, key string) (io.ReadCloser, error)
}

// ErrNotFound is returned for an unknown key.
var ErrNotFound = errors.New("file not found")

// ErrTooLarge is returned when a file exceeds the size allowed.
var ErrTooLarge = errors.New("file too large")

// Dir stores files in a local directory.
type Dir struct{ root string }

// NewDir returns a store rooted at dir, created if missing.
func NewDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("file storage %s: %w", dir, err)
	}
	return &Dir{root: dir}, nil
}

// Put writes to a temporary file and renames it into place, so a reader
// never sees a partial file.
func (d *Dir) Put(ctx context.Context, prefix string, r io.Reader, max int64) (string, int64, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	key := sanitize(prefix) + "/" + hex.EncodeToString(b)
	path := filepath.Join(d.root, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return "", 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".part-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(r, max+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	if n > max {
		return "", 0, ErrTooLarge
	}
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", 0, err
	}
	return key, n, nil
}

// Open opens the file of a key.
func (d *Dir) Open(_ context.Context, key string) (io.ReadCloser, error) {
	if key == "" || strings.Contains(key, "..") || strings.HasPrefix(key, "/") {
		return nil, ErrNotFound
	}
	f, err := os.Open(filepath.Join(d.root, filepath.FromSlash(key)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	return f, err
}

func sanitize(prefix string) string {
	var b strings.Builder
	for _, r := range prefix {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "files"
	}
	return b.String()
}
