package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// cpuTimes is the machine's CPU time so far, from the first line of
// /proc/stat (Linux): the total, and the part stolen by the hypervisor
// for other guests, which slows every process here without showing in
// any of them.
type cpuTimes struct{ total, steal uint64 }

// readCPUTimes returns the CPU times, or false where /proc/stat cannot
// be read (not Linux) or has no steal field.
func readCPUTimes() (cpuTimes, bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return cpuTimes{}, false
	}
	fields := strings.Fields(sc.Text())
	// cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuTimes{}, false
	}
	var t cpuTimes
	for i, s := range fields[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTimes{}, false
		}
		if i < 8 { // guest times are counted in user already
			t.total += v
		}
		if i == 7 {
			t.steal = v
		}
	}
	return t, true
}

// stealPercent is the share of CPU time stolen between a and b, or nil.
func stealPercent(a, b cpuTimes, ok bool) *float64 {
	if !ok || b.total <= a.total {
		return nil
	}
	p := 100 * float64(b.steal-a.steal) / float64(b.total-a.total)
	return &p
}
