package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

type report struct {
	opts                 options
	started              time.Time
	ort, library, device string
	conformance          conformance
	models               []modelResult
	verdict              string
}

// judge sets the verdict and the exit code: 1 when any comparison is out
// of tolerance or fails on the device.
func (r *report) judge() int {
	var bad []string
	if n := len(r.conformance.failures); n > 0 {
		bad = append(bad, fmt.Sprintf("%d backend cases differ or fail on %s", n, r.device))
	}
	for _, m := range r.models {
		if m.err != "" {
			bad = append(bad, m.file+": "+m.err)
		}
		for b, d := range m.diffs {
			if d.problem != "" {
				bad = append(bad, fmt.Sprintf("%s at batch %d: %s", m.file, b, d.problem))
			}
		}
	}
	if len(bad) > 0 {
		r.verdict = "FAILED: " + strings.Join(bad, "; ")
		return 1
	}
	r.verdict = fmt.Sprintf("passed: %s matches CPU on %d backend cases and %d models", r.device, r.conformance.compared, len(r.models))
	return 0
}

func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "# GPU check\n\n%s, %s. ", r.started.UTC().Format(time.RFC3339), time.Since(r.started).Round(time.Second))
	if r.ort == "" {
		fmt.Fprintf(w, "onnxruntime library `%s`.\n\n**%s**\n", r.opts.lib, r.verdict)
		return
	}
	fmt.Fprintf(w, "onnxruntime %s (`%s`), %s against CPU.\n\n**%s**\n\n", r.ort, r.library, r.device, r.verdict)
	r.writeConformance(w)
	r.writeModels(w)
}

func (r *report) writeConformance(w io.Writer) {
	c := r.conformance
	fmt.Fprintf(w, "## ONNX backend node cases, %s against CPU (%s)\n\n", r.device, r.opts.tol)
	fmt.Fprintf(w, "| cases | compared | within tolerance | differ or fail | CPU cannot run | unreadable | not started (budget %s) | max abs diff | time |\n", r.opts.budget)
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n| %d | %d | %d | %d | %d | %d | %d | %.3g | %s |\n\n",
		c.cases, c.compared, c.matched, len(c.failures), c.cpuCannot, c.unreadable, c.notStarted, c.maxAbs, c.elapsed.Round(time.Second))
	fmt.Fprintf(w, "Random operators and training-mode dropout (%s) are compared by output names, datatypes and shapes only.\n\n", nondeterministic)
	for i, f := range c.failures {
		if i == 30 {
			fmt.Fprintf(w, "- … %d more\n", len(c.failures)-30)
			break
		}
		fmt.Fprintf(w, "- %s\n", f)
	}
	if len(c.failures) > 0 {
		fmt.Fprintln(w)
	}
}

func (r *report) writeModels(w io.Writer) {
	fmt.Fprintf(w, "## Default models, %s against CPU (%s)\n\n", r.device, r.opts.modelTol)
	fmt.Fprintf(w, "| model | batch | max abs diff | max rel diff | verdict |\n|---|---|---|---|---|\n")
	for _, m := range r.models {
		if m.err != "" {
			fmt.Fprintf(w, "| %s | | | | %s |\n", m.file, m.err)
			continue
		}
		for _, b := range []int64{1, 8} {
			d := m.diffs[b]
			fmt.Fprintf(w, "| %s | %d | %.3g | %.3g | %s |\n", m.file, b, d.maxAbs, d.maxRel, orOK(d.problem))
		}
	}
	fmt.Fprintf(w, "\n## Latency and throughput\n\nIn process (Prepare + Run, no HTTP); latency over 30 batch-1 runs, throughput in rows per second over at least 1.5 s per batch size.\n\n")
	fmt.Fprintf(w, "| model | device | p50 batch 1 | p90 batch 1 |")
	for _, b := range batches {
		fmt.Fprintf(w, " rows/s at %d |", b)
	}
	fmt.Fprintf(w, "\n|---|---|---|---|%s\n", strings.Repeat("---|", len(batches)))
	for _, m := range r.models {
		for i, side := range []string{"cpu", "device"} {
			t, ok := m.timings[side]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |", m.file, []string{"cpu", r.device}[i], ms(t.p50), ms(t.p90))
			for _, b := range batches {
				fmt.Fprintf(w, " %.0f |", t.throughput[b])
			}
			fmt.Fprintln(w)
		}
	}
}

func orOK(problem string) string {
	if problem == "" {
		return "within tolerance"
	}
	return problem
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
