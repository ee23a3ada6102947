#!/usr/bin/env python3
"""Draws the chart's Grafana dashboards to PNG from a live Prometheus, without Grafana.

Each panel is placed on the dashboard's 24-column grid and drawn from the same queries
Grafana would run: time series from /api/v1/query_range, stats and tables from
/api/v1/query. It is a faithful sketch (layout, queries, legends, units, thresholds),
not a pixel copy of Grafana, for docs and for checking that panels show what they
claim.

    python3 monitoring/render_dashboards.py --prometheus http://127.0.0.1:9090 \\
        --var namespace=jobs --var workpool=thumbs --range 15m --out /tmp/dashboards

Needs matplotlib (pip install matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent.parent / "charts" / "workpool" / "dashboards"
ROW_UNIT = 0.42  # inches per grid row
COL_UNIT = 0.72  # inches per grid column


def parse_duration(s: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", s))


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except Exception as e:  # noqa: BLE001 - a panel shows the error instead
            return {"status": "error", "error": str(e)}

    def instant(self, q: str, at: float) -> dict:
        return self._get("/api/v1/query", {"query": q, "time": f"{at:.3f}"})

    def range(self, q: str, start: float, end: float, step: float) -> dict:
        return self._get("/api/v1/query_range", {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                  "step": f"{step:g}"})


def substitute(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    expr = expr.replace("$__rate_interval", rate_interval)
    for k, v in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${k}", v).replace(f"${{{k}}}", v)
    return expr


def legend(fmt: str, metric: dict) -> str:
    if not fmt or fmt == "__auto":
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return metric.get("__name__", "") + (f"{{{inner}}}" if inner else "") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def fmt_value(v: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if unit == "s":
        if v == 0:
            return "0 s"
        if v < 1:
            return f"{v * 1000:.3g} ms"
        return f"{v:.3g} s" if v < 120 else f"{v / 60:.3g} min"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "ops":
        return f"{v:.3g}/s"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.4g}" if v != int(v) else f"{int(v)}"


def threshold_color(value: float, steps: list[dict]) -> str:
    colors = {"green": "#56a64b", "red": "#e02f44", "orange": "#ff9830", "yellow": "#f2cc0c"}
    chosen = steps[0]["color"] if steps else "green"
    for s in steps[1:]:
        if s["value"] is not None and value >= s["value"]:
            chosen = s["color"]
    return colors.get(chosen, chosen)


def draw_dashboard(dash: dict, prom: Prom, variables: dict[str, str], span: float, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    panels = [p for p in dash["panels"]]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24 * COL_UNIT, height * ROW_UNIT + 0.8), facecolor="#111217")
    fig.suptitle(f"{dash['title']}   " + "  ".join(f"{k}={v}" for k, v in variables.items()),
                 color="white", x=0.01, ha="left", fontsize=13)
    end = time.time()
    start = end - span
    step = max(span / 240, 1.0)
    rate_interval = f"{max(int(4 * step), 60)}s"
    stats = {"panels": 0, "series": 0, "empty": []}
    top = 1 - 0.8 / (height * ROW_UNIT + 0.8)

    def box(g):
        return [g["x"] / 24 + 0.003, top - (g["y"] + g["h"]) / height * top + 0.004, g["w"] / 24 - 0.006,
                g["h"] / height * top - 0.012]

    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            fig.text(0.005, top - (g["y"] + 0.7) / height * top, p["title"], color="#ccccdc", fontsize=12,
                     fontweight="bold")
            continue
        stats["panels"] += 1
        ax = fig.add_axes(box(g), facecolor="#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.set_title(p["title"], color="#ccccdc", fontsize=9, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        targets = p.get("targets", [])
        if p["type"] == "timeseries":
            drawn = 0
            right = {o["matcher"]["options"] for o in p["fieldConfig"].get("overrides", [])
                     if o["matcher"]["id"] == "byName"
                     and any(pr["id"] == "custom.axisPlacement" and pr["value"] == "right" for pr in o["properties"])}
            twin = None
            handles = []
            for t in targets:
                ans = prom.range(substitute(t["expr"], variables, rate_interval), start, end, step)
                for s in ans.get("data", {}).get("result", []) if ans.get("status") == "success" else []:
                    xs = [datetime.fromtimestamp(float(ts), tz=timezone.utc) for ts, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    name = legend(t.get("legendFormat", ""), s["metric"])[:40]
                    target_ax = ax
                    if name in right:
                        twin = twin or ax.twinx()
                        twin.tick_params(colors="#8e8e8e", labelsize=7)
                        target_ax = twin
                    color = f"C{len(handles) % 10}"
                    handles += target_ax.plot(xs, ys, linewidth=1.2, label=name, color=color,
                                              linestyle="--" if name.endswith("desired") else "-")
                    drawn += 1
            stats["series"] += drawn
            if drawn:
                ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.3, labelcolor="#ccccdc",
                          facecolor="#181b1f")
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_value(v, unit)))
                # y labels inside the panel, so that neighbouring panels do not cover them
                ax.tick_params(axis="y", direction="in", pad=-4, length=0)
                plt.setp(ax.get_yticklabels(), ha="left")
                if twin is not None:
                    twin.tick_params(axis="y", direction="in", pad=-4, length=0)
                    plt.setp(twin.get_yticklabels(), ha="right")
                ax.grid(color="#2c3235", linewidth=0.5)
            else:
                stats["empty"].append(p["title"])
                ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        elif p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            ans = prom.instant(substitute(targets[0]["expr"], variables, rate_interval), end)
            res = ans.get("data", {}).get("result", []) if ans.get("status") == "success" else []
            if res:
                v = float(res[0]["value"][1])
                steps = p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
                ax.text(0.5, 0.4, fmt_value(v, unit), color=threshold_color(v, steps), ha="center", va="center",
                        fontsize=20, fontweight="bold", transform=ax.transAxes)
                stats["series"] += 1
            else:
                stats["empty"].append(p["title"])
                ax.text(0.5, 0.4, p["fieldConfig"]["defaults"].get("noValue", "No data"), color="#8e8e8e",
                        ha="center", va="center", fontsize=18, transform=ax.transAxes)
        elif p["type"] == "table":
            ax.set_xticks([])
            ax.set_yticks([])
            renames = next((t["options"].get("renameByName", {}) for t in p.get("transformations", [])
                            if t["id"] == "organize"), {})
            rows: dict[tuple, dict] = {}
            columns = ["namespace", "workpool"]
            for t in targets:
                col = renames.get(f"Value #{t['refId']}", t["refId"])
                columns.append(col)
                ans = prom.instant(substitute(t["expr"], variables, rate_interval), end)
                for s in ans.get("data", {}).get("result", []) if ans.get("status") == "success" else []:
                    key = (s["metric"].get("namespace", ""), s["metric"].get("workpool", ""))
                    rows.setdefault(key, {"namespace": key[0], "workpool": key[1]})[col] = fmt_value(
                        float(s["value"][1]), "short")
            if rows:
                cells = [[r.get(c, "") for c in columns] for r in rows.values()]
                tbl = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="center")
                tbl.auto_set_font_size(False)
                tbl.set_fontsize(7)
                for cell in tbl.get_celld().values():
                    cell.set_facecolor("#181b1f")
                    cell.set_edgecolor("#2c3235")
                    cell.get_text().set_color("#ccccdc")
                stats["series"] += len(rows)
            else:
                stats["empty"].append(p["title"])
        else:
            ax.text(0.5, 0.5, f"({p['type']} not drawn)", color="#8e8e8e", ha="center", transform=ax.transAxes)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    plt.close(fig)
    small(out)
    return stats


def small(png: Path) -> None:
    """A 128-colour palette: a third of the size, the same picture for a dark dashboard."""
    try:
        from PIL import Image  # matplotlib depends on Pillow
    except ImportError:
        return
    with Image.open(png) as im:
        quantized = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    quantized.save(png, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE for a dashboard variable")
    ap.add_argument("--range", default="15m", help="time range drawn (e.g. 15m, 1h)")
    ap.add_argument("--dashboards", type=Path, default=DASHBOARDS)
    a = ap.parse_args()
    variables = {"namespace": ".*", "workpool": ".*"}
    variables.update(dict(v.split("=", 1) for v in a.var))
    a.out.mkdir(parents=True, exist_ok=True)
    prom = Prom(a.prometheus)
    for path in sorted(a.dashboards.glob("*.json")):
        dash = json.loads(path.read_text())
        out = a.out / f"{path.stem}.png"
        s = draw_dashboard(dash, prom, variables, parse_duration(a.range), out)
        print(f"{out}: {s['panels']} panels, {s['series']} series, no data: {s['empty'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
