package main

// The interop mode: client-go as a step server for a driver that runs our
// client on the same simulated cluster (the `interop-client-go` binary of the
// tikv-tests crate). The driver owns the cluster and its fault injection;
// this side only does what client-go does, one command per line on stdin,
// one answer per line on stdout:
//
//	commit MODE K=V...                    one transaction; MODE is 2pc, async or 1pc
//	                                      -> ok START_TS COMMIT_TS
//	get K...                              reads each key in a fresh transaction (locks
//	                                      met are resolved by client-go's resolver)
//	                                      -> ok VALUE... (xHEX, or - when absent)
//	prewrite MODE TTL_MS PRIMARY K=V...   a writer that crashes after prewrite, built
//	                                      from client-go's test probes (TxnProbe,
//	                                      CommitterProbe); the first key is the
//	                                      primary; MODE is 2pc or async; PRIMARY 1
//	                                      also commits the primary before "crashing"
//	                                      -> ok START_TS COMMIT_TS (0: not committed)
//
//	plock ID WAIT_MS K...                 pessimistic transaction ID (begun on first use)
//	                                      locks the keys at a fresh for_update_ts,
//	                                      retrying a write conflict with a fresh one as
//	                                      TiDB does; WAIT_MS -1 is no-wait, 0 waits
//	                                      until the lock is free (kv.LockAlwaysWait)
//	                                      -> ok START_TS FOR_UPDATE_TS
//	plock-shared ID WAIT_MS K...          the same in share mode (LockCtx.InShareMode:
//	                                      the transaction must hold an exclusive
//	                                      lock, its primary, first)
//	plock-bg ID WAIT_MS K...              the same in the background -> ok at once;
//	await ID                              then its answer, as plock's
//	pcommit ID K=V...                     sets the pairs and commits transaction ID
//	                                      -> ok START_TS COMMIT_TS
//	prollback ID                          rolls transaction ID back -> ok
//	pcrash ID                             transaction ID "crashes": its TTL manager
//	                                      stops and it is abandoned with its locks
//	                                      -> ok START_TS
//	lock-ttl MS                           client-go's ManagedLockTTL for later
//	                                      pessimistic transactions -> ok
//
//	gc SAFE_POINT                         one GC round (KVStore.GC: advance the txn safe
//	                                      point, resolve every lock at or below it, then
//	                                      UpdateGCSafePoint) -> ok NEW_GC_SAFE_POINT
//	get-at TS K...                        reads each key from a snapshot at TS (client-go
//	                                      checks TS against its cached txn safe point)
//	                                      -> ok VALUE..., or err aborted-by-gc ... when
//	                                      TS is below the txn safe point
// Keys and values are hex. An error answers `err MESSAGE` (one line); a
// pessimistic lock's typed failures answer `err deadlock ...`,
// `err lock-wait-timeout ...` or `err no-wait ...`; a read refused below the
// txn safe point answers `err aborted-by-gc ...`.

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	tikverr "github.com/tikv/client-go/v2/error"
	"github.com/tikv/client-go/v2/kv"
	"github.com/tikv/client-go/v2/oracle"
	"github.com/tikv/client-go/v2/txnkv"
	"github.com/tikv/client-go/v2/txnkv/transaction"
)

type pair struct{ key, value []byte }

func parsePairs(fields []string) ([]pair, error) {
	if len(fields) == 0 {
		return nil, errors.New("no K=V pairs")
	}
	out := make([]pair, 0, len(fields))
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not K=V", f)
		}
		key, err := hex.DecodeString(k)
		if err != nil {
			return nil, fmt.Errorf("key %q: %v", k, err)
		}
		value, err := hex.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("value %q: %v", v, err)
		}
		out = append(out, pair{key, value})
	}
	return out, nil
}

type interopServer struct {
	cli *txnkv.Client
	// Pessimistic transactions held between commands, by the driver's ID.
	held map[string]*transaction.KVTxn
	// Background lock calls (plock-bg), answered by await.
	pending map[string]chan lockAnswer
}

type lockAnswer struct {
	answer string
	err    error
}

func parseKeys(fields []string) ([][]byte, error) {
	if len(fields) == 0 {
		return nil, errors.New("no keys")
	}
	out := make([][]byte, 0, len(fields))
	for _, f := range fields {
		key, err := hex.DecodeString(f)
		if err != nil {
			return nil, fmt.Errorf("key %q: %v", f, err)
		}
		out = append(out, key)
	}
	return out, nil
}

// heldTxn returns pessimistic transaction id, beginning it if new.
func (s *interopServer) heldTxn(id string) (*transaction.KVTxn, error) {
	if txn, ok := s.held[id]; ok {
		return txn, nil
	}
	txn, err := s.cli.Begin()
	if err != nil {
		return nil, err
	}
	txn.SetPessimistic(true)
	s.held[id] = txn
	return txn, nil
}

// classifyLockErr names a pessimistic lock's typed failures so the driver
// can tell them apart.
func classifyLockErr(err error) error {
	var deadlock *tikverr.ErrDeadlock
	switch {
	case errors.As(err, &deadlock):
		return fmt.Errorf("deadlock retryable=%v: %v", deadlock.IsRetryable, err)
	case errors.Is(err, tikverr.ErrLockWaitTimeout):
		return fmt.Errorf("lock-wait-timeout: %v", err)
	case errors.Is(err, tikverr.ErrLockAcquireFailAndNoWaitSet):
		return fmt.Errorf("no-wait: %v", err)
	}
	return err
}

// lockKeys is one locking statement of a pessimistic transaction, retried
// with a fresh for_update_ts on a write conflict as TiDB retries it.
func (s *interopServer) lockKeys(ctx context.Context, txn *transaction.KVTxn, waitMs int64, shared bool, keys [][]byte) (string, error) {
	for attempt := 0; ; attempt++ {
		forUpdateTS, err := s.cli.GetTimestamp(ctx)
		if err != nil {
			return "", err
		}
		lockCtx := kv.NewLockCtx(forUpdateTS, waitMs, time.Now())
		lockCtx.InShareMode = shared
		err = txn.LockKeys(ctx, lockCtx, keys...)
		if err != nil && tikverr.IsErrWriteConflict(err) && attempt < 16 {
			continue
		}
		if err != nil {
			return "", classifyLockErr(err)
		}
		return fmt.Sprintf("%d %d", txn.StartTS(), forUpdateTS), nil
	}
}

func (s *interopServer) plock(ctx context.Context, args []string, background, shared bool) (string, error) {
	if len(args) < 3 {
		return "", errors.New("usage: plock ID WAIT_MS K...")
	}
	id := args[0]
	waitMs, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return "", fmt.Errorf("WAIT_MS: %v", err)
	}
	if waitMs == 0 {
		waitMs = kv.LockAlwaysWait
	}
	keys, err := parseKeys(args[2:])
	if err != nil {
		return "", err
	}
	txn, err := s.heldTxn(id)
	if err != nil {
		return "", err
	}
	if !background {
		return s.lockKeys(ctx, txn, waitMs, shared, keys)
	}
	if _, busy := s.pending[id]; busy {
		return "", fmt.Errorf("transaction %s already has a lock call in flight", id)
	}
	done := make(chan lockAnswer, 1)
	s.pending[id] = done
	go func() {
		// Not the step's context: the call outlives this command.
		bgCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		answer, err := s.lockKeys(bgCtx, txn, waitMs, shared, keys)
		done <- lockAnswer{answer, err}
	}()
	return "", nil
}

func (s *interopServer) await(ctx context.Context, args []string) (string, error) {
	if len(args) != 1 {
		return "", errors.New("usage: await ID")
	}
	done, ok := s.pending[args[0]]
	if !ok {
		return "", fmt.Errorf("no lock call in flight for %s", args[0])
	}
	select {
	case a := <-done:
		delete(s.pending, args[0])
		return a.answer, a.err
	case <-ctx.Done():
		return "", fmt.Errorf("await %s: %v", args[0], ctx.Err())
	}
}

// finishHeld takes transaction id out of the table; it must exist and have
// no lock call in flight.
func (s *interopServer) finishHeld(id string) (*transaction.KVTxn, error) {
	txn, ok := s.held[id]
	if !ok {
		return nil, fmt.Errorf("no transaction %s", id)
	}
	if _, busy := s.pending[id]; busy {
		return nil, fmt.Errorf("transaction %s has a lock call in flight", id)
	}
	delete(s.held, id)
	return txn, nil
}

func (s *interopServer) pcommit(ctx context.Context, args []string) (string, error) {
	if len(args) < 1 {
		return "", errors.New("usage: pcommit ID K=V...")
	}
	var pairs []pair
	if len(args) > 1 {
		var err error
		if pairs, err = parsePairs(args[1:]); err != nil {
			return "", err
		}
	}
	txn, err := s.finishHeld(args[0])
	if err != nil {
		return "", err
	}
	for _, p := range pairs {
		if err := txn.Set(p.key, p.value); err != nil {
			return "", err
		}
	}
	if err := txn.Commit(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %d", txn.StartTS(), txn.CommitTS()), nil
}

func (s *interopServer) prollback(args []string) (string, error) {
	if len(args) != 1 {
		return "", errors.New("usage: prollback ID")
	}
	txn, err := s.finishHeld(args[0])
	if err != nil {
		return "", err
	}
	return "", txn.Rollback()
}

// pcrash abandons transaction ID as a crashed TiDB would: no rollback, and
// its TTL manager stops so its locks expire (client-go's integration tests
// crash a pessimistic transaction the same way).
func (s *interopServer) pcrash(args []string) (string, error) {
	if len(args) != 1 {
		return "", errors.New("usage: pcrash ID")
	}
	txn, err := s.finishHeld(args[0])
	if err != nil {
		return "", err
	}
	transaction.TxnProbe{KVTxn: txn}.GetCommitter().CloseTTLManager()
	return fmt.Sprintf("%d", txn.StartTS()), nil
}

func (s *interopServer) lockTTL(args []string) (string, error) {
	if len(args) != 1 {
		return "", errors.New("usage: lock-ttl MS")
	}
	ms, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		return "", err
	}
	atomic.StoreUint64(&transaction.ManagedLockTTL, ms)
	return "", nil
}

func (s *interopServer) commit(ctx context.Context, args []string) (string, error) {
	if len(args) < 2 {
		return "", errors.New("usage: commit MODE K=V...")
	}
	pairs, err := parsePairs(args[1:])
	if err != nil {
		return "", err
	}
	txn, err := s.cli.Begin()
	if err != nil {
		return "", err
	}
	switch args[0] {
	case "2pc":
		txn.SetEnableAsyncCommit(false)
		txn.SetEnable1PC(false)
	case "async":
		txn.SetEnableAsyncCommit(true)
		txn.SetEnable1PC(false)
	case "1pc":
		txn.SetEnableAsyncCommit(true)
		txn.SetEnable1PC(true)
	default:
		return "", fmt.Errorf("unknown mode %q", args[0])
	}
	for _, p := range pairs {
		if err := txn.Set(p.key, p.value); err != nil {
			return "", err
		}
	}
	if err := txn.Commit(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %d", txn.StartTS(), txn.CommitTS()), nil
}

// get reads each key in a transaction of its own, as independent readers
// would: a snapshot that has determined a transaction's status reads past
// that transaction's other locks (Context.resolved_locks / committed_locks)
// without meeting, and so without resolving, them.
func (s *interopServer) get(ctx context.Context, args []string) (string, error) {
	out := make([]string, 0, len(args))
	for _, a := range args {
		key, err := hex.DecodeString(a)
		if err != nil {
			return "", fmt.Errorf("key %q: %v", a, err)
		}
		txn, err := s.cli.Begin()
		if err != nil {
			return "", err
		}
		v, err := txn.Get(ctx, key)
		_ = txn.Rollback()
		switch {
		case tikverr.IsErrNotFound(err):
			out = append(out, "-")
		case err != nil:
			return "", err
		default:
			out = append(out, "x"+hex.EncodeToString(v.Value))
		}
	}
	return strings.Join(out, " "), nil
}

// gc runs one round of client-go's own GC at the given safe point.
func (s *interopServer) gc(ctx context.Context, args []string) (string, error) {
	if len(args) != 1 {
		return "", errors.New("usage: gc SAFE_POINT")
	}
	safePoint, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		return "", fmt.Errorf("SAFE_POINT: %v", err)
	}
	newSafePoint, err := s.cli.GC(ctx, safePoint)
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(newSafePoint, 10), nil
}

// getAt reads keys from one snapshot at a given ts.
func (s *interopServer) getAt(ctx context.Context, args []string) (string, error) {
	if len(args) < 2 {
		return "", errors.New("usage: get-at TS K...")
	}
	ts, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		return "", fmt.Errorf("TS: %v", err)
	}
	snapshot := s.cli.GetSnapshot(ts)
	out := make([]string, 0, len(args)-1)
	for _, a := range args[1:] {
		key, err := hex.DecodeString(a)
		if err != nil {
			return "", fmt.Errorf("key %q: %v", a, err)
		}
		v, err := snapshot.Get(ctx, key)
		var aborted *tikverr.ErrTxnAbortedByGC
		switch {
		case errors.As(err, &aborted):
			return "", fmt.Errorf("aborted-by-gc txn safe point %d: %v", aborted.TxnSafePoint, err)
		case tikverr.IsErrNotFound(err):
			out = append(out, "-")
		case err != nil:
			return "", err
		default:
			out = append(out, "x"+hex.EncodeToString(v.Value))
		}
	}
	return strings.Join(out, " "), nil
}

// prewrite runs the first phase of a commit through client-go's test probes
// and stops there (optionally after committing the primary), leaving its
// locks as a crashed client-go writer would.
func (s *interopServer) prewrite(ctx context.Context, args []string) (string, error) {
	if len(args) < 4 {
		return "", errors.New("usage: prewrite MODE TTL_MS PRIMARY K=V...")
	}
	mode := args[0]
	if mode != "2pc" && mode != "async" {
		return "", fmt.Errorf("unknown mode %q", mode)
	}
	ttl, err := strconv.ParseUint(args[1], 10, 64)
	if err != nil {
		return "", fmt.Errorf("TTL_MS: %v", err)
	}
	commitPrimary := args[2] == "1"
	pairs, err := parsePairs(args[3:])
	if err != nil {
		return "", err
	}
	txn, err := s.cli.Begin()
	if err != nil {
		return "", err
	}
	txn.SetEnableAsyncCommit(mode == "async")
	txn.SetEnable1PC(false)
	for _, p := range pairs {
		if err := txn.Set(p.key, p.value); err != nil {
			return "", err
		}
	}
	committer, err := transaction.TxnProbe{KVTxn: txn}.NewCommitter(1)
	if err != nil {
		return "", err
	}
	committer.SetPrimaryKey(pairs[0].key)
	committer.SetLockTTL(ttl)
	if mode == "async" {
		committer.SetUseAsyncCommit()
		// What execute() would set: the start ts plus client-go's default
		// async-commit safe window (2 s).
		committer.SetMaxCommitTS(txn.StartTS() + oracle.ComposeTS(2000, 0))
	}
	if err := committer.PrewriteAllMutations(ctx); err != nil {
		return "", fmt.Errorf("prewrite: %w", err)
	}
	var commitTS uint64
	if commitPrimary {
		commitTS, err = s.cli.GetTimestamp(ctx)
		if err != nil {
			return "", err
		}
		committer.SetCommitTS(commitTS)
		// CommitMutations commits the primary only.
		if err := committer.CommitMutations(ctx); err != nil {
			return "", fmt.Errorf("commit primary: %w", err)
		}
	}
	return fmt.Sprintf("%d %d", txn.StartTS(), commitTS), nil
}

func (s *interopServer) serve(ctx context.Context, in io.Reader, out io.Writer) error {
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<16), 1<<24)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 0 {
			continue
		}
		var answer string
		var err error
		stepCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		switch fields[0] {
		case "commit":
			answer, err = s.commit(stepCtx, fields[1:])
		case "get":
			answer, err = s.get(stepCtx, fields[1:])
		case "prewrite":
			answer, err = s.prewrite(stepCtx, fields[1:])
		case "plock":
			answer, err = s.plock(stepCtx, fields[1:], false, false)
		case "plock-shared":
			answer, err = s.plock(stepCtx, fields[1:], false, true)
		case "plock-bg":
			answer, err = s.plock(stepCtx, fields[1:], true, false)
		case "await":
			answer, err = s.await(stepCtx, fields[1:])
		case "pcommit":
			answer, err = s.pcommit(stepCtx, fields[1:])
		case "prollback":
			answer, err = s.prollback(fields[1:])
		case "pcrash":
			answer, err = s.pcrash(fields[1:])
		case "lock-ttl":
			answer, err = s.lockTTL(fields[1:])
		case "gc":
			answer, err = s.gc(stepCtx, fields[1:])
		case "get-at":
			answer, err = s.getAt(stepCtx, fields[1:])
		case "quit":
			cancel()
			return nil
		default:
			err = fmt.Errorf("unknown command %q", fields[0])
		}
		cancel()
		if err != nil {
			_, err = fmt.Fprintf(out, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			_, err = fmt.Fprintf(out, "ok %s\n", answer)
		}
		if err != nil {
			return err
		}
	}
	return scanner.Err()
}

func interopMain(args []string) int {
	fs := flag.NewFlagSet("interop", flag.ExitOnError)
	pdAddrs := fs.String("pd", "", "PD address(es) of an API V1 transactional cluster, comma separated")
	logFile := fs.String("log", "", "client-go's log file (default: none below error level, to stderr)")
	fs.BoolVar(&realPD, "real-pd", false, "the PD is a real one: client-go runs as it ships")
	_ = fs.Parse(args)
	if *pdAddrs == "" {
		fmt.Fprintln(os.Stderr, "usage: peer-client-go interop --pd HOST:PORT [--real-pd]")
		return 2
	}
	if err := setupLogger(*logFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cli, err := newTxnClient(strings.Split(*pdAddrs, ","))
	if err != nil {
		fmt.Printf("err connect: %v\n", err)
		return 1
	}
	defer cli.Close()
	fmt.Println("ready")
	s := &interopServer{
		cli:     cli,
		held:    map[string]*transaction.KVTxn{},
		pending: map[string]chan lockAnswer{},
	}
	if err := s.serve(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 1
	}
	return 0
}
