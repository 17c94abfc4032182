package main

// The memdbbench mode: client-go's transaction buffer (its ART memdb, what
// `KVTxn.GetMemBuffer` holds, and what each generation of a pipelined
// transaction holds) filled with the same keys and values as our
// `membuffer-mem` bench, for bytes per key and insert time side by side.
// No cluster is needed: the transaction is built on a snapshot with no
// store, and only its buffer is written. It prints, per key set,
//
//	RESULT set=NAME keys=N mem=B size=B heap=B insert_ns=T
//
// where mem is the memdb's `Mem()` (its arenas' capacity, what the pipelined
// flush thresholds compare against), size its `Size()` (key plus value
// bytes), heap the growth of Go's live heap (`HeapAlloc` after a collection)
// from before the transaction was created to after the last insert, and
// insert_ns the time per `Set`.

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/tikv/client-go/v2/txnkv/transaction"
	"github.com/tikv/client-go/v2/txnkv/txnsnapshot"
)

// memdbBenchValueLen is the length of every value.
const memdbBenchValueLen = 64

// memdbBenchMix is splitmix64's output function: the same bits as the Rust
// bench's `mix`, so both sides write the same keys.
func memdbBenchMix(x uint64) uint64 {
	z := x + 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// memdbBenchKey writes key i of the set into dst (24 bytes): "seq" is a
// 16-byte prefix then i big-endian, inserted in key order; "random" is an
// 8-byte prefix then 16 pseudo-random bytes, so inserts land all over the
// tree.
func memdbBenchKey(dst []byte, set string, i uint64) []byte {
	dst = dst[:0]
	if set == "seq" {
		dst = append(dst, "membuffer_bench_"...)
		return binary.BigEndian.AppendUint64(dst, i)
	}
	dst = append(dst, "membench"...)
	dst = binary.BigEndian.AppendUint64(dst, memdbBenchMix(2*i))
	return binary.BigEndian.AppendUint64(dst, memdbBenchMix(2*i+1))
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func memdbBenchMain(args []string) int {
	fs := flag.NewFlagSet("memdbbench", flag.ExitOnError)
	keys := fs.Int("keys", 1000000, "keys per set")
	sets := fs.String("sets", "seq,random", "key sets: seq, random")
	_ = fs.Parse(args)
	for _, set := range strings.Split(*sets, ",") {
		if set != "seq" && set != "random" {
			fmt.Fprintf(os.Stderr, "unknown key set %q\n", set)
			return 2
		}
		before := liveHeap()
		txn, err := transaction.NewTiKVTxn(nil, txnsnapshot.NewTiKVSnapshot(nil, 1, 0), 1, &transaction.TxnOptions{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		buf := txn.GetMemBuffer()
		key := make([]byte, 0, 24)
		value := make([]byte, memdbBenchValueLen)
		start := time.Now()
		for i := 0; i < *keys; i++ {
			key = memdbBenchKey(key, set, uint64(i))
			value[0] = byte(i)
			if err := buf.Set(key, value); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		took := time.Since(start)
		heap := liveHeap() - before
		fmt.Printf("RESULT set=%s keys=%d mem=%d size=%d heap=%d insert_ns=%d\n",
			set, buf.Len(), buf.Mem(), buf.Size(), heap, took.Nanoseconds()/int64(*keys))
		runtime.KeepAlive(txn)
	}
	return 0
}
