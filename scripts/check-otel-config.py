#!/usr/bin/env python3
"""Checks the structure of an OpenTelemetry Collector configuration.

No collector binary can be installed where CI runs, so this checks what the
collector itself would refuse at start-up, short of validating each component's
own settings:

- the top-level sections are known ones, and receivers, exporters and service.pipelines
  are present and non-empty;
- every pipeline is named after a signal (traces, metrics or logs, optionally
  `signal/name`) and lists at least one receiver and one exporter;
- every receiver, processor and exporter a pipeline names is defined (component ids
  are `type` or `type/name`), and so is every extension the service lists;
- memory_limiter, if used, comes first in its pipeline's processors, and batch
  after it;
- every defined receiver and exporter is used by some pipeline (an unused one is a
  typo waiting to be found in production).

Usage: scripts/check-otel-config.py [FILE ...]   (default: otel/collector.yaml)
Exit status 0 when every file passes, 1 otherwise (one line per problem on stderr).
Needs PyYAML (python3-yaml).
"""

import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, not a config problem
    sys.stderr.write("check-otel-config: needs PyYAML (apt-get install python3-yaml)\n")
    sys.exit(2)

SECTIONS = {"receivers", "processors", "exporters", "extensions", "connectors", "service"}
SIGNALS = {"traces", "metrics", "logs"}
COMPONENT_ID = re.compile(r"^[a-z][a-z0-9_]*(/[^/\s]+)?$")


def check(path):
    problems = []

    def bad(text):
        problems.append(f"{path}: {text}")

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: cannot read: {e}"]
    if not isinstance(config, dict):
        return [f"{path}: expected a mapping at the top level"]
    for key in config:
        if key not in SECTIONS:
            bad(f"unknown top-level section {key!r}")
    defined = {}
    for section in ("receivers", "processors", "exporters", "extensions", "connectors"):
        value = config.get(section) or {}
        if not isinstance(value, dict):
            bad(f"{section} must be a mapping")
            value = {}
        for cid in value:
            if not COMPONENT_ID.match(str(cid)):
                bad(f"{section}: {cid!r} is not a component id (type or type/name)")
        defined[section] = set(value)
    for section in ("receivers", "exporters"):
        if not defined[section]:
            bad(f"no {section} defined")
    service = config.get("service")
    if not isinstance(service, dict):
        bad("service section missing")
        return problems
    for ext in service.get("extensions") or []:
        if ext not in defined["extensions"]:
            bad(f"service.extensions: {ext!r} is not defined under extensions")
    pipelines = service.get("pipelines")
    if not isinstance(pipelines, dict) or not pipelines:
        bad("service.pipelines missing or empty")
        return problems
    used = {"receivers": set(), "exporters": set()}
    connectors = defined["connectors"]
    for name, pipeline in pipelines.items():
        where = f"service.pipelines.{name}"
        if str(name).split("/", 1)[0] not in SIGNALS:
            bad(f"{where}: a pipeline is named traces, metrics or logs (optionally /name)")
        if not isinstance(pipeline, dict):
            bad(f"{where}: must be a mapping")
            continue
        for key in pipeline:
            if key not in ("receivers", "processors", "exporters"):
                bad(f"{where}: unknown key {key!r}")
        for section in ("receivers", "processors", "exporters"):
            listed = pipeline.get(section) or []
            if not isinstance(listed, list):
                bad(f"{where}.{section}: must be a list")
                continue
            if section != "processors" and not listed:
                bad(f"{where}: needs at least one of {section}")
            if len(set(listed)) != len(listed):
                bad(f"{where}.{section}: lists a component twice")
            for cid in listed:
                # A connector is both an exporter of one pipeline and a receiver of another.
                if cid in defined[section] or (section != "processors" and cid in connectors):
                    used.get(section, set()).add(cid)
                else:
                    bad(f"{where}.{section}: {cid!r} is not defined under {section}")
        processors = pipeline.get("processors") or []
        if isinstance(processors, list):
            types = [str(p).split("/", 1)[0] for p in processors]
            if "memory_limiter" in types and types[0] != "memory_limiter":
                bad(f"{where}.processors: memory_limiter must come first")
            if "batch" in types and "memory_limiter" in types:
                if types.index("batch") < types.index("memory_limiter"):
                    bad(f"{where}.processors: batch must come after memory_limiter")
    for section in ("receivers", "exporters"):
        for cid in sorted(defined[section] - used[section]):
            bad(f"{section}: {cid!r} is defined but no pipeline uses it")
    return problems


def main(argv):
    files = argv[1:] or [str(Path(__file__).resolve().parent.parent / "otel" / "collector.yaml")]
    problems = [p for f in files for p in check(f)]
    for p in problems:
        sys.stderr.write(p + "\n")
    if not problems:
        print(f"check-otel-config: {len(files)} file(s) ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
