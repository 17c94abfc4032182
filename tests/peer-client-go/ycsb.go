package main

// The ycsb mode: YCSB's core workloads A–F through client-go, for
// `ycsb-bench` (bench/src/bin/ycsb-bench.rs). The generators mirror
// bench/src/ycsb.rs (and YCSB's CoreWorkload they follow) constant for
// constant, with the same SplitMix64 sequence per task, so both clients
// draw the same operations. One run (workload, mode, concurrency) per
// process start; it prints one line:
//
//	YCSB workload=a mode=raw conc=64 elapsed_us=N cpu_us=N errors=N inserted=N read_ops=N read_p99_us=N ...
//
// with _ops and _p99_us for read, update, insert, scan and rmw. Modes, as
// go-ycsb's TiKV driver runs them:
//
//   - raw: rawkv.Client; an update or read-modify-write is a Get and then
//     a Put of the record with one field replaced; a scan is one Scan with
//     the scan length as limit;
//   - txn: txnkv.Client, one optimistic transaction per operation, async
//     commit and 1PC on (go-ycsb's defaults); a read-only one commits
//     without a request; a scan iterates with the snapshot's batch size set
//     to the scan length, so it sends one request as ours does.
//
// The records must exist (ycsb-bench loads them); --records says how many.

import (
	"bytes"
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
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/rawkv"
	"github.com/tikv/client-go/v2/txnkv"
)

const (
	ycsbZipfianConstant    = 0.99
	ycsbScrambledItemCount = 10000000000
	ycsbScrambledZetan     = 26.46902820178302
	ycsbMaxScanLength      = 100
	ycsbKeyPrefix          = "usertable:user"
	fnvOffsetBasis64       = 0xCBF29CE484222325
	fnvPrime64             = 1099511628211
)

// fnvHash64 is YCSB's Utils.fnvhash64 (Java's Math.abs of the signed hash).
func fnvHash64(val uint64) uint64 {
	hash := uint64(fnvOffsetBasis64)
	for i := 0; i < 8; i++ {
		hash ^= val & 0xff
		hash *= fnvPrime64
		val >>= 8
	}
	if int64(hash) < 0 {
		return uint64(-int64(hash))
	}
	return hash
}

func recordKey(n uint64) []byte {
	return []byte(ycsbKeyPrefix + strconv.FormatUint(fnvHash64(n), 10))
}

// ycsbRng is SplitMix64, as bench/src/ycsb.rs's Rng.
type ycsbRng struct{ state uint64 }

func newYcsbRng(seed, task uint64) *ycsbRng {
	return &ycsbRng{seed ^ task*0x9E3779B97F4A7C15}
}

func (r *ycsbRng) nextU64() uint64 {
	r.state += 0x9E3779B97F4A7C15
	z := r.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (r *ycsbRng) nextF64() float64 {
	return float64(r.nextU64()>>11) / float64(uint64(1)<<53)
}

func (r *ycsbRng) uniform(lo, hi uint64) uint64 {
	return lo + uint64(r.nextF64()*float64(hi-lo+1))
}

func zetaSum(from, to uint64, theta, initial float64) float64 {
	sum := initial
	for i := from; i < to; i++ {
		sum += 1 / math.Pow(float64(i+1), theta)
	}
	return sum
}

// zipfian is YCSB's ZipfianGenerator.
type zipfian struct {
	items, base, countForZeta            uint64
	theta, zeta2theta, alpha, zetan, eta float64
}

func newZipfianWithZetan(min, max uint64, zetan float64) zipfian {
	items := max - min + 1
	theta := ycsbZipfianConstant
	zeta2theta := zetaSum(0, 2, theta, 0)
	return zipfian{
		items: items, base: min, countForZeta: items,
		theta: theta, zeta2theta: zeta2theta, alpha: 1 / (1 - theta), zetan: zetan,
		eta: (1 - math.Pow(2/float64(items), 1-theta)) / (1 - zeta2theta/zetan),
	}
}

func newZipfian(min, max uint64) zipfian {
	return newZipfianWithZetan(min, max, zetaSum(0, max-min+1, ycsbZipfianConstant, 0))
}

func (z *zipfian) nextWith(r *ycsbRng, itemCount uint64) uint64 {
	if itemCount > z.countForZeta {
		z.zetan = zetaSum(z.countForZeta, itemCount, z.theta, z.zetan)
		z.countForZeta = itemCount
		z.eta = (1 - math.Pow(2/float64(z.items), 1-z.theta)) / (1 - z.zeta2theta/z.zetan)
	}
	u := r.nextF64()
	uz := u * z.zetan
	if uz < 1 {
		return z.base
	}
	if uz < 1+math.Pow(0.5, z.theta) {
		return z.base + 1
	}
	return z.base + uint64(float64(itemCount)*math.Pow(z.eta*u-z.eta+1, z.alpha))
}

// insertCounter is YCSB's AcknowledgedCounterGenerator.
type insertCounter struct {
	next  atomic.Uint64
	mu    sync.Mutex
	limit uint64
	done  map[uint64]bool
}

func newInsertCounter(records uint64) *insertCounter {
	c := &insertCounter{limit: records - 1, done: map[uint64]bool{}}
	c.next.Store(records)
	return c
}

func (c *insertCounter) claim() uint64 { return c.next.Add(1) - 1 }

func (c *insertCounter) ack(n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done[n] = true
	for c.done[c.limit+1] {
		delete(c.done, c.limit+1)
		c.limit++
	}
}

func (c *insertCounter) last() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limit
}

// The operation kinds, in CoreWorkload's chooser order.
const (
	opRead = iota
	opUpdate
	opInsert
	opScan
	opRMW
	opKinds
)

var opNames = [opKinds]string{"read", "update", "insert", "scan", "rmw"}

type ycsbMix struct {
	proportions [opKinds]float64
	latest      bool
}

var ycsbMixes = map[string]ycsbMix{
	"a": {[opKinds]float64{0.5, 0.5, 0, 0, 0}, false},
	"b": {[opKinds]float64{0.95, 0.05, 0, 0, 0}, false},
	"c": {[opKinds]float64{1, 0, 0, 0, 0}, false},
	"d": {[opKinds]float64{0.95, 0, 0.05, 0, 0}, true},
	"e": {[opKinds]float64{0, 0, 0.05, 0.95, 0}, false},
	"f": {[opKinds]float64{0.5, 0, 0, 0, 0.5}, false},
}

func (m ycsbMix) choose(r *ycsbRng) int {
	sum := 0.0
	for _, p := range m.proportions {
		sum += p
	}
	u := r.nextF64()
	last := opRead
	for kind, p := range m.proportions {
		if p <= 0 {
			continue
		}
		if u < p/sum {
			return kind
		}
		u -= p / sum
		last = kind
	}
	return last
}

func randomPrintable(r *ycsbRng, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		x := r.nextU64()
		for i := 0; i < 8 && len(out) < n; i++ {
			out = append(out, ' '+byte(x&0xff)%95)
			x >>= 8
		}
	}
	return out
}

type ycsbOp struct {
	kind    int
	key     []byte
	scanLen int
	field   int
	value   []byte
	insert  int64 // the record number an insert takes, -1 otherwise
}

type ycsbPlan struct {
	mix            ycsbMix
	fields, length int
	counter        *insertCounter
	scrambled      zipfian
	scrambledItems uint64
	latest         *zipfian
}

func newYcsbPlan(mix ycsbMix, fields, length int, records uint64) *ycsbPlan {
	expectedNew := uint64(float64(records) * mix.proportions[opInsert] * 2)
	p := &ycsbPlan{
		mix: mix, fields: fields, length: length, counter: newInsertCounter(records),
		scrambled:      newZipfianWithZetan(0, ycsbScrambledItemCount, ycsbScrambledZetan),
		scrambledItems: records + expectedNew + 1,
	}
	if mix.latest {
		z := newZipfian(0, p.counter.last()-1)
		p.latest = &z
	}
	return p
}

type ycsbTask struct {
	rng       *ycsbRng
	scrambled zipfian
	latest    *zipfian
}

func (p *ycsbPlan) task(seed, t uint64) *ycsbTask {
	task := &ycsbTask{rng: newYcsbRng(seed, t), scrambled: p.scrambled}
	if p.latest != nil {
		z := *p.latest
		task.latest = &z
	}
	return task
}

func (t *ycsbTask) keyNumber(p *ycsbPlan) uint64 {
	for {
		var n uint64
		if t.latest != nil {
			max := p.counter.last()
			z := t.latest.nextWith(t.rng, max)
			if z < max {
				n = max - z
			}
		} else {
			n = fnvHash64(t.scrambled.nextWith(t.rng, t.scrambled.items)) % p.scrambledItems
		}
		if n <= p.counter.last() {
			return n
		}
	}
}

func (t *ycsbTask) nextOp(p *ycsbPlan) ycsbOp {
	op := ycsbOp{kind: p.mix.choose(t.rng), insert: -1}
	switch op.kind {
	case opInsert:
		n := p.counter.claim()
		op.key = recordKey(n)
		op.value = randomPrintable(t.rng, p.fields*p.length)
		op.insert = int64(n)
	case opRead:
		op.key = recordKey(t.keyNumber(p))
	case opScan:
		op.key = recordKey(t.keyNumber(p))
		op.scanLen = int(t.rng.uniform(1, ycsbMaxScanLength))
	default:
		op.key = recordKey(t.keyNumber(p))
		op.field = int(t.rng.uniform(0, uint64(p.fields-1)))
		op.value = randomPrintable(t.rng, p.length)
	}
	return op
}

// withField is the record with one field replaced (a whole new record when
// the one read is not of the shape, e.g. missing).
func (p *ycsbPlan) withField(record []byte, field int, b []byte) []byte {
	var out []byte
	if len(record) == p.fields*p.length {
		out = append([]byte(nil), record...)
	} else {
		out = bytes.Repeat([]byte{' '}, p.fields*p.length)
	}
	copy(out[field*p.length:(field+1)*p.length], b)
	return out
}

func ycsbRaw(ctx context.Context, cli *rawkv.Client, p *ycsbPlan, op ycsbOp) error {
	switch op.kind {
	case opRead:
		_, err := cli.Get(ctx, op.key)
		return err
	case opInsert:
		return cli.Put(ctx, op.key, op.value)
	case opScan:
		_, _, err := cli.Scan(ctx, op.key, nil, op.scanLen)
		return err
	default:
		record, err := cli.Get(ctx, op.key)
		if err != nil {
			return err
		}
		return cli.Put(ctx, op.key, p.withField(record, op.field, op.value))
	}
}

func ycsbTxn(ctx context.Context, cli *txnkv.Client, p *ycsbPlan, op ycsbOp) error {
	txn, err := cli.Begin()
	if err != nil {
		return err
	}
	txn.SetEnableAsyncCommit(true)
	txn.SetEnable1PC(true)
	fail := func(err error) error {
		_ = txn.Rollback()
		return err
	}
	switch op.kind {
	case opRead:
		if _, err := txn.Get(ctx, op.key); err != nil && !tikverr.IsErrNotFound(err) {
			return fail(err)
		}
	case opInsert:
		if err := txn.Set(op.key, op.value); err != nil {
			return fail(err)
		}
	case opScan:
		txn.GetSnapshot().SetScanBatchSize(op.scanLen)
		it, err := txn.Iter(op.key, nil)
		if err != nil {
			return fail(err)
		}
		// No Next after the last wanted record: it would fetch another
		// batch.
		for i := 0; it.Valid(); i++ {
			_ = it.Value()
			if i+1 == op.scanLen {
				break
			}
			if err := it.Next(); err != nil {
				it.Close()
				return fail(err)
			}
		}
		it.Close()
	default:
		entry, err := txn.Get(ctx, op.key)
		if err != nil && !tikverr.IsErrNotFound(err) {
			return fail(err)
		}
		if err := txn.Set(op.key, p.withField(entry.Value, op.field, op.value)); err != nil {
			return fail(err)
		}
	}
	return txn.Commit(ctx)
}

func ycsbMain(args []string) int {
	fs := flag.NewFlagSet("ycsb", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 cluster, comma separated")
	workload := fs.String("workload", "a", "core workload, a..f")
	mode := fs.String("mode", "raw", "raw or txn")
	conc := fs.Int("conc", 64, "concurrent goroutines")
	secs := fs.Float64("secs", 2, "measured seconds")
	warmMs := fs.Int("warm-ms", 300, "warm-up, milliseconds")
	records := fs.Uint64("records", 0, "records loaded (numbers 0..N), at least 2")
	fields := fs.Int("fields", 10, "fields per record")
	fieldLen := fs.Int("field-len", 100, "bytes per field")
	seed := fs.Uint64("seed", 1, "random seed (task t draws from seed and t)")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	_ = fs.Parse(args)
	mix, ok := ycsbMixes[*workload]
	if *pdAddrs == "" || !ok || (*mode != "raw" && *mode != "txn") || *records < 2 || *conc < 1 ||
		*fields < 1 || *fieldLen < 1 {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go ycsb --pd HOST:PORT --records N [--workload a..f] [--mode raw|txn] [--conc N] [--secs S] [--fields N] [--field-len N] [--seed N]")
		return 2
	}
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	pds := strings.Split(*pdAddrs, ",")
	plan := newYcsbPlan(mix, *fields, *fieldLen, *records)
	var exec func(ycsbOp) error
	if *mode == "raw" {
		cli, err := rawkv.NewClientWithOpts(ctx, pds, rawkv.WithAPIVersion(kvrpcpb.APIVersion_V1),
			rawkv.WithPDOptions(pdOptions()...))
		if err != nil {
			fmt.Fprintf(os.Stderr, "connect: %v\n", err)
			return 1
		}
		defer cli.Close()
		exec = func(op ycsbOp) error { return ycsbRaw(ctx, cli, plan, op) }
	} else {
		cli, err := newTxnClient(pds)
		if err != nil {
			fmt.Fprintf(os.Stderr, "connect: %v\n", err)
			return 1
		}
		defer cli.Close()
		exec = func(op ycsbOp) error { return ycsbTxn(ctx, cli, plan, op) }
	}

	var measuring, stop atomic.Bool
	var errs atomic.Uint64
	lats := make([][opKinds][]uint32, *conc)
	var wg sync.WaitGroup
	for t := 0; t < *conc; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			task := plan.task(*seed, uint64(t))
			var lat [opKinds][]uint32
			for !stop.Load() {
				op := task.nextOp(plan)
				start := time.Now()
				err := exec(op)
				if op.insert >= 0 {
					plan.counter.ack(uint64(op.insert))
				}
				if measuring.Load() {
					if err == nil {
						lat[op.kind] = append(lat[op.kind], uint32(min(time.Since(start).Microseconds(), math.MaxUint32)))
					} else {
						errs.Add(1)
					}
				}
			}
			lats[t] = lat
		}(t)
	}
	time.Sleep(time.Duration(*warmMs) * time.Millisecond)
	t0, cpu0 := time.Now(), cpuTime()
	measuring.Store(true)
	time.Sleep(time.Duration(*secs * float64(time.Second)))
	measuring.Store(false)
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	stop.Store(true)
	wg.Wait()
	line := fmt.Sprintf("YCSB workload=%s mode=%s conc=%d elapsed_us=%d cpu_us=%d errors=%d inserted=%d",
		*workload, *mode, *conc, elapsed.Microseconds(), cpu.Microseconds(), errs.Load(),
		plan.counter.next.Load()-*records)
	for kind := 0; kind < opKinds; kind++ {
		var all []uint32
		for _, l := range lats {
			all = append(all, l[kind]...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		line += fmt.Sprintf(" %s_ops=%d %s_p99_us=%d", opNames[kind], len(all), opNames[kind], percentile(all, 0.99))
	}
	fmt.Println(line)
	return 0
}
