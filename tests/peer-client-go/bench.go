package main

// The bench mode: client-go's rawkv client under the workload of `tikv-bench`
// (bench/src/workload.rs), for its side-by-side table. It uses client-go's
// default configuration (BatchCommands on, 4 connections per store), except
// that the PD router client is off as everywhere in this program
// (pdOptions); --grpc-connections changes the connection count, --unary
// turns BatchCommands off. For each (op,
// concurrency) cell it runs `conc` goroutines that each issue one operation
// after another on their own keys for a warm-up and then for `secs`, and
// prints one machine-readable line:
//
//	RESULT op=get conc=64 ops=N errors=N elapsed_us=N cpu_us=N p50_us=N p99_us=N rss_kib=N
//
// Keys are the workload's: `len-12` bytes of 'k', then the task and the
// sequence number modulo keys-per-task, six digits each. CPU is this
// process's user+system time (getrusage) over the measured window; rss_kib
// the process's peak resident set from the cell's start (0: not measured).

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/tikv/client-go/v2/config"
	"github.com/tikv/client-go/v2/rawkv"
)

func benchKey(keyLen, task int, i uint64, keysPerTask uint64) []byte {
	return []byte(strings.Repeat("k", keyLen-12) + fmt.Sprintf("%06d%06d", task, i%keysPerTask))
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS restarts the kernel's peak resident set count (VmHWM) from
// the current resident set, so that one cell's peak is its own (the Rust
// side's `reset_peak_rss`); false where Linux's clear_refs is missing.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// cellPeakRSSKiB is VmHWM from /proc/self/status since resetPeakRSS, or 0
// when the reset failed (getrusage's Maxrss is never reset).
func cellPeakRSSKiB(measured bool) int64 {
	status, err := os.ReadFile("/proc/self/status")
	if !measured || err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kib
			}
		}
	}
	return 0
}

func percentile(sorted []uint32, p float64) uint32 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Round(float64(len(sorted)-1) * p))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchCell runs one (op, concurrency) cell and prints its RESULT line.
func benchCell(cli *rawkv.Client, op string, conc int, secs float64, warm time.Duration,
	keyLen, valueLen int, keysPerTask uint64) {
	value := []byte(strings.Repeat("v", valueLen))
	rssMeasured := resetPeakRSS()
	var measuring, stop atomic.Bool
	var errs atomic.Uint64
	lats := make([][]uint32, conc)
	var wg sync.WaitGroup
	ctx := context.Background()
	for t := 0; t < conc; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			lat := make([]uint32, 0, 1<<14)
			for i := uint64(0); !stop.Load(); i++ {
				key := benchKey(keyLen, t, i, keysPerTask)
				start := time.Now()
				var err error
				if op == "get" {
					_, err = cli.Get(ctx, key)
				} else {
					err = cli.Put(ctx, key, value)
				}
				if measuring.Load() {
					if err == nil {
						lat = append(lat, uint32(min(time.Since(start).Microseconds(), math.MaxUint32)))
					} else {
						errs.Add(1)
					}
				}
			}
			lats[t] = lat
		}(t)
	}
	time.Sleep(warm)
	t0, cpu0 := time.Now(), cpuTime()
	measuring.Store(true)
	time.Sleep(time.Duration(secs * float64(time.Second)))
	measuring.Store(false)
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	stop.Store(true)
	wg.Wait()
	var all []uint32
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Printf("RESULT op=%s conc=%d ops=%d errors=%d elapsed_us=%d cpu_us=%d p50_us=%d p99_us=%d rss_kib=%d\n",
		op, conc, len(all), errs.Load(), elapsed.Microseconds(), cpu.Microseconds(),
		percentile(all, 0.50), percentile(all, 0.99), cellPeakRSSKiB(rssMeasured))
}

func benchMain(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 raw cluster, comma separated")
	ops := fs.String("ops", "get,put", "operations, comma separated (get, put)")
	concs := fs.String("conc", "1,64,256", "concurrencies, comma separated")
	secs := fs.Float64("secs", 3, "measured seconds per cell")
	warmMs := fs.Int("warm-ms", 300, "warm-up per cell, milliseconds")
	keyLen := fs.Int("key-len", 16, "key length in bytes (at least 13)")
	valueLen := fs.Int("value-len", 64, "value length in bytes")
	keysPerTask := fs.Uint64("keys-per-task", 64, "distinct keys each task cycles through")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	conns := fs.Uint("grpc-connections", 0, "gRPC connections per store (0: client-go's default, 4)")
	unary := fs.Bool("unary", false, "BatchCommands off (MaxBatchSize 0): one unary call per request")
	_ = fs.Parse(args)
	conc, err := parseInts(*concs)
	if *pdAddrs == "" || err != nil || *keyLen < 13 || *keysPerTask == 0 {
		fmt.Fprintf(os.Stderr, "usage: peer-client-go bench --pd HOST:PORT [--ops get,put] [--conc 1,64,256] [--secs S] [--key-len N>=13] [--value-len N] (%v)\n", err)
		return 2
	}
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	config.UpdateGlobal(func(conf *config.Config) {
		if *conns > 0 {
			conf.TiKVClient.GrpcConnectionCount = *conns
		}
		if *unary {
			conf.TiKVClient.MaxBatchSize = 0
		}
	})
	ctx := context.Background()
	cli, err := rawkv.NewClientWithOpts(ctx, strings.Split(*pdAddrs, ","),
		rawkv.WithAPIVersion(kvrpcpb.APIVersion_V1), rawkv.WithPDOptions(pdOptions()...))
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect: %v\n", err)
		return 1
	}
	defer cli.Close()
	for _, op := range strings.Split(*ops, ",") {
		if op != "get" && op != "put" {
			fmt.Fprintf(os.Stderr, "unknown op %q\n", op)
			return 2
		}
		for _, c := range conc {
			benchCell(cli, op, c, *secs, time.Duration(*warmMs)*time.Millisecond, *keyLen, *valueLen, *keysPerTask)
		}
	}
	return 0
}
