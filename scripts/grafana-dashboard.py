#!/usr/bin/env python3
"""Writes config/grafana-dashboard.json: the Grafana dashboard for the receiver.

Edit this file, not the JSON: `python3 scripts/grafana-dashboard.py`.

Correct for any number of replicas, with either stats backend:
- message counts: with stats.backend = "redis" every replica serves the same
  fleet figures (openim_callback_fleet_*), taken with max(); with "memory" each
  replica serves its own counts (openim_callback_messages_*), summed. `A or B`
  picks whichever exists.
- distinct people cannot be added across replicas: the fleet's (max) or, with
  the memory backend, each replica's own line.
- per-replica panels (requests, answer time, sinks, journal) follow the
  `instance` variable.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE = "$__rate_interval"
INSTANCE = 'instance=~"$instance"'


def fleet_or_replicas(fleet: str, replica: str, by: str = "") -> str:
    """The fleet's figure (max over replicas), else the sum of each replica's."""
    group = f" by ({by})" if by else ""
    return (
        f"max{group} (rate(openim_callback_fleet_{fleet}[{RATE}]))"
        f" or sum{group} (rate(openim_callback_{replica}{{{INSTANCE}}}[{RATE}]))"
    )


def target(expr: str, legend: str = "", ref: str = "A") -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def timeseries(title: str, targets: list, unit: str = "short", description: str = "") -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [target(*t, ref=chr(65 + i)) for i, t in enumerate(targets)],
    }


def stat(title: str, expr: str, description: str, unit: str = "short", today: bool = False, thresholds=None) -> dict:
    panel = {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": thresholds or [{"color": "green", "value": None}],
                },
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "none"},
        "targets": [target(expr)],
    }
    if today:
        panel["timeFrom"] = "now/d"
    return panel


stats = [
    stat("Messages today", "max(openim_callback_fleet_messages_today) or sum(openim_callback_messages_today)",
         "Messages dated today in stats.timezone: the fleet's, or the sum of every replica's"),
    stat("Distinct senders today",
         'max(openim_callback_fleet_people_today{role="sender"}) or max(openim_callback_people_today{role="sender"})',
         "The fleet's (stats.backend = \"redis\"); with the memory backend, the largest replica's (people cannot be added across replicas)"),
    stat("Replicas ready", f"sum(openim_callback_ready{{{INSTANCE}}})",
         "Replicas whose /readyz answers 200, of those scraped",
         thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]),
    stat("Rejected callbacks (time range)",
         f'sum(increase(openim_callback_requests_total{{outcome!="accepted",{INSTANCE}}}[$__range]))',
         "Callbacks answered with an error: OpenIM does not retry them",
         thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
]

series = [
    timeseries("Messages per second", [(fleet_or_replicas("messages_total", "messages_total"), "messages/s")],
               "mps", "The whole fleet's rate (every replica's messages)"),
    timeseries("Messages per second by content type",
               [(fleet_or_replicas("messages_by_content_type_total", "messages_by_content_type_total",
                                   "content_type"), "{{content_type}}")], "mps"),
    timeseries("Messages per second by platform",
               [(fleet_or_replicas("messages_by_platform_total", "messages_by_platform_total", "platform"),
                 "{{platform}}")], "mps"),
    timeseries("Messages per second by session type",
               [(fleet_or_replicas("messages_by_session_type_total", "messages_by_session_type_total",
                                   "session_type"), "{{session_type}}")], "mps",
               "single_chat and group_chat: the after-send callbacks of each"),
    timeseries("Distinct people, conversations and groups",
               [("max by (role) (openim_callback_fleet_people) or "
                 f"openim_callback_people{{{INSTANCE}}}", "people ({{role}}) {{instance}}"),
                (f"max(openim_callback_fleet_conversations) or openim_callback_conversations{{{INSTANCE}}}",
                 "conversations {{instance}}"),
                (f"max(openim_callback_fleet_groups) or openim_callback_groups{{{INSTANCE}}}",
                 "groups {{instance}}")],
               description="The fleet's (one line per role); with the memory backend each replica's own "
                           "(one line per replica: they cannot be added)"),
    timeseries("Revokes and saves to OpenIM's database per second",
               [(fleet_or_replicas("revoked_total", "revoked_total"), "revoked/s"),
                (fleet_or_replicas("saved_to_database_total", "saved_to_database_total"), "saved to database/s")],
               "ops", "afterRevokeMsg and afterMsgSaveDB callbacks: about messages already counted when sent"),
    timeseries("Callback requests per second by outcome",
               [(f"sum by (outcome) (rate(openim_callback_requests_total{{{INSTANCE}}}[{RATE}]))", "{{outcome}}")],
               "reqps"),
    timeseries("Callback answer time",
               [(f"histogram_quantile(0.5, sum by (le) (rate(openim_callback_request_duration_seconds_bucket{{{INSTANCE}}}[{RATE}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(openim_callback_request_duration_seconds_bucket{{{INSTANCE}}}[{RATE}])))", "p99")],
               "s"),
    timeseries("Delivery lag (arrival - sendTime): OpenIM's webhook backlog",
               [(f"histogram_quantile(0.5, sum by (le) (rate(openim_callback_delivery_lag_seconds_bucket{{{INSTANCE}}}[{RATE}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(openim_callback_delivery_lag_seconds_bucket{{{INSTANCE}}}[{RATE}])))", "p99")],
               "s"),
    timeseries("Sink lag (records not yet delivered)",
               [(f"openim_callback_sink_lag_records{{{INSTANCE}}}", "{{sink}} {{instance}}")]),
    timeseries("Sink lag (age of the oldest undelivered record)",
               [(f"openim_callback_sink_lag_seconds{{{INSTANCE}}}", "{{sink}} {{instance}}")], "s"),
    timeseries("Sink records failed, skipped or damaged per second",
               [(f'sum by (sink, result) (rate(openim_callback_sink_messages_total{{result!="handled",{INSTANCE}}}[{RATE}]))',
                 "{{sink}} {{result}}")]),
    timeseries("Journal size",
               [(f"openim_callback_journal_bytes{{{INSTANCE}}}", "{{instance}}"),
                (f"openim_callback_journal_max_bytes{{{INSTANCE}}}", "limit {{instance}}")], "bytes"),
    timeseries("Content size",
               [(f"histogram_quantile(0.5, sum by (le) (rate(openim_callback_content_bytes_bucket{{{INSTANCE}}}[{RATE}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(openim_callback_content_bytes_bucket{{{INSTANCE}}}[{RATE}])))", "p99")],
               "bytes"),
    timeseries("Messages dated outside the daily windows (per hour)",
               [("max(increase(openim_callback_fleet_messages_out_of_window_total[1h])) or "
                 f"sum(increase(openim_callback_messages_out_of_window_total{{{INSTANCE}}}[1h]))", "out of window")]),
]

panels = []
for index, panel in enumerate(stats):
    panel["id"] = index + 1
    panel["gridPos"] = {"x": index * 6, "y": 0, "w": 6, "h": 4}
    panels.append(panel)
for index, panel in enumerate(series):
    panel["id"] = len(stats) + index + 1
    panel["gridPos"] = {"x": (index % 2) * 12, "y": 4 + (index // 2) * 8, "w": 12, "h": 8}
    panels.append(panel)

dashboard = {
    "__inputs": [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes the receivers",
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
    }],
    "__requires": [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
    ],
    "title": "OpenIM callback receiver",
    "uid": "openim-callback-receiver",
    "schemaVersion": 39,
    "version": 2,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "tags": ["openim"],
    "templating": {"list": [{
        "name": "instance",
        "label": "Replica",
        "type": "query",
        "datasource": DS,
        "definition": "label_values(openim_callback_build_info, instance)",
        "query": {"query": "label_values(openim_callback_build_info, instance)", "refId": "instances"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }]},
    "panels": panels,
}

path = pathlib.Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"
path.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {path}")
