"""Shared pieces of epp's dashboards: the Prometheus datasource variable, query and panel shorthands.

Every panel reads the datasource chosen in the `datasource` variable, so an imported dashboard works with
whatever Prometheus data source the Grafana instance has.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"  # Grafana's rate window: at least four scrape intervals


def base(uid: str, title: str, description: str, tags: list[str]) -> dashboard.Dashboard:
    """A dashboard with the datasource variable, a 1 h window and 30 s refresh."""
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["epp", *tags])
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )


def label_variable(name: str, label: str, metric: str, label_name: str) -> dashboard.QueryVariable:
    """A multi-value variable over the values of `label_name` on `metric`, "All" selected by default."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {label_name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(text="All", value="$__all", selected=True))
    )


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref)


def _queries(queries: list[tuple[str, str]]) -> list[cogbuilder.Builder[object]]:
    return [query(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def series(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    width: int = 12,
    stack: bool = False,
) -> timeseries.Panel:
    """A time series panel of `queries` (expression, legend)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .targets(_queries(queries))  # type: ignore[arg-type]
    )
    if stack:  # the parts add up to the whole
        panel = panel.fill_opacity(40).stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL))
    return panel


def single(
    title: str, description: str, expr: str, unit: str = "short", width: int = 6, legend: str = ""
) -> stat.Panel:
    """A stat panel showing the last value of `expr`."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .with_target(query(expr, legend))
    )


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title)
