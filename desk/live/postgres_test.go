package live

import "testing"

// TestListener_ReadsTheLogForOtherInstancesOnly: a notification of this
// instance's own commit (reported to the hub directly) or of an id the pump
// has passed wakes no read of the log; another instance's, an older
// instance's payload without a name, and an unreadable one do.
func TestListener_ReadsTheLogForOtherInstancesOnly(t *testing.T) {
	cursor := func() int { return 10 }
	for _, c := range []struct {
		extra string
		want  bool
	}{
		{"11 self", false},
		{"11 other", true},
		{"10 other", false},
		{"11", true},
		{"9", false},
		{"garbage", true},
		{"", true},
		{"x self", false},
	} {
		if got := needsRead(c.extra, "self", cursor); got != c.want {
			t.Errorf("needsRead(%q) = %v, want %v", c.extra, got, c.want)
		}
	}
}
