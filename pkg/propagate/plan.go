// Package propagate carries the mounts the host makes inside a pod's
// propagating volumes (HostToContainer, Bidirectional) on into the pod VM's
// jail, idmapped.
//
// A volume reaches the jailed QEMU as an idmapped clone of its host mount,
// made a slave of it, so a mount the host makes in the volume later reaches
// the jail by propagation. But the propagated copy is not idmapped: the
// unprivileged QEMU sees its files as owned by nobody and cannot read a
// root-owned 0700 directory. A Relay watches the jail's mount table and
// stacks an idmapped clone of each such copy on top of it, in the jail's
// mount namespace only (so the host can still unmount and remove its mount
// point), and takes the clone away once the host's mount is gone.
//
// Only mounts the host made are relayed: a copy in the jail must match, by
// path, device, root and peer group, a propagated mount the host itself
// holds under the pod's shared directory, and the helper that does the work
// checks by mount ID that the path it opened, without following symlinks,
// is that copy.
package propagate

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// op is one mount in the jail to relay (attach an idmapped clone of the
// host's copy on top of it) or to detach (a relayed clone whose host mount
// is gone or was replaced). Path is relative to the shared directory, the
// same on the host and in the jail.
type op struct {
	Path string `json:"path"`
	// ID is the jail's mount at Path.
	ID int `json:"id"`
	// Host is the host's copy at Path to clone (attach only); src names
	// its filesystem and root.
	Host int    `json:"-"`
	src  string `json:"-"`
}

// plan compares the host's mounts under the pod's shared directory with
// the jail's and says what to attach and what to detach.
func plan(shared string, host, jail []*mountinfo.Info) (req request) {
	shared = filepath.Clean(shared)
	var top *mountinfo.Info
	propagated := map[string]*mountinfo.Info{} // by path below an entry
	hostIdmapped := map[string]bool{}
	for _, h := range host {
		if h.Mountpoint == shared {
			top = h
			continue
		}
		rel, ok := below(shared, h.Mountpoint)
		if !ok || !strings.Contains(rel, "/") {
			continue // a volume entry itself
		}
		switch {
		case idmapped(h):
			hostIdmapped[rel] = true // a submount the volume had when cloned
		case peer(h, "shared") != "" || peer(h, "master") != "":
			propagated[rel] = h
		}
	}
	if top == nil {
		return req
	}
	// The jail's view of the shared directory: the same directory of the
	// same filesystem.
	inside := ""
	for _, j := range jail {
		if j.Major == top.Major && j.Minor == top.Minor && j.Root == top.Root {
			inside = j.Mountpoint
			break
		}
	}
	if inside == "" {
		return req
	}
	req.Share = inside
	byID := map[int]*mountinfo.Info{}
	covered := map[int]bool{} // mounts another is stacked on
	for _, j := range jail {
		byID[j.ID] = j
	}
	for _, j := range jail {
		if p := byID[j.Parent]; p != nil && p.Mountpoint == j.Mountpoint {
			covered[p.ID] = true
		}
	}
	// A mount is visible when nothing is stacked on it and its parents
	// are reachable (the mount it is stacked on does not count).
	var reachable func(j *mountinfo.Info, depth int) bool
	reachable = func(j *mountinfo.Info, depth int) bool {
		p := byID[j.Parent]
		if p == nil || j.Mountpoint == inside || depth > 64 {
			return true
		}
		if _, ok := below(inside, p.Mountpoint); !ok && p.Mountpoint != inside {
			return true
		}
		if p.Mountpoint != j.Mountpoint && covered[p.ID] {
			return false
		}
		return reachable(p, depth+1)
	}
	visible := func(j *mountinfo.Info) bool { return !covered[j.ID] && reachable(j, 0) }
	for _, j := range jail {
		rel, ok := below(inside, j.Mountpoint)
		if !ok || !strings.Contains(rel, "/") || !visible(j) {
			continue
		}
		h := propagated[rel]
		if !idmapped(j) {
			if h != nil && same(j, h) && fromHost(j, h) {
				req.Attach = append(req.Attach, op{Path: rel, ID: j.ID, Host: h.ID, src: src(h)})
			}
			continue
		}
		// An idmapped mount: a relayed clone on the copy it covers, one
		// left when the copy under it was unmounted or replaced, part of
		// a relayed clone (the host's submounts it was cloned with), or a
		// submount the volume had when cloned.
		p := byID[j.Parent]
		onCopy := p != nil && p.Mountpoint == j.Mountpoint && !idmapped(p)
		switch {
		case onCopy:
			if h == nil || !same(j, h) || !same(p, h) || !fromHost(p, h) || outdated(rel, j, propagated, jail, byID, inside) {
				req.Detach = append(req.Detach, op{Path: rel, ID: j.ID})
			}
		case inClone(j, byID, inside):
		case !hostIdmapped[rel]:
			req.Detach = append(req.Detach, op{Path: rel, ID: j.ID})
		}
	}
	all := slices.Clone(req.Attach)
	req.Attach = slices.DeleteFunc(req.Attach, func(o op) bool { return underAttach(all, o.Path) })
	return req
}

// same says whether two mounts show the same directory of one filesystem.
func same(a, b *mountinfo.Info) bool {
	return a.Major == b.Major && a.Minor == b.Minor && a.Root == b.Root
}

func src(m *mountinfo.Info) string { return fmt.Sprintf("%d:%d:%s", m.Major, m.Minor, m.Root) }

// underAttach says whether rel is below a path already being attached
// (whose clone carries the host's submounts with it).
func underAttach(attach []op, rel string) bool {
	for _, o := range attach {
		if _, ok := below(o.Path, rel); ok {
			return true
		}
	}
	return false
}

// outdated says whether the relayed clone c at rel lacks a submount the
// host has there now, or holds one the host no longer has (a clone does
// not follow the host's later submounts; a new one is made).
func outdated(rel string, c *mountinfo.Info, propagated map[string]*mountinfo.Info, jail []*mountinfo.Info, byID map[int]*mountinfo.Info, inside string) bool {
	parts := map[string]bool{}
	for _, j := range jail {
		if sub, ok := below(inside, j.Mountpoint); ok && idmapped(j) && under(j, c.ID, byID) {
			parts[sub] = true
		}
	}
	for sub := range propagated {
		if _, ok := below(rel, sub); ok && !parts[sub] {
			return true
		}
	}
	for sub := range parts {
		if propagated[sub] == nil {
			return true
		}
	}
	return false
}

// under says whether mount j hangs (at any depth) below mount id.
func under(j *mountinfo.Info, id int, byID map[int]*mountinfo.Info) bool {
	for depth := 0; depth < 64 && j != nil; depth++ {
		if j.Parent == id {
			return true
		}
		j = byID[j.Parent]
	}
	return false
}

// inClone says whether mount j hangs below a relayed clone (an idmapped
// mount stacked on a copy), as the host submounts cloned with it do.
func inClone(j *mountinfo.Info, byID map[int]*mountinfo.Info, inside string) bool {
	for depth := 0; depth < 64; depth++ {
		p := byID[j.Parent]
		if p == nil || p.Mountpoint == inside {
			return false
		}
		if _, ok := below(inside, p.Mountpoint); !ok {
			return false
		}
		if pp := byID[p.Parent]; idmapped(p) && pp != nil && pp.Mountpoint == p.Mountpoint && !idmapped(pp) {
			return true
		}
		j = p
	}
	return false
}

// below gives p relative to dir, if p is strictly below it.
func below(dir, p string) (string, bool) {
	if dir == "/" {
		return strings.TrimPrefix(p, "/"), p != "/" && strings.HasPrefix(p, "/")
	}
	rel, ok := strings.CutPrefix(p, dir+"/")
	return rel, ok && rel != ""
}

func idmapped(m *mountinfo.Info) bool {
	for _, o := range strings.Split(m.Options, ",") {
		if o == "idmapped" {
			return true
		}
	}
	return false
}

// peer is the mount's peer group of the kind ("shared": its own, "master":
// the one it receives from), "" for none.
func peer(m *mountinfo.Info, kind string) string {
	for _, f := range strings.Fields(m.Optional) {
		if g, ok := strings.CutPrefix(f, kind+":"); ok {
			return g
		}
	}
	return ""
}

// fromHost says whether the jail's mount j is a copy the kernel propagated
// from the host's h: it receives from h's peer group or h's master.
func fromHost(j, h *mountinfo.Info) bool {
	g := peer(j, "master")
	return g != "" && (g == peer(h, "shared") || g == peer(h, "master"))
}
