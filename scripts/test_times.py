"""Seconds per test group from cargo-nextest's JUnit report: the group of an integration test is
its module in tests/it (e.g. `pipeline`), of a unit test its module in src (e.g. `lib sae`).
Usage: python3 scripts/test_times.py target/nextest/ci/junit.xml"""
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

root = ET.parse(sys.argv[1]).getroot()
seconds, counts, failed = defaultdict(float), defaultdict(int), defaultdict(int)
for case in root.iter("testcase"):
    binary = case.get("classname", "")  # e.g. cortexflow::it, cortexflow
    name = case.get("name", "")
    head = name.split("::")[0]
    kind = binary.split("::")[-1] if "::" in binary else "lib"
    group = head if kind == "it" else f"{kind} {head}"
    seconds[group] += float(case.get("time", 0) or 0)
    counts[group] += 1
    if case.find("failure") is not None or case.find("error") is not None:
        failed[group] += 1
total = sum(seconds.values())
print(f"{'group':<28} {'tests':>5} {'failed':>6} {'seconds':>9}")
for g in sorted(seconds, key=lambda g: -seconds[g]):
    print(f"{g:<28} {counts[g]:>5} {failed[g]:>6} {seconds[g]:>9.1f}")
print(f"{'all (summed over tests)':<28} {sum(counts.values()):>5} {sum(failed.values()):>6} {total:>9.1f}")
