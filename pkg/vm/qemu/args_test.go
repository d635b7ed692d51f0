package qemu

import (
	"os"
	"strings"
	"testing"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

func TestArgs(t *testing.T) {
	base := vm.Config{ID: "p1", Dir: "/run/h/p1", ConsoleLog: "/var/log/p1.console", Kernel: "/k", Initrd: "/i",
		VCPUs: 2, MemoryMiB: 512, KernelArgs: []string{"hyperlet.v=2"}, SharedDir: "/run/h/shared/p1"}
	tests := []struct {
		accel   vm.Accel
		want    []string
		notWant []string
	}{
		{vm.AccelTCG,
			[]string{"-accel tcg,tb-size=32", "-M microvm,x-option-roms=off,rtc=off,acpi=off -accel", "-smp 2", "-m 512M", "hyperlet.v=2", "reboot=t", "-no-reboot",
				"name=io.hyperlet.agent.0", "virtio-scsi-device,id=scsi0",
				"-add-fd fd=3,set=1 -chardev file,id=con,path=/dev/fdset/1,append=on", "socket,id=qmp,fd=5,server=on", "socket,id=agent,fd=6,server=on",
				"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
				"-kernel /vm/kernel -initrd /vm/initrd",
				"local,id=shared,path=/share,security_model=mapped-xattr", "virtio-9p-device,fsdev=shared,mount_tag=hyperlet",
				"tsc=reliable", "virtio-balloon-device,free-page-reporting=on"},
			[]string{"pit=off", "-cpu host", "-incoming", "memory-backend", "exec:", "passthrough", "/run/h", "-pidfile", "page_reporting_order"}},
		{vm.AccelKVM,
			[]string{"-accel kvm", "pit=off,pic=off", "-cpu host", "tsc=reliable"},
			[]string{"tb-size"}},
	}
	clone := base
	clone.Accel = vm.AccelTCG
	clone.Memory = &vm.MemoryFile{Path: "/dev/shm/t/memory", File: os.Stdin}
	clone.Restore = "/dev/shm/t/state"
	clone.Net = &vm.NetDevice{MAC: "02:00:00:00:00:01"}
	args, files := (&Driver{}).args(clone, launch{})
	line := strings.Join(args, " ")
	// console, its reader, qmp, agent, memory (fd 7), state (fd 8)
	if len(files) != 6 || stateFD(files) != "8" {
		t.Errorf("clone inherits %d files, state on fd %s", len(files), stateFD(files))
	}
	for _, w := range []string{"memory-backend=mem", "memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/7,share=off",
		"-incoming defer", "-netdev hubport,id=net0,hubid=0", "hyperlet.page_reporting_order=11", "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"} {
		if !strings.Contains(line, w) {
			t.Errorf("clone: command line lacks %q:\n%s", w, line)
		}
	}
	d := &Driver{TCGCacheMiB: 32}
	for _, tc := range tests {
		cfg := base
		cfg.Accel = tc.accel
		args, _ := d.args(cfg, launch{})
		line := strings.Join(args, " ")
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("%s: command line lacks %q:\n%s", tc.accel, w, line)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(line, w) {
				t.Errorf("%s: command line has %q:\n%s", tc.accel, w, line)
			}
		}
	}
}
