package main

import (
	"testing"
	"time"
)

func TestPollDelay(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 5 * time.Millisecond},
		{1, 10 * time.Millisecond},
		{3, 40 * time.Millisecond},
		{4, 80 * time.Millisecond},
		{5, 100 * time.Millisecond},
		{1000, 100 * time.Millisecond},
	} {
		if got := pollDelay(tc.n); got != tc.want {
			t.Errorf("pollDelay(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}
