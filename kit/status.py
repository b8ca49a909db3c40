"""The fleet at a glance: every shard's state, progress and ETA, read from the run's repo or folder.

    python -m kit status hf://me/run [--data hf://datasets/me/data] [--stale-after MINUTES] [--json]
    fleet = read_fleet("hf://me/run", data="shards/")     # {"shards": [...], "totals": {...}}
    print(format_fleet(fleet))
    live_view("hf://me/run", every=60)                    # in a notebook: a table that refreshes itself
    show_loss_curves(fleet)                               # every shard's loss against step

What it reads, per shard (kit/sync.py writes the Hub layout, kit/train.py the local one):

    shard-II/status.json    state, step, max_steps, loss, tokens/s, ETA, platform, loss_history, kit_version
    shard-II/metrics.json   present once the shard is done (eval_loss, train_tokens)
    shard-II/latest.json    the newest complete checkpoint on a remote; in a local run folder,
                            the newest checkpoint-N/ holding COMPLETE stands in for it

States: running, stopped_for_time, done, failed from status.json; `stale` for a
shard that says running but has missed 3 heartbeats (kit/lease.py: a Hub run
pushes status.json every train.heartbeat_minutes, between checkpoints too; a
shard without heartbeats: 15 min; `stale_after` overrides both), so its session
died without a word and its lease can be taken; `not_started` for a shard the manifest expects
but the run has never seen; `damaged` for a shard whose status.json (or pointer)
can't be parsed (the other shards are shown as usual). Every shard that is not running or done gets the
exact action that restarts it, with the step it resumes from.

A shard whose kit_version differs from the fleet's (the most common one) is named
under the table: it trained with other code than the run's wheel.

Expected shards come from the split's manifest (`data`), else from the shards present.

Tested by tests/test_status.py (`.venv/bin/python -m pytest -q tests/test_status.py`, ~30 s, no network).
"""

from __future__ import annotations

import html
import threading
from datetime import datetime, timezone
from pathlib import Path

from kit.display import figure_png, format_duration, frontend, optional_package, plot_loss_curves, show_png
from kit.errors import RemoteError, ShardError
from kit.layout import COMPLETE_MARKER, MANIFEST, ShardPaths, parse_repo_path
from kit.lease import STALE_BEATS, parse_time
from kit.remote import is_hub, open_remote
from kit.tables import text_table

STALE_AFTER_S = 15 * 60
"""Silence after which a shard that pushes no heartbeat is stale; one with a heartbeat: STALE_BEATS missed beats."""
NEEDS_RESTART = ("stale", "stopped_for_time", "failed", "not_started", "damaged")


def expected_shards(data: str | Path | None) -> list[int] | None:
    """Shard indices the split's manifest promises (a folder or hf://datasets/...), or None without data."""
    if not data:
        return None
    try:
        manifest = open_remote(data).read_json(MANIFEST)
        count = None if manifest is None else int(manifest["num_shards"])
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(
            f"{data}/{MANIFEST} is damaged ({e}); split again, or copy the split again", param="data"
        ) from None
    if manifest is None:
        raise RemoteError(
            f"{data}/{MANIFEST} not found: give the folder the split wrote (or its Hub repo)", param="data"
        )
    return list(range(count))


def resume_step(files: list[str], shard: int, pointer: dict | None) -> int:
    """The step a restart continues from: latest.json's, else the newest checkpoint marked COMPLETE, else 0."""
    if pointer and "step" in pointer:
        return int(pointer["step"])
    parsed = (parse_repo_path(f) for f in files)
    return max(
        (step for s, step, rest in parsed if s == shard and step is not None and rest == COMPLETE_MARKER), default=0
    )


def restart_action(dest: str, shard: int, step: int) -> str:
    where = "on any account" if is_hub(dest) else f"and output={dest}"
    then = f"it resumes from step {step}" if step else "it starts from step 0"
    return f"open train_shard with shard_index={shard} {where}; {then}"


def stale_limit(status: dict, stale_after: float | None) -> float:
    """Seconds of silence after which a running shard is stale: `stale_after` when given, else
    STALE_BEATS missed heartbeats of the shard's own interval (kit/lease.py: its lease expires then
    too), else STALE_AFTER_S for a shard that pushes no heartbeat (an older kit, a folder run)."""
    if stale_after is not None:
        return stale_after
    beat = status.get("heartbeat_s")
    return STALE_BEATS * float(beat) if isinstance(beat, (int, float)) and beat > 0 else STALE_AFTER_S


def shard_row(
    dest: str,
    shard: int,
    status: dict | None,
    metrics: dict | None,
    resume: int,
    now: datetime,
    stale_after: float | None = None,
) -> dict:
    """One table row; `status`/`metrics` are the shard's JSON files (None when absent)."""
    status = status or {}
    heard = [t for t in (parse_time(status.get(k)) for k in ("updated_at", "heartbeat_at") if status.get(k)) if t]
    updated = max(heard) if heard else None  # the newest sign of life: a log line or a heartbeat
    age = (now - updated).total_seconds() if updated else None
    state = status.get("state") or "not_started"
    if metrics is not None:
        state = "done"  # metrics.json is pushed last, in the final commit: its presence is the truth
    elif state == "running" and (age is None or age > stale_limit(status, stale_after)):
        state = "stale"
    eta = None
    if state == "running" and status.get("eta_s") is not None:
        eta = max(0.0, float(status["eta_s"]) - max(age or 0.0, 0.0))  # counted down since the shard wrote it
    elif state == "done":
        eta = 0.0
    tokens = status.get("tokens_seen")
    if metrics is not None and metrics.get("train_tokens") is not None:
        tokens = metrics["train_tokens"]
    row = {
        "shard": shard,
        "state": state,
        "step": status.get("step", metrics.get("steps") if metrics else None),
        "max_steps": status.get("max_steps"),
        "loss": status.get("loss"),
        "tokens_per_s": status.get("tokens_per_s") if state == "running" else None,
        "eta_s": None if eta is None else round(eta, 1),
        "updated_at": status.get("updated_at"),
        "age_s": None if age is None else round(age, 1),
        "platform": status.get("platform"),
        "tokens_seen": tokens,
        "eval_loss": (metrics or {}).get("eval_loss", status.get("eval_loss")),
        "json_valid_rate": (metrics or {}).get("json_valid_rate"),
        "resume_step": resume,
        "action": restart_action(dest, shard, resume) if state in NEEDS_RESTART else None,
        "loss_history": status.get("loss_history", []),
        "kit_version": (metrics or {}).get("kit_version") or status.get("kit_version"),
        "round": status.get("round"),  # train.round_steps: the round it trains, and what it waits for
        "waiting_for": status.get("waiting_for") if state == "running" else None,
    }
    if status.get("error"):
        row["error"] = status["error"]
    return row


def read_fleet(
    dest: str | Path, data: str | Path | None = None, stale_after: float | None = None, now: datetime | None = None
) -> dict:
    """Every shard's row and the fleet's totals; `now` is injectable so staleness can be tested."""
    dest = str(dest)
    now = now or datetime.now(timezone.utc)
    if not is_hub(dest) and not Path(dest).is_dir():
        raise RemoteError(f"{dest}: no such folder; give the run's output (a folder or hf://USER/REPO)", param="dest")
    remote = open_remote(dest)
    files = remote.list_files()  # one listing (one Hub call) finds shards and their checkpoints
    listed = set(files)
    present = sorted({shard for f in files if (shard := parse_repo_path(f)[0]) is not None})
    expected = expected_shards(data)
    shards = sorted(set(expected if expected is not None else present) | set(present))
    rows = []
    for shard in shards:
        paths = ShardPaths.in_repo(shard)
        damaged: list[str] = []
        status, metrics, pointer = (
            _read_json(remote, str(p), damaged) if str(p) in listed else None
            for p in (paths.status, paths.metrics, paths.pointer)
        )
        row = shard_row(dest, shard, status, metrics, resume_step(files, shard, pointer), now, stale_after)
        if damaged and row["state"] != "done":
            # One shard's unreadable file is that shard's problem: the rest of the fleet is still shown.
            row.update(state="damaged", error="; ".join(damaged))
            row["action"] = restart_action(dest, shard, row["resume_step"])
        rows.append(row)
    mark_version_mismatches(rows)
    return {"dest": dest, "now": now.isoformat(timespec="seconds"), "shards": rows, "totals": fleet_totals(rows)}


def _read_json(remote, path: str, damaged: list[str]):
    """The JSON file at `path`, or None (and a note in `damaged`) when it can't be parsed."""
    try:
        return remote.read_json(path)
    except ValueError as e:
        damaged.append(f"{path} is unreadable ({e})")
        return None


def mark_version_mismatches(rows: list[dict]) -> None:
    """Set `kit_version_differs` on each row whose kit is not the fleet's (the most common one).

    Every shard of a run should install the wheel its data repo carries (kit/bootstrap.py): a
    shard on another kit trained with other code, so its adapter may not be comparable."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("kit_version"):
            counts[row["kit_version"]] = counts.get(row["kit_version"], 0) + 1
    fleet = max(counts, key=lambda v: (counts[v], v)) if counts else None
    for row in rows:
        row["kit_version_differs"] = bool(row.get("kit_version")) and row["kit_version"] != fleet


def fleet_totals(rows: list[dict]) -> dict:
    """Counts per state, tokens trained, steps, and when the whole fleet ends (None while a shard needs a restart)."""
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    waiting = sum(by_state.get(s, 0) for s in NEEDS_RESTART)
    running_etas = [r["eta_s"] for r in rows if r["state"] == "running"]
    return {
        "shards": len(rows),
        "by_state": by_state,
        "tokens_trained": sum(r["tokens_seen"] or 0 for r in rows),
        "tokens_per_s": round(sum(r["tokens_per_s"] or 0 for r in rows), 1),
        "steps_done": sum(r["step"] or 0 for r in rows),
        "steps_total": sum(r["max_steps"] or 0 for r in rows),
        # Shards train side by side, so the fleet ends with its slowest shard; unknown while any shard waits.
        "eta_s": None if waiting or None in running_etas else max(running_etas, default=0.0),
        "needs_restart": waiting,
    }


COLUMNS = ("shard", "state", "step", "loss", "tok/s", "ETA", "updated", "platform")


def _cells(row: dict) -> list[str]:
    step = "-" if row["step"] is None else f"{row['step']}/{row['max_steps'] if row['max_steps'] is not None else '?'}"
    return [
        f"{row['shard']:02d}",
        row["state"],
        step,
        "-" if row["loss"] is None else f"{row['loss']:.4f}",
        "-" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:.0f}",
        format_duration(row["eta_s"]),
        "-" if row["age_s"] is None else f"{format_duration(row['age_s'])} ago",
        row["platform"] or "-",
    ]


def totals_line(totals: dict) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(totals["by_state"].items()))
    eta = (
        format_duration(totals["eta_s"])
        if totals["eta_s"] is not None
        else (f"unknown until {totals['needs_restart']} shard(s) restart" if totals["needs_restart"] else "-")
    )
    return (
        f"{totals['shards']} shards ({states}); {totals['tokens_trained']:,} tokens trained, "
        f"{totals['tokens_per_s']:.0f} tok/s now; steps {totals['steps_done']}/{totals['steps_total']}; fleet ETA {eta}"
    )


def format_fleet(fleet: dict) -> str:
    """The fleet as aligned text: one line per shard, the totals, then one action per shard to restart."""
    lines = text_table(list(COLUMNS), [_cells(r) for r in fleet["shards"]])
    if not fleet["shards"]:
        lines.append(f"(no shard-II/ folders in {fleet['dest']} yet)")
    lines.append("")
    lines.append(totals_line(fleet["totals"]))
    for row in fleet["shards"]:
        if row.get("round") is not None and row["state"] not in ("done",):
            waiting = f", waiting for {row['waiting_for']}" if row.get("waiting_for") else ""
            lines.append(f"shard {row['shard']}: round {row['round']}{waiting}")
    for row in fleet["shards"]:
        if row["action"]:
            error = f" (last error: {row['error'][:160]})" if row.get("error") else ""
            lines.append(f"shard {row['shard']} ({row['state']}): {row['action']}{error}")
    lines += version_warnings(fleet["shards"])
    return "\n".join(lines)


def version_warnings(rows: list[dict]) -> list[str]:
    """One line per shard whose kit differs from the fleet's (see mark_version_mismatches)."""
    fleet = {r["kit_version"] for r in rows if r.get("kit_version") and not r.get("kit_version_differs")}
    return [
        f"shard {r['shard']}: trained with kit {r['kit_version']}, the others with {', '.join(sorted(fleet))}: "
        "its runtime installed another kit (leave kit_source empty to install the wheel in the data repo)"
        for r in rows
        if r.get("kit_version_differs")
    ]


def format_html(fleet: dict) -> str:
    """The same table as HTML, for a notebook (stale and failed rows tinted)."""
    tint = {
        "stale": "#fde2e2",
        "failed": "#fde2e2",
        "damaged": "#fde2e2",
        "stopped_for_time": "#fff4d6",
        "not_started": "#fff4d6",
        "done": "#e3f5e1",
    }
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{c}</th>" for c in COLUMNS)
    body = "".join(
        f"<tr style='background:{tint.get(r['state'], 'transparent')}'>"
        + "".join(f"<td style='padding:2px 8px'>{html.escape(c)}</td>" for c in _cells(r))
        + "</tr>"
        for r in fleet["shards"]
    )
    actions = "".join(
        f"<li>shard {r['shard']} ({r['state']}): {html.escape(r['action'])}</li>"
        for r in fleet["shards"]
        if r["action"]
    )
    actions += "".join(f"<li>{html.escape(line)}</li>" for line in version_warnings(fleet["shards"]))
    return (
        f"<div><b>{html.escape(fleet['dest'])}</b> at {fleet['now']}<table>{'<tr>' + head + '</tr>'}{body}</table>"
        f"<p>{html.escape(totals_line(fleet['totals']))}</p>{'<ul>' + actions + '</ul>' if actions else ''}</div>"
    )


def loss_curves_png(fleet: dict) -> bytes | None:
    """Every shard's loss_history on one plot, as PNG bytes (None when no shard has logged a loss yet)."""
    curves = {f"shard {r['shard']:02d}": r["loss_history"] for r in fleet["shards"] if r["loss_history"]}
    if not curves or not optional_package("matplotlib", "the fleet's loss curves"):
        return None
    return figure_png(plot_loss_curves(curves, title=f"{fleet['dest']}: training loss"))


def show_loss_curves(fleet: dict) -> bytes | None:
    if not any(r["loss_history"] for r in fleet["shards"]):
        print("no shard has logged a loss yet")
        return None
    png = loss_curves_png(fleet)  # None without matplotlib: optional_package has said so
    if png is not None:
        show_png(png)
    return png


class LiveView:
    """A refreshing fleet table in a notebook; `stop()` ends the refreshes."""

    def __init__(self, dest, every: float, read):
        self.dest, self.every, self._read = dest, every, read
        self.fleet = read()
        self._stop = threading.Event()
        self.widget = None
        self._thread = None

    def start_widget(self):
        import ipywidgets
        from IPython.display import display

        self.widget = ipywidgets.HTML(format_html(self.fleet))
        display(self.widget)
        # A thread, not a loop in the cell: the notebook stays usable while the table refreshes.
        self._thread = threading.Thread(target=self._refresh_loop, name=f"kit-status-{self.dest}", daemon=True)
        self._thread.start()

    def _refresh_loop(self):
        while not self._stop.wait(self.every):
            try:
                self.fleet = self._read()
                self.widget.value = format_html(self.fleet)
            except Exception as err:  # a network blip must not end the view; the next refresh may succeed
                self.widget.value = format_html(self.fleet) + f"<p>refresh failed: {html.escape(str(err))}</p>"

    def stop(self):
        self._stop.set()


_views: dict[str, LiveView] = {}


def live_view(
    dest: str | Path, every: float = 60, data: str | Path | None = None, stale_after: float | None = None
) -> LiveView:
    """Show the fleet table. In an interactive notebook it refreshes every `every` seconds in the
    background; headless (papermill, a terminal) it renders once and returns."""
    dest = str(dest)
    if dest in _views:  # the cell was run again: one refresher per run is enough
        _views.pop(dest).stop()
    view = LiveView(dest, every, lambda: read_fleet(dest, data, stale_after))
    if frontend() == "widget" and optional_package("ipywidgets", "the self-refreshing table (drawn once instead)"):
        view.start_widget()
        _views[dest] = view
    else:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            # Both forms: the saved notebook shows the HTML table, and `jupyter nbconvert --to script` the text one.
            display({"text/html": format_html(view.fleet), "text/plain": format_fleet(view.fleet)}, raw=True)
        else:
            print(format_fleet(view.fleet))
    return view
