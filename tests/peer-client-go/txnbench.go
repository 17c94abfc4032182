package main

// The txnbench mode: client-go's small transactions under the workloads of
// `txn-bench` (bench/src/bin/txn-bench.rs), for its side-by-side table.
// For each (workload, mode) cell it runs `conc` goroutines that each run one
// transaction after another on their own keys for a warm-up and then for
// `secs`, and prints one line in bench.go's format, with op=WORKLOAD-MODE:
//
//	RESULT op=rw-2pc conc=64 ops=N errors=N elapsed_us=N cpu_us=N p50_us=N p99_us=N rss_kib=N
//
// Workloads (keys: see txnKey; txn-bench builds the same ones):
//
//   - rw: read one key, write another, commit (both in one region);
//   - w4: write four keys in four regions, commit;
//   - ro16: a snapshot at a fresh timestamp reads 16 keys over four regions.
//
// Modes: 2pc, async (async commit), 1pc (1PC, falling back to 2PC when the
// keys span regions), pessimistic (rw only: the read locks its key).
//
// With --sample N, each cell is followed by N transactions run one at a
// time, for the driver to count the store requests of one transaction
// from the server's counters. The driver reads the counters between two
// handshakes on stdout and stdin:
//
//	SAMPLE-READY op=rw-2pc conc=64   (the driver answers one line: start)
//	SAMPLE-DONE op=rw-2pc conc=64    (the driver answers one line: go on)
//
// or SAMPLE-FAILED with the error instead of SAMPLE-DONE. Both handshakes
// come after sampleSettle, so the background work of the transactions
// before (the secondaries a 2PC or async commit commits after returning) is
// counted neither in the sample nor out of it; txn-bench does the same.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/kv"
	"github.com/tikv/client-go/v2/txnkv"
)

// txnKey is key n of task t: a first byte that picks one of the four
// regions of `tikv-sim --regions 4` (split at 0x40, 0x80, 0xc0), then the
// task and number.
func txnKey(region int, t int, n uint64) []byte {
	// The first byte as a byte: %c would write 0xa0 and 0xe0 as two-byte
	// UTF-8 sequences, in another region.
	return append([]byte{byte(0x20 + region*0x40)}, fmt.Sprintf("-%06d-%06d", t%1000000, n%64)...)
}

func runBenchTxn(ctx context.Context, cli *txnkv.Client, workload, mode string, t int, i uint64) error {
	if workload == "ro16" {
		ts, err := cli.GetTimestamp(ctx)
		if err != nil {
			return err
		}
		snap := cli.GetSnapshot(ts)
		keys := make([][]byte, 0, 16)
		for k := 0; k < 16; k++ {
			keys = append(keys, txnKey(k%4, t, i+uint64(k)))
		}
		_, err = snap.BatchGet(ctx, keys)
		return err
	}
	txn, err := cli.Begin()
	if err != nil {
		return err
	}
	switch mode {
	case "async":
		txn.SetEnableAsyncCommit(true)
	case "1pc":
		txn.SetEnableAsyncCommit(true)
		txn.SetEnable1PC(true)
	case "pessimistic":
		txn.SetPessimistic(true)
	}
	value := []byte("v")
	switch workload {
	case "rw":
		read, write := txnKey(1, t, i), txnKey(1, t, i+32)
		if mode == "pessimistic" {
			forUpdateTS, err := cli.GetTimestamp(ctx)
			if err != nil {
				_ = txn.Rollback()
				return err
			}
			lockCtx := kv.NewLockCtx(forUpdateTS, kv.LockAlwaysWait, time.Now())
			lockCtx.InitReturnValues(1)
			if err := txn.LockKeys(ctx, lockCtx, read); err != nil {
				_ = txn.Rollback()
				return err
			}
		} else if _, err := txn.Get(ctx, read); err != nil && !tikverr.IsErrNotFound(err) {
			_ = txn.Rollback()
			return err
		}
		if err := txn.Set(write, value); err != nil {
			return err
		}
	case "w4":
		for r := 0; r < 4; r++ {
			if err := txn.Set(txnKey(r, t, i), value); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown workload %q", workload)
	}
	return txn.Commit(ctx)
}

func txnBenchCell(cli *txnkv.Client, workload, mode string, conc int, secs float64, warm time.Duration) {
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
			lat := make([]uint32, 0, 1<<12)
			for i := uint64(0); !stop.Load(); i++ {
				start := time.Now()
				err := runBenchTxn(ctx, cli, workload, mode, t, i)
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
	fmt.Printf("RESULT op=%s-%s conc=%d ops=%d errors=%d elapsed_us=%d cpu_us=%d p50_us=%d p99_us=%d rss_kib=%d\n",
		workload, mode, conc, len(all), errs.Load(), elapsed.Microseconds(), cpu.Microseconds(),
		percentile(all, 0.50), percentile(all, 0.99), cellPeakRSSKiB(rssMeasured))
}

// sampleTask is the task whose keys the sampled transactions use: no cell
// runs that many goroutines, so its keys are not locked by a cell's.
const sampleTask = 999999

// sampleSettle is how long background commits are given before each
// handshake (txn-bench's SETTLE).
const sampleSettle = 500 * time.Millisecond

// txnBenchSample runs n transactions of the cell one at a time between the
// two handshakes (see the file comment); false when the driver went away.
func txnBenchSample(cli *txnkv.Client, workload, mode string, conc, n int, driver *bufio.Reader) bool {
	cell := fmt.Sprintf("op=%s-%s conc=%d", workload, mode, conc)
	time.Sleep(sampleSettle)
	fmt.Printf("SAMPLE-READY %s\n", cell)
	if _, err := driver.ReadString('\n'); err != nil {
		return false
	}
	var failed error
	for i := 0; i < n && failed == nil; i++ {
		failed = runBenchTxn(context.Background(), cli, workload, mode, sampleTask, uint64(i))
	}
	time.Sleep(sampleSettle)
	if failed != nil {
		fmt.Printf("SAMPLE-FAILED %s %q\n", cell, failed.Error())
	} else {
		fmt.Printf("SAMPLE-DONE %s\n", cell)
	}
	_, err := driver.ReadString('\n')
	return err == nil
}

func txnBenchMain(args []string) int {
	fs := flag.NewFlagSet("txnbench", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 transactional cluster, comma separated")
	cells := fs.String("cells", "rw-2pc", "WORKLOAD-MODE cells, comma separated")
	concs := fs.String("conc", "1,64", "concurrencies, comma separated")
	secs := fs.Float64("secs", 3, "measured seconds per cell")
	warmMs := fs.Int("warm-ms", 300, "warm-up per cell, milliseconds")
	sample := fs.Int("sample", 0, "transactions run one at a time after each cell, between handshakes (file comment)")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	_ = fs.Parse(args)
	conc, err := parseInts(*concs)
	if *pdAddrs == "" || err != nil {
		fmt.Fprintf(os.Stderr, "usage: peer-client-go txnbench --pd HOST:PORT [--cells rw-2pc,...] [--conc 1,64] [--secs S] [--sample N] (%v)\n", err)
		return 2
	}
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cli, err := newTxnClient(strings.Split(*pdAddrs, ","))
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect: %v\n", err)
		return 1
	}
	defer cli.Close()
	driver := bufio.NewReader(os.Stdin)
	for _, cell := range strings.Split(*cells, ",") {
		workload, mode, ok := strings.Cut(cell, "-")
		if !ok {
			fmt.Fprintf(os.Stderr, "cell %q is not WORKLOAD-MODE\n", cell)
			return 2
		}
		for _, c := range conc {
			txnBenchCell(cli, workload, mode, c, *secs, time.Duration(*warmMs)*time.Millisecond)
			if *sample > 0 && !txnBenchSample(cli, workload, mode, c, *sample, driver) {
				fmt.Fprintln(os.Stderr, "the driver closed stdin during a sample")
				return 1
			}
		}
	}
	return 0
}
