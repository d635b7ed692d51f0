package qemu

import (
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
				"name=io.hyperlet.agent.0", "virtio-scsi-device,id=scsi0", "path=/var/log/p1.console", "/run/h/p1/qmp.sock",
				"local,id=shared,path=/run/h/shared/p1,security_model=passthrough", "virtio-9p-device,fsdev=shared,mount_tag=hyperlet",
				"tsc=reliable", "virtio-balloon-device,free-page-reporting=on"},
			[]string{"pit=off", "-cpu host", "-incoming", "memory-backend"}},
		{vm.AccelKVM,
			[]string{"-accel kvm", "pit=off,pic=off", "-cpu host", "tsc=reliable"},
			[]string{"tb-size"}},
	}
	clone := base
	clone.Accel = vm.AccelTCG
	clone.Memory = &vm.MemoryFile{Path: "/dev/shm/t/memory"}
	clone.Restore = "/dev/shm/t/state"
	clone.Net = &vm.NetDevice{MAC: "02:00:00:00:00:01"}
	line := strings.Join((&Driver{}).args(clone), " ")
	for _, w := range []string{"memory-backend=mem", "memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/t/memory,share=off",
		"-incoming defer", "-netdev hubport,id=net0,hubid=0", "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"} {
		if !strings.Contains(line, w) {
			t.Errorf("clone: command line lacks %q:\n%s", w, line)
		}
	}
	d := &Driver{TCGCacheMiB: 32}
	for _, tc := range tests {
		cfg := base
		cfg.Accel = tc.accel
		line := strings.Join(d.args(cfg), " ")
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
