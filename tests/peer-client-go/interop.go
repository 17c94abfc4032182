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
// Keys and values are hex. An error answers `err MESSAGE` (one line).

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
	"time"

	tikverr "github.com/tikv/client-go/v2/error"
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
	s := &interopServer{cli: cli}
	if err := s.serve(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 1
	}
	return 0
}
