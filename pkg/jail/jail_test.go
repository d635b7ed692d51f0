package jail

import (
	"os"
	"testing"
)

func TestCgroupPath(t *testing.T) {
	tests := []struct {
		parent, want string
		wantErr      bool
	}{
		{"/kubepods/burstable/pod1", "/kubepods/burstable/pod1/vm", false},
		{"kubepods-burstable-pod1.slice", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/vm", false},
		{"", "/vm", false},
		{"hyperlet", "/hyperlet/vm", false},
		{"/../../etc", "/etc/vm", false}, // cleaned at the root, never above it
		{"a--b.slice", "", true},
	}
	for _, tc := range tests {
		got, err := CgroupPath(tc.parent, "vm")
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("CgroupPath(%q) = %q, %v; want %q", tc.parent, got, err, tc.want)
		}
	}
	if _, err := CgroupPath("/x", "../y"); err == nil {
		t.Error("a name with a slash was accepted")
	}
}

func TestAllocator(t *testing.T) {
	if _, err := NewAllocator(0, 1); err == nil {
		t.Error("uid 0 base accepted")
	}
	if _, err := NewAllocator(1<<32-65536, 2); err == nil {
		t.Error("range past 32 bits accepted")
	}
	a, err := NewAllocator(100000, 2)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := a.Get()
	y, _ := a.Get()
	if x.UID == y.UID || x.UID != 100000 || y.UID != 100000+IDsPerVM {
		t.Fatalf("got %v and %v", x, y)
	}
	if _, err := a.Get(); err != ErrExhausted {
		t.Fatalf("third range: %v", err)
	}
	a.Put(x)
	if a.Reserve(IDs{UID: 12345}) {
		t.Error("reserved an id outside the range")
	}
	if !a.Reserve(x) {
		t.Error("could not reserve a freed range")
	}
	if _, err := a.Get(); err != ErrExhausted {
		t.Fatalf("reserved range handed out again: %v", err)
	}
}

func TestProcessIDs(t *testing.T) {
	ids, err := ProcessIDs(os.Getpid())
	if err != nil || ids.UID != uint32(os.Getuid()) || ids.GID != uint32(os.Getgid()) {
		t.Fatalf("ProcessIDs(self) = %v, %v", ids, err)
	}
}
