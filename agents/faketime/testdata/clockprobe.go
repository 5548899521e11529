// clockprobe (Go): the Go counterpart of clockprobe.c for berth's vDSO tests, built with
// CGO_ENABLED=0 (static). One command per line on stdin, one line on stdout:
//
//	now         real=<time.Now() ns> sysreal=<ns> since=<time.Since(start) ns> syssince=<ns>
//	            (sys* through the clock_gettime system call; since/syssince count from the
//	            program's start on the monotonic clock, so a shifted monotonic clock shows)
//	sleep <ms>  time.Sleep, then "slept <ns>" (monotonic, through the system call)
//	bench <n>   "bench now=<ns>": per time.Now(), best of 7 runs of n calls
//	exit        exits 0
//
// `clockprobe serve <file>` instead rewrites <file> (atomically) every second with
// "seq=<n> real= sysreal= since= syssince= slept=<ns>": slept is how long the last
// time.Sleep(1s) took (monotonic, system call). SIGTERM ends it.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func sysClock(clock uintptr) int64 {
	var ts syscall.Timespec
	_, _, e := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clock, uintptr(unsafe.Pointer(&ts)), 0)
	if e != 0 {
		return -1
	}
	return ts.Nano()
}

func serve(path string, start time.Time, sysStart int64) {
	var slept int64
	for seq := 0; ; seq++ {
		line := fmt.Sprintf("seq=%d real=%d sysreal=%d since=%d syssince=%d slept=%d\n",
			seq, time.Now().UnixNano(), sysClock(0), time.Since(start).Nanoseconds(),
			sysClock(1)-sysStart, slept)
		if os.WriteFile(path+".tmp", []byte(line), 0o644) == nil {
			os.Rename(path+".tmp", path)
		}
		t0 := sysClock(1)
		time.Sleep(time.Second)
		slept = sysClock(1) - t0
	}
}

func main() {
	start := time.Now()
	sysStart := sysClock(1)
	if len(os.Args) == 3 && os.Args[1] == "serve" {
		serve(os.Args[2], start, sysStart)
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	for in.Scan() {
		line := in.Text()
		switch {
		case line == "now":
			real := time.Now().UnixNano()
			sys := sysClock(0)
			since := time.Since(start).Nanoseconds()
			syssince := sysClock(1) - sysStart
			fmt.Printf("real=%d sysreal=%d since=%d syssince=%d\n", real, sys, since, syssince)
		case strings.HasPrefix(line, "sleep "):
			ms, _ := strconv.Atoi(line[6:])
			t0 := sysClock(1)
			time.Sleep(time.Duration(ms) * time.Millisecond)
			fmt.Printf("slept %d\n", sysClock(1)-t0)
		case strings.HasPrefix(line, "bench "):
			n, _ := strconv.Atoi(line[6:])
			best := 1e18
			var sink int64
			for run := 0; run < 7; run++ {
				t0 := sysClock(1)
				for i := 0; i < n; i++ {
					sink += time.Now().UnixNano()
				}
				d := float64(sysClock(1)-t0) / float64(n)
				if d < best {
					best = d
				}
			}
			_ = sink
			fmt.Printf("bench now=%.2f\n", best)
		case line == "exit":
			return
		default:
			fmt.Println("unknown command")
		}
	}
}
