"""``moorage experiment report ENDPOINT`` and ``moorage experiment feedback ENDPOINT``.

The report: per variant the weights, invocations, rewards and mean reward with its always-valid
interval, the guardrail metrics (model latency p99, error rate); then each treatment against the
control with lift, always-valid p-value, verdict and the sample still needed. Feedback: one reward
(``--inference-id ID --reward 1``) or many from a file of JSON lines (``{"InferenceId": .., "Reward": ..}``),
sent 1,000 at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from moorage.cli.common import fail, home_option, make_session, reports_errors, stdout_console, url_option

BATCH = 1000


@click.group()
def experiment() -> None:
    """Routing experiments: A/B tests and bandits (endpoint-config tags moorage:routing, ...)."""


@experiment.command("report")
@click.argument("endpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@home_option
@url_option
@reports_errors
def report(endpoint: str, as_json: bool, home: Path | None, url: str | None) -> None:
    """How the variants of ENDPOINT compare."""
    doc = make_session(home, url).experiment_report(endpoint)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    routing = doc["Routing"]
    console = stdout_console()
    console.print(f"endpoint {doc['EndpointName']} ({doc['EndpointConfigName']}): routing {routing['Policy']}, "
                  f"{routing['Reward']} rewards" + (f", sticky on {routing['Sticky']}" if routing["Sticky"] else "")
                  + "".join(f"; rule {rule}" for rule in routing["Rules"]))
    table = Table("variant", "weight", "invocations", "rewards", "mean reward (always-valid CI)", "p99 latency ms",
                  "error rate")
    for v in doc["Variants"]:
        low, high = v["MeanRewardInterval"]
        guard = v["Guardrails"]
        table.add_row(v["VariantName"], f"{v['CurrentWeight']:.3f}", _count(v["Invocations"]), str(v["Rewards"]),
                      f"{_num(v['MeanReward'])} [{_num(low)}, {_num(high)}]",
                      _num(guard["ModelLatencyP99Microseconds"] / 1000 if guard["ModelLatencyP99Microseconds"]
                           is not None else None), _pct(guard["ErrorRate"]))
    console.print(table)
    for c in doc["Comparisons"]:
        low, high = c["Interval"]
        needed = c["NeededPerVariant"]
        console.print(f"{c['Treatment']} vs {c['Control']}: {c['Verdict']}; difference {_num(c['Difference'])} "
                      f"[{_num(low)}, {_num(high)}], lift {_pct(c['Lift'])}, always-valid p = {_num(c['PValue'])}"
                      + (f"; about {needed} more per variant to detect this effect" if needed else ""))
    if not doc["Comparisons"]:
        console.print("one variant: nothing to compare")


@experiment.command("feedback")
@click.argument("endpoint")
@click.option("--inference-id", help="The InferenceId the invocation was made with.")
@click.option("--reward", type=float, help="Its reward (0 or 1 for binary rewards).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON lines {"InferenceId": ..., "Reward": ...}, sent 1,000 a call.')
@home_option
@url_option
@reports_errors
def feedback(endpoint: str, inference_id: str | None, reward: float | None, path: Path | None,
             home: Path | None, url: str | None) -> None:
    """Send rewards for earlier invocations of ENDPOINT."""
    if path is None and (inference_id is None or reward is None):
        fail("give --inference-id and --reward, or --file")
    pairs: list[tuple[str, float]] = []
    if inference_id is not None and reward is not None:
        pairs.append((inference_id, reward))
    if path is not None:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                pairs.append((str(item["InferenceId"]), float(item["Reward"])))
            except (ValueError, KeyError, TypeError) as exc:
                fail(f"{path}:{number}: not a feedback line ({exc})")
    session = make_session(home, url)
    totals: dict[str, Any] = {"Accepted": 0, "Unknown": [], "Duplicate": []}
    for start in range(0, len(pairs), BATCH):
        answer = session.send_feedback(endpoint, pairs[start:start + BATCH])
        totals["Accepted"] += answer["Accepted"]
        totals["Unknown"] += answer["Unknown"]
        totals["Duplicate"] += answer["Duplicate"]
    click.echo(f"accepted {totals['Accepted']}, unknown {len(totals['Unknown'])}, "
               f"duplicate {len(totals['Duplicate'])}")
    for key in ("Unknown", "Duplicate"):
        if totals[key]:
            click.echo(f"{key.lower()}: {', '.join(totals[key][:20])}" + (" ..." if len(totals[key]) > 20 else ""))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}" if value < 0 else f"{value:.1%}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
