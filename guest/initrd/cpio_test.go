package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestArchiveUnpacks checks the archive with the standard cpio tool when the
// machine has it.
func TestArchiveUnpacks(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed; the VM tests boot this archive anyway")
	}
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho hi\n"), 0o755)
	out := filepath.Join(dir, "initrd.img")
	if err := build(out, agent, "/bin/sh", ""); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-t", "-v", "-F", out)
	listing, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, listing)
	}
	for _, want := range []string{"init", "dev/console", "proc"} {
		if !strings.Contains(string(listing), want) {
			t.Errorf("archive lacks %s:\n%s", want, listing)
		}
	}
	if !strings.Contains(string(listing), "crw-------") {
		t.Errorf("dev/console is not a char device:\n%s", listing)
	}
	x := exec.Command(cpio, "-i", "--to-stdout", "-F", out, "init")
	got, err := x.Output()
	if err != nil || string(got) != "#!/bin/sh\necho hi\n" {
		t.Errorf("init content = %q, %v", got, err)
	}
}
