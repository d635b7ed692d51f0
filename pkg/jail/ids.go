package jail

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Allocator hands out per-VM host id ranges of IDsPerVM ids from
// [Base, Base+Slots*IDsPerVM), so that no two VMs share a uid: one
// compromised VMM cannot signal, ptrace or read another's memory or files.
type Allocator struct {
	Base  uint32
	Slots int

	mu   sync.Mutex
	used map[uint32]bool
}

// ErrExhausted is returned when every id range is in use.
var ErrExhausted = errors.New("no free VM uid range")

// NewAllocator checks the range fits in 32-bit ids and avoids host root.
func NewAllocator(base uint32, slots int) (*Allocator, error) {
	if base == 0 || slots < 1 || uint64(base)+uint64(slots)*IDsPerVM > 1<<32-1 {
		return nil, fmt.Errorf("VM uid range %d + %d x %d does not fit", base, slots, IDsPerVM)
	}
	return &Allocator{Base: base, Slots: slots, used: map[uint32]bool{}}, nil
}

// Get reserves a free range.
func (a *Allocator) Get() (IDs, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := 0; i < a.Slots; i++ {
		id := a.Base + uint32(i)*IDsPerVM
		if !a.used[id] {
			a.used[id] = true
			return IDs{UID: id, GID: id}, nil
		}
	}
	return IDs{}, ErrExhausted
}

// Reserve marks a range in use (a VM taken over after a restart). It
// reports whether ids is a range of this allocator.
func (a *Allocator) Reserve(ids IDs) bool {
	if ids.UID < a.Base || (ids.UID-a.Base)%IDsPerVM != 0 || int((ids.UID-a.Base)/IDsPerVM) >= a.Slots {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.used[ids.UID] = true
	return true
}

// Put frees a range.
func (a *Allocator) Put(ids IDs) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.used, ids.UID)
}

// ProcessIDs reads the real uid and gid of a running process, as the host
// sees them.
func ProcessIDs(pid int) (IDs, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return IDs{}, err
	}
	defer f.Close()
	var ids IDs
	var n int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "Uid" && k != "Gid") {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		x, err := strconv.ParseUint(fs[0], 10, 32)
		if err != nil {
			return IDs{}, err
		}
		if k == "Uid" {
			ids.UID = uint32(x)
		} else {
			ids.GID = uint32(x)
		}
		n++
	}
	if n != 2 {
		return IDs{}, fmt.Errorf("process %d: no uid/gid in status", pid)
	}
	return ids, nil
}
