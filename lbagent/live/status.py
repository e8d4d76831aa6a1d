"""``lbagent status``: the running daemon's metrics, summarized for a human (or as JSON)."""

from __future__ import annotations

import json

from lbagent.live.metrics import histogram_quantile, parse, scrape, summed_by


def fetch(address: str) -> str:
    return scrape(address)


def summary(text: str) -> dict:
    m = parse(text)

    def by(name: str, label: str) -> dict[str, float]:
        return summed_by(m, name, label)

    info = next(iter(m.get("lbagent_info", {})), ())
    count = m.get("lbagent_decision_latency_seconds_count", {}).get((), 0.0)
    return {
        "info": dict(info),
        "managed_tasks": m.get("lbagent_managed_tasks", {}).get((), 0.0),
        "decisions": by("lbagent_decisions_total", "action"),
        "decision_kinds": by("lbagent_decisions_total", "kind"),
        "classes": by("lbagent_decisions_total", "class"),
        "share_moves": by("lbagent_share_moves_total", "outcome"),
        "placements": by("lbagent_placements_total", "outcome"),
        "errors": by("lbagent_errors_total", "kind"),
        "refusals": by("lbagent_refusals_total", "rule"),
        "lost_probe_events": m.get("lbagent_probe_lost_events_total", {}).get((), 0.0),
        "latency_p50_ms": histogram_quantile(m, 0.5) * 1e3 if count else None,
        "latency_p99_ms": histogram_quantile(m, 0.99) * 1e3 if count else None,
        "placements_timed": count,
    }


def render(text: str, as_json: bool = False) -> str:
    s = summary(text)
    if as_json:
        return json.dumps(s, indent=2, sort_keys=True)
    lines = [
        "lbagent: " + ", ".join(f"{k}={v}" for k, v in sorted(s["info"].items())),
        f"managed tasks now: {s['managed_tasks']:.0f}    lost probe events: {s['lost_probe_events']:.0f}",
    ]
    for key in ("decisions", "decision_kinds", "classes", "share_moves", "placements", "errors", "refusals"):
        items = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s[key].items())) or "none"
        lines.append(f"{key}: {items}")
    if s["latency_p50_ms"] is not None:
        lines.append(
            f"arrival-to-placement latency: p50 {s['latency_p50_ms']:.3f} ms, "
            f"p99 {s['latency_p99_ms']:.3f} ms over {s['placements_timed']:.0f} placements (from buckets)"
        )
    return "\n".join(lines)
