package main

import (
	"bufio"
	"fmt"
	"os"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as initramfs.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	err error
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == sIFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string, perm uint32) { c.entry(name, sIFDIR|perm, 0, 0, nil) }

func (c *cpioWriter) node(name string, mode, major, minor uint32) {
	c.entry(name, mode, major, minor, nil)
}

func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, sIFLNK|0o777, 0, 0, []byte(target))
}

func (c *cpioWriter) file(name, src string, perm uint32) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	c.entry(name, sIFREG|perm, 0, 0, data)
	return c.err
}

func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }
