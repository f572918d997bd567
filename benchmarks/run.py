"""Run every benchmark against one broker and print one table.

    python -m benchmarks.run [--broker embedded|apache-kafka] [--records 200000]
                             [--publish-records 200000]
                             [--repeat 3] [--scenarios 1,2,3,4,5,6,7,8] [--quick]
                             [--shapes 100b,json,json32] [--contenders NAME,...]

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts the broker --broker names (the
embedded one by default). Writes benchmarks/results/results.json (and
results-<broker>.json) and benchmarks/results/benchmarks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio

from . import dispatch, io_bound, latency, memory, publish, share, throughput
from ._common import broker, c_extension_loaded, machine_steadiness

RESULTS = Path(__file__).resolve().parent / "results"


def versions() -> dict[str, str]:
    names = ("aiokafka", "anyio", "confluent-kafka", "faststream", "asyncconsumer")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    s1 = results["throughput"]
    shapes = list(s1["shapes"])
    names = list(s1["shapes"][shapes[0]]["ratio"])
    height = 0.8 / len(shapes)
    for i, shape in enumerate(shapes):
        ratio = s1["shapes"][shape]["ratio"]
        axes[0].barh(
            [n + i * height for n in range(len(names))],
            [ratio.get(name, 0.0) for name in names],
            height=height,
            label=shape,
        )
    axes[0].set_yticks([n + 0.4 - height / 2 for n in range(len(names))], names)
    axes[0].axvline(1.0, color="black", linewidth=0.8)
    axes[0].set_xlabel("records/s relative to the aiokafka getmany runs around it")
    axes[0].set_title(f"1. no-op handler, {s1['records']:,} records")
    # Under the axis, outside the bars (inside, it covered some of them).
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=7)
    axes[0].invert_yaxis()
    rows = results["io_bound"]
    labels = [f"K={r['keys']}: {r['contender'].split(' (')[0]}" for r in rows]
    axes[1].barh(
        labels,
        [r["rate"] for r in rows],
        color=[
            "tab:blue"
            if r["contender"].startswith("asyncconsumer")
            else "tab:olive"
            if r["contender"].startswith("event-loop")
            else "tab:gray"
            for r in rows
        ],
    )
    axes[1].scatter(
        [r["ideal"] for r in rows],
        labels,
        marker="|",
        s=400,
        color="black",
        label="ideal min(100, K) / 5 ms (ordered)",
        zorder=3,
    )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("records/s (FastStream max_workers does not keep key order)")
    axes[1].set_title("2. handler awaiting 5 ms, concurrency 100")
    axes[1].legend(loc="lower right", fontsize=8)
    axes[1].invert_yaxis()
    mem = results["memory"]
    xs = [t for t, _ in mem["samples"]]
    axes[2].plot(xs, [rss / 2**20 for _, rss in mem["samples"]], label="consumer RSS")
    axes[2].axhline(
        (mem["baseline_rss"] + mem["allowed_growth"]) / 2**20,
        color="tab:red",
        linestyle="--",
        label="allowed: start + bound x 1 KiB x 3 + 50 MB",
    )
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("seconds")
    axes[2].set_ylabel("MiB")
    axes[2].set_title(f"3. RSS: {mem['records']:,} x 1 KiB backlog")
    axes[2].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: dict[str, Any]) -> None:
    if "throughput" in results:
        s1 = results["throughput"]
        for shape, figures in s1["shapes"].items():
            print(
                f"\n1. no-op handler, {shape}: median rec/s, vs the getmany runs around "
                f"it (median, range over {s1['repeat']} rounds), CPU s per million records"
            )
            for name, rate in figures["median"].items():
                low, high = figures["ratio_range"][name]
                print(
                    f"   {name:<40} {rate:>10,.0f} {figures['ratio'][name]:>6.2f}x "
                    f"[{low:.2f}-{high:.2f}] {figures['cpu_median'][name]:>7.2f}"
                )
            if "metrics" in figures:
                pair = figures["metrics"]
                low, high = pair["range"]
                print(
                    f"   {'metrics on / off (per round)':<51} {pair['median']:>6.2f}x "
                    f"[{low:.2f}-{high:.2f}]"
                )
    if "dispatch" in results:
        print("\n7. framework cost per record, no broker (CPU µs, median [range])")
        for mode, figures in results["dispatch"].items():
            print(
                f"   {mode:<40} {figures['median']:>6.2f} "
                f"[{figures['min']:.2f}-{figures['max']:.2f}]"
            )
    if "io_bound" in results:
        print(
            "\n2. handler awaiting 5 ms                         rec/s      ideal   achieved/ideal"
        )
        for row in results["io_bound"]:
            cpu = f"  CPU {row['cpu']:.0%}" if "cpu" in row else ""
            print(
                f"   K={row['keys']:<5} {row['contender']:<38} {row['rate']:>8,.0f} "
                f"{row['ideal']:>9,.0f} {row['rate'] / row['ideal']:>10.2f}{cpu}"
            )
    mib = 2**20
    if "memory" in results:
        mem = results["memory"]
        print(
            f"\n3. memory: handled {mem['handled']:,} in {mem['seconds']:.0f}s; RSS at start "
            f"{mem['baseline_rss'] / mib:.0f} MiB, peak {mem['peak_rss'] / mib:.0f} MiB, growth "
            f"{mem['growth'] / mib:.1f} MiB (allowed {mem['allowed_growth'] / mib:.0f}), "
            f"range after the buffers filled {mem['drift_after_fill'] / mib:.1f} MiB"
        )
    if "stalled" in results:
        mem = results["stalled"]
        print(
            f"\n4. stalled records (key ordering): handled {mem['handled']:,} of "
            f"{mem['records']:,} in {mem['seconds']:.0f}s; RSS at start "
            f"{mem['baseline_rss'] / mib:.0f} MiB, peak {mem['peak_rss'] / mib:.0f} MiB, growth "
            f"{mem['growth'] / mib:.1f} MiB, range after the first third "
            f"{mem['drift_after_fill'] / mib:.1f} MiB"
        )


async def on_broker(bootstrap: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The scenarios that need a broker (all but 7)."""
    scenarios = set(args.scenarios.split(","))
    if "1" in scenarios:
        shapes = (
            throughput.SHAPES
            if args.shapes == "all"
            else {key: throughput.SHAPES[key] for key in args.shapes.split(",")}
        )
        only = set(args.contenders.split(",")) if args.contenders else None
        results["throughput"] = {
            "records": args.records,
            "repeat": args.repeat,
            "shapes": {},
        }
        for shape in shapes.values():
            print(f"\n1. throughput, {shape.name}: producing {args.records:,} ...", flush=True)
            results["throughput"]["shapes"][shape.name] = await throughput.run(
                bootstrap, shape, args.records, args.repeat, only
            )
    if "2" in scenarios:
        print("\n2. I/O-bound handler (5 ms) ...", flush=True)
        results["io_bound"] = await io_bound.run(bootstrap)
    if "3" in scenarios:
        print("\n3. memory under backpressure ...", flush=True)
        results["memory"] = await memory.run(
            bootstrap,
            records=20_000 if args.quick else memory.RECORDS,
            seconds=10.0 if args.quick else memory.SECONDS,
        )
    if "4" in scenarios:
        print("\n4. memory with a stalled record per partition (key ordering) ...", flush=True)
        results["stalled"] = await memory.run(
            bootstrap,
            records=20_000 if args.quick else memory.STALLED_RECORDS,
            seconds=10.0 if args.quick else memory.SECONDS,
            mode="stalled",
        )
    if "6" in scenarios:
        print("\n6. consume, transform, produce (publish_to) ...", flush=True)
        results["publish"] = await publish.run(
            bootstrap,
            args.publish_records,
            args.repeat,
            transactions=results["broker"] != "embedded",
        )
    if "5" in scenarios:
        print("\n5. latency at a steady 5,000 records/s ...", flush=True)
        seconds = 5.0 if args.quick else latency.SECONDS
        results["latency"] = await latency.run(bootstrap, seconds=seconds, repeat=args.repeat)
    if "8" in scenarios and results["broker"] == "embedded":
        print("\n8. share groups: skipped (they need Apache Kafka: --broker apache-kafka)")
    elif "8" in scenarios:
        records = share.RECORDS if not args.quick else 20_000
        results["share"] = await share.run(bootstrap, records, args.repeat)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker",
        choices=("embedded", "apache-kafka"),
        default="embedded",
        help="the broker to start (unless $KAFKA_BOOTSTRAP_SERVERS is set)",
    )
    parser.add_argument(
        "--records", type=int, default=200_000, help="scenario 1's records per round"
    )
    parser.add_argument(
        "--publish-records", type=int, default=200_000, help="scenario 6's records per round"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        default="1,2,3,4,5,6,7,8",
        help="which to run, e.g. 3 or 1,2 (8, share groups: Apache Kafka only)",
    )
    parser.add_argument(
        "--shapes",
        default="all",
        help=f"scenario 1's data shapes: all, or some of {','.join(throughput.SHAPES)}",
    )
    parser.add_argument(
        "--contenders",
        default="",
        help="scenario 1: only the contenders whose names contain one of these "
        "comma-separated words (and the baseline), e.g. per-record,key",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller and shorter: a smoke run, not a measurement"
    )
    args = parser.parse_args()
    if args.quick:
        args.records, args.publish_records, args.repeat = 20_000, 20_000, 1
    scenarios = set(args.scenarios.split(","))

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "c_extension": c_extension_loaded(),
        "versions": versions(),
        "broker": "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else args.broker,
    }
    print(
        f"broker: {results['broker']}; aiokafka C extension loaded: {results['c_extension']}; "
        f"{results['versions']}"
    )
    steadiness = results["steadiness"] = machine_steadiness()
    print(
        "machine steadiness, CPU ms of a fixed slice of work: "
        f"min {steadiness['min_ms']:.1f}, median {steadiness['median_ms']:.1f}, "
        f"p90 {steadiness['p90_ms']:.1f}, max {steadiness['max_ms']:.1f}; "
        f"{steadiness['slow_share']:.0%} of slices over 1.4x the fastest",
        flush=True,
    )
    if "7" in scenarios:
        print("\n7. the framework's cost per record, no broker ...", flush=True)
        results["dispatch"] = await dispatch.run(20_000 if args.quick else 200_000)
    if scenarios - {"7"}:
        async with broker(args.broker) as bootstrap:
            await on_broker(bootstrap, args, results)
    report(results)
    if "publish" in results:
        publish.report(results["publish"])
    if "latency" in results:
        latency.report(results["latency"])
    if "share" in results:
        share.report(results["share"])
    out = anyio.Path(RESULTS)
    await out.mkdir(exist_ok=True)
    await (out / "results.json").write_text(json.dumps(results, indent=2))
    await (out / f"results-{results['broker']}.json").write_text(json.dumps(results, indent=2))
    if {"throughput", "io_bound", "memory"} <= results.keys():
        chart(results, RESULTS / "benchmarks.png")
        print(f"\nwrote {RESULTS / 'results.json'} and {RESULTS / 'benchmarks.png'}")
    else:
        print(f"\nwrote {RESULTS / 'results.json'} (the chart needs all three scenarios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
