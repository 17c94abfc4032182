package main

// The regioncachebench mode: client-go's RegionCache under the lookups of our
// `core/benches/region_cache.rs`, for bench/region-cache-vs-client-go.sh. The
// cache holds N adjacent regions covering the whole key space with the same
// TiDB-like start keys as ours, loaded as client-go loads them (ScanRegions
// batches through BatchLoadRegionsFromKey) from a PD that answers out of the
// region numbering rather than a stored list, so the heap growth measured
// while filling is the cache's alone. It prints
//
//	HEAP regions=N heap_bytes_per_region=B
//	RESULT regions=N case=NAME ns_per_lookup=T cpu_ns_per_lookup=C process_cpu_ns_per_lookup=P lookups=L inserts=I
//
// for every size and case, where T and C are the means over the reader
// goroutines of each one's elapsed and CPU time per LocateKey (each reader
// holds its OS thread, whose CPU time Linux's schedstat gives, so that on a
// shared machine the time it waits for a core does not count), and P is the
// whole process's CPU time per lookup, which adds the writer's and the
// garbage collector's background work.

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pingcap/kvproto/pkg/metapb"
	"github.com/tikv/client-go/v2/tikv"
	pd "github.com/tikv/pd/client"
	"github.com/tikv/pd/client/clients/router"
	"github.com/tikv/pd/client/opt"
	"github.com/tikv/pd/client/pkg/caller"
)

// regionCacheTablePrefix is `t` + the memcomparable table id 42, as in
// TiDB's record keys.
var regionCacheTablePrefix = func() []byte {
	k := []byte{'t'}
	return binary.BigEndian.AppendUint64(k, 42^(1<<63))
}()

// regionCacheRecordKey appends the record key of handle in table 42: the
// table prefix, `_r`, then the handle big-endian (the bench's `record_key`).
func regionCacheRecordKey(dst []byte, handle uint64) []byte {
	dst = append(dst, regionCacheTablePrefix...)
	dst = append(dst, '_', 'r')
	return binary.BigEndian.AppendUint64(dst, handle)
}

// regionCacheStartKey is region i's start key: region i holds handles
// [1000 i, 1000 (i + 1)); region 0 starts at the empty key.
func regionCacheStartKey(dst []byte, i uint64) []byte {
	if i == 0 {
		return dst[:0]
	}
	return regionCacheRecordKey(dst, i*1000)
}

// regionCachePD is the part of a PD client that a RegionCache uses, answering
// from n adjacent regions numbered 0..n-1 (region i has id i+1, epoch 1/1 and
// peers i*10+s on stores s = 1..3, the first one leading). Every answer is
// freshly allocated, as a decoded PD response is. The embedded interface is
// nil: a method the cache is not expected to call panics.
type regionCachePD struct {
	pd.Client
	n uint64
	// gets counts GetRegion calls: the cache's misses.
	gets atomic.Uint64
}

func (p *regionCachePD) GetClusterID(context.Context) uint64            { return 1 }
func (p *regionCachePD) WithCallerComponent(caller.Component) pd.Client { return p }
func (p *regionCachePD) Close()                                         {}

func (p *regionCachePD) GetStore(_ context.Context, id uint64, _ ...opt.GetStoreOption) (*metapb.Store, error) {
	if id < 1 || id > 3 {
		return nil, fmt.Errorf("no store %d", id)
	}
	return regionCacheStore(id), nil
}

func (p *regionCachePD) GetAllStores(context.Context, ...opt.GetStoreOption) ([]*metapb.Store, error) {
	return []*metapb.Store{regionCacheStore(1), regionCacheStore(2), regionCacheStore(3)}, nil
}

func regionCacheStore(id uint64) *metapb.Store {
	return &metapb.Store{Id: id, Address: "store" + strconv.FormatUint(id, 10), State: metapb.StoreState_Up}
}

// indexOf is the number of the region holding key.
func (p *regionCachePD) indexOf(key []byte) uint64 {
	var buf [32]byte
	// The first region whose start key is above key, minus one.
	above := sort.Search(int(p.n), func(i int) bool {
		return bytes.Compare(regionCacheStartKey(buf[:0], uint64(i)), key) > 0
	})
	return uint64(above - 1)
}

// regionCacheOwnedStartKey is region i's start key in a buffer of its own
// of exactly its length, as a decoded PD response holds it.
func regionCacheOwnedStartKey(i uint64) []byte {
	if i == 0 {
		return nil
	}
	return regionCacheStartKey(make([]byte, 0, len(regionCacheTablePrefix)+2+8), i)
}

func (p *regionCachePD) region(i uint64) *router.Region {
	id := i + 1
	meta := &metapb.Region{
		Id:          id,
		StartKey:    regionCacheOwnedStartKey(i),
		RegionEpoch: &metapb.RegionEpoch{ConfVer: 1, Version: 1},
	}
	if i+1 < p.n {
		meta.EndKey = regionCacheOwnedStartKey(i + 1)
	}
	for s := uint64(1); s <= 3; s++ {
		meta.Peers = append(meta.Peers, &metapb.Peer{Id: id*10 + s, StoreId: s})
	}
	return &router.Region{Meta: meta, Leader: meta.Peers[0]}
}

func (p *regionCachePD) GetRegion(_ context.Context, key []byte, _ ...opt.GetRegionOption) (*router.Region, error) {
	p.gets.Add(1)
	return p.region(p.indexOf(key)), nil
}

func (p *regionCachePD) ScanRegions(_ context.Context, key, endKey []byte, limit int, _ ...opt.GetRegionOption) ([]*router.Region, error) {
	var out []*router.Region
	var buf [32]byte
	for i := p.indexOf(key); i < p.n && len(out) < limit; i++ {
		if len(endKey) > 0 && i > 0 && bytes.Compare(regionCacheStartKey(buf[:0], i), endKey) >= 0 {
			break
		}
		out = append(out, p.region(i))
	}
	return out, nil
}

// regionCacheLookups counts the lookups of all readers, published in steps of
// regionCachePublishEvery so that counting puts no shared write on every
// lookup.
var regionCacheLookups atomic.Uint64

const regionCachePublishEvery = 1024

// regionCacheLoad is one case: reader goroutines, whether a writer refreshes
// regions at 1 % of the lookup rate, and whether all readers look up one key.
type regionCacheLoad struct {
	name       string
	readers    int
	writer     bool
	sameRegion bool
}

// threadCPUNanos is the calling OS thread's time on a CPU so far, or -1 where
// Linux does not tell it.
func threadCPUNanos() int64 {
	stat, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return -1
	}
	ns, err := strconv.ParseInt(strings.Fields(string(stat))[0], 10, 64)
	if err != nil {
		return -1
	}
	return ns
}

// processCPUNanos is the CPU time of all of this process's threads so far.
func processCPUNanos() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// regionCacheMeasured is what runRegionCacheReaders measured: the means over
// readers of each one's elapsed and CPU time per lookup (cpuNs < 0: unknown),
// the process's CPU time per lookup, the lookups and the writer's refreshes.
type regionCacheMeasured struct {
	wallNs, cpuNs, processCPUNs float64
	lookups, inserts            uint64
}

// runRegionCacheReaders runs one case for d.
func runRegionCacheReaders(cache *tikv.RegionCache, probes [][]byte, n uint64, load regionCacheLoad, d time.Duration) regionCacheMeasured {
	processCPUBefore := processCPUNanos()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var inserts uint64
	writerDone := make(chan struct{})
	if load.writer {
		go func() {
			defer close(writerDone)
			// client-go's refresh of a cached region: a one-region scan from
			// PD, then insertRegionToCache under the cache's write lock.
			bo := tikv.NewBackofferWithVars(context.Background(), 20000, nil)
			rng := rand.New(rand.NewPCG(9, 9))
			base := regionCacheLookups.Load()
			var key []byte
			for !stop.Load() {
				target := (regionCacheLookups.Load() - base) / 100
				for inserts < target && !stop.Load() {
					key = regionCacheStartKey(key[:0], 1+rng.Uint64N(n-2))
					if _, err := cache.BatchLoadRegionsWithKeyRange(bo, key, nil, 1); err != nil {
						panic(err)
					}
					inserts++
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
	} else {
		close(writerDone)
	}
	wall := make([]float64, load.readers)
	cpu := make([]float64, load.readers)
	counts := make([]uint64, load.readers)
	for t := 0; t < load.readers; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			bo := tikv.NewBackofferWithVars(context.Background(), 20000, nil)
			mask := len(probes) - 1
			offset := t * 12345
			started, cpuBefore := time.Now(), threadCPUNanos()
			i := 0
			for {
				key := probes[0]
				if !load.sameRegion {
					key = probes[(i+offset)&mask]
				}
				loc, err := cache.LocateKey(bo, key)
				if err != nil || loc == nil {
					panic(fmt.Sprintf("lookup failed: %v", err))
				}
				i++
				if i%regionCachePublishEvery == 0 {
					regionCacheLookups.Add(regionCachePublishEvery)
					if stop.Load() {
						break
					}
				}
			}
			wall[t] = float64(time.Since(started).Nanoseconds()) / float64(i)
			cpu[t] = -1
			if cpuAfter := threadCPUNanos(); cpuBefore >= 0 && cpuAfter >= 0 {
				cpu[t] = float64(cpuAfter-cpuBefore) / float64(i)
			}
			counts[t] = uint64(i)
		}(t)
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	<-writerDone
	m := regionCacheMeasured{inserts: inserts}
	for t := range wall {
		m.wallNs += wall[t] / float64(load.readers)
		if m.cpuNs >= 0 && cpu[t] >= 0 {
			m.cpuNs += cpu[t] / float64(load.readers)
		} else {
			m.cpuNs = -1
		}
		m.lookups += counts[t]
	}
	m.processCPUNs = -1
	if after := processCPUNanos(); processCPUBefore >= 0 && after >= 0 {
		m.processCPUNs = float64(after-processCPUBefore) / float64(m.lookups)
	}
	return m
}

func regionCacheBenchMain(args []string) int {
	fs := flag.NewFlagSet("regioncachebench", flag.ExitOnError)
	sizes := fs.String("regions", "100000,1000000", "cache sizes, comma separated")
	procs := fs.Int("procs", 2, "GOMAXPROCS")
	warmUp := fs.Duration("warm-up", time.Second, "time each case runs before it is measured")
	measure := fs.Duration("measure", 2*time.Second, "time each case is measured")
	filter := fs.String("filter", "", "only the cases whose name contains this")
	_ = fs.Parse(args)
	runtime.GOMAXPROCS(*procs)
	if err := setupLogger(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cases := []regionCacheLoad{
		{"1-thread", 1, false, false},
		{"2-threads", 2, false, false},
		{"1-thread+1%-inserts", 1, true, false},
		{"2-threads+1%-inserts", 2, true, false},
		{"1-thread-same-region", 1, false, true},
		{"2-threads-same-region", 2, false, true},
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil || n < 3 {
			fmt.Fprintf(os.Stderr, "bad size %q\n", s)
			return 2
		}
		pdClient := &regionCachePD{n: n}
		cache := tikv.NewRegionCache(pdClient)
		bo := tikv.NewBackofferWithVars(context.Background(), 20000, nil)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var key []byte
		for {
			end, err := cache.BatchLoadRegionsFromKey(bo, key, 128)
			if err != nil {
				fmt.Fprintln(os.Stderr, "loading regions:", err)
				return 1
			}
			if len(end) == 0 {
				break
			}
			key = end
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		fmt.Printf("HEAP regions=%d heap_bytes_per_region=%d\n", n, (after.HeapAlloc-before.HeapAlloc)/n)

		rng := rand.New(rand.NewPCG(7, 7))
		probes := make([][]byte, 1<<16)
		for i := range probes {
			probes[i] = regionCacheRecordKey(nil, rng.Uint64N(n*1000))
			loc, err := cache.LocateKey(bo, probes[i])
			if err != nil || !loc.Contains(probes[i]) {
				fmt.Fprintf(os.Stderr, "probe %x not covered: %v\n", probes[i], err)
				return 1
			}
		}
		if misses := pdClient.gets.Load(); misses > 0 {
			fmt.Fprintf(os.Stderr, "%d probes missed the filled cache\n", misses)
			return 1
		}
		for _, load := range cases {
			if !strings.Contains(load.name, *filter) {
				continue
			}
			runRegionCacheReaders(cache, probes, n, load, *warmUp)
			m := runRegionCacheReaders(cache, probes, n, load, *measure)
			show := func(ns float64) string {
				if ns < 0 {
					return "?"
				}
				return strconv.FormatFloat(ns, 'f', 1, 64)
			}
			fmt.Printf("RESULT regions=%d case=%s ns_per_lookup=%.1f cpu_ns_per_lookup=%s process_cpu_ns_per_lookup=%s lookups=%d inserts=%d\n",
				n, load.name, m.wallNs, show(m.cpuNs), show(m.processCPUNs), m.lookups, m.inserts)
		}
		cache.Close()
		runtime.KeepAlive(pdClient)
	}
	return 0
}
