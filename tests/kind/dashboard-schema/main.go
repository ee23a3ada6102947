// Checks Grafana dashboards against Grafana's own dashboard types, as the Apache-2.0
// grafana-foundation-sdk generates them from Grafana's schemas (Grafana itself is AGPL
// and is not installed): every file given must decode strictly (an unknown or mistyped
// field is an error) into a dashboard.Dashboard with its panels' options and field
// config decoded by their panel type's plugin, pass the SDK's validation, and every
// panel query must decode strictly as a Prometheus query.
//
//	go run . charts/workpool/dashboards/*.json
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

// failed is err, or nil when err is an empty list of errors: the SDK returns its
// cog.BuildErrors as an error even when there are none.
func failed(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}

func check(path string) (panels, queries int, problems []string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, []string{err.Error()}
	}
	var d dashboard.Dashboard
	if err := failed(d.UnmarshalJSONStrict(raw)); err != nil {
		problems = append(problems, fmt.Sprintf("does not decode as a Grafana dashboard: %v", err))
		return 0, 0, problems
	}
	if err := failed(d.Validate()); err != nil {
		problems = append(problems, fmt.Sprintf("fails the dashboard's validation: %v", err))
	}
	// The panels again, one by one from the raw JSON: the SDK's union of panel and row
	// drops a panel when its decoding reports its (empty) error list.
	var rawDash struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &rawDash); err != nil {
		return 0, 0, []string{err.Error()}
	}
	all := rawDash.Panels
	for i := 0; i < len(all); i++ {
		var head struct {
			Type        string            `json:"type"`
			Title       string            `json:"title"`
			Panels      []json.RawMessage `json:"panels"`
			Targets     []json.RawMessage `json:"targets"`
			Options     json.RawMessage   `json:"options"`
			FieldConfig struct {
				Defaults struct {
					Custom json.RawMessage `json:"custom"`
				} `json:"defaults"`
			} `json:"fieldConfig"`
		}
		if err := json.Unmarshal(all[i], &head); err != nil {
			problems = append(problems, fmt.Sprintf("panel %d: %v", i, err))
			continue
		}
		panels++
		if head.Type == "row" {
			var row dashboard.RowPanel
			if err := failed(row.UnmarshalJSONStrict(all[i])); err != nil {
				problems = append(problems, fmt.Sprintf("row %q: %v", head.Title, err))
			}
			all = append(all, head.Panels...)
			continue
		}
		var p dashboard.Panel
		if err := failed(p.UnmarshalJSONStrict(all[i])); err != nil {
			problems = append(problems, fmt.Sprintf("panel %q (%s): %v", head.Title, head.Type, err))
			continue
		}
		if err := failed(p.Validate()); err != nil {
			problems = append(problems, fmt.Sprintf("panel %q (%s): %v", head.Title, head.Type, err))
		}
		// The options and the field config's custom part, by the panel type's own types.
		cfg, known := cog.ConfigForPanelcfgVariant(head.Type)
		if !known {
			problems = append(problems, fmt.Sprintf("panel %q: type %q is not a Grafana panel type", head.Title, head.Type))
		} else {
			if head.Options != nil {
				if _, err := cfg.StrictOptionsUnmarshaler(head.Options); failed(err) != nil {
					problems = append(problems, fmt.Sprintf("panel %q (%s) options: %v", head.Title, head.Type, err))
				}
			}
			if head.FieldConfig.Defaults.Custom != nil && cfg.StrictFieldConfigUnmarshaler != nil {
				if _, err := cfg.StrictFieldConfigUnmarshaler(head.FieldConfig.Defaults.Custom); failed(err) != nil {
					problems = append(problems, fmt.Sprintf("panel %q (%s) fieldConfig.defaults.custom: %v", head.Title, head.Type, err))
				}
			}
		}
		for j, t := range head.Targets {
			queries++
			var q prometheus.Dataquery
			if err := failed(q.UnmarshalJSONStrict(t)); err != nil {
				problems = append(problems, fmt.Sprintf("panel %q target %d: not a Prometheus query: %v", head.Title, j, err))
			} else if err := failed(q.Validate()); err != nil {
				problems = append(problems, fmt.Sprintf("panel %q target %d: %v", head.Title, j, err))
			} else if q.Expr == "" {
				problems = append(problems, fmt.Sprintf("panel %q target %d: empty expr", head.Title, j))
			}
		}
	}
	return panels, queries, problems
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-schema DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		panels, queries, problems := check(path)
		for _, p := range problems {
			fmt.Printf("%s: %s\n", path, p)
		}
		if len(problems) > 0 {
			failed = true
			continue
		}
		fmt.Printf("%s: a valid Grafana dashboard: %d panels, %d Prometheus queries\n", path, panels, queries)
	}
	if failed {
		os.Exit(1)
	}
}
