package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/hyperlet/hyperlet/pkg/usage"
)

// usage prints the daemon's usage record: each pod VM's life by the second.
func (c *cli) usage(ctx context.Context, since, format string) error {
	if format != "table" && format != "json" && format != "csv" {
		return fmt.Errorf("--format %q: table, json or csv", format)
	}
	var rep usage.Report
	if err := c.adminDo(ctx, http.MethodGet, "/usage?since="+url.QueryEscape(since), &rep); err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	type row struct {
		usage.Record
		Seconds     float64 `json:"seconds"`
		VCPUSeconds float64 `json:"vcpuSeconds"`
		GiBSeconds  float64 `json:"gibSeconds"`
	}
	var rows []row
	for _, r := range rep.Records {
		rows = append(rows, row{Record: r, Seconds: r.Seconds(rep.Now), VCPUSeconds: r.VCPUSeconds(rep.Now), GiBSeconds: r.GiBSeconds(rep.Now)})
	}
	end := func(r usage.Record) string {
		if r.End.IsZero() {
			return "running"
		}
		return r.End.Format(time.RFC3339)
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	switch format {
	case "json":
		e := json.NewEncoder(os.Stdout)
		e.SetIndent("", "  ")
		return e.Encode(rows)
	case "csv":
		w := csv.NewWriter(os.Stdout)
		w.Write([]string{"pod_id", "namespace", "name", "uid", "start", "end", "vcpus", "memory_mib", "seconds", "vcpu_seconds", "gib_seconds", "cpu_seconds"})
		for _, r := range rows {
			w.Write([]string{r.PodID, r.Namespace, r.Name, r.UID, r.Start.Format(time.RFC3339), end(r.Record),
				strconv.Itoa(r.VCPUs), strconv.Itoa(r.MemoryMiB), f(r.Seconds), f(r.VCPUSeconds),
				strconv.FormatFloat(r.GiBSeconds, 'f', 2, 64), strconv.FormatFloat(r.CPUSeconds, 'f', 2, 64)})
		}
		w.Flush()
		return w.Error()
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POD ID\tNAMESPACE/NAME\tSTART\tEND\tVCPUS\tMEMORY\tSECONDS\tGIB-SECONDS\tCPU-SECONDS")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s/%s\t%s\t%s\t%d\t%dMi\t%s\t%.1f\t%.1f\n", shortID(r.PodID), r.Namespace, r.Name,
			r.Start.Format(time.RFC3339), end(r.Record), r.VCPUs, r.MemoryMiB, f(r.Seconds), r.GiBSeconds, r.CPUSeconds)
	}
	return w.Flush()
}
