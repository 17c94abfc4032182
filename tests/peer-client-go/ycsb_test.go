package main

import (
	"fmt"
	"testing"
)

// The runner draws the operations bench/src/ycsb.rs draws (its
// draws_match_the_go_runner test checks the same values).
func TestYcsbDrawsMatchTheRustGenerators(t *testing.T) {
	draws := func(workload string) []string {
		p := newYcsbPlan(ycsbMixes[workload], 10, 100, 1000)
		task := p.task(7, 3)
		var out []string
		for i := 0; i < 6; i++ {
			op := task.nextOp(p)
			if op.insert >= 0 {
				p.counter.ack(uint64(op.insert))
			}
			out = append(out, fmt.Sprintf("%s %s %d %d %s", opNames[op.kind], op.key, op.scanLen, op.field,
				op.value[:min(8, len(op.value))]))
		}
		return out
	}
	want := map[string]map[int]string{
		"a": {0: "read usertable:user4524463943485837295 0 0 ",
			1: "update usertable:user7938248813704665638 0 0 #@@7X@T'",
			5: "update usertable:user7123510772490260851 0 6 4BPpcK>A"},
		"d": {0: "read usertable:user4505159254896626123 0 0 ",
			5: "read usertable:user2398657855368200810 0 0 "},
		"e": {0: "scan usertable:user5827061232156972644 81 0 ",
			5: "scan usertable:user2056258949234144081 11 0 "},
	}
	for workload, lines := range want {
		got := draws(workload)
		for i, line := range lines {
			if got[i] != line {
				t.Errorf("workload %s draw %d: got %q, want %q", workload, i, got[i], line)
			}
		}
	}
}
