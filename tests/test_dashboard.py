"""The Grafana dashboard (deploy/grafana/tokenrelay.json) and the alert rules name only
what the gateway exports: every metric in every expression is one a real gateway's
`/metrics` declares, every label one that metric has. The dashboard is well formed
PromQL over a datasource and instance of the viewer's choosing, and shows every metric.

Names come out of PromQL by a small lexer (promtool cannot list them): strings, label
matchers, ranges and grouping lists are cut out, then every identifier that is neither
a keyword nor a function call is a metric name. Its own tests below show it catches a
misspelled name."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics import exposition as openmetrics

from tests.support import ROOT, free_port, spawn
from tokenrelay.observability import metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "tokenrelay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Prometheus's own series a rule may use besides the gateway's.
WELL_KNOWN = frozenset({"up"})
# Labels Prometheus attaches to every scraped series, and a histogram's bucket bound.
TARGET_LABELS = frozenset({"job", "instance", "le"})
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# --- PromQL names -------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_GRAFANA_VARIABLES = re.compile(r"\$\{?\w+\}?")
_TOKENS = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
)
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "atan2", "inf", "nan", "start", "end"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _GRAFANA_VARIABLES.sub(" ", _STRINGS.sub('""', expr))
    text = _RANGES.sub(" ", _MATCHERS.sub(" ", text))
    text = _GROUPING.sub(r" \1 ", text)
    names = set()
    for token in _TOKENS.finditer(text):
        name = token.group("name")
        if name is None or name.lower() in _KEYWORDS:
            continue
        if text[token.end() :].lstrip().startswith("("):
            continue  # a function
        names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """The labels an expression matches on or groups by (not those of `label_replace`'s
    arguments, which this project's expressions do not use)."""
    text = _STRINGS.sub('""', expr)
    labels = set()
    for block in _MATCHERS.findall(text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for _, listed in _GROUPING.findall(text):
        labels |= {label.strip() for label in listed.split(",") if label.strip()}
    return labels


def grafana_query(query: str) -> str:
    """The PromQL inside a Grafana variable query: `label_values(selector, label)`."""
    match = _LABEL_VALUES.match(query)
    return match.group("selector") if match else query


# --- what /metrics declares ---------------------------------------------------------

_SAMPLES_OF_TYPE = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def exposed_names(exposition: str) -> set[str]:
    """The sample names an exposition's `# TYPE` lines declare, in the Prometheus text
    format or OpenMetrics (which names a counter and an info without their suffix)."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "counter" and name.endswith("_total"):
            names.add(name)
        else:
            names |= {name + suffix for suffix in _SAMPLES_OF_TYPE.get(kind, ("",))}
        if kind in ("counter", "histogram", "summary"):
            names.add(name.removesuffix("_total") + "_created")
    return names


def metric_labels() -> dict[str, set[str]]:
    """Each exported sample name's labels, as tokenrelay/observability/metrics.py
    declares them (a labelled series appears in `/metrics` only once used)."""
    labels: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                for name in exposed_names(f"# TYPE {family.name} {family.type}"):
                    labels[name] = set(collector._labelnames)
    return labels


# --- what the alerts and the dashboard say ------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in alert_rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    queries = [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return exprs + [grafana_query(q) for q in queries]


def every_expression() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + dashboard_expressions()


def unknown_names(expressions: list[str], exported: set[str]) -> dict[str, set[str]]:
    """Per expression, the names in it that are neither exported, recorded by the
    rules nor Prometheus's own."""
    known = exported | set(recorded()) | WELL_KNOWN
    unknown = {expr: metric_names(expr) - known for expr in expressions}
    return {expr: names for expr, names in unknown.items() if names}


# --- the lexer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("tokenrelay_draining == 1", {"tokenrelay_draining"}),
        ("tokenrelay_queue_depth / tokenrelay_queue_capacity > 0.8",
         {"tokenrelay_queue_depth", "tokenrelay_queue_capacity"}),
        ('histogram_quantile(0.95, sum by (job, le) (rate(tokenrelay_stream_duration_seconds_bucket'
         '{route="api", model=~"claude-.*"}[5m])))', {"tokenrelay_stream_duration_seconds_bucket"}),
        ("sum by (job, type) (rate(tokenrelay_upstream_errors_total[5m]))\n/ on (job) group_left\n"
         "sum by (job) (rate(tokenrelay_streams_started_total[5m]))",
         {"tokenrelay_upstream_errors_total", "tokenrelay_streams_started_total"}),
        ("job:tokenrelay_stream_errors:ratio_rate5m > 0.05",
         {"job:tokenrelay_stream_errors:ratio_rate5m"}),
        ('max(tokenrelay_ledger_backlog offset 1h30m) > 1e3 and up{job="tokenrelay_fake"} == 0',
         {"tokenrelay_ledger_backlog", "up"}),
        ('sum(increase(tokenrelay_cost_usd_total{instance=~"$instance"}[$__range])) * 3600',
         {"tokenrelay_cost_usd_total"}),
        ("sum without (instance) (tokenrelay_active_streams) or vector(0)",
         {"tokenrelay_active_streams"}),
        ("predict_linear(tokenrelay_ledger_backlog[15m:1m], 3600)", {"tokenrelay_ledger_backlog"}),
    ],
)  # fmt: skip
def test_the_lexer_finds_every_metric_name_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelled_metric_name_is_caught() -> None:
    exported = exposed_names(generate_latest(metrics.REGISTRY).decode())
    good = 'sum(rate(tokenrelay_streams_completed_total{status!~"done"}[5m]))'
    typo = 'sum by (job) (rate(tokenrelay_streams_complted_total{status!~"done"}[5m]))'
    bare = "tokenrelay_drainig == 1"
    foreign = "rate(http_requests_total[5m]) > 0 and up == 0"
    suffixless = "rate(tokenrelay_streams_completed[5m])"
    assert unknown_names([good, typo, bare, foreign, suffixless], exported) == {
        typo: {"tokenrelay_streams_complted_total"},
        bare: {"tokenrelay_drainig"},
        foreign: {"http_requests_total"},
        suffixless: {"tokenrelay_streams_completed"},
    }


def test_label_names_are_those_matched_and_grouped_by() -> None:
    expr = (
        'sum by (job, type) (rate(tokenrelay_upstream_errors_total{type=~"a|b", x!="}"}[5m]))'
        " / on (job) group_left sum by (job) (rate(tokenrelay_streams_started_total[5m]))"
    )
    assert label_names(expr) == {"job", "type", "x"}


def test_type_lines_expand_to_the_sample_names_in_both_formats() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    names = exposed_names(text)
    assert exposed_names(openmetrics.generate_latest(metrics.REGISTRY).decode()) == names
    assert {
        "tokenrelay_build_info",
        "tokenrelay_streams_completed_total",
        "tokenrelay_streams_completed_created",
        "tokenrelay_time_to_first_token_seconds_bucket",
        "tokenrelay_time_to_first_token_seconds_sum",
        "tokenrelay_time_to_first_token_seconds_count",
        "tokenrelay_active_streams",
    } <= names
    assert "tokenrelay_streams_completed" not in names
    # Every sample an unlabelled metric already shows is one the TYPE lines declare.
    samples = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
    assert samples and samples <= names


# --- the dashboard, on its own ------------------------------------------------------


def test_the_dashboard_picks_its_datasource_and_instances() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["query"] == "label_values(tokenrelay_build_info, job)"
    assert variables["instance"]["query"] == (
        'label_values(tokenrelay_build_info{job=~"$job"}, instance)'
    )
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"] is True and variables[name]["includeAll"] is True


def test_every_panel_reads_the_chosen_datasource_job_and_instances() -> None:
    ids = []
    for panel in panels():
        ids.append(panel["id"])
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            names = metric_names(target["expr"])
            assert names, target["expr"]
            for name in names:
                # Every selector is narrowed to the chosen job and instances.
                for selector in re.finditer(
                    rf"\b{re.escape(name)}\b(\{{[^}}]*\}})?", target["expr"]
                ):
                    assert selector.group(1) is not None, target["expr"]
                    assert 'job=~"$job"' in selector.group(1), target["expr"]
                    assert 'instance=~"$instance"' in selector.group(1), target["expr"]
    assert len(ids) == len(set(ids)) == 37


def test_every_dashboard_expression_is_promql_promtool_accepts(tmp_path: Path) -> None:
    """Loaded as recording rules, with Grafana's variables as Grafana would fill them."""
    values = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".+", "$instance": ".+"}
    rules = []
    for n, expr in enumerate(dashboard_expressions()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:expression_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_every_label_an_expression_uses_is_one_its_metrics_have() -> None:
    labels = metric_labels()
    recorded_labels = {
        name: set().union(*(labels.get(m, set()) for m in metric_names(expr)))
        for name, expr in recorded().items()
    }
    for name, expr in recorded().items():
        # A rule over a recorded series has that series' labels.
        for inner in metric_names(expr) & set(recorded_labels):
            recorded_labels[name] |= recorded_labels[inner]
    known = {**labels, **recorded_labels, "up": set()}
    wrong = {}
    for expr in every_expression():
        allowed = TARGET_LABELS.union(*(known.get(m, set()) for m in metric_names(expr)))
        if label_names(expr) - allowed:
            wrong[expr] = label_names(expr) - allowed
    assert wrong == {}


# --- against a real gateway ---------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("metrics") / "gateway.log"
    with spawn(["serve", "--port", str(port), "--provider", "simulator"], f"{url}/readyz",
               log_path=log):  # fmt: skip
        response = httpx.get(f"{url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        yield response.text


def test_the_alerts_and_the_dashboard_name_only_metrics_the_gateway_exports(
    exposition: str,
) -> None:
    exported = exposed_names(exposition)
    assert "tokenrelay_streams_completed_total" in exported
    assert unknown_names(every_expression(), exported) == {}


def test_the_dashboard_shows_every_metric_the_gateway_exports(exposition: str) -> None:
    shown = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    families = {
        line.split()[2]: exposed_names(line)
        for line in exposition.splitlines()
        if line.startswith("# TYPE ") and not line.endswith("_created gauge")
    }
    assert "tokenrelay_build_info" in families
    assert sorted(name for name, samples in families.items() if not samples & shown) == []


def test_the_exposition_passes_promtools_lint(exposition: str) -> None:
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""
