"""Every metric the Grafana dashboard queries is one winback exports.

The names come from src/runtime/metrics.rs (the run's metrics) and
src/admin/mod.rs (the pending-wait gauge); a histogram also has its
_bucket, _sum and _count series. Exit 1 naming each unknown metric.
"""
import json
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parents[2]
sources = [root / "src/runtime/metrics.rs", root / "src/admin/mod.rs"]
exported = set()
for src in sources:
    exported |= set(re.findall(r'"(winback_[a-z_]+)"', src.read_text()))
    exported |= set(re.findall(r"\b(winback_pending_waits)\b", src.read_text()))
series = set(exported)
for name in exported:
    if name.endswith("_seconds"):
        series |= {name + s for s in ("_bucket", "_sum", "_count")}

dashboard = json.loads((root / "deploy/grafana/winback.json").read_text())
unknown = []
queried = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        for name in re.findall(r"\b(winback_[a-z_]+)", target["expr"]):
            queried += 1
            if name not in series:
                unknown.append(f'panel "{panel["title"]}": {name}')
if unknown or queried == 0:
    print("deploy/grafana/winback.json queries metrics winback does not export:", file=sys.stderr)
    for u in unknown:
        print("  " + u, file=sys.stderr)
    sys.exit(1)
print(f"deploy: the dashboard's {queried} metric references are all exported")
