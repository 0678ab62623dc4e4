// Command promrules checks a Prometheus rule file the way Prometheus loads
// one (strict YAML, PromQL, label and annotation templates) and prints, as
// JSON, the metric names each rule's expression reads, so that the tests can
// hold the alerts in manifests/monitoring against the metrics arc-watchdog
// really exports.
//
//	promrules RULE_FILE
//	promrules -exprs EXPR_FILE
//
// With -exprs, EXPR_FILE is a JSON array of {"name", "expr"} (a Grafana
// dashboard's queries, their variables already substituted): each expr is
// parsed as a bare PromQL expression, and the output is the same JSON, one
// {"name", "metrics"} per entry, in order. Dashboards have no rule file
// around their queries, so the rule loader cannot check them.
//
// Exit 0 with the JSON on stdout; exit 1 with every problem on stderr.
package main

import (
	"bytes"
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

type query struct {
	Name string `json:"name"`
	Expr string `json:"expr"`
}

type parsed struct {
	Name    string   `json:"name"`
	Metrics []string `json:"metrics"`
}

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "-exprs":
		exprs(os.Args[2])
	case len(os.Args) == 2 && os.Args[1] != "-exprs":
		rules()
	default:
		fmt.Fprintln(os.Stderr, "usage: promrules RULE_FILE | promrules -exprs EXPR_FILE")
		os.Exit(2)
	}
}

// exprs parses every expression of the JSON array in path, reporting every
// one that does not parse, not just the first.
func exprs(path string) {
	content, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var queries []query
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&queries); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	out := []parsed{}
	failed := false
	for _, q := range queries {
		expr, err := parser.ParseExpr(q.Expr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %q: %v\n", path, q.Name, err)
			failed = true
			continue
		}
		out = append(out, parsed{Name: q.Name, Metrics: metricNames(expr)})
	}
	if failed {
		os.Exit(1)
	}
	emit(out)
}

func rules() {
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
	emit(out)
}

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
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
