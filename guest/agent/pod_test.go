package main

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAdoptSpare: a pod takes the spare holder only while it runs, and only
// once.
func TestAdoptSpare(t *testing.T) {
	start := func(t *testing.T) *os.Process {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process
	}
	dead := func(t *testing.T) *os.Process {
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		return cmd.Process
	}
	// Reaped as the agent's reaper does, behind os.Process's back: only
	// its pidfd knows the process is gone.
	reaped := func(t *testing.T) *os.Process {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Kill()
		var ws unix.WaitStatus
		if _, err := unix.Wait4(cmd.Process.Pid, &ws, 0, nil); err != nil {
			t.Fatal(err)
		}
		return cmd.Process
	}
	for _, tc := range []struct {
		name  string
		spare func(*testing.T) *os.Process
		want  bool
	}{
		{"none", func(*testing.T) *os.Process { return nil }, false},
		{"running", start, true},
		{"exited and waited for", dead, false},
		{"reaped by the reaper", reaped, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newContainers()
			c.spare = tc.spare(t)
			pid := 0
			if c.spare != nil {
				pid = c.spare.Pid
			}
			if got := c.adoptSpare(); got != tc.want {
				t.Fatalf("adoptSpare() = %v, want %v", got, tc.want)
			}
			if c.spare != nil {
				t.Error("spare kept after an adoption attempt")
			}
			if tc.want && (c.holderPID != pid || !c.sharePID) {
				t.Errorf("holder %d sharePID %v after adopting", c.holderPID, c.sharePID)
			}
			if !tc.want && c.holderPID != 0 {
				t.Errorf("holder %d set without a spare", c.holderPID)
			}
			if c.adoptSpare() {
				t.Error("a spare adopted twice")
			}
		})
	}
}
