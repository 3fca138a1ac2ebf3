"""The alert rules in deploy/prometheus/alerts.yml, checked by promtool as Prometheus
would load them, and by their unit tests in deploy/prometheus/tests/: every alert fires
on a series made to break it, with its exact labels and text, and stays quiet on a
healthy one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
UNIT_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def unit_test_groups() -> list[dict[str, Any]]:
    return [group for path in UNIT_TESTS for group in yaml.safe_load(path.read_text())["tests"]]


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
    assert len(alert_names()) == 11


def test_promtool_accepts_the_example_configuration_and_its_rules() -> None:
    done = promtool("check", "config", PROMETHEUS_CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
    # The job TokenrelayInstanceDown watches is the one the configuration scrapes.
    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (down,) = [rule for rule in rules() if rule.get("alert") == "TokenrelayInstanceDown"]
    assert down["expr"] == f'up{{job="{job["job_name"]}"}} == 0'


def test_the_alerts_unit_tests_pass() -> None:
    assert [p.name for p in UNIT_TESTS] == ["alerts_test.yml"]
    done = promtool("test", "rules", *UNIT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout + done.stderr


def test_every_alert_fires_in_one_unit_test_and_stays_quiet_in_another() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in unit_test_groups():
        tested: dict[str, list[bool]] = {}
        for case in group.get("alert_rule_test", []):
            tested.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
        for name, outcomes in tested.items():
            if any(outcomes):
                fires.add(name)
            else:
                # Quiet at every instant a group looks: a healthy series, not just the
                # moments before a broken one has lasted its `for`.
                quiet.add(name)
    assert sorted(fires) == sorted(alert_names())
    assert sorted(quiet) == sorted(alert_names())


def test_every_firing_case_names_the_alerts_labels_and_text() -> None:
    by_name = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    for group in unit_test_groups():
        for case in group.get("alert_rule_test", []):
            rule = by_name[case["alertname"]]
            for expected in case["exp_alerts"]:
                # promtool compares whole label and annotation sets; these say that
                # the text was written out, not left empty.
                assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(expected["exp_annotations"]) == {"summary", "description"}
                assert set(rule["annotations"]) == {"summary", "description"}


def test_every_alert_has_a_severity_a_for_and_a_text() -> None:
    for rule in rules():
        if "alert" not in rule:
            assert rule["record"].startswith("job:tokenrelay_")
            continue
        assert rule["alert"].startswith("Tokenrelay")
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["for"] in ("5m", "10m")


def test_promtool_reports_an_alert_that_does_not_behave_as_its_test_says(
    tmp_path: Path,
) -> None:
    """The unit tests can fail: the error-rate alert expected quiet where it fires."""
    group = next(g for g in unit_test_groups() if g["name"].startswith("error rate above"))
    for case in group["alert_rule_test"]:
        case["exp_alerts"] = []
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "tests": [group]}))
    done = promtool("test", "rules", broken)
    assert done.returncode == 1
    assert "FAILED" in done.stdout + done.stderr
    assert "alertname: TokenrelayHighErrorRate, time: 10m" in done.stdout + done.stderr
