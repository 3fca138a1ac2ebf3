"""The Grafana dashboard (deploy/grafana/tokenrelay.json) and the alert rules name only
what the gateway exports: every metric in every expression is one a real gateway's
`/metrics` declares, every label one that metric has. The dashboard is well formed
PromQL over a datasource and instance of the viewer's choosing, and shows every metric.
A real Prometheus with deploy/prometheus/prometheus.yml scrapes two gateways: their
streams add up, every rule evaluates without error (and none fires), every dashboard
query runs.

Names come out of PromQL by a small lexer (promtool cannot list them): strings, label
matchers, ranges and grouping lists are cut out, then every identifier that is neither
a keyword nor a function call is a metric name. Its own tests below show it catches a
misspelled name."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics import exposition as openmetrics

from tests.support import ROOT, eventually, free_port, spawn, unique, wait_until_ok
from tokenrelay import __version__
from tokenrelay.client import stream_sync
from tokenrelay.observability import metrics
from tokenrelay.observability.telemetry import PoolCollector
from tokenrelay.providers.simulator import SimulatorProvider
from tokenrelay.upstreams.pool import Pool

DASHBOARD = ROOT / "deploy" / "grafana" / "tokenrelay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

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
    # The upstream pool's gauges, read from the pool when /metrics is scraped.
    for family in PoolCollector(Pool.single(SimulatorProvider())).collect():
        labels[family.name] = set(family._labelnames)  # type: ignore[attr-defined]
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
    assert len(ids) == len(set(ids)) == 42


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


@dataclass
class Scraped:
    """Two gateways, and a Prometheus scraping them with deploy/prometheus/prometheus.yml
    and the alert rules."""

    gateways: list[str]  # host:port, as Prometheus's `instance` label says
    prometheus: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        groups = httpx.get(f"{self.prometheus}/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[str]) -> Iterator[str]:
    """Prometheus with the example configuration, its targets replaced by `targets` and
    its intervals shortened to a second; no Alertmanager."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    del config["alerting"]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_ok(f"{url}/-/ready", timeout=30, proc=proc)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    tmp = tmp_path_factory.mktemp("scraped")
    ports = [free_port(), free_port()]
    env = {"TOKENRELAY_SIMULATOR_TTFT_MS": "0"}
    with contextlib.ExitStack() as stack:
        for port in ports:
            args = ["serve", "--port", str(port), "--provider", "simulator"]
            ready = f"http://127.0.0.1:{port}/readyz"
            log = tmp / f"gateway-{port}.log"
            stack.enter_context(spawn(args, ready, env=env, log_path=log))
        gateways = [f"127.0.0.1:{port}" for port in ports]
        yield Scraped(gateways, stack.enter_context(prometheus(tmp, gateways)))


@pytest.fixture(scope="module")
def exposition(scraped: Scraped) -> str:
    response = httpx.get(f"http://{scraped.gateways[0]}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


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


def test_prometheus_scrapes_every_instance_with_the_example_configuration(
    scraped: Scraped,
) -> None:
    def both_up() -> list[dict[str, Any]] | None:
        up = scraped.query('up{job="tokenrelay"} == 1')
        return up if len(up) == 2 else None

    up = eventually(both_up, what="Prometheus to scrape both gateways", within=30)
    assert sorted(series["metric"]["instance"] for series in up) == sorted(scraped.gateways)
    builds = scraped.query("tokenrelay_build_info")
    assert sorted(series["metric"]["instance"] for series in builds) == sorted(scraped.gateways)
    assert {series["metric"]["version"] for series in builds} == {__version__}
    # What the dashboard's instance variable asks: label_values(…, instance).
    values = httpx.get(
        f"{scraped.prometheus}/api/v1/label/instance/values",
        params={"match[]": 'tokenrelay_build_info{job=~"tokenrelay"}'},
    ).json()["data"]
    assert values == sorted(scraped.gateways)


def test_streams_on_two_instances_add_up_in_prometheus(scraped: Scraped) -> None:
    first, second = scraped.gateways
    for gateway in (first, first, second):
        events = list(stream_sync(f"http://{gateway}", unique("Count me [[sim:tokens=5]]")))
        assert events[-1].done, events[-1]

    def counted() -> dict[str, str] | None:
        done = scraped.query(
            'sum by (instance) (tokenrelay_streams_completed_total{job="tokenrelay",status="done"})'
        )
        by_instance = {series["metric"]["instance"]: series["value"][1] for series in done}
        return by_instance if by_instance == {first: "2", second: "1"} else None

    eventually(counted, what="2 and 1 streams done in Prometheus", within=30)


def test_every_rule_evaluates_without_error_and_nothing_fires_on_healthy_gateways(
    scraped: Scraped,
) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        rules = scraped.rules()
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = eventually(evaluated, what="Prometheus to evaluate every rule", within=30)
    assert len(rules) == len(alert_rules())
    assert {r["name"]: (r["health"], r.get("lastError", "")) for r in rules} == {
        r["name"]: ("ok", "") for r in rules
    }
    alerts = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
    assert alerts == {rule["alert"]: "inactive" for rule in alert_rules() if "alert" in rule}


def test_every_dashboard_query_runs_on_the_scraped_gateways(scraped: Scraped) -> None:
    """What Grafana would send: the variables filled, "All" as the alternation of the
    instances, their dots escaped for the regex inside a PromQL string."""
    values = {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$job": "tokenrelay",
        "$instance": "|".join(g.replace(".", "\\\\.") for g in scraped.gateways),
    }
    for expr in dashboard_expressions():
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        scraped.query(expr)  # asserts a success: no parse or vector-matching error
    every_instance = values["$instance"]
    chosen = scraped.query(f'tokenrelay_build_info{{instance=~"{every_instance}"}}')
    assert len(chosen) == 2
