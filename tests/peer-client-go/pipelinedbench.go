package main

// The pipelinedbench mode: one large transaction through client-go, with its
// pipelined DML (`tikv.WithDefaultPipelinedTxn`) or its normal committer, for
// the side-by-side table of `pipelined-bench` (bench/src/bin/pipelined-bench.rs),
// which builds the same keys. It prints, once the commit has returned:
//
//	RESULT mode=pipelined keys=N write_us=N commit_us=N cpu_us=N
//
// then waits for a line on stdin (the bench sends one once the server has
// stopped receiving the transaction's background work: secondary commits or
// the flushed range's resolution, which die with this process) and prints
//
//	PEAK rss_kib=N cpu_us=N
//
// with the process's peak resident memory and total CPU.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
)

// pipelinedBenchKey is key i of n in run r: a first byte spreading the keys
// evenly over `tikv-sim --regions`' first-byte splits, then the run and the
// index, 24 bytes in all.
func pipelinedBenchKey(run, i, n int) []byte {
	k := append([]byte{byte(i * 256 / n)}, fmt.Sprintf("%03d%020d", run, i)...)
	return k[:24]
}

func peakRSSKiB() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss
}

func pipelinedBenchMain(args []string) int {
	fs := flag.NewFlagSet("pipelinedbench", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 transactional cluster, comma separated")
	mode := fs.String("mode", "pipelined", "pipelined or normal")
	keys := fs.Int("keys", 1000000, "keys in the transaction")
	run := fs.Int("run", 0, "run number (0..999), part of every key")
	valueLen := fs.Int("value-len", 64, "value bytes")
	_ = fs.Parse(args)
	if *pdAddrs == "" || *keys <= 0 || (*mode != "pipelined" && *mode != "normal") {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go pipelinedbench --pd HOST:PORT [--mode pipelined|normal] [--keys N] [--run R] [--value-len N]")
		return 2
	}
	if err := setupLogger(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cli, err := newTxnClient(strings.Split(*pdAddrs, ","))
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect: %v\n", err)
		return 1
	}
	defer cli.Close()
	ctx := context.Background()
	value := make([]byte, *valueLen)
	for i := range value {
		value[i] = 'v'
	}
	var opts []tikv.TxnOption
	if *mode == "pipelined" {
		opts = append(opts, tikv.WithDefaultPipelinedTxn())
	}
	cpu0, t0 := cpuTime(), time.Now()
	var txn *transaction.KVTxn
	if txn, err = cli.Begin(opts...); err != nil {
		fmt.Fprintf(os.Stderr, "begin: %v\n", err)
		return 1
	}
	for i := 0; i < *keys; i++ {
		if err := txn.Set(pipelinedBenchKey(*run, i, *keys), value); err != nil {
			fmt.Fprintf(os.Stderr, "set: %v\n", err)
			return 1
		}
	}
	written := time.Since(t0)
	if err := txn.Commit(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "commit: %v\n", err)
		return 1
	}
	total := time.Since(t0)
	fmt.Printf("RESULT mode=%s keys=%d write_us=%d commit_us=%d cpu_us=%d\n", *mode, *keys,
		written.Microseconds(), (total - written).Microseconds(), (cpuTime() - cpu0).Microseconds())
	// Background work (secondaries, range resolution) goes on until the
	// bench says the server has gone quiet.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	fmt.Printf("PEAK rss_kib=%d cpu_us=%d\n", peakRSSKiB(), (cpuTime() - cpu0).Microseconds())
	return 0
}
