#!/usr/bin/env python3
"""Writes the Grafana dashboards of the chart (charts/workpool/dashboards/*.json).

The JSON is generated so that every panel follows the same rules: the datasource is the
`datasource` template variable (no hard-coded UID), every query selects
`namespace=~"$namespace", workpool=~"$workpool"`, and only the metrics listed in
docs/metrics.md and docs/dashboards.md are used. tests/chart/test_dashboards.py checks
the committed files are what this script writes, and runs every query against a real
Prometheus.

    python3 monitoring/dashboards.py           # rewrite the files
    python3 monitoring/dashboards.py --check   # exit 1 when they are stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "charts" / "workpool" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", workpool=~"$workpool"'
RATE = "$__rate_interval"
SUCCEEDED = 'outcome="succeeded"'
FAILED = 'outcome="failed"'
DEAD = 'outcome="dead_lettered"'
FAILED_OR_DEAD = 'outcome=~"failed|dead_lettered"'
RUNS = 'outcome=~"succeeded|failed"'


def sel(extra: str = "") -> str:
    return "{" + SEL + (", " + extra if extra else "") + "}"


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    t = {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
        "range": not instant,
        "instant": instant,
        "format": fmt,
    }
    return t


def timeseries(title: str, desc: str, targets: list[dict], unit: str = "short", stack: bool = False,
               overrides: list[dict] | None = None, decimals: int | None = None) -> dict:
    defaults: dict = {
        "unit": unit,
        "min": 0,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if not stack else 30,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, desc: str, expr: str, unit: str = "short", thresholds: list[tuple[str, float | None]] | None = None,
         color_mode: str = "value") -> dict:
    steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}, "noValue": "0"},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "area",
            "textMode": "auto",
            # Grafana's defaults, written out: its schema (grafana-foundation-sdk) requires them
            "justifyMode": "auto",
            "orientation": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
    }


def variables(single_pool: bool) -> dict:
    def query_var(name: str, label: str, query: str, multi: bool) -> dict:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "allValue": ".*" if multi else None,
            "current": {"text": "All", "value": "$__all"} if multi else {"text": "", "value": ""},
            "options": [],
            "hide": 0,
        }

    return {
        "list": [
            {
                "type": "datasource",
                "name": "datasource",
                "label": "Data source",
                "query": "prometheus",
                "regex": "",
                "current": {"text": "", "value": ""},
                "options": [],
                "hide": 0,
                "refresh": 1,
            },
            query_var("namespace", "Namespace", "label_values(workpool_desired_replicas, namespace)", not single_pool),
            query_var(
                "workpool",
                "WorkPool",
                'label_values(workpool_desired_replicas{namespace=~"$namespace"}, workpool)',
                not single_pool,
            ),
        ]
    }


def dashboard(uid: str, title: str, desc: str, layout: Layout, single_pool: bool) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["workpool"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "",
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["workpool"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "title": "workpool",
                "icon": "external link",
                "tooltip": "",
                "targetBlank": False,
            }
        ],
        "templating": variables(single_pool),
        "panels": layout.panels,
    }


def right_axis(name: str) -> dict:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "custom.drawStyle", "value": "bars"},
            {"id": "custom.fillOpacity", "value": 40},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "orange"}},
        ],
    }


def quantiles(metric: str, extra: str = "", by: str = "") -> list[dict]:
    by_clause = f"le{', ' + by if by else ''}"
    out = []
    for q in ("0.5", "0.9", "0.99"):
        m = f"{metric}_bucket{sel(extra)}" if extra is not None else f"{metric}_bucket"
        legend = f"p{int(float(q) * 100)}" + (f" {{{{{by}}}}}" if by else "")
        out.append(target(f"histogram_quantile({q}, sum by ({by_clause}) (rate({m}[{RATE}])))", legend))
    return out


def operator_section(l: Layout) -> None:
    l.row("Operator")
    l.add(
        timeseries(
            "Scale events",
            "Times the operator changed a pool's desired replicas, by direction (workpool_scale_events_total).",
            [target(f"sum by (namespace, workpool, direction) (increase(workpool_scale_events_total{sel()}[{RATE}]))",
                    "{{namespace}}/{{workpool}} {{direction}}")],
            decimals=0,
        ),
        8, 8,
    )
    l.add(
        timeseries(
            "Pod replacements",
            "Worker pods the operator replaced, by reason: failed, succeeded (a worker must not exit), evicted, "
            "deleted (workpool_pod_replacements_total). Steady growth means a crash loop: see the Degraded condition.",
            [target(f"sum by (namespace, workpool, reason) (increase(workpool_pod_replacements_total{sel()}[{RATE}]))",
                    "{{namespace}}/{{workpool}} {{reason}}")],
            decimals=0,
        ),
        8, 8,
    )
    l.add(
        timeseries(
            "Reconcile errors",
            "Failed reconciliations by reason (workpool_reconcile_errors_total).",
            [target(f"sum by (namespace, workpool, reason) (rate(workpool_reconcile_errors_total{sel()}[{RATE}]))",
                    "{{namespace}}/{{workpool}} {{reason}}")],
            unit="ops",
        ),
        8, 8,
    )
    l.add(
        timeseries(
            "Reconcile latency (all pools)",
            "Duration of one reconciliation, quantiles over every pool the operator manages "
            "(workpool_reconcile_duration_seconds has no pool label).",
            [target(f"histogram_quantile({q}, sum by (le) (rate(workpool_reconcile_duration_seconds_bucket[{RATE}])))",
                    f"p{int(float(q) * 100)}") for q in ("0.5", "0.9", "0.99")],
            unit="s",
        ),
        8, 8,
    )
    l.add(
        timeseries(
            "Queue probe health",
            "1 while the operator can read the pool's queue (workpool_queue_up); 0 means the autoscaler runs on "
            "fallbackReplicas. Probe errors by reason below it.",
            [target(f"min by (namespace, workpool) (workpool_queue_up{sel()})", "{{namespace}}/{{workpool}} up"),
             target(f"sum by (namespace, workpool, reason) (rate(workpool_queue_probe_errors_total{sel()}[{RATE}]))",
                    "{{namespace}}/{{workpool}} errors: {{reason}}")],
        ),
        8, 8,
    )
    l.add(
        stat(
            "Operator leaders",
            "Operator replicas holding the leader lease (workpool_leader): exactly 1 is healthy; 0 means nobody "
            "reconciles.",
            "sum(workpool_leader)",
            thresholds=[("red", None), ("green", 1), ("red", 2)],
            color_mode="background",
        ),
        8, 8,
    )


def overview() -> dict:
    l = Layout()
    l.row("All pools")
    stats = [
        ("Pools", "WorkPools the operator reports on.", f"count(workpool_desired_replicas{sel()})", "short", None),
        ("Workers", "Worker pods of the selected pools (workpool_replicas).", f"sum(workpool_replicas{sel()})", "short", None),
        ("Ready", "Ready worker pods (workpool_ready_replicas).", f"sum(workpool_ready_replicas{sel()})", "short", None),
        ("Busy", "Workers holding at least one task (workpool_busy_replicas).", f"sum(workpool_busy_replicas{sel()})", "short", None),
        ("Backlog", "Tasks waiting or in flight, all selected pools (workpool_queue_backlog).", f"sum(workpool_queue_backlog{sel()})", "short", None),
        ("Dead letters", "Entries in the pools' dead-letter streams (workpool_queue_dead_letters).",
         f"sum(workpool_queue_dead_letters{sel()})", "short", [("green", None), ("orange", 1)]),
        ("Queues down", "Pools whose queue the operator cannot read (workpool_queue_up == 0).",
         f"count(workpool_queue_up{sel()} == 0) or vector(0)", "short", [("green", None), ("red", 1)]),
        ("Tasks/s", "Tasks finished per second by the selected pools' workers.",
         f'sum(rate(workpool_worker_tasks_total{sel(SUCCEEDED)}[{RATE}]))', "ops", None),
    ]
    for title, desc, expr, unit, th in stats:
        l.add(stat(title, desc, expr, unit, th), 3, 4)

    table_queries = [
        ("Desired", "workpool_desired_replicas"),
        ("Replicas", "workpool_replicas"),
        ("Ready", "workpool_ready_replicas"),
        ("Busy", "workpool_busy_replicas"),
        ("Draining", "workpool_draining_replicas"),
        ("Backlog", "workpool_queue_backlog"),
        ("Pending", "workpool_queue_pending"),
        ("Dead letters", "workpool_queue_dead_letters"),
        ("Oldest pending (s)", "workpool_queue_oldest_pending_seconds"),
        ("Queue up", "workpool_queue_up"),
    ]
    table = {
        "type": "table",
        "title": "Pools",
        "description": "One row per WorkPool; click a name to open its dashboard.",
        "datasource": DS,
        "targets": [
            target(f"sum by (namespace, workpool) ({m}{sel()})", ref=chr(ord("A") + i), instant=True, fmt="table")
            for i, (_, m) in enumerate(table_queries)
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{chr(ord('A') + i)}": n for i, (n, _) in enumerate(table_queries)},
                },
            },
        ],
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "inspect": False}},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "workpool"},
                    "properties": [
                        {
                            "id": "links",
                            "value": [
                                {
                                    "title": "WorkPool ${__data.fields.workpool}",
                                    "url": "/d/workpool-pool/workpool-pool?var-datasource=${datasource}"
                                    "&var-namespace=${__data.fields.namespace}&var-workpool=${__data.fields.workpool}&${__url_time_range}",
                                }
                            ],
                        }
                    ],
                }
            ],
        },
        "options": {"showHeader": True, "frameIndex": 0, "sortBy": [{"displayName": "Backlog", "desc": True}]},
    }
    l.add(table, 24, 8)

    l.row("Load and capacity")
    l.add(
        timeseries("Backlog by pool", "Tasks not yet delivered plus tasks in flight (workpool_queue_backlog).",
                   [target(f"sum by (namespace, workpool) (workpool_queue_backlog{sel()})", "{{namespace}}/{{workpool}}")]),
        12, 8,
    )
    l.add(
        timeseries("Workers by pool", "Current worker pods (workpool_replicas), dashed: desired.",
                   [target(f"sum by (namespace, workpool) (workpool_replicas{sel()})", "{{namespace}}/{{workpool}}"),
                    target(f"sum by (namespace, workpool) (workpool_desired_replicas{sel()})", "{{namespace}}/{{workpool}} desired")],
                   overrides=[{"matcher": {"id": "byRegexp", "options": ".* desired"},
                               "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
                   decimals=0),
        12, 8,
    )
    l.add(
        timeseries("Throughput by pool", "Tasks finished per second (workpool_worker_tasks_total{outcome=\"succeeded\"}).",
                   [target(f'sum by (namespace, workpool) (rate(workpool_worker_tasks_total{sel(SUCCEEDED)}[{RATE}]))',
                           "{{namespace}}/{{workpool}}")], unit="ops"),
        12, 8,
    )
    l.add(
        timeseries("Failures and dead letters by pool",
                   "Failed runs and tasks moved to the dead-letter stream per second.",
                   [target(f'sum by (namespace, workpool, outcome) (rate(workpool_worker_tasks_total{sel(FAILED_OR_DEAD)}[{RATE}]))',
                           "{{namespace}}/{{workpool}} {{outcome}}")], unit="ops"),
        12, 8,
    )
    l.add(
        timeseries("Oldest pending task by pool",
                   "Age of the oldest delivered, unacknowledged task (workpool_queue_oldest_pending_seconds): a task "
                   "stuck on a worker shows here before the visibility timeout reclaims it.",
                   [target(f"max by (namespace, workpool) (workpool_queue_oldest_pending_seconds{sel()})", "{{namespace}}/{{workpool}}")],
                   unit="s"),
        12, 8,
    )
    l.add(
        timeseries("Worker task duration (p90) by pool", "90th percentile run time of successful runs.",
                   [target(f'histogram_quantile(0.9, sum by (le, namespace, workpool) (rate(workpool_worker_task_duration_seconds_bucket{sel(SUCCEEDED)}[{RATE}])))',
                           "{{namespace}}/{{workpool}}")], unit="s"),
        12, 8,
    )
    operator_section(l)
    return dashboard("workpool-overview", "workpool / Overview",
                     "Every WorkPool at a glance: capacity against backlog, throughput, failures, and the operator.",
                     l, single_pool=False)


def pool() -> dict:
    l = Layout()
    l.row("Pool")
    for title, desc, expr, unit, th in [
        ("Desired", "Replicas the operator wants (workpool_desired_replicas).", f"sum(workpool_desired_replicas{sel()})", "short", None),
        ("Ready", "Ready worker pods (workpool_ready_replicas).", f"sum(workpool_ready_replicas{sel()})", "short", None),
        ("Busy", "Workers holding a task (workpool_busy_replicas).", f"sum(workpool_busy_replicas{sel()})", "short", None),
        ("Backlog", "Waiting plus in-flight tasks (workpool_queue_backlog).", f"sum(workpool_queue_backlog{sel()})", "short", None),
        ("Pending", "Delivered, not yet acknowledged (workpool_queue_pending).", f"sum(workpool_queue_pending{sel()})", "short", None),
        ("Oldest pending", "workpool_queue_oldest_pending_seconds", f"max(workpool_queue_oldest_pending_seconds{sel()})", "s", None),
        ("Dead letters", "Entries in the dead-letter stream (workpool_queue_dead_letters).",
         f"sum(workpool_queue_dead_letters{sel()})", "short", [("green", None), ("orange", 1)]),
        ("Queue", "1: the operator reads the queue; 0: unreachable (workpool_queue_up).",
         f"min(workpool_queue_up{sel()})", "short", [("red", None), ("green", 1)]),
    ]:
        l.add(stat(title, desc, expr, unit, th), 3, 4)

    l.add(
        timeseries(
            "Replicas against backlog",
            "Desired, current, ready, busy and draining workers (left axis) against the queue backlog (bars, right axis). "
            "Busy close to ready with a growing backlog: the pool is at capacity (maxReplicas?). Draining: pods told to "
            "stop taking tasks that finish what they hold before they go (scale-in, rollout).",
            [
                target(f"sum(workpool_desired_replicas{sel()})", "desired"),
                target(f"sum(workpool_replicas{sel()})", "current"),
                target(f"sum(workpool_ready_replicas{sel()})", "ready"),
                target(f"sum(workpool_busy_replicas{sel()})", "busy"),
                target(f"sum(workpool_draining_replicas{sel()})", "draining"),
                target(f"sum(workpool_queue_backlog{sel()})", "backlog"),
            ],
            overrides=[right_axis("backlog")],
        ),
        24, 10,
    )

    l.row("Tasks")
    l.add(
        timeseries("Throughput by outcome",
                   "Runs per second by outcome (workpool_worker_tasks_total): succeeded, failed, retried, "
                   "dead_lettered, released (handed back at shutdown).",
                   [target(f"sum by (outcome) (rate(workpool_worker_tasks_total{sel()}[{RATE}]))", "{{outcome}}")],
                   unit="ops"),
        12, 8,
    )
    l.add(
        timeseries("Task duration",
                   "Quantiles of the run time of successful runs (workpool_worker_task_duration_seconds).",
                   quantiles("workpool_worker_task_duration_seconds", SUCCEEDED), unit="s"),
        12, 8,
    )
    l.add(
        timeseries("Failure ratio", "Share of runs that failed.",
                   [target(f'sum(rate(workpool_worker_tasks_total{sel(FAILED)}[{RATE}])) / '
                           f'sum(rate(workpool_worker_tasks_total{sel(RUNS)}[{RATE}]))',
                           "failed / runs")],
                   unit="percentunit"),
        8, 8,
    )
    l.add(
        timeseries("Dead letters", "Length of the dead-letter stream (workpool_queue_dead_letters) and tasks "
                   "dead-lettered per second by the workers.",
                   [target(f"sum(workpool_queue_dead_letters{sel()})", "dead-letter stream length"),
                    target(f'sum(rate(workpool_worker_tasks_total{sel(DEAD)}[{RATE}]))',
                           "dead-lettered/s")]),
        8, 8,
    )
    l.add(
        timeseries("Backlog by partition",
                   "Waiting plus in-flight tasks (workpool_queue_partition_backlog) and in-flight tasks "
                   "(workpool_queue_partition_pending) of each partition of the pool; one partition, 0, for a "
                   "pool of one. A partition that stays high while the others empty: producers pin too many "
                   "tasks to one key (submit --key).",
                   [target(f"sum by (partition) (workpool_queue_partition_backlog{sel()})", "backlog {{partition}}"),
                    target(f"sum by (partition) (workpool_queue_partition_pending{sel()})", "pending {{partition}}")]),
        8, 8,
    )
    l.add(
        timeseries("Queue", "Pending (delivered, not acknowledged) tasks and the age of the oldest one.",
                   [target(f"sum(workpool_queue_pending{sel()})", "pending"),
                    target(f"max(workpool_queue_oldest_pending_seconds{sel()})", "oldest pending (s)")],
                   overrides=[{"matcher": {"id": "byName", "options": "oldest pending (s)"},
                               "properties": [{"id": "unit", "value": "s"}, {"id": "custom.axisPlacement", "value": "right"}]}]),
        8, 8,
    )

    l.row("Workers")
    l.add(
        timeseries("In-flight tasks by pod", "Tasks each worker holds (workpool_worker_in_flight_tasks).",
                   [target(f"sum by (pod) (workpool_worker_in_flight_tasks{sel()})", "{{pod}}")], stack=True),
        8, 8,
    )
    l.add(
        timeseries("Workers ready", "Workers connected to Redis and reading (workpool_worker_ready), out of the "
                   "workers scraped.",
                   [target(f"sum(workpool_worker_ready{sel()})", "ready"),
                    target(f"count(workpool_worker_ready{sel()})", "scraped")], decimals=0),
        8, 8,
    )
    l.add(
        timeseries("Reclaimed tasks and Redis errors",
                   "Tasks taken over from dead or stalled workers (workpool_worker_reclaimed_tasks_total) and "
                   "failed Redis operations (workpool_worker_redis_errors_total), per second.",
                   [target(f"sum(rate(workpool_worker_reclaimed_tasks_total{sel()}[{RATE}]))", "reclaimed/s"),
                    target(f"sum by (pod) (rate(workpool_worker_redis_errors_total{sel()}[{RATE}]))", "redis errors/s {{pod}}")],
                   unit="ops"),
        8, 8,
    )
    operator_section(l)
    return dashboard("workpool-pool", "workpool / WorkPool",
                     "One WorkPool: replicas against backlog, tasks, workers, and what the operator did.",
                     l, single_pool=True)


DASHBOARDS = {"workpool-overview.json": overview, "workpool-pool.json": pool}


def render() -> dict[str, str]:
    return {name: json.dumps(make(), indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale (run python3 monitoring/dashboards.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
