"""The Grafana dashboard of components/observability, checked offline: against Grafana's own dashboard model
(grafana-foundation-sdk, strictly: a field it does not know is a problem), every query parsed as PromQL, every
metric it names one the flow exports under that name and every metric the flow exports drawn, and the
provisioning wired to the Prometheus that scrapes the collector that receives the flow's metrics."""

from __future__ import annotations

import copy
import json
import re

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY
from support.core_runs import messages, sample_records
from support.jobs import REPO
from test_k8s import needs_kubectl, rendered, unknown

from flows.core.events import ChallengerReport, ModelEvent, ModelToServeStats
from flows.core.records import ScoredBatch
from flows.core.scoring import unscored
from flows.core.serving_state import PartitionLag, ServingState
from flows.core.telemetry import Telemetry
from flows.core.vocabulary import ClosedBy, EventKind

COMPONENT = REPO / "k8s" / "components" / "observability"
DASHBOARD = json.loads((COMPONENT / "grafana-dashboard.json").read_text())
METRIC = re.compile(r"\bserving_[a-z_]+")


def dashboard_problems(dashboard: dict) -> list[str]:
    """What Grafana's dashboard model (with its panel and query plugins) does not hold of `dashboard`."""
    plugins.register_default_plugins()
    known = json.loads(json.dumps(Dashboard.from_json(copy.deepcopy(dashboard)), cls=JSONEncoder))
    return [f"unknown field {path}" for path in unknown(dashboard, known)]


def queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def exported_metric_names() -> set[str]:
    """The Prometheus names of every instrument the flow has, as its Prometheus exporter writes them, each
    instrument given a value (observable gauges only report what the state holds)."""
    state = ServingState()
    state.serve("shard-000", ModelToServeStats("m"))
    state.drift("m", {"windows": 1, "features": {"user": {"psi": 0.1, "ks": 0.1}}})
    state.outliers("m", {"windows": 1, "rates": [0.02], "threshold": 0.1})
    state.partition_lag(PartitionLag("records", 0, 5, 10, 1))
    state.challenger(
        ChallengerReport("c", "m", "shadow", 1.0, "shard-000", 0, ClosedBy.WINDOW, 10, 10, 0, 10, 50, 5, 0.9,
                         0.01, 1.0, 1.0, 0, 1)
    )  # fmt: skip
    # The reader registers itself in prometheus_client's global registry, which Bytewax serves at /metrics:
    # read it directly and take it out again, so no other test sees this test's model "m".
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        telemetry = Telemetry(state)
        telemetry.install(None, provider)
        telemetry.model_events([ModelEvent(EventKind.ACCEPTED, "m")])
        telemetry.explained("m", 2)
        with telemetry.batch("shard-000", "m", "embedded", []) as span:
            telemetry.scored(span, "shard-000", "m", _one_result_with_an_error(), 2.0)
        families = list(reader._collector.collect())
    finally:
        provider.shutdown()  # the reader's shutdown unregisters it
    assert reader._collector not in REGISTRY._collector_to_names
    return {
        sample.name for family in families for sample in family.samples if sample.name.startswith("serving_")
    }


def _one_result_with_an_error() -> ScoredBatch:
    [message] = messages(sample_records(1))
    return ScoredBatch.of_results([message], [unscored(message, "a model server is down", "m")])


def test_the_dashboard_is_a_grafana_dashboard_and_the_check_catches_a_misspelt_field():
    assert dashboard_problems(DASHBOARD) == []
    misspelt = copy.deepcopy(DASHBOARD)
    timeseries = next(panel for panel in misspelt["panels"] if panel["type"] == "timeseries")
    timeseries["fieldConfg"] = timeseries.pop("fieldConfig")
    timeseries["targets"][0]["exrp"] = timeseries["targets"][0].pop("expr")
    assert set(dashboard_problems(misspelt)) == {
        f"unknown field .panels[{misspelt['panels'].index(timeseries)}].{field}"
        for field in ("fieldConfg", "targets[0].exrp")
    }


def test_every_query_parses_and_names_only_metrics_the_flow_exports_and_all_of_them():
    exported = exported_metric_names()
    assert {"serving_records_scored_total", "serving_kafka_lag", "serving_drift_psi"} <= exported
    named: set[str] = set()
    for expr in queries(DASHBOARD):
        promql_parser.parse(expr.replace("$__rate_interval", "1m"))  # raises on a syntax error
        named |= set(METRIC.findall(expr))
    assert named - exported == set(), "queries name metrics the flow does not export"
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    drawn = {re.sub(r"_(bucket|sum|count)$", "", name) for name in named}
    assert families - drawn == set(), "metrics the flow exports that no panel draws"
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (model (rate(serving_records_scored_total[1m]))")


@needs_kubectl
def test_grafana_is_provisioned_with_the_prometheus_that_scrapes_the_collector_of_the_flows_metrics():
    documents = rendered("embedded")
    config_maps = {document["metadata"]["name"].rsplit("-", 1)[0]: document for document in documents
                   if document["kind"] == "ConfigMap"}  # fmt: skip
    services = {
        document["metadata"]["name"]: document for document in documents if document["kind"] == "Service"
    }

    def address(service: str, port_name: str) -> str:
        [port] = [port for port in services[service]["spec"]["ports"] if port["name"] == port_name]
        return f"{service}.model-serving.svc:{port['port']}"

    [source] = yaml.safe_load(config_maps["grafana-datasources"]["data"]["datasources.yaml"])["datasources"]
    assert (source["type"], source["uid"]) == (
        "prometheus",
        DASHBOARD["templating"]["list"][0]["current"]["value"],
    )
    assert source["url"] == f"http://{address('prometheus', 'http')}"
    assert json.loads(config_maps["grafana-dashboards"]["data"]["serving.json"]) == DASHBOARD
    scrape = yaml.safe_load(config_maps["prometheus-config"]["data"]["prometheus.yml"])
    [job] = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [address("otel-collector", "prometheus")]
    assert job["honor_labels"] is True  # keeps job="bytewax-serving", which KEDA's query selects
    collector = yaml.safe_load(config_maps["otel-collector-config"]["data"]["config.yaml"])
    assert "prometheus" in collector["service"]["pipelines"]["metrics"]["exporters"]
    assert collector["exporters"]["prometheus"]["endpoint"].endswith(":8889")
