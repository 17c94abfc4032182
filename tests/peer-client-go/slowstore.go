package main

// The slowstore mode: client-go's snapshot gets with a replica read type
// while `slow-store-bench` (bench/src/bin/slow-store-bench.rs) has made one
// store of `tikv-sim` slow or black-holed, for its side-by-side table. For
// each read type it connects a fresh client (so what it learns about the
// faulty store in one cell does not carry into the next), takes one
// timestamp, and runs `conc` goroutines that each get one key after another,
// each get through a fresh snapshot at that timestamp with `SetReplicaRead`
// (a KVSnapshot caches every value it read, so a reused one would serve the
// task's next round over the keys from memory, with no request; ours keeps
// no cache), for a warm-up and then for `secs`. It prints one line per read type in bench.go's
// format with op=FAULT:READ and one more field:
//
//	RESULT op=slow-20:follower conc=64 ops=N errors=N elapsed_us=N cpu_us=N p50_us=N p99_us=N hung=N
//
// hung counts the gets still waiting at the end of the window that had
// waited longer than a second (a black-holed store holds them until the
// client's timeout). Those goroutines are left behind when the cell ends
// (their client closed in the background), so a hung cell does not hold up
// the next one.

import (
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
)

// slowStoreKey is key (region, slot) of the 512 keys slow-store-bench
// writes: a first byte that picks one of the eight regions of `tikv-sim
// --regions 8` (split at multiples of 0x20), then the slot.
func slowStoreKey(region, slot int) []byte {
	return append([]byte{byte(0x10 + region*0x20)}, fmt.Sprintf("-slow-%04d", slot)...)
}

// slowStoreTaskKey is the key get i of task t reads (slow-store-bench's
// task_key): the regions in turn, a new slot every round of them.
func slowStoreTaskKey(t int, i uint64) []byte {
	return slowStoreKey(int((uint64(t)+i)%8), int((uint64(t)+i/8)%64))
}

var slowStoreReadTypes = map[string]kv.ReplicaReadType{
	"leader":        kv.ReplicaReadLeader,
	"follower":      kv.ReplicaReadFollower,
	"prefer-leader": kv.ReplicaReadPreferLeader,
}

// A get waiting longer than this at the end of a window is hung.
const slowStoreHungAfter = time.Second

// slowStoreTask is one goroutine's record: its measured latencies, and when
// its get in flight started (unix nanoseconds, 0 when idle).
type slowStoreTask struct {
	mu       sync.Mutex
	lat      []uint32
	inFlight atomic.Int64
}

func slowStoreCell(pd []string, fault, read string, conc int, secs float64, warm, readTimeout time.Duration) error {
	cli, err := newTxnClient(pd)
	if err != nil {
		return fmt.Errorf("connect: %v", err)
	}
	// Closed in the background: hung gets keep their goroutines for up to
	// the client's timeout.
	defer func() { go cli.Close() }()
	ctx := context.Background()
	ts, err := cli.GetTimestamp(ctx)
	if err != nil {
		return fmt.Errorf("timestamp: %v", err)
	}
	var measuring, stop atomic.Bool
	var errs atomic.Uint64
	var firstErr atomic.Value
	tasks := make([]*slowStoreTask, conc)
	done := make(chan struct{}, conc)
	for t := 0; t < conc; t++ {
		task := &slowStoreTask{lat: make([]uint32, 0, 1<<12)}
		tasks[t] = task
		go func(t int) {
			defer func() { done <- struct{}{} }()
			for i := uint64(0); !stop.Load(); i++ {
				start := time.Now()
				task.inFlight.Store(start.UnixNano())
				snap := cli.GetSnapshot(ts)
				snap.SetReplicaRead(slowStoreReadTypes[read])
				if readTimeout > 0 {
					snap.SetKVReadTimeout(readTimeout)
				}
				_, err := snap.Get(ctx, slowStoreTaskKey(t, i))
				task.inFlight.Store(0)
				if err != nil && tikverr.IsErrNotFound(err) {
					err = nil
				}
				if !measuring.Load() {
					continue
				}
				if err == nil {
					us := uint32(min(time.Since(start).Microseconds(), math.MaxUint32))
					task.mu.Lock()
					task.lat = append(task.lat, us)
					task.mu.Unlock()
				} else {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}(t)
	}
	time.Sleep(warm)
	t0, cpu0 := time.Now(), cpuTime()
	measuring.Store(true)
	time.Sleep(time.Duration(secs * float64(time.Second)))
	measuring.Store(false)
	end := time.Now()
	elapsed, cpu := end.Sub(t0), cpuTime()-cpu0
	stop.Store(true)
	hung := 0
	var all []uint32
	for _, task := range tasks {
		if since := task.inFlight.Load(); since != 0 && end.Sub(time.Unix(0, since)) > slowStoreHungAfter {
			hung++
		}
		task.mu.Lock()
		all = append(all, task.lat...)
		task.mu.Unlock()
	}
	// The goroutines that are not hung finish their get and stop.
	for left := conc - hung; left > 0; left-- {
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			left = 0
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if e, ok := firstErr.Load().(string); ok {
		fmt.Fprintf(os.Stderr, "%s:%s: first error: %s\n", fault, read, e)
	}
	fmt.Printf("RESULT op=%s:%s conc=%d ops=%d errors=%d elapsed_us=%d cpu_us=%d p50_us=%d p99_us=%d hung=%d\n",
		fault, read, conc, len(all), errs.Load(), elapsed.Microseconds(), cpu.Microseconds(),
		percentile(all, 0.50), percentile(all, 0.99), hung)
	return nil
}

func slowStoreMain(args []string) int {
	fs := flag.NewFlagSet("slowstore", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of the tikv-sim cluster, comma separated")
	fault := fs.String("fault", "none", "the fault slow-store-bench set, named in the RESULT lines")
	reads := fs.String("reads", "leader,prefer-leader,follower", "read types, comma separated")
	conc := fs.Int("conc", 64, "concurrent goroutines")
	secs := fs.Float64("secs", 2, "measured seconds per cell")
	warmMs := fs.Int("warm-ms", 1000, "warm-up per cell, milliseconds")
	readTimeoutMs := fs.Int("read-timeout-ms", 0, "KVSnapshot.SetKVReadTimeout, milliseconds (0: client-go's default)")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	_ = fs.Parse(args)
	if *pdAddrs == "" || *conc <= 0 {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go slowstore --pd HOST:PORT [--fault NAME] [--reads leader,prefer-leader,follower] [--conc 64] [--secs S] [--warm-ms MS] [--read-timeout-ms MS]")
		return 2
	}
	for _, read := range strings.Split(*reads, ",") {
		if _, ok := slowStoreReadTypes[read]; !ok {
			fmt.Fprintf(os.Stderr, "unknown read type %q\n", read)
			return 2
		}
	}
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, read := range strings.Split(*reads, ",") {
		err := slowStoreCell(strings.Split(*pdAddrs, ","), *fault, read, *conc, *secs,
			time.Duration(*warmMs)*time.Millisecond, time.Duration(*readTimeoutMs)*time.Millisecond)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s:%s: %v\n", *fault, read, err)
			return 1
		}
	}
	return 0
}
