"""The CalltrackdTargetDown alert (deploy/prometheus/calltrackd-rules.yml) under
`promtool test rules`: fires after 2 minutes of calltrackd_target_up == 0, not before, and
not for a target that came back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.test_metrics import RULES, A, alert, run_promtool, series, strip_annotations


def test_target_down_fires_after_two_minutes(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(strip_annotations(RULES.read_text()))
    pbx1 = {"tracker": "acme", "target": "sip:10.0.1.1:5060"}
    pbx2 = {"tracker": "acme", "target": "sip:10.0.1.2:5060"}
    cases: dict[str, Any] = {"rule_files": [str(rules)], "evaluation_interval": "30s",
                             "tests": [{
        "interval": "30s",
        "input_series": [
            series("calltrackd_target_up", "1 1 0x10", **A, **pbx1),  # down from 1m
            series("calltrackd_target_up", "1 0 0 0 1x10", **A, **pbx2),  # back within 2m
        ],
        "alert_rule_test": [
            alert("CalltrackdTargetDown", "2m30s"),
            alert("CalltrackdTargetDown", "3m30s", {"severity": "warning", **A, **pbx1}),
        ],
    }]}
    spec = tmp_path / "rules_test.json"  # JSON is YAML
    spec.write_text(json.dumps(cases, indent=1))
    out = run_promtool("test", "rules", str(spec))
    assert "SUCCESS" in out, out
