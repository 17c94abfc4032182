package main

// The contention mode: client-go's transactions incrementing a few shared
// counters, for the `txn-contention` benchmark (bench/src/bin/txn-contention.rs),
// which runs our client on the same workload beside it. `conc` goroutines each
// pick a counter at random and add one to it in a transaction of its own,
// over and over, for a warm-up and then for `secs`:
//
//   - pessimistic: lock the counter with its value returned (TiDB's
//     SELECT ... FOR UPDATE), waiting as long as it takes, write value+1,
//     commit; a write conflict while locking is retried with a fresh
//     for_update_ts, as TiDB retries the statement;
//   - optimistic: read the counter, write value+1, commit; a write conflict
//     at commit restarts the transaction, as an application retries.
//
// Counters are decimal strings, absent = 0, keys PREFIX-NNN. It prints one
// machine-readable line: increments committed in the measured window, total
// committed (warm-up and the tail included: the reader checks the counters
// add up to it), and the window's retries, errors, time and CPU:
//
//	RESULT increments=N total=N retries=N errors=N elapsed_us=N cpu_us=N p50_us=N p99_us=N
//
// Latency is of a whole increment, retries included. Errors are failed
// attempts other than write conflicts (each retried too).

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/kv"
	"github.com/tikv/client-go/v2/txnkv"
)

func counterKey(prefix string, i int) []byte {
	return []byte(fmt.Sprintf("%s-%03d", prefix, i))
}

func counterValue(v []byte) (uint64, error) {
	if len(v) == 0 {
		return 0, nil
	}
	return strconv.ParseUint(string(v), 10, 64)
}

// increment is one attempt; conflict reports a write conflict (retried by
// the caller).
func increment(ctx context.Context, cli *txnkv.Client, pessimistic bool, key []byte) (conflict bool, err error) {
	txn, err := cli.Begin()
	if err != nil {
		return false, err
	}
	var current []byte
	if pessimistic {
		txn.SetPessimistic(true)
		for {
			forUpdateTS, err := cli.GetTimestamp(ctx)
			if err != nil {
				_ = txn.Rollback()
				return false, err
			}
			lockCtx := kv.NewLockCtx(forUpdateTS, kv.LockAlwaysWait, time.Now())
			lockCtx.InitReturnValues(1)
			err = txn.LockKeys(ctx, lockCtx, key)
			if tikverr.IsErrWriteConflict(err) {
				continue
			}
			if err != nil {
				_ = txn.Rollback()
				return false, err
			}
			current = lockCtx.Values[string(key)].Value
			break
		}
	} else {
		v, err := txn.Get(ctx, key)
		if err != nil && !tikverr.IsErrNotFound(err) {
			_ = txn.Rollback()
			return false, err
		}
		current = v.Value
	}
	n, err := counterValue(current)
	if err != nil {
		_ = txn.Rollback()
		return false, err
	}
	if err := txn.Set(key, []byte(strconv.FormatUint(n+1, 10))); err != nil {
		_ = txn.Rollback()
		return false, err
	}
	if err := txn.Commit(ctx); err != nil {
		return tikverr.IsErrWriteConflict(err), err
	}
	return false, nil
}

func contentionMain(args []string) int {
	fs := flag.NewFlagSet("contention", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 transactional cluster, comma separated")
	mode := fs.String("mode", "pessimistic", "pessimistic or optimistic")
	conc := fs.Int("conc", 64, "goroutines")
	keys := fs.Int("keys", 8, "counters")
	secs := fs.Float64("secs", 3, "measured seconds")
	warmMs := fs.Int("warm-ms", 300, "warm-up, milliseconds")
	prefix := fs.String("prefix", "ctr", "counter key prefix")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	_ = fs.Parse(args)
	if *pdAddrs == "" || (*mode != "pessimistic" && *mode != "optimistic") || *conc < 1 || *keys < 1 {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go contention --pd HOST:PORT [--mode pessimistic|optimistic] [--conc N] [--keys N] [--secs S] [--prefix P]")
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
	pessimistic := *mode == "pessimistic"
	ctx := context.Background()
	var measuring, stop atomic.Bool
	var increments, retries, errs atomic.Uint64
	lats := make([][]uint32, *conc)
	var wg sync.WaitGroup
	for t := 0; t < *conc; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(t) + 1))
			lat := make([]uint32, 0, 1<<12)
			for !stop.Load() {
				key := counterKey(*prefix, rng.Intn(*keys))
				start := time.Now()
				for {
					conflict, err := increment(ctx, cli, pessimistic, key)
					if err == nil {
						break
					}
					if conflict {
						retries.Add(1)
					} else {
						errs.Add(1)
					}
				}
				// Every committed increment counts towards the total the
				// reader checks; only those in the window are measured.
				increments.Add(1)
				if measuring.Load() {
					lat = append(lat, uint32(min(time.Since(start).Microseconds(), math.MaxUint32)))
				}
			}
			lats[t] = lat
		}(t)
	}
	time.Sleep(time.Duration(*warmMs) * time.Millisecond)
	t0, cpu0 := time.Now(), cpuTime()
	retries0, errs0 := retries.Load(), errs.Load()
	measuring.Store(true)
	time.Sleep(time.Duration(*secs * float64(time.Second)))
	measuring.Store(false)
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	windowRetries, windowErrs := retries.Load()-retries0, errs.Load()-errs0
	stop.Store(true)
	wg.Wait()
	var all []uint32
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Printf("RESULT increments=%d total=%d retries=%d errors=%d elapsed_us=%d cpu_us=%d p50_us=%d p99_us=%d\n",
		len(all), increments.Load(), windowRetries, windowErrs, elapsed.Microseconds(), cpu.Microseconds(),
		percentile(all, 0.50), percentile(all, 0.99))
	return 0
}
