package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// libDirs are where Debian installs the x86-64 shared libraries.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// sharedLibs returns the ELF interpreter and every shared library bin needs,
// transitively, as absolute host paths with symlinks resolved to the paths
// the dynamic loader will open.
func sharedLibs(bin string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var visit func(string) error
	visit = func(file string) error {
		f, err := elf.Open(file)
		if err != nil {
			return fmt.Errorf("read ELF %s: %w", file, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err != nil {
					return err
				}
				interp := string(b[:len(b)-1])
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, n := range needed {
			path := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, n)); err == nil {
					path = filepath.Join(d, n)
					break
				}
			}
			if path == "" {
				return fmt.Errorf("%s needs %s, not found in %v", file, n, libDirs)
			}
			if seen[path] {
				continue
			}
			seen[path] = true
			out = append(out, path)
			if err := visit(path); err != nil {
				return err
			}
		}
		return nil
	}
	if err := visit(bin); err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}
