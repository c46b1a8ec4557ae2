"""dashboards/sluice.json stays honest: valid Grafana JSON, every metric and
label its PromQL uses is on a live sluiced's /metrics, every expression parses
(promtool) and, against a real Prometheus scraping a real sluiced, evaluates
without error and returns data; the provisioning files agree with it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, SLUICED, Daemon, Prometheus, fetch, metrics_port

DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "sluice.json"
DS_PROVISIONING = DASHBOARDS / "provisioning" / "datasources" / "sluice.yaml"
DASH_PROVISIONING = DASHBOARDS / "provisioning" / "dashboards" / "sluice.yaml"
README = DASHBOARDS / "README.md"

# Labels Prometheus attaches to every scraped series (target labels): they are
# not on the /metrics page but every stored series has them.
TARGET_LABELS = {"job", "instance"}

# PromQL functions (Prometheus 2.x/3.x) ...
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "first_over_time", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10",
    "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "ts_of_first_over_time", "ts_of_last_over_time", "ts_of_max_over_time",
    "ts_of_min_over_time", "vector", "year",
}
# ... aggregation operators ...
PROMQL_AGGREGATIONS = {
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min",
    "quantile", "stddev", "stdvar", "sum", "topk",
}
# ... and keywords (binary operators, modifiers, literals).
PROMQL_KEYWORDS = {
    "and", "or", "unless", "atan2", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "start", "end", "inf", "nan", "Inf", "NaN",
}
NOT_METRICS = PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS | PROMQL_KEYWORDS

IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
MATCHER = re.compile(rf"\s*({IDENT})\s*(=~|!~|!=|=)\s*({STRING})\s*(,|$)")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


# ------------------------------------------------------------------ dashboard walking

def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list) -> list:
    """Every panel, rows' nested (collapsed) panels included."""
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def data_panels(dash: dict) -> list:
    return [p for p in all_panels(dash["panels"]) if p.get("type") != "row"]


def variable_query(v: dict) -> str:
    q = v.get("query", "")
    return q.get("query", "") if isinstance(q, dict) else q


def split_label_values(q: str) -> tuple[str | None, str]:
    """Grafana's label_values(EXPR, LABEL) / label_values(LABEL) -> (EXPR or None, LABEL)."""
    m = re.fullmatch(rf"\s*label_values\(\s*(?:(.*\S)\s*,\s*)?({IDENT})\s*\)\s*", q, re.S)
    assert m, f"unsupported template variable query {q!r}"
    return m.group(1), m.group(2)


def dashboard_queries(dash: dict) -> list[tuple[str, str, str | None]]:
    """(where, PromQL expression, label a label_values() variable reads or None)."""
    out = []
    for p in data_panels(dash):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p['id']} {p.get('title')!r} target {t.get('refId')}", t["expr"], None))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            expr, label = split_label_values(variable_query(v))
            if expr is not None:
                out.append((f"variable ${v['name']}", expr, label))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a.get('name')!r}", a["expr"], None))
    return out


def panel_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(w, e) for w, e, lab in dashboard_queries(dash) if w.startswith("panel ")]


# ------------------------------------------------------------------ PromQL scanning

def strip_strings(expr: str) -> str:
    return re.sub(STRING, '""', expr)


def metric_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, unknown functions) an expression uses."""
    s = strip_strings(expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)                     # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)                   # ranges and subqueries
    s = GROUPING.sub(" ", s)                              # by (...), without (...), on (...), ...
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)         # offset 5m
    s = re.sub(r"\$\{?\w+\}?", " ", s)                    # any template variable left
    metrics, unknown = set(), set()
    for m in re.finditer(rf"(?<![\w.]){IDENT}", s):
        name = m.group(0)
        called = s[m.end():].lstrip().startswith("(")
        if name in NOT_METRICS:
            continue
        if called:
            unknown.add(name)
        else:
            metrics.add(name)
    return metrics, unknown


def selectors(expr: str) -> list[tuple[str | None, list[tuple[str, str, str]]]]:
    """Every vector selector: (metric name or None, [(label, op, value)])."""
    out = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            m = re.compile(STRING).match(expr, i)
            assert m, f"unterminated string in {expr!r}"
            i = m.end()
            continue
        if c == "{":
            j = i + 1
            while True:  # the closing brace outside strings
                assert j < len(expr), f"unbalanced braces in {expr!r}"
                if expr[j] in "\"'`":
                    j = re.compile(STRING).match(expr, j).end()
                    continue
                if expr[j] == "}":
                    break
                j += 1
            body = expr[i + 1:j]
            name_m = re.search(rf"({IDENT})\s*$", expr[:i])
            name = name_m.group(1) if name_m else None
            matchers, pos = [], 0
            while body[pos:].strip():
                m = MATCHER.match(body, pos)
                assert m, f"cannot parse label matchers {{{body}}} in {expr!r}"
                value = m.group(3)[1:-1]
                matchers.append((m.group(1), m.group(2), value))
                pos = m.end()
            for label, op, value in matchers:
                if label == "__name__" and op == "=":
                    name = value
            out.append((name, matchers))
            i = j + 1
            continue
        i += 1
    return out


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in GROUPING.finditer(strip_strings(expr)):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    return labels


def substitute(expr: str, values: dict[str, str], regex_value: str = ".*") -> str:
    """Grafana variables -> concrete values so promtool/Prometheus can parse the
    expression: inside a =~/!~ matcher a variable becomes regex_value (what an
    All selection sends); elsewhere the value from `values`."""
    builtins = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
                "__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}
    var = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")

    def regex_matcher(m: re.Match) -> str:
        return m.group(1) + var.sub(lambda v: regex_value if not (v.group(1) or v.group(2) or v.group(3)).startswith("__")
                                    else builtins[v.group(1) or v.group(2) or v.group(3)], m.group(2))

    s = re.sub(r'(=~\s*|!~\s*)("(?:[^"\\]|\\.)*")', regex_matcher, expr)

    def plain(v: re.Match) -> str:
        name = v.group(1) or v.group(2) or v.group(3)
        if name in builtins:
            return builtins[name]
        assert name in values, f"no test value for template variable ${name} in {expr!r}"
        return values[name]

    s = var.sub(plain, s)
    assert "$" not in s, s
    return s


# ------------------------------------------------------------------ the live page

def parse_exposition(page: str) -> dict[str, dict[str, set[str]]]:
    """series name -> {label: values} as exposed (histograms as _bucket/_sum/_count)."""
    series: dict[str, dict[str, set[str]]] = {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(rf"({IDENT})(?:\{{(.*)\}})?\s+\S+", line)
        assert m, f"unparsable /metrics line {line!r}"
        labels = series.setdefault(m.group(1), {})
        for lm in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            labels.setdefault(lm.group(1), set()).add(lm.group(2))
    return series


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """The series of a live sluiced's /metrics, after some traffic."""
    if not SLUICED.exists():
        pytest.fail(f"{SLUICED} is not built: run .ci/build first")
    d = Daemon(tmp_path_factory.mktemp("dash"), args=("--metrics-addr", "127.0.0.1:0", "--tick-ms", "200"))
    try:
        page = fetch(f"http://127.0.0.1:{metrics_port(d)}/metrics")
    finally:
        d.stop()
    series = parse_exposition(page)
    assert "sluice_admissions_total" in series and "sluice_tier_limit" in series, page[:2000]
    return series


def missing_metrics(expr: str, series: dict) -> set[str]:
    names, unknown = metric_names(expr)
    assert not unknown, f"unknown PromQL functions {sorted(unknown)} in {expr!r}"
    return {n for n in names if n not in series}


def label_problems(expr: str, series: dict) -> list[str]:
    """Matchers on labels the metric does not have, or on literal values it never takes."""
    problems = []
    for name, matchers in selectors(expr):
        if name is None:
            problems.append(f"a selector without a metric name in {expr!r}")
            continue
        have = series.get(name, {})
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if label in TARGET_LABELS:
                continue
            if label not in have:
                problems.append(f"{name} has no label {label!r} (has {sorted(have)})")
                continue
            if "$" in value:
                continue
            if op in ("=", "!="):
                wanted = {value}
            elif re.fullmatch(r"[\w:]+(\|[\w:]+)*", value):  # a plain a|b|c alternation
                wanted = set(value.split("|"))
            else:
                continue
            for w in sorted(wanted - have[label]):
                problems.append(f"{name}{{{label}{op}...}}: {w!r} is not a value of {label} (has {sorted(have[label])})")
    return problems


def labels_of(expr: str, series: dict) -> set[str]:
    names, _ = metric_names(expr)
    out = set(TARGET_LABELS)
    for n in names:
        out |= set(series.get(n, {}))
    return out


# ------------------------------------------------------------------ structure

def test_dashboard_is_valid_grafana_json():
    dash = load_dashboard()
    assert dash["title"] and dash["uid"]
    assert 36 <= dash["schemaVersion"] <= 41
    panels = all_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    for want in ("Traffic", "Limits", "Denials by reason", "Surge", "Revenue", "Governance", "Advisor", "Health"):
        assert want in rows, rows
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']!r} is wider than 24 columns: {g}"
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']!r} overlaps another panel: {g}"
        occupied |= cells
    for p in data_panels(dash):
        assert p.get("title"), p["id"]
        assert p.get("datasource", {}).get("uid"), f"{p['title']!r} has no datasource"
        targets = p.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), f"{p['title']!r} has a target without expr"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), p["title"]


def test_units_and_the_surge_mappings():
    dash = load_dashboard()
    units = {p["fieldConfig"]["defaults"].get("unit") for p in data_panels(dash)}
    for want in ("reqps", "currencyUSD", "s", "percentunit"):
        assert want in units, units
    surge = [p for p in data_panels(dash) if any("surge_level" in t["expr"] for t in p["targets"])]
    assert surge
    for p in surge:
        texts = {o["text"] for m in p["fieldConfig"]["defaults"]["mappings"] for o in m["options"].values()}
        assert {"normal", "surge", "ddos"} <= texts, p["title"]


def test_datasource_and_variables():
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "prometheus"
    allowed = {"${DS_PROMETHEUS}", "$DS_PROMETHEUS", ds["current"]["value"]}
    for p in data_panels(dash):
        assert p["datasource"]["uid"] in allowed, p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] in allowed, p["title"]
    tier = variables["tier"]
    expr, label = split_label_values(variable_query(tier))
    assert label == "tier" and metric_names(expr)[0] == {"sluice_tier_limit"}
    assert tier["includeAll"] and tier["allValue"] == ".*"
    # Every variable a query uses is defined (or is one of Grafana's own).
    for where, e, _ in dashboard_queries(dash):
        for v in re.findall(r"\$\{?(\w+)", e):
            assert v.startswith("__") or v in variables, f"{where}: ${v} is not a dashboard variable"
    # A multi-value variable may only be used in a regex matcher.
    multi = {n for n, v in variables.items() if v.get("multi") or v.get("includeAll")}
    for where, e, _ in dashboard_queries(dash):
        for name, matchers in selectors(e):
            for label, op, value in matchers:
                for v in re.findall(r"\$\{?(\w+)", value):
                    assert v not in multi or op in ("=~", "!~"), f"{where}: multi-value ${v} used with {op}"


# ------------------------------------------------------------------ against /metrics

def test_the_extractor_sees_what_it_must():
    names, unknown = metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(sluice_advisor_latency_seconds_bucket{instance=~"$x"}[5m])))'
        ' / on (instance) group_left (tier) sluice_tier_limit offset 5m * 1e3 + sum(x:y_z) without (a)')
    assert names == {"sluice_advisor_latency_seconds_bucket", "sluice_tier_limit", "x:y_z"}, names
    assert not unknown
    assert metric_names('sum(rat(sluice_tier_limit[1m]))')[1] == {"rat"}
    assert metric_names('count(sluice_tier_limit{reason="sum(sluice_fake)"})')[0] == {"sluice_tier_limit"}
    sels = selectors('a{x="}{", y=~"$t"} + b')
    assert sels == [("a", [("x", "=", "}{"), ("y", "=~", "$t")])], sels


def test_every_metric_the_dashboard_uses_is_exposed(exposed):
    # Negative controls: a made-up metric, a made-up label and value are reported.
    assert missing_metrics("rate(sluice_no_such_total[1m])", exposed) == {"sluice_no_such_total"}
    assert missing_metrics("sluice_advisor_latency_seconds", exposed) == {"sluice_advisor_latency_seconds"}
    assert label_problems('sluice_tier_limit{region="eu"}', exposed)
    assert label_problems('sluice_admissions_total{decision="rejected"}', exposed)
    assert label_problems('sluice_advisor_calls_total{outcome!~"ok|clampd"}', exposed)
    assert not label_problems('sluice_admissions_total{tier=~"$tier",instance="x",decision="denied"}', exposed)

    dash = load_dashboard()
    queries = dashboard_queries(dash)
    assert len(queries) >= 20
    missing = {}
    for where, expr, _ in queries:
        if m := missing_metrics(expr, exposed):
            missing[where] = (expr, sorted(m))
    assert not missing, json.dumps(missing, indent=1)
    used = set().union(*(metric_names(e)[0] for _, e, _ in queries))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    for want in ("sluice_admissions_total", "sluice_revenue_dollars_total", "sluice_tier_limit",
                 "sluice_host_surge_level", "sluice_surge_level", "sluice_pending_approvals",
                 "sluice_advisor_latency_seconds", "sluice_heartbeat_age_seconds", "sluice_keys_in_use"):
        assert want in families, want


def test_every_label_the_dashboard_uses_is_exposed(exposed):
    dash = load_dashboard()
    problems = []
    for where, expr, var_label in dashboard_queries(dash):
        problems += [f"{where}: {p}" for p in label_problems(expr, exposed)]
        have = labels_of(expr, exposed)
        for label in grouping_labels(expr):
            if label not in have:
                problems.append(f"{where}: grouping by {label!r}, which none of its metrics has")
        if var_label and var_label not in have:
            problems.append(f"{where}: label_values() of {var_label!r}, which its metric does not have")
    for p in data_panels(dash):
        for t in p["targets"]:
            have = labels_of(t["expr"], exposed)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                if label not in have:
                    problems.append(f"panel {p['id']} {p['title']!r}: legend uses {{{{{label}}}}}, not a label of its metrics")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ promtool

def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dash:rule_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard.rules.yml"
    f.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    return subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)


TEST_VALUES = {"tier": "enterprise", "instance": "127.0.0.1:9464", "DS_PROMETHEUS": "prometheus"}


def test_every_expression_parses_in_promtool(tmp_path):
    if not shutil.which("promtool"):
        pytest.fail("promtool is not installed (.ci/deps installs Debian's prometheus)")
    # The check can fail: promtool refuses a broken expression.
    bad = promtool_check(['sum(rate(sluice_admissions_total{tier=~".*"}[1m])'], tmp_path)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    exprs = [substitute(e, TEST_VALUES) for _, e, _ in dashboard_queries(load_dashboard())]
    r = promtool_check(exprs, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(exprs)} rules found" in r.stdout, r.stdout


def test_substitution():
    assert substitute('rate(x{tier=~"$tier",i="${instance}"}[$__rate_interval])', TEST_VALUES) == \
        'rate(x{tier=~".*",i="127.0.0.1:9464"}[1m])'
    with pytest.raises(AssertionError):
        substitute('x{a="$nope"}', TEST_VALUES)


# ------------------------------------------------------------------ a real Prometheus

def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path):
    """Parsing is not enough: a label mismatch in a division or a wrong grouping
    returns nothing. A real Prometheus scrapes a real sluiced after traffic and
    every panel target must evaluate without error to at least one series."""
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed (.ci/deps installs it)")
    import sluice

    d = Daemon(tmp_path, args=("--metrics-addr", "127.0.0.1:0", "--tick-ms", "200"))
    try:
        target = f"127.0.0.1:{metrics_port(d)}"
        with Prometheus(tmp_path, target) as prom:
            query = prom.query
            values = dict(TEST_VALUES, instance=target)
            # Traffic over several scrapes, so rate() has samples on both sides.
            deadline = time.monotonic() + 60
            with sluice.Client(d.segment) as c:
                while True:
                    for i in range(20):
                        c.acquire(f"k{i % 4}", "pro")
                        c.acquire("e", "enterprise", cost=2)
                        c.acquire("f", "free")
                    try:
                        r = query(f'count_over_time(sluice_tier_limit{{instance="{target}",tier="pro"}}[1m])')
                        if r.get("status") == "success" and r["data"]["result"] and \
                                float(r["data"]["result"][0]["value"][1]) >= 4:
                            break
                    except OSError:
                        pass  # not listening yet
                    prom.check_alive()
                    assert time.monotonic() < deadline, prom.log_path.read_text()[-2000:]
                    time.sleep(0.5)

            # The control: a query with a mismatched division returns no data, and is caught.
            r = query(f'sluice_tier_limit{{instance="{target}"}} / sluice_host_surge_level{{instance="{target}"}}')
            assert r["status"] == "success" and r["data"]["result"] == []

            failures = []
            for where, expr in panel_exprs(load_dashboard()):
                r = query(substitute(expr, values))
                if r.get("status") != "success":
                    failures.append(f"{where}: {r.get('error')} in {expr}")
                elif not r["data"]["result"]:
                    failures.append(f"{where}: no data for {expr}")
            for v in load_dashboard()["templating"]["list"]:
                if v.get("type") == "query":
                    expr, label = split_label_values(variable_query(v))
                    r = query(substitute(expr, values))
                    got = {s["metric"].get(label) for s in r["data"]["result"]} if r.get("status") == "success" else set()
                    if not got - {None}:
                        failures.append(f"variable ${v['name']}: no {label} values from {expr}")
            assert not failures, "\n".join(failures)
    finally:
        d.stop()


# ------------------------------------------------------------------ provisioning

def read_yaml(path: Path) -> dict | None:
    try:
        import yaml
    except ImportError:
        return None
    return yaml.safe_load(path.read_text())


def test_provisioning_matches_the_dashboard():
    assert DS_PROVISIONING.is_file() and DASH_PROVISIONING.is_file() and README.is_file()
    dash = load_dashboard()
    uid = next(v for v in dash["templating"]["list"] if v["name"] == "DS_PROMETHEUS")["current"]["value"]
    ds_doc, dash_doc = read_yaml(DS_PROVISIONING), read_yaml(DASH_PROVISIONING)
    if ds_doc is None:  # no PyYAML: the same facts, by pattern
        ds_text, dash_text = DS_PROVISIONING.read_text(), DASH_PROVISIONING.read_text()
        assert re.search(rf"^\s*uid:\s*['\"]?{re.escape(uid)}['\"]?\s*$", ds_text, re.M)
        assert re.search(r"^\s*type:\s*prometheus\s*$", ds_text, re.M)
        assert re.search(r"^\s*url:\s*http://127\.0\.0\.1:9090\s*$", ds_text, re.M)
        assert re.search(r"^\s*type:\s*file\s*$", dash_text, re.M)
        path = re.search(r"^\s*path:\s*(\S+)\s*$", dash_text, re.M).group(1)
    else:
        assert ds_doc["apiVersion"] == 1 and dash_doc["apiVersion"] == 1
        [ds] = [d for d in ds_doc["datasources"] if d["uid"] == uid]
        assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090"
        [provider] = dash_doc["providers"]
        assert provider["type"] == "file"
        path = provider["options"]["path"]
    # The provider's folder is where the README mounts (or copies) dashboards/.
    assert path.startswith("/"), path
    readme = README.read_text()
    assert re.search(rf"dashboards/?:{re.escape(path)}\b", readme) or f"dashboards/sluice.json {path}" in readme, \
        f"dashboards/README.md does not show how dashboards/ reaches {path}"
    assert "scrape_configs" in readme and "127.0.0.1:" in readme
