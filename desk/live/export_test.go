package live

import "time"

// SetAfterFunc makes h arm its timers with f (a test's clock); call it
// before Start.
func SetAfterFunc(h *Hub, f func(time.Duration, func()) interface{ Stop() bool }) {
	h.afterFunc = func(d time.Duration, fn func()) stopper { return f(d, fn) }
}
