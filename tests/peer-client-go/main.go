// Command peer-client-go runs Go's tikv/client-go v2 against a simulated
// cluster (the `tikv-sim` binary of this repository) and checks every result
// against a model. It prints one PASS or FAIL line per operation and exits
// non-zero if any check failed.
//
//	go run . [--real-pd] --raw-pd 127.0.0.1:PORT --txn-pd 127.0.0.1:PORT [--ttl-pd 127.0.0.1:PORT]
//
// Both addresses may name one API V1 cluster (`tikv-sim` serves raw and
// transactional keys at once); it should have several regions. With
// --real-pd the PD is a real one (`tikv-sim --join-pd` stores): client-go
// then runs as it ships, with PD's router client and txnkv.NewClient's
// etcd-based safe-point KV, which the simulator's own PD does not serve.
//
// Nine more modes serve other programs of this repository:
//
//	peer-client-go interop --pd ADDR   client-go as a step server for the
//	                                   interop driver (interop.go); with
//	                                   --real-pd, client-go as it ships
//	peer-client-go bench --pd ADDR ... client-go under tikv-bench's workload
//	                                   (bench.go)
//	peer-client-go contention --pd ADDR ... client-go's transactions on
//	                                   shared counters (contention.go)
//	peer-client-go txnbench --pd ADDR ... client-go's small transactions
//	                                   under txn-bench's workloads (txnbench.go)
//	peer-client-go pipelinedbench --pd ADDR ... one large transaction,
//	                                   pipelined or not (pipelinedbench.go)
//	peer-client-go regioncachebench ... client-go's RegionCache lookups
//	                                   (regioncachebench.go)
//	peer-client-go ycsb --pd ADDR ...  YCSB's core workloads A-F through
//	                                   rawkv or txnkv (ycsb.go)
//	peer-client-go memdbbench ...      client-go's ART memdb bytes per key
//	                                   (memdbbench.go)
//	peer-client-go slowstore --pd ADDR ... snapshot gets by replica read
//	                                   type beside a slow or black-holed
//	                                   store (slowstore.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pingcap/kvproto/pkg/kvrpcpb"
	"github.com/pingcap/log"
	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/kv"
	"github.com/tikv/client-go/v2/oracle"
	"github.com/tikv/client-go/v2/rawkv"
	"github.com/tikv/client-go/v2/tikv"
	"github.com/tikv/client-go/v2/tikvrpc"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// checker counts PASS/FAIL lines.
type checker struct {
	passed, failed int
}

func (c *checker) pass(op string) {
	c.passed++
	fmt.Printf("PASS %s\n", op)
}

func (c *checker) fail(op string, format string, args ...any) {
	c.failed++
	fmt.Printf("FAIL %s: %s\n", op, fmt.Sprintf(format, args...))
}

// check records op as passed if err is nil, failed otherwise.
func (c *checker) check(op string, err error) bool {
	if err != nil {
		c.fail(op, "%v", err)
		return false
	}
	c.pass(op)
	return true
}

// want returns an error describing a mismatch, or nil.
func want(what string, got, expected any) error {
	if fmt.Sprint(got) != fmt.Sprint(expected) {
		return fmt.Errorf("%s: got %q, want %q", what, fmt.Sprint(got), fmt.Sprint(expected))
	}
	return nil
}

// model is the expected contents of a key-value space.
type model map[string]string

// scan returns the model's pairs in [start, end) (empty end: unbounded), up to limit.
func (m model) scan(start, end string, limit int) ([]string, []string) {
	var keys []string
	for k := range m {
		if k >= start && (end == "" || k < end) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if len(keys) > limit {
		keys = keys[:limit]
	}
	vals := make([]string, len(keys))
	for i, k := range keys {
		vals[i] = m[k]
	}
	return keys, vals
}

func strs(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

func byteSlices(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// Keys spread over the simulator's byte-split regions (first bytes 0x00..0xff).
func spreadKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		first := byte(i * 256 / n)
		keys[i] = string([]byte{first}) + fmt.Sprintf("%s-%03d", prefix, i)
	}
	return keys
}

func runRaw(ctx context.Context, c *checker, pd []string) {
	cli, err := rawkv.NewClientWithOpts(ctx, pd, rawkv.WithAPIVersion(kvrpcpb.APIVersion_V1),
		rawkv.WithPDOptions(pdOptions()...))
	if !c.check("raw connect (rawkv.NewClientWithOpts)", err) {
		return
	}
	defer cli.Close()
	m := model{}

	// Put / Get on keys in different regions.
	keys := spreadKeys("raw", 16)
	err = func() error {
		for i, k := range keys {
			v := fmt.Sprintf("v%d", i)
			if err := cli.Put(ctx, []byte(k), []byte(v)); err != nil {
				return err
			}
			m[k] = v
		}
		return nil
	}()
	c.check("raw Put x16 across regions", err)
	err = func() error {
		for _, k := range keys {
			v, err := cli.Get(ctx, []byte(k))
			if err != nil {
				return err
			}
			if err := want("Get "+k, string(v), m[k]); err != nil {
				return err
			}
		}
		v, err := cli.Get(ctx, []byte("\x7fabsent"))
		if err != nil {
			return err
		}
		if v != nil {
			return fmt.Errorf("absent key: got %q, want nil", v)
		}
		return nil
	}()
	c.check("raw Get (present and absent)", err)

	// BatchPut / BatchGet.
	bkeys := spreadKeys("batch", 24)
	bvals := make([]string, len(bkeys))
	for i := range bkeys {
		bvals[i] = fmt.Sprintf("b%d", i)
		m[bkeys[i]] = bvals[i]
	}
	c.check("raw BatchPut x24 across regions", cli.BatchPut(ctx, byteSlices(bkeys), byteSlices(bvals)))
	err = func() error {
		ask := append(append([]string{}, bkeys...), "\x01none", "\xf0none")
		got, err := cli.BatchGet(ctx, byteSlices(ask))
		if err != nil {
			return err
		}
		if len(got) != len(ask) {
			return fmt.Errorf("BatchGet returned %d values for %d keys", len(got), len(ask))
		}
		for i, k := range ask {
			if err := want("BatchGet "+k, string(got[i]), m[k]); err != nil {
				return err
			}
		}
		return nil
	}()
	c.check("raw BatchGet (present and absent)", err)

	// Scan, ReverseScan with limits crossing regions.
	err = func() error {
		for _, tc := range []struct {
			start, end string
			limit      int
		}{{"", "", 1000}, {"\x20", "\xc0", 1000}, {"\x10", "", 7}, {"", "\x90", 3}} {
			ks, vs, err := cli.Scan(ctx, []byte(tc.start), []byte(tc.end), tc.limit)
			if err != nil {
				return err
			}
			wk, wv := m.scan(tc.start, tc.end, tc.limit)
			if err := want(fmt.Sprintf("Scan keys %q..%q/%d", tc.start, tc.end, tc.limit), strs(ks), wk); err != nil {
				return err
			}
			if err := want("Scan values", strs(vs), wv); err != nil {
				return err
			}
		}
		return nil
	}()
	c.check("raw Scan (ranges and limits across regions)", err)
	err = func() error {
		// ReverseScan(start, end): keys in [end, start), descending.
		ks, vs, err := cli.ReverseScan(ctx, []byte("\xe0"), []byte("\x30"), 1000)
		if err != nil {
			return err
		}
		wk, wv := m.scan("\x30", "\xe0", 1000)
		for i, j := 0, len(wk)-1; i < j; i, j = i+1, j-1 {
			wk[i], wk[j] = wk[j], wk[i]
			wv[i], wv[j] = wv[j], wv[i]
		}
		if err := want("ReverseScan keys", strs(ks), wk); err != nil {
			return err
		}
		return want("ReverseScan values", strs(vs), wv)
	}()
	c.check("raw ReverseScan", err)

	// Delete / BatchDelete.
	err = func() error {
		if err := cli.Delete(ctx, []byte(keys[3])); err != nil {
			return err
		}
		delete(m, keys[3])
		v, err := cli.Get(ctx, []byte(keys[3]))
		if err != nil {
			return err
		}
		if v != nil {
			return fmt.Errorf("deleted key still reads %q", v)
		}
		return nil
	}()
	c.check("raw Delete", err)
	err = func() error {
		del := []string{bkeys[0], bkeys[11], bkeys[23], "\x55never-written"}
		if err := cli.BatchDelete(ctx, byteSlices(del)); err != nil {
			return err
		}
		for _, k := range del {
			delete(m, k)
		}
		got, err := cli.BatchGet(ctx, byteSlices(del))
		if err != nil {
			return err
		}
		for i, v := range got {
			if v != nil {
				return fmt.Errorf("BatchDelete left %q = %q", del[i], v)
			}
		}
		return nil
	}()
	c.check("raw BatchDelete", err)

	// DeleteRange across regions.
	err = func() error {
		if err := cli.DeleteRange(ctx, []byte("\x40"), []byte("\xa0")); err != nil {
			return err
		}
		for k := range m {
			if k >= "\x40" && k < "\xa0" {
				delete(m, k)
			}
		}
		ks, _, err := cli.Scan(ctx, nil, nil, 1000)
		if err != nil {
			return err
		}
		wk, _ := m.scan("", "", 1000)
		return want("keys after DeleteRange", strs(ks), wk)
	}()
	c.check("raw DeleteRange across regions", err)

	// CompareAndSwap (atomic mode).
	cli.SetAtomicForCAS(true)
	err = func() error {
		k := []byte("\x33cas")
		prev, ok, err := cli.CompareAndSwap(ctx, k, nil, []byte("one"))
		if err != nil {
			return err
		}
		if !ok || prev != nil {
			return fmt.Errorf("CAS on absent key: swapped=%v prev=%q", ok, prev)
		}
		prev, ok, err = cli.CompareAndSwap(ctx, k, []byte("wrong"), []byte("two"))
		if err != nil {
			return err
		}
		if ok || string(prev) != "one" {
			return fmt.Errorf("CAS with wrong previous: swapped=%v prev=%q", ok, prev)
		}
		prev, ok, err = cli.CompareAndSwap(ctx, k, []byte("one"), []byte("three"))
		if err != nil {
			return err
		}
		if !ok || string(prev) != "one" {
			return fmt.Errorf("CAS with right previous: swapped=%v prev=%q", ok, prev)
		}
		v, err := cli.Get(ctx, k)
		if err != nil {
			return err
		}
		m[string(k)] = "three"
		return want("value after CAS", string(v), "three")
	}()
	c.check("raw CompareAndSwap (atomic mode)", err)

	// Checksum against the model: crc64-xor and totals.
	err = func() error {
		sum, err := cli.Checksum(ctx, nil, nil)
		if err != nil {
			return err
		}
		var kvs, total uint64
		for k, v := range m {
			kvs++
			total += uint64(len(k) + len(v))
		}
		if sum.TotalKvs != kvs || sum.TotalBytes != total {
			return fmt.Errorf("checksum kvs=%d bytes=%d, model kvs=%d bytes=%d", sum.TotalKvs, sum.TotalBytes, kvs, total)
		}
		return nil
	}()
	c.check("raw Checksum (totals)", err)

	// The cluster is API V1 without TTL: PutWithTTL must be refused, as TiKV does.
	err = cli.PutWithTTL(ctx, []byte("\x22ttl"), []byte("x"), 30)
	if err != nil && strings.Contains(err.Error(), "ttl") {
		c.pass("raw PutWithTTL refused on an API V1 cluster (" + firstLine(err.Error()) + ")")
	} else {
		c.fail("raw PutWithTTL refused on an API V1 cluster", "got %v", err)
	}
}

// runRawTTL checks TTLs on an API V1 cluster with TiKV's storage.enable-ttl
// (`tikv-sim --enable-ttl`).
func runRawTTL(ctx context.Context, c *checker, pd []string) {
	cli, err := rawkv.NewClientWithOpts(ctx, pd, rawkv.WithAPIVersion(kvrpcpb.APIVersion_V1),
		rawkv.WithPDOptions(pdOptions()...))
	if !c.check("raw connect to a V1 cluster with TTL enabled", err) {
		return
	}
	defer cli.Close()
	err = func() error {
		if err := cli.PutWithTTL(ctx, []byte("\x22ttl"), []byte("x"), 30); err != nil {
			return err
		}
		v, err := cli.Get(ctx, []byte("\x22ttl"))
		if err != nil {
			return err
		}
		if err := want("Get of a key with TTL", string(v), "x"); err != nil {
			return err
		}
		ttl, err := cli.GetKeyTTL(ctx, []byte("\x22ttl"))
		if err != nil {
			return err
		}
		if ttl == nil || *ttl == 0 || *ttl > 30 {
			return fmt.Errorf("GetKeyTTL: got %v, want 1..30 s", ttl)
		}
		if err := cli.Put(ctx, []byte("\x22plain"), []byte("y")); err != nil {
			return err
		}
		ttl, err = cli.GetKeyTTL(ctx, []byte("\x22plain"))
		if err != nil {
			return err
		}
		if ttl == nil || *ttl != 0 {
			return fmt.Errorf("GetKeyTTL of a key without TTL: got %v, want 0", ttl)
		}
		return nil
	}()
	c.check("raw PutWithTTL and GetKeyTTL on API V1 with TTL enabled", err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	if len(s) > 120 {
		return s[:120]
	}
	return s
}

// txnPut commits one transaction writing pairs, with options applied before commit.
func txnPut(ctx context.Context, cli *txnkv.Client, pairs map[string]string, opts func(*transaction.KVTxn)) (*transaction.KVTxn, error) {
	txn, err := cli.Begin()
	if err != nil {
		return nil, err
	}
	if opts != nil {
		opts(txn)
	}
	for k, v := range pairs {
		if err := txn.Set([]byte(k), []byte(v)); err != nil {
			return nil, err
		}
	}
	return txn, txn.Commit(ctx)
}

// readAll checks a fresh snapshot against the model for the given keys.
func readAll(ctx context.Context, cli *txnkv.Client, m model, keys []string) error {
	txn, err := cli.Begin()
	if err != nil {
		return err
	}
	defer func() { _ = txn.Rollback() }()
	for _, k := range keys {
		v, err := txn.Get(ctx, []byte(k))
		want, ok := m[k]
		switch {
		case tikverr.IsErrNotFound(err):
			if ok {
				return fmt.Errorf("key %q: not found, want %q", k, want)
			}
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("key %q: got %q, want not found", k, v.Value)
		case string(v.Value) != want:
			return fmt.Errorf("key %q: got %q, want %q", k, v.Value, want)
		}
	}
	return nil
}

// realPD is set by --real-pd: the PD is a real one, so nothing is switched
// off.
var realPD bool

// pdOptions switches off what the simulated PD does not serve yet: the
// router client's QueryRegion stream (client-go then asks PD with unary
// GetRegion/BatchScanRegions, as with PDs before the router service). A
// real PD serves it: client-go's defaults then.
func pdOptions() []opt.ClientOption {
	if realPD {
		return nil
	}
	return []opt.ClientOption{opt.WithEnableRouterClient(false)}
}

// newTxnClient is txnkv.NewClient against a real PD. Against the simulated
// PD it builds what txnkv.NewClient builds, from client-go's own
// lower-level constructors: txnkv.NewClient also opens an etcd client on the
// PD addresses for the legacy safe-point KV, which the simulator does not
// serve. The store reads its txn safe point through PD's GC states API.
func newTxnClient(addrs []string) (*txnkv.Client, error) {
	if realPD {
		return txnkv.NewClient(addrs)
	}
	pdCli, err := pd.NewClient(caller.Component("peer-client-go"), addrs, pd.SecurityOption{}, pdOptions()...)
	if err != nil {
		return nil, err
	}
	codecPD := tikv.NewCodecPDClient(tikv.ModeTxn, pdCli)
	uuid := fmt.Sprintf("tikv-%v", codecPD.GetClusterID(context.Background()))
	rpc := tikv.NewRPCClient(tikv.WithCodec(codecPD.GetCodec()))
	store, err := tikv.NewKVStore(uuid, codecPD, tikv.NewMockSafePointKV(), rpc)
	if err != nil {
		return nil, err
	}
	return &txnkv.Client{KVStore: store}, nil
}

func runTxn(ctx context.Context, c *checker, pd []string) {
	cli, err := newTxnClient(pd)
	connect := "txn connect (tikv.NewKVStore with a mock SafePointKV)"
	if realPD {
		connect = "txn connect (txnkv.NewClient, etcd safe-point KV)"
	}
	if !c.check(connect, err) {
		return
	}
	defer cli.Close()
	m := model{}
	var all []string

	// Pre-split (KVStore.SplitRegions: TiKV's SplitRegion RPC on the
	// region's leader, no scatter), then PD routes each key to a region that
	// starts at it. A real PD learns the split from the stores' region
	// heartbeats, asynchronously as with TiKV: it is polled for up to 5 s.
	splitKeys := []string{"split-a", "split-b"}
	err = func() error {
		ids, err := cli.KVStore.SplitRegions(ctx, byteSlices(splitKeys), false, nil)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return errors.New("SplitRegions returned no new region")
		}
		deadline := time.Now().Add(5 * time.Second)
		for _, k := range splitKeys {
			for {
				r, err := cli.KVStore.GetPDClient().GetRegion(ctx, []byte(k))
				if err != nil {
					return err
				}
				// A real PD may answer with no region for a moment while
				// the split's heartbeats arrive: not yet, poll again.
				if r != nil && r.Meta != nil && string(r.Meta.StartKey) == k {
					break
				}
				if time.Now().After(deadline) {
					if r == nil || r.Meta == nil {
						return fmt.Errorf("key %q: PD knows no region for it after the split", k)
					}
					return fmt.Errorf("key %q: region %d starts at %q after the split", k, r.Meta.Id, r.Meta.StartKey)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		return nil
	}()
	c.check("txn SplitRegions (pre-split through the stores)", err)

	// Optimistic 2PC across regions.
	keys := spreadKeys("opt", 8)
	all = append(all, keys...)
	pairs := map[string]string{}
	for i, k := range keys {
		pairs[k] = fmt.Sprintf("o%d", i)
	}
	txn, err := txnPut(ctx, cli, pairs, func(t *transaction.KVTxn) {
		t.SetEnableAsyncCommit(false)
		t.SetEnable1PC(false)
	})
	if c.check("txn optimistic 2PC commit across regions", err) {
		for k, v := range pairs {
			m[k] = v
		}
		if txn.CommitTS() <= txn.StartTS() {
			c.fail("txn commit ts", "commit ts %d not after start ts %d", txn.CommitTS(), txn.StartTS())
		}
	}
	c.check("txn read back 2PC writes", readAll(ctx, cli, m, all))

	// Async commit across regions.
	keys = spreadKeys("async", 6)
	all = append(all, keys...)
	pairs = map[string]string{}
	for i, k := range keys {
		pairs[k] = fmt.Sprintf("a%d", i)
	}
	_, err = txnPut(ctx, cli, pairs, func(t *transaction.KVTxn) {
		t.SetEnableAsyncCommit(true)
		t.SetEnable1PC(false)
	})
	if c.check("txn async commit across regions", err) {
		for k, v := range pairs {
			m[k] = v
		}
	}
	c.check("txn read back async-commit writes", readAll(ctx, cli, m, all))

	// 1PC: keys in one region.
	pairs = map[string]string{"\x05one-pc-a": "p1", "\x05one-pc-b": "p2"}
	all = append(all, "\x05one-pc-a", "\x05one-pc-b")
	_, err = txnPut(ctx, cli, pairs, func(t *transaction.KVTxn) {
		t.SetEnableAsyncCommit(true)
		t.SetEnable1PC(true)
	})
	if c.check("txn 1PC commit in one region", err) {
		for k, v := range pairs {
			m[k] = v
		}
	}
	c.check("txn read back 1PC writes", readAll(ctx, cli, m, all))

	// Rollback leaves nothing.
	err = func() error {
		txn, err := cli.Begin()
		if err != nil {
			return err
		}
		if err := txn.Set([]byte("\x66rolled-back"), []byte("x")); err != nil {
			return err
		}
		return txn.Rollback()
	}()
	all = append(all, "\x66rolled-back")
	c.check("txn rollback", err)
	c.check("txn rolled-back write is invisible", readAll(ctx, cli, m, all))

	// Optimistic write conflict: two transactions write the same key; the later committer fails.
	err = func() error {
		k := []byte("\x77conflict")
		t1, err := cli.Begin()
		if err != nil {
			return err
		}
		t2, err := cli.Begin()
		if err != nil {
			return err
		}
		_ = t1.Set(k, []byte("t1"))
		_ = t2.Set(k, []byte("t2"))
		if err := t1.Commit(ctx); err != nil {
			return fmt.Errorf("first committer failed: %w", err)
		}
		m[string(k)] = "t1"
		err = t2.Commit(ctx)
		if err == nil {
			return errors.New("second committer succeeded")
		}
		if !tikverr.IsErrWriteConflict(err) && !strings.Contains(err.Error(), "write conflict") {
			return fmt.Errorf("second committer: want a write conflict, got %v", err)
		}
		all = append(all, string(k))
		return readAll(ctx, cli, m, all)
	}()
	c.check("txn optimistic write conflict (second committer fails)", err)

	// Pessimistic lock with wait: T2 waits for T1's lock, is woken by T1's commit
	// with a write conflict (legacy wake-up), retries with a new for_update_ts
	// and then sees T1's value.
	err = func() error {
		k := []byte("\x88pessimistic")
		t1, err := cli.Begin()
		if err != nil {
			return err
		}
		t1.SetPessimistic(true)
		ts, err := cli.GetTimestamp(ctx)
		if err != nil {
			return err
		}
		if err := t1.LockKeys(ctx, kv.NewLockCtx(ts, kv.LockAlwaysWait, time.Now()), k); err != nil {
			return fmt.Errorf("T1 lock: %w", err)
		}
		_ = t1.Set(k, []byte("from-t1"))
		t2, err := cli.Begin()
		if err != nil {
			return err
		}
		t2.SetPessimistic(true)
		const hold = 300 * time.Millisecond
		go func() {
			time.Sleep(hold)
			_ = t1.Commit(ctx)
		}()
		start := time.Now()
		ts2, err := cli.GetTimestamp(ctx)
		if err != nil {
			return err
		}
		lockCtx := kv.NewLockCtx(ts2, 5000, time.Now())
		lockCtx.InitReturnValues(1)
		err = t2.LockKeys(ctx, lockCtx, k)
		waited := time.Since(start)
		retried := false
		if err != nil && tikverr.IsErrWriteConflict(err) {
			// What TiDB does: retry the statement with a fresh for_update_ts.
			retried = true
			ts2, err = cli.GetTimestamp(ctx)
			if err != nil {
				return err
			}
			lockCtx = kv.NewLockCtx(ts2, 5000, time.Now())
			lockCtx.InitReturnValues(1)
			err = t2.LockKeys(ctx, lockCtx, k)
		}
		if err != nil {
			return fmt.Errorf("T2 lock: %w", err)
		}
		if waited < hold-50*time.Millisecond {
			return fmt.Errorf("T2 acquired the lock after %v, before T1 released it (%v)", waited, hold)
		}
		// A locking read returns the latest committed value (TiDB's SELECT FOR UPDATE).
		if got := string(lockCtx.Values[string(k)].Value); got != "from-t1" {
			return fmt.Errorf("T2's locking read returns %q after the wait, want T1's value", got)
		}
		_ = t2.Set(k, []byte("from-t2"))
		if err := t2.Commit(ctx); err != nil {
			return fmt.Errorf("T2 commit: %w", err)
		}
		m[string(k)] = "from-t2"
		all = append(all, string(k))
		fmt.Printf("  (T2 waited %v; woken by a write conflict and retried: %v)\n", waited.Round(time.Millisecond), retried)
		return readAll(ctx, cli, m, all)
	}()
	c.check("txn pessimistic lock with wait (woken on release, then commit)", err)

	// Pessimistic no-wait fails at once on a held lock.
	err = func() error {
		k := []byte("\x99nowait")
		t1, err := cli.Begin()
		if err != nil {
			return err
		}
		t1.SetPessimistic(true)
		ts, _ := cli.GetTimestamp(ctx)
		if err := t1.LockKeys(ctx, kv.NewLockCtx(ts, kv.LockAlwaysWait, time.Now()), k); err != nil {
			return err
		}
		defer func() { _ = t1.Rollback() }()
		t2, err := cli.Begin()
		if err != nil {
			return err
		}
		t2.SetPessimistic(true)
		defer func() { _ = t2.Rollback() }()
		ts2, _ := cli.GetTimestamp(ctx)
		err = t2.LockKeys(ctx, kv.NewLockCtx(ts2, kv.LockNoWait, time.Now()), k)
		if !errors.Is(err, tikverr.ErrLockAcquireFailAndNoWaitSet) {
			return fmt.Errorf("want ErrLockAcquireFailAndNoWaitSet, got %v", err)
		}
		return nil
	}()
	c.check("txn pessimistic lock no-wait on a held lock", err)

	// A deadlock between two pessimistic transactions: TiKV's detector fails
	// the request that closes the cycle, the other's wait ends once the
	// victim rolls back.
	err = func() error {
		ka, kb := []byte("\x3adeadlock-a"), []byte("\xbadeadlock-b")
		t1, err := cli.Begin()
		if err != nil {
			return err
		}
		t1.SetPessimistic(true)
		t2, err := cli.Begin()
		if err != nil {
			return err
		}
		t2.SetPessimistic(true)
		// A woken waiter is answered with a write conflict (TiKV's legacy
		// wake-up), which TiDB retries with a fresh for_update_ts.
		lock := func(t *transaction.KVTxn, k []byte) error {
			for {
				ts, err := cli.GetTimestamp(ctx)
				if err != nil {
					return err
				}
				err = t.LockKeys(ctx, kv.NewLockCtx(ts, kv.LockAlwaysWait, time.Now()), k)
				if !tikverr.IsErrWriteConflict(err) {
					return err
				}
			}
		}
		if err := lock(t1, ka); err != nil {
			return fmt.Errorf("T1 locks a: %w", err)
		}
		if err := lock(t2, kb); err != nil {
			return fmt.Errorf("T2 locks b: %w", err)
		}
		waiting := make(chan error, 1)
		go func() { waiting <- lock(t1, kb) }()
		time.Sleep(300 * time.Millisecond)
		err = lock(t2, ka)
		var deadlock *tikverr.ErrDeadlock
		if !errors.As(err, &deadlock) {
			_ = t2.Rollback()
			<-waiting
			_ = t1.Rollback()
			return fmt.Errorf("T2 closes the cycle: want ErrDeadlock, got %v", err)
		}
		if err := t2.Rollback(); err != nil {
			return err
		}
		if err := <-waiting; err != nil {
			return fmt.Errorf("T1's wait for b after the victim rolled back: %w", err)
		}
		_ = t1.Set(ka, []byte("t1"))
		_ = t1.Set(kb, []byte("t1"))
		if err := t1.Commit(ctx); err != nil {
			return err
		}
		m[string(ka)], m[string(kb)] = "t1", "t1"
		all = append(all, string(ka), string(kb))
		return readAll(ctx, cli, m, all)
	}()
	c.check("txn pessimistic deadlock (the cycle's last request fails with ErrDeadlock, the other commits)", err)

	// A pessimistic writer crashes holding its lock (its TTL manager stops,
	// as in client-go's own tests); another's lock request waits until the
	// lock's TTL has passed, resolves it and gets the key.
	err = func() error {
		k := []byte("\x3bcrashed-pessimistic")
		atomic.StoreUint64(&transaction.ManagedLockTTL, 500)
		t1, err := cli.Begin()
		if err == nil {
			t1.SetPessimistic(true)
			ts, _ := cli.GetTimestamp(ctx)
			err = t1.LockKeys(ctx, kv.NewLockCtx(ts, kv.LockAlwaysWait, time.Now()), k)
		}
		atomic.StoreUint64(&transaction.ManagedLockTTL, 20000)
		if err != nil {
			return fmt.Errorf("T1 locks: %w", err)
		}
		transaction.TxnProbe{KVTxn: t1}.GetCommitter().CloseTTLManager()
		t2, err := cli.Begin()
		if err != nil {
			return err
		}
		t2.SetPessimistic(true)
		ts, _ := cli.GetTimestamp(ctx)
		start := time.Now()
		if err := t2.LockKeys(ctx, kv.NewLockCtx(ts, kv.LockAlwaysWait, time.Now()), k); err != nil {
			return fmt.Errorf("T2 locks past the crashed lock: %w", err)
		}
		_ = t2.Set(k, []byte("t2"))
		if err := t2.Commit(ctx); err != nil {
			return err
		}
		fmt.Printf("  (T2 waited %v for the crashed lock's TTL)\n", time.Since(start).Round(time.Millisecond))
		m[string(k)] = "t2"
		all = append(all, string(k))
		return readAll(ctx, cli, m, all)
	}()
	c.check("txn pessimistic lock of a crashed writer resolved after its TTL", err)

	// Lock resolution: a "crashed" writer prewrote (primary + secondary in
	// another region) and never committed; a reader after the TTL rolls it back.
	err = func() error {
		primary, secondary := []byte("\x12crashed-primary"), []byte("\xe2crashed-secondary")
		m[string(primary)] = "before"
		if _, err := txnPut(ctx, cli, map[string]string{string(primary): "before"}, nil); err != nil {
			return err
		}
		startTS, err := cli.GetTimestamp(ctx)
		if err != nil {
			return err
		}
		const ttl = 200 // ms
		for _, key := range [][]byte{primary, secondary} {
			req := tikvrpc.NewRequest(tikvrpc.CmdPrewrite, &kvrpcpb.PrewriteRequest{
				Mutations:    []*kvrpcpb.Mutation{{Op: kvrpcpb.Op_Put, Key: key, Value: []byte("crashed")}},
				PrimaryLock:  primary,
				StartVersion: startTS,
				LockTtl:      ttl,
				TxnSize:      2,
			})
			bo := tikv.NewBackofferWithVars(ctx, 5000, nil)
			loc, err := cli.GetRegionCache().LocateKey(bo, key)
			if err != nil {
				return err
			}
			resp, err := cli.SendReq(bo, req, loc.Region, 5*time.Second)
			if err != nil {
				return err
			}
			if regionErr, _ := resp.GetRegionError(); regionErr != nil {
				return fmt.Errorf("prewrite region error: %v", regionErr)
			}
			if pr := resp.Resp.(*kvrpcpb.PrewriteResponse); len(pr.Errors) > 0 {
				return fmt.Errorf("prewrite key error: %v", pr.Errors[0])
			}
		}
		// Within the TTL a reader meets the live lock. Then wait out the TTL.
		time.Sleep(ttl*time.Millisecond + 100*time.Millisecond)
		all = append(all, string(primary), string(secondary))
		if err := readAll(ctx, cli, m, all); err != nil {
			return err
		}
		// The secondary was resolved too: a new write to it commits without conflict.
		if _, err := txnPut(ctx, cli, map[string]string{string(secondary): "after"}, nil); err != nil {
			return fmt.Errorf("write after resolution: %w", err)
		}
		m[string(secondary)] = "after"
		return readAll(ctx, cli, m, all)
	}()
	c.check("txn lock resolution of a crashed writer's locks after their TTL", err)

	// GC state through PD's GC states API.
	err = func() error {
		state, err := cli.GetPDClient().GetGCStatesClient(0).GetGCState(ctx)
		if err != nil {
			return err
		}
		now, err := cli.GetTimestamp(ctx)
		if err != nil {
			return err
		}
		if state.TxnSafePoint > now || state.GCSafePoint > state.TxnSafePoint {
			return fmt.Errorf("implausible GC state %+v (now %d)", state, now)
		}
		fmt.Printf("  (GC state: txn safe point %d, gc safe point %d, physical now %v)\n",
			state.TxnSafePoint, state.GCSafePoint, oracle.GetTimeFromTS(now).UTC().Format(time.RFC3339))
		return nil
	}()
	c.check("gc state read (GetGCState)", err)
}

// setupLogger routes client-go's log (pingcap/log, to stdout by default)
// to a file at info level, or to stderr at error level: stdout is kept for
// this program's own lines.
func setupLogger(logFile string) error {
	var lg *zap.Logger
	var props *log.ZapProperties
	var err error
	if logFile != "" {
		lg, props, err = log.InitLogger(&log.Config{Level: "info", File: log.FileLogConfig{Filename: logFile}})
	} else {
		stderr := zapcore.AddSync(os.Stderr)
		lg, props, err = log.InitLoggerWithWriteSyncer(&log.Config{Level: "error"}, stderr, stderr)
	}
	if err != nil {
		return fmt.Errorf("cannot set up client-go's logger: %v", err)
	}
	log.ReplaceGlobals(lg, props)
	return nil
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "interop":
			os.Exit(interopMain(os.Args[2:]))
		case "bench":
			os.Exit(benchMain(os.Args[2:]))
		case "contention":
			os.Exit(contentionMain(os.Args[2:]))
		case "txnbench":
			os.Exit(txnBenchMain(os.Args[2:]))
		case "slowstore":
			os.Exit(slowStoreMain(os.Args[2:]))
		case "pipelinedbench":
			os.Exit(pipelinedBenchMain(os.Args[2:]))
		case "regioncachebench":
			os.Exit(regionCacheBenchMain(os.Args[2:]))
		case "ycsb":
			os.Exit(ycsbMain(os.Args[2:]))
		case "memdbbench":
			os.Exit(memdbBenchMain(os.Args[2:]))
		}
	}
	rawPD := flag.String("raw-pd", "", "PD address(es) of an API V1 cluster for the raw checks, comma separated")
	txnPD := flag.String("txn-pd", "", "PD address(es) of an API V1 cluster for the txn checks, comma separated")
	ttlPD := flag.String("ttl-pd", "", "PD address(es) of an API V1 cluster with TTL enabled (tikv-sim --enable-ttl), comma separated")
	flag.BoolVar(&realPD, "real-pd", false, "the PD is a real one: run client-go with its defaults")
	timeout := flag.Duration("timeout", 3*time.Minute, "overall time limit")
	logFile := flag.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	flag.Parse()
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *rawPD == "" && *txnPD == "" && *ttlPD == "" {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go [--real-pd] --raw-pd HOST:PORT --txn-pd HOST:PORT [--ttl-pd HOST:PORT]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := &checker{}
	if *rawPD != "" {
		runRaw(ctx, c, strings.Split(*rawPD, ","))
	}
	if *txnPD != "" {
		runTxn(ctx, c, strings.Split(*txnPD, ","))
	}
	if *ttlPD != "" {
		runRawTTL(ctx, c, strings.Split(*ttlPD, ","))
	}
	fmt.Printf("client-go: %d passed, %d failed\n", c.passed, c.failed)
	if c.failed > 0 || c.passed == 0 {
		os.Exit(1)
	}
}
