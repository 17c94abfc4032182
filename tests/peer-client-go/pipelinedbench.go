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
//	PEAK rss_kib=N cpu_us=N sent=Kind:N,...
//
// with the process's peak resident memory and total CPU. `sent` counts the
// TiKV requests client-go sent by kind, background work included (the bench's
// own runner prints the same from an interceptor), so the two can be
// compared kind by kind.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	"github.com/tikv/client-go/v2/util/async"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/pkg/caller"
)

// countingClient counts the TiKV requests sent through it by kind.
type countingClient struct {
	tikv.Client
	mu   sync.Mutex
	sent map[string]int
}

func (c *countingClient) count(kind string) {
	c.mu.Lock()
	c.sent[kind]++
	c.mu.Unlock()
}

// SendRequest counts the request, and counts it again as TransportErrors
// when it gets no answer (the bench's runner counts the same).
func (c *countingClient) SendRequest(ctx context.Context, addr string, req *tikvrpc.Request, timeout time.Duration) (*tikvrpc.Response, error) {
	c.count(req.Type.String())
	resp, err := c.Client.SendRequest(ctx, addr, req, timeout)
	if err != nil {
		c.count("TransportErrors")
	}
	return resp, err
}

func (c *countingClient) SendRequestAsync(ctx context.Context, addr string, req *tikvrpc.Request, cb async.Callback[*tikvrpc.Response]) {
	c.count(req.Type.String())
	c.Client.SendRequestAsync(ctx, addr, req, cb)
}

// summary is `Kind:N,...` in kind order.
func (c *countingClient) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for kind, n := range c.sent {
		parts = append(parts, fmt.Sprintf("%s:%d", kind, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// newCountingTxnClient is newTxnClient's simulator branch with every TiKV
// request counted.
func newCountingTxnClient(addrs []string) (*txnkv.Client, *countingClient, error) {
	pdCli, err := pd.NewClient(caller.Component("peer-client-go"), addrs, pd.SecurityOption{}, pdOptions()...)
	if err != nil {
		return nil, nil, err
	}
	codecPD := tikv.NewCodecPDClient(tikv.ModeTxn, pdCli)
	uuid := fmt.Sprintf("tikv-%v", codecPD.GetClusterID(context.Background()))
	counter := &countingClient{Client: tikv.NewRPCClient(tikv.WithCodec(codecPD.GetCodec())), sent: map[string]int{}}
	store, err := tikv.NewKVStore(uuid, codecPD, tikv.NewMockSafePointKV(), counter)
	if err != nil {
		return nil, nil, err
	}
	return &txnkv.Client{KVStore: store}, counter, nil
}

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
	cli, counter, err := newCountingTxnClient(strings.Split(*pdAddrs, ","))
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
	fmt.Printf("PEAK rss_kib=%d cpu_us=%d sent=%s\n", peakRSSKiB(), (cpuTime() - cpu0).Microseconds(), counter.summary())
	return 0
}
