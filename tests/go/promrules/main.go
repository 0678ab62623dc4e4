// Command promrules checks a Prometheus rule file the way Prometheus loads
// one (strict YAML, PromQL, label and annotation templates) and prints, as
// JSON, the metric names each rule's expression reads, so that the tests can
// hold the alerts in manifests/monitoring against the metrics arc-watchdog
// really exports.
//
//	promrules RULE_FILE
//
// Exit 0 with the JSON on stdout; exit 1 with every problem on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type rule struct {
	Group   string   `json:"group"`
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`
	Metrics []string `json:"metrics"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: promrules RULE_FILE")
		os.Exit(2)
	}
	content, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation)
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], e)
		}
		os.Exit(1)
	}
	out := []rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			expr, err := parser.ParseExpr(r.Expr)
			if err != nil { // rulefmt already parsed it; kept for a clear message
				fmt.Fprintf(os.Stderr, "%s: group %q: %v\n", os.Args[1], g.Name, err)
				os.Exit(1)
			}
			kind, name := "alert", r.Alert
			if r.Record != "" {
				kind, name = "record", r.Record
			}
			out = append(out, rule{Group: g.Name, Name: name, Kind: kind, Metrics: metricNames(expr)})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// metricNames lists the __name__ of every vector and matrix selector in expr.
func metricNames(expr parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					seen[m.Value] = true
				}
			}
		}
		return nil
	})
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
