#!/usr/bin/env python3
"""Renders bench/RESULTS.md from the raw files written by bench/run.

Inputs (tab-separated, one record a line):
  facts    KEY VALUE                          machine and run facts (the last value of a key wins)
  samples  STORAGE REGISTRY METRIC VALUE      one line per measured repetition
  notes    STORAGE REGISTRY TOPIC TEXT        failures ("FAIL: ...") and remarks

The report shows medians of the samples, ratios of the data plane to each peer, and where
each target of the benchmark stands. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TITLES = {
    "dataplane": "dataplane",
    "distribution": "Distribution v3",
    "docker-registry": "docker-registry 2.8",
}
STORAGE_TITLES = {
    "tmpfs": "tmpfs (server-bound)",
    "disk": "disk (durability-bound)",
    "s3": "S3 (MinIO on tmpfs, the same build and settings for every registry)",
}
# Rows not measured on S3 (access control costs the same whatever the storage).
S3_SKIPPED_TOPICS = ("auth_get",)
PEERS = ("distribution", "docker-registry")


@dataclass(frozen=True)
class Row:
    """One line of a results table."""

    metric: str
    label: str
    topic: str  # the note topic that explains a missing value
    digits: int
    higher_is_better: bool


def rows(facts: dict[str, str]) -> list[Row]:
    """The table rows, labelled with this run's sizes."""
    size = human_size(int(facts.get("blob_bytes", "0")))
    tags = facts.get("tag_count", "?")
    return [
        Row("push_mbps", f"Push, {size} single stream (MB/s)", "push", 0, True),
        Row("push_sha_pct", "Push / one core's SHA-256 speed (%)", "push", 0, True),
        Row("push_cpu_s", "Server CPU time per push (s)", "push", 2, False),
        Row("push_sys_s", "… of which in the kernel (s)", "push", 2, False),
        Row("pull_mbps", f"Pull, {size} single stream (MB/s)", "pull", 0, True),
        Row("pull_cpu_s", "Server CPU time per pull (s)", "pull", 2, False),
        Row("get_rps", "Manifest GET by tag, 64 connections (req/s)", "manifest_get", 0, True),
        Row("get_p50_ms", "Manifest GET p50 latency (ms)", "manifest_get", 2, False),
        Row("get_p99_ms", "Manifest GET p99 latency (ms)", "manifest_get", 2, False),
        Row("get_cpu_us", "Server CPU time per manifest GET (µs)", "manifest_get", 0, False),
        Row("auth_get_rps", "Manifest GET, authenticated, 64 connections (req/s)", "auth_get", 0, True),
        Row("auth_get_p50_ms", "Authenticated manifest GET p50 latency (ms)", "auth_get", 2, False),
        Row("auth_get_p99_ms", "Authenticated manifest GET p99 latency (ms)", "auth_get", 2, False),
        Row("auth_get_cpu_us", "Server CPU time per authenticated manifest GET (µs)", "auth_get", 0, False),
        Row("rss_mib", f"Peak RSS during 4 concurrent {size} pushes (MiB)", "rss", 1, False),
        Row("push4_mbps", "4 concurrent pushes, aggregate (MB/s)", "rss", 0, True),
        Row("tags_list_ms", f"Tags list of {tags} tags (ms)", "tags_list", 1, False),
        Row("tags_create_s", f"Creating {tags} tags, 32 in flight (s)", "tags_list", 1, False),
    ]


def human_size(n: int) -> str:
    """1073741824 -> '1 GiB', 67108864 -> '64 MiB'."""
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n >> 20} MiB"


def read_tsv(path: Path, fields: int) -> list[list[str]]:
    """Reads a tab-separated file, keeping lines with exactly `fields` fields."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t", fields - 1)
        if len(parts) == fields:
            out.append(parts)
    return out


class Results:
    """Medians of the samples, by storage kind, registry and metric."""

    def __init__(self, samples: list[list[str]], sha_mbps: float | None) -> None:
        self.values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for storage, registry, metric, value in samples:
            try:
                self.values[(storage, registry, metric)].append(float(value))
            except ValueError:
                continue
        if sha_mbps:
            for (storage, registry, metric), vals in list(self.values.items()):
                if metric == "push_mbps":
                    self.values[(storage, registry, "push_sha_pct")] = [v / sha_mbps * 100 for v in vals]

    def median(self, storage: str, registry: str, metric: str) -> float | None:
        vals = self.values.get((storage, registry, metric))
        return statistics.median(vals) if vals else None


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def status(ok: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "no data"}[ok]


def s3_targets(w, results: Results, size: str) -> None:
    """The Targets rows of the S3 run: the manifest GET by tag against Distribution v3 and
    against MinIO's own rate for a small object (the ceiling of one bucket request per GET),
    its p99, and peak RSS; push and pull are reported without a verdict."""
    dp, dist, raw = "dataplane", "distribution", "minio"
    for metric, label, unit in (
        ("push_mbps", "Push vs Distribution v3", "MB/s"),
        ("pull_mbps", "Pull vs Distribution v3", "MB/s"),
    ):
        a = results.median("s3", dp, metric)
        b = results.median("s3", dist, metric)
        w(
            f"| {label} (reported; no target on S3) | s3 | "
            f"{fmt(a, 0)} vs {fmt(b, 0)} {unit} = {ratio(a, b)} | — |"
        )
    a = results.median("s3", dp, "get_rps")
    b = results.median("s3", dist, "get_rps")
    m = results.median("s3", raw, "get_rps")
    ok = None if a is None or b is None or b == 0 else a / b >= 2
    w(f"| Manifest GET by tag ≥ 2x Distribution v3 | s3 | {fmt(a, 0)} vs {fmt(b, 0)} req/s = {ratio(a, b)} | {status(ok)} |")
    ok = None if a is None or m is None or m == 0 else a / m >= 2 / 3
    share = "—" if a is None or m is None or m == 0 else f"{a / m * 100:.0f} %"
    w(
        f"| Manifest GET by tag ≥ 2/3 of MinIO's own GET rate for a small object | s3 | "
        f"{fmt(a, 0)} vs {fmt(m, 0)} req/s = {share} | {status(ok)} |"
    )
    p99 = results.median("s3", dp, "get_p99_ms")
    ok = None if p99 is None else p99 < 30
    w(f"| Manifest GET p99 < 30 ms (64 connections) | s3 | {fmt(p99, 2)} ms | {status(ok)} |")
    rss = results.median("s3", dp, "rss_mib")
    ok = None if rss is None else rss < 96
    w(f"| Peak RSS < 96 MiB during 4 concurrent {size} pushes | s3 | {fmt(rss, 1)} MiB | {status(ok)} |")


def minio_line(w, results: Results) -> None:
    """MinIO's own figures for a GET of a small object, when they were measured."""
    rps = results.median("s3", "minio", "get_rps")
    if rps is None:
        return
    w(
        "MinIO on its own (wrk, 64 connections, against a presigned URL of an object the size of "
        f"the benchmark's manifest): {fmt(rps, 0)} req/s, p50 "
        f"{fmt(results.median('s3', 'minio', 'get_p50_ms'), 2)} ms, p99 "
        f"{fmt(results.median('s3', 'minio', 'get_p99_ms'), 2)} ms, MinIO CPU "
        f"{fmt(results.median('s3', 'minio', 'get_cpu_us'), 0)} µs per GET. A manifest GET by "
        "tag that costs one bucket request can at best approach this rate: the registry's "
        "request to MinIO is one such GET, on the same two cores."
    )
    w("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True)
    parser.add_argument("--registries", required=True)
    parser.add_argument("--storage", required=True)
    args = parser.parse_args()

    facts = {k: v for k, v in read_tsv(args.facts, 2)}
    notes = read_tsv(args.notes, 4)
    registries = args.registries.split(",")
    storages = args.storage.split(",")
    sha_bps = float(facts["sha256_bytes_per_sec"]) if facts.get("sha256_bytes_per_sec") else None
    sha_mbps = sha_bps / 1e6 if sha_bps else None
    results = Results(read_tsv(args.samples, 4), sha_mbps)
    table_rows = rows(facts)

    out: list[str] = []
    w = out.append
    size = human_size(int(facts.get("blob_bytes", "0")))
    w("# Benchmark results")
    w("")
    w(
        f"Generated by `bench/run` ({facts.get('mode', '?')} mode) on {facts.get('date', '?')}; "
        "do not edit by hand, run the script again. "
        f"Blobs of {size}, every figure the median of {facts.get('reps', '?')} repetition(s) "
        f"(tags list: {int(facts.get('reps', '1')) + 2}); MB/s means 10^6 bytes per second. "
        "How each figure is measured: `bench/README.md`."
    )
    if facts.get("mode") == "quick":
        w("")
        w("> Quick mode: smaller blobs, fewer tags and repetitions. The targets are defined for the full run.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {facts.get('cpu', '?')}, {facts.get('nproc', '?')} cores (SHA-NI: {facts.get('sha_ni', '?')}) |")
    w(f"| Memory | {facts.get('memory', '?')} |")
    w(f"| Kernel | {facts.get('kernel', '?')} |")
    w(f"| Disk kind (`/var/tmp`) | {facts.get('disk', '?')}; tmpfs kind: `/dev/shm` |")
    if "s3" in storages:
        w(
            f"| S3 kind | MinIO {facts.get('minio', '?')} (single drive, data on `/dev/shm`), "
            "on loopback, started afresh for every registry start; plain HTTP, path-style |"
        )
    loads = [f"start {facts.get('load_start', '?')}"]
    for s in storages:
        loads.append(f"before {s} {facts.get('load_before_' + s, '?')}")
        loads.append(f"after {s} {facts.get('load_after_' + s, '?')}")
    w(f"| Load average (1, 5, 15 min) | {'; '.join(loads)} |")
    sha_runs = facts.get("sha256_runs", "").split()
    sha_runs_txt = ", ".join(f"{float(r) / 1e6:,.0f}" for r in sha_runs if r)
    w(
        f"| SHA-256, one core (`openssl speed -evp sha256 -bytes 16384`) | "
        f"**{fmt(sha_mbps, 0)} MB/s** (median of runs: {sha_runs_txt} MB/s) |"
    )
    cpush = results.median("client", "curl", "push_mbps")
    cpull = results.median("client", "curl", "pull_mbps")
    w(
        f"| Client ceiling (the same curl commands against `bench/sink.py`, which discards "
        f"uploads and serves downloads with sendfile) | push {fmt(cpush, 0)} MB/s, pull {fmt(cpull, 0)} MB/s |"
    )
    w(
        f"| Versions | dataplane at commit {facts.get('commit', '?')}; Distribution "
        f"{facts.get('distribution', '?')}; docker-registry {facts.get('docker_registry', '?')}; "
        + (f"MinIO {facts.get('minio', '?')}; " if "s3" in storages else "")
        + f"curl {facts.get('curl', '?')}; wrk {facts.get('wrk', '?')} |"
    )
    w("")

    # Targets
    w("## Targets")
    w("")
    w("| Target | Storage | Figure | Status |")
    w("|---|---|---|---|")
    dp = "dataplane"
    dist = "distribution"
    for s in storages:
        if s == "s3":
            s3_targets(w, results, size)
            continue
        push = results.median(s, dp, "push_mbps")
        if s == "tmpfs":
            pct = results.median(s, dp, "push_sha_pct")
            ok = None if pct is None else pct >= 85
            w(
                f"| Push ≥ 85 % of one core's SHA-256 speed | {s} | "
                f"{fmt(push, 0)} MB/s = {fmt(pct, 0)} % of {fmt(sha_mbps, 0)} MB/s | {status(ok)} |"
            )
        for metric, label, factor in (
            ("push_mbps", "Push ≥ 1.5x Distribution v3", 1.5),
            ("pull_mbps", "Pull ≥ 2x Distribution v3", 2.0),
            ("get_rps", "Manifest GET ≥ 3x Distribution v3", 3.0),
        ):
            a = results.median(s, dp, metric)
            b = results.median(s, dist, metric)
            ok = None if a is None or b is None or b == 0 else a / b >= factor
            unit = "req/s" if metric == "get_rps" else "MB/s"
            w(f"| {label} | {s} | {fmt(a, 0)} vs {fmt(b, 0)} {unit} = {ratio(a, b)} | {status(ok)} |")
        p99 = results.median(s, dp, "get_p99_ms")
        ok = None if p99 is None else p99 < 5
        w(f"| Manifest GET p99 < 5 ms (64 connections) | {s} | {fmt(p99, 2)} ms | {status(ok)} |")
        a = results.median(s, dp, "auth_get_rps")
        b = results.median(s, dist, "auth_get_rps")
        if a is not None or b is not None:
            p99 = results.median(s, dp, "auth_get_p99_ms")
            w(
                f"| Authenticated manifest GET vs Distribution v3 (reported; no target) | {s} | "
                f"{fmt(a, 0)} vs {fmt(b, 0)} req/s = {ratio(a, b)}, p99 {fmt(p99, 2)} ms | — |"
            )
        if s == "tmpfs":
            a = results.median(s, dp, "push_cpu_s")
            b = results.median(s, dist, "push_cpu_s")
            ok = None if a is None or b is None or b == 0 else a / b <= 0.6
            w(
                f"| Push server CPU ≤ 0.6x Distribution v3 | {s} | "
                f"{fmt(a, 2)} vs {fmt(b, 2)} s per {size} = {ratio(a, b)} | {status(ok)} |"
            )
        rss = results.median(s, dp, "rss_mib")
        ok = None if rss is None else rss < 64
        w(f"| Peak RSS < 64 MiB during 4 concurrent {size} pushes | {s} | {fmt(rss, 1)} MiB | {status(ok)} |")
    w("")

    # Tables
    topic_notes: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for storage, registry, topic, text in notes:
        topic_notes[(storage, registry, topic)].append(text)
    footnotes: list[str] = []

    def cell(storage: str, registry: str, row: Row) -> str:
        value = results.median(storage, registry, row.metric)
        texts = topic_notes.get((storage, registry, row.topic), []) + topic_notes.get(
            (storage, registry, "all"), []
        )
        text = fmt(value, row.digits)
        if value is None and texts:
            text = "FAIL" if any(t.startswith("FAIL") for t in texts) else text
        if texts and row.metric in ("push_mbps", "pull_mbps", "get_rps", "auth_get_rps", "rss_mib", "tags_list_ms"):
            refs = []
            for t in texts:
                line = f"{TITLES.get(registry, registry)} on {storage}: {t}"
                if line not in footnotes:
                    footnotes.append(line)
                refs.append(str(footnotes.index(line) + 1))
            text += " (note " + ", ".join(sorted(set(refs), key=int)) + ")"
        return text

    for s in storages:
        w(f"## {STORAGE_TITLES.get(s, s)}")
        w("")
        if s == "s3":
            w(
                "Every registry stores blobs, manifests and tags in one bucket of a MinIO server, "
                "started afresh (empty) for every registry start; blobs pass through the registry "
                "(the Distribution peers run with `redirect: disable`). MinIO runs on the same two "
                "cores as client and registry. The authenticated manifest GET is not measured on S3."
            )
            w("")
            minio_line(w, results)
        header = ["Metric"] + [TITLES.get(r, r) for r in registries]
        peers = [p for p in PEERS if p in registries and dp in registries]
        header += [f"dataplane / {TITLES[p]}" for p in peers]
        w("| " + " | ".join(header) + " |")
        w("|---" + "|---:" * (len(header) - 1) + "|")
        for row in table_rows:
            if row.metric == "push_sha_pct" and (sha_mbps is None or s == "s3"):
                continue
            if s == "s3" and row.topic in S3_SKIPPED_TOPICS:
                continue
            cells = [row.label + ("" if row.higher_is_better else " ↓")]
            cells += [cell(s, r, row) for r in registries]
            for p in peers:
                cells.append(ratio(results.median(s, dp, row.metric), results.median(s, p, row.metric)))
            w("| " + " | ".join(cells) + " |")
        w("")
    w("↓: lower is better (for these rows a ratio below 1.00x favours the data plane).")
    w("")

    for storage, registry, topic, text in notes:
        line = f"{TITLES.get(registry, registry)} on {storage}: {text}"
        if line not in footnotes:
            footnotes.append(line)
    if footnotes:
        w("## Notes")
        w("")
        for i, text in enumerate(footnotes, 1):
            w(f"{i}. {text}")
        w("")

    w("## All samples")
    w("")
    w("| Storage | Registry | Metric | Values |")
    w("|---|---|---|---|")
    for (s, r, m), vals in sorted(results.values.items()):
        if m == "push_sha_pct":
            continue
        w(f"| {s} | {TITLES.get(r, r)} | {m} | {', '.join(f'{v:g}' for v in vals)} |")
    w("")
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
