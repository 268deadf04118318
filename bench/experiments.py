"""Experiment plans: from an experiment file (``configs/experiments/*.yaml``) to the cells it needs.

A plan lists, for every output (a table or a figure), its *assignments*: which cell (key) fills
which (setting, row/variant, split seed, unseen budget) of that output. Cells are shared: Table 1's
cells also serve Fig. 3 and Fig. 6, and a few-shot list of unseen budgets is one fit per split.
The cell keys come from :func:`bench.runner.plan`, so a cell computed here is the very cell
``bench run`` would compute (and vice versa).

Running a plan hands *jobs* (one :class:`bench.runner.RunConfig` each) to the ordinary runner:
resumable, failures recorded, nothing recomputed. Methods that are not installed, that a dataset
cannot serve or that lack a swept parameter are skipped with a note; the outputs then show which
rows or cells are missing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import experiment_config
from bench.errors import BenchError, did_you_mean
from bench.hashing import canonical_json
from bench.runner import Budget, RunConfig, RunSummary, check_capabilities, parse_budget
from bench.tuning import split_name

OUTPUT_KINDS = ("table1", "table2", "worst_k", "sweep", "sweep_pair", "few_shot", "params", "selection_bias")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_experiment(name_or_path: str = "paper", smoke: bool = False) -> dict[str, Any]:
    """The experiment file (a name under configs/experiments/ or a path), smoke overlay applied."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise BenchError(f"experiment file {p} does not exist", hint="pass a YAML file or a name like 'paper'")
        try:
            cfg = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise BenchError(f"experiment file {p} is not valid YAML: {e}") from None
    else:
        cfg = experiment_config(name_or_path)
        if cfg is None:
            raise BenchError(f"no experiment named '{name_or_path}'", hint="e.g. --config paper, or a path to a YAML file")
    if not isinstance(cfg, dict) or "outputs" not in cfg:
        raise BenchError("an experiment file needs an 'outputs' mapping", hint="see configs/experiments/paper.yaml")
    smoke_cfg = cfg.pop("smoke", None) or {}
    if smoke:
        cfg = deep_merge(cfg, smoke_cfg)
        cfg["smoke"] = True
    for name, out in cfg["outputs"].items():
        if out.get("kind") not in OUTPUT_KINDS:
            raise BenchError(f"output '{name}' has unknown kind {out.get('kind')!r}", hint=f"kinds: {', '.join(OUTPUT_KINDS)}")
    return cfg


# ---------------------------------------------------------------------------- plan objects


@dataclass(frozen=True)
class Setting:
    id: str
    role: str
    label: str
    shots: Budget
    unseen_shots: Budget


@dataclass(frozen=True)
class Assignment:
    """One slot of one output, filled by one cell."""

    output: str
    key: str
    setting: str
    variant: str  # the row label (tables) or line/bar label (figures)
    method: str
    seed: int
    unseen_shots: Budget
    dataset: str  # dataset spec
    panel: int = 0  # figures with several sweep panels
    sweep_param: str = ""
    sweep_value: Any = None


@dataclass
class Job:
    """One call of the runner: a method on a dataset spec at one seen budget, several unseen budgets."""

    dataset: str
    shots: Budget
    method: str
    overrides: dict[str, Any]
    unseen: list[Budget]
    seeds: list[int]
    outputs: list[str]
    keys: set[str] = field(default_factory=set)

    def run_config(self, results: Path, device: str = "cpu", threads: int | None = None) -> RunConfig:
        return RunConfig(
            methods=[self.method],
            dataset=self.dataset,
            seeds=list(self.seeds),
            results=Path(results),
            shots=self.shots,
            unseen_shots=list(self.unseen),
            params={self.method: dict(self.overrides)},
            device=device,
            threads=threads,
        )

    def describe(self) -> str:
        b = lambda v: "all" if v is None else str(v)  # noqa: E731
        ov = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.method}{f'[{ov}]' if ov else ''} on {self.dataset} ({b(self.shots)}/{','.join(b(u) for u in self.unseen)})"


@dataclass
class AnalysisJob:
    output: str
    dataset: str
    setting: str
    method: str
    overrides: dict[str, Any]
    seeds: list[int]
    shots: Budget
    unseen_shots: Budget
    keys: list[str] = field(default_factory=list)  # the engine's cell key of each seed's configuration


@dataclass
class Plan:
    config: dict[str, Any]
    datasets: list[str]  # the --datasets names
    roles: dict[str, list[str]]  # role → dataset specs
    settings: dict[str, Setting]
    assignments: list[Assignment]
    jobs: list[Job]
    analyses: list[AnalysisJob]
    notes: list[str]
    skipped: dict[str, list[str]]  # output → reasons (whole rows/outputs left out)
    repeats: int
    features: dict[str, str] = field(default_factory=dict)  # dataset spec → feature model
    outputs: list[str] = field(default_factory=list)  # the outputs chosen (config order)
    absent: dict[str, list[str]] = field(default_factory=dict)  # output → methods not installed

    @property
    def keys(self) -> list[str]:
        return sorted({a.key for a in self.assignments})

    def for_output(self, output: str) -> list[Assignment]:
        return [a for a in self.assignments if a.output == output]

    def method_label(self, method: str) -> str:
        base, tuned = split_name(method)
        return str((self.config.get("methods", {}).get(base) or {}).get("label", base)) + (" (tuned)" if tuned else "")


# ---------------------------------------------------------------------------- building


def _budget(v: Any, what: str, allow_zero: bool = False) -> Budget:
    return parse_budget(v if v is None or isinstance(v, int) else str(v), what, allow_zero=allow_zero)


def _settings(cfg: dict) -> dict[str, Setting]:
    out = {}
    for sid, s in (cfg.get("settings") or {}).items():
        if "role" not in s:
            raise BenchError(f"setting '{sid}' has no role", hint="e.g. {role: prism, shots: all, unseen_shots: all}")
        out[sid] = Setting(
            sid,
            s["role"],
            str(s.get("label", sid)),
            _budget(s.get("shots", "all"), f"settings.{sid}.shots"),
            _budget(s.get("unseen_shots", "all"), f"settings.{sid}.unseen_shots", allow_zero=True),
        )
    return out


def _roles(cfg: dict, datasets: list[str]) -> dict[str, list[str]]:
    sources = cfg.get("sources") or {}
    roles: dict[str, list[str]] = {}
    for name in datasets:
        if name not in sources:
            raise did_you_mean(name, sources, "dataset choice")
        for role, specs in (sources[name] or {}).items():
            specs = [specs] if isinstance(specs, str) else list(specs)
            for s in specs:
                if s not in roles.setdefault(role, []):
                    roles[role].append(s)
    return roles


def _installed() -> set[str]:
    from bench.registry import METHOD_GROUP, _group

    return set(_group(METHOD_GROUP))


def build_plan(
    cfg: dict[str, Any],
    datasets: list[str],
    repeats: int | None = None,
    seen_ratio: float = 0.5,
    outputs: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Plan:
    """Every cell the outputs need. Loads the datasets (for their fingerprints; cached ones are fast)."""
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import plan as runner_plan

    settings = _settings(cfg)
    roles = _roles(cfg, datasets)
    base_repeats = int(repeats if repeats is not None else cfg.get("repeats", 20))
    if base_repeats < 1:
        raise BenchError(f"--repeats must be ≥ 1, got {base_repeats}")
    installed = _installed()
    smoke = bool(cfg.get("smoke"))
    all_outputs = list(cfg["outputs"])
    if outputs:
        unknown = [o for o in outputs if o not in all_outputs]
        if unknown:
            raise did_you_mean(unknown[0], all_outputs, "output")
    # `optional: true` outputs (e.g. the tuned Table 1, 9× the cells) run only when named in --outputs
    chosen = [o for o in all_outputs if (o in outputs if outputs else not cfg["outputs"][o].get("optional"))]

    notes: list[str] = []
    skipped: dict[str, list[str]] = {}
    assignments: list[Assignment] = []
    jobs: dict[tuple, Job] = {}
    analyses: list[AnalysisJob] = []
    features: dict[str, str] = {}
    method_notes: dict[str, None] = {}  # methods not installed, in the order met
    absent: dict[str, list[str]] = {}

    def skip(output: str, why: str) -> None:
        skipped.setdefault(output, [])
        if why not in skipped[output]:
            skipped[output].append(why)

    def usable(output: str, method: str, ds) -> bool:
        base = split_name(method)[0]  # "mrm@tuned" runs mrm, tuned on validation (bench/tuning.py)
        if base not in installed:
            if base not in absent.setdefault(output, []):
                absent[output].append(base)
            method_notes.setdefault(base, None)
            return False
        try:
            cls = load_method(base)
        except BenchError as e:  # an installed plugin that is broken: its rows are missing, the rest renders
            skip(output, f"{method}: {e.message}")
            return False
        why = check_capabilities(cls, ds)
        if why is not None:
            skip(output, f"{method} on {ds.name}: it {why}")
            return False
        return True

    def overrides_for(method: str, extra: dict[str, Any]) -> dict[str, Any]:
        ov: dict[str, Any] = {}
        if smoke:
            ov.update(load_method(split_name(method)[0]).test_params)
        ov.update(extra)
        return ov

    def add(output: str, setting: Setting, spec: str, method: str, variant: str, extra: dict[str, Any],
            unseen: list[Budget], seeds: list[int], panel: int = 0, sweep: tuple[str, Any] = ("", None)) -> bool:
        ds = load_dataset(spec)
        features[spec] = str(ds.meta.get("feature_model", "unknown"))
        if not usable(output, method, ds):
            return False
        ov = overrides_for(method, extra)
        rc = RunConfig(methods=[method], dataset=spec, seeds=seeds, results=Path("."), shots=setting.shots,
                       unseen_shots=unseen, seen_ratio=seen_ratio, params={method: ov})
        try:
            groups = runner_plan(rc, ds, RunSummary())
        except BenchError as e:
            skip(output, f"{variant}: {e.message}")
            return False
        params = groups[0].params if groups else {}
        jk = (spec, setting.shots, method, canonical_json(params))
        job = jobs.get(jk)
        if job is None:
            job = jobs[jk] = Job(spec, setting.shots, method, ov, [], [], [])
        for u in unseen:
            if u not in job.unseen:
                job.unseen.append(u)
        job.seeds = sorted(set(job.seeds) | set(seeds))
        if output not in job.outputs:
            job.outputs.append(output)
        for g in groups:
            for c in g.cells:
                job.keys.add(c.key)
                assignments.append(Assignment(output, c.key, setting.id, variant, method, g.seed, c.unseen_shots,
                                              spec, panel, sweep[0], sweep[1]))
        return True

    def setting_of(output: str, sid: str) -> Setting | None:
        if sid not in settings:
            raise BenchError(f"output '{output}' names unknown setting '{sid}'", hint=f"settings: {', '.join(settings)}")
        s = settings[sid]
        if s.role not in roles:
            skip(output, f"setting {s.label}: no dataset for role '{s.role}' in --datasets {' '.join(datasets)}")
            return None
        return s

    for name in chosen:
        out = cfg["outputs"][name]
        kind = out["kind"]
        reps = int(repeats if repeats is not None else out.get("repeats", base_repeats))
        seeds = list(range(reps))
        if kind in ("table1", "table2", "worst_k", "few_shot", "params"):
            sids = out.get("settings") or [out.get("setting")]
            for sid in sids:
                s = setting_of(name, sid)
                if s is None:
                    continue
                specs = roles[s.role]
                # `tuned: [m, …]` (Table 1): a second block of rows m@tuned, tuned on validation
                tuned = [f"{m}@tuned" for m in (out.get("tuned") or []) if kind == "table1"]
                for method in list(out.get("methods", [])) + tuned:
                    for spec in specs:
                        label = _row_label(cfg, method, spec, specs)
                        if kind == "few_shot":
                            lists = out.get("unseen_shots") or {}
                            unseen = [_budget(u, f"{name}.unseen_shots", allow_zero=True) for u in lists.get(sid, [s.unseen_shots])]
                        else:
                            unseen = [s.unseen_shots]
                        add(name, s, spec, method, label, {}, unseen, seeds)
        elif kind in ("sweep", "sweep_pair"):
            s = setting_of(name, out["setting"])
            if s is None:
                continue
            panels = out.get("panels") if kind == "sweep_pair" else [{"sweep": out["sweep"], "params": out.get("params", {})}]
            for pi, panel in enumerate(panels):
                fixed = {**(out.get("params") or {}), **(panel.get("params") or {})}
                (param, values), = panel["sweep"].items()
                for v in values:
                    for spec in roles[s.role]:
                        label = f"{param}={v}"
                        if len(roles[s.role]) > 1:
                            label += f" ({_short_feature(spec)})"
                        add(name, s, spec, out["method"], label, {**fixed, param: v}, [s.unseen_shots], seeds,
                            panel=pi, sweep=(param, v))
        elif kind == "selection_bias":
            s = setting_of(name, out["setting"])
            if s is None:
                continue
            method = out["method"]
            for spec in roles[s.role]:
                ds = load_dataset(spec)
                features[spec] = str(ds.meta.get("feature_model", "unknown"))
                if not usable(name, method, ds):
                    continue
                ov = overrides_for(method, out.get("params") or {})
                rc = RunConfig(methods=[method], dataset=spec, seeds=seeds, results=Path("."), shots=s.shots,
                               unseen_shots=[s.unseen_shots], seen_ratio=seen_ratio, params={method: ov})
                try:
                    groups = runner_plan(rc, ds, RunSummary())
                except BenchError as e:
                    skip(name, f"{method}: {e.message}")
                    continue
                analyses.append(AnalysisJob(name, spec, s.id, method, ov, seeds, s.shots, s.unseen_shots,
                                            [g.cells[0].key for g in groups]))
                if out.get("tuned"):  # the honest alternative: the same method tuned on validation (bench/tuning.py)
                    add(name, s, spec, f"{method}@tuned", _row_label(cfg, f"{method}@tuned", spec, roles[s.role]),
                        dict(out.get("params") or {}), [s.unseen_shots], seeds)
    if method_notes:
        notes.insert(0, f"not installed, so not run (install them, then rerun `bench paper`): {', '.join(method_notes)}")
    return Plan(cfg, list(datasets), roles, settings, assignments, list(jobs.values()), analyses, notes, skipped,
                base_repeats, features, chosen, absent)


def _short_feature(spec: str) -> str:
    return spec.split(":", 1)[1] if ":" in spec else spec


def _row_label(cfg: dict, method: str, spec: str, specs: list[str]) -> str:
    base, tuned = split_name(method)
    label = str((cfg.get("methods", {}).get(base) or {}).get("label", base)) + (" (tuned)" if tuned else "")
    if len(specs) > 1:
        label += f" ({_short_feature(spec)})"
    return label


# ---------------------------------------------------------------------------- running


@dataclass
class StoredCells:
    """The planned cells as found in a results directory (each file read and verified once)."""

    rows: dict[str, Any] = field(default_factory=dict)  # key → per-user rows (done cells)
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # key → done | missing | failed | corrupt
    errors: dict[str, str] = field(default_factory=dict)  # key → failure or corruption message


def read_cells(keys: list[str], results: Path, known: StoredCells | None = None) -> StoredCells:
    """Read and verify the given cells; cells already ``done`` in ``known`` are reused, not reread."""
    import json

    from bench.errors import IntegrityError
    from bench.store import ResultsStore

    store = ResultsStore(results)
    out = StoredCells()
    for key in keys:
        if known is not None and known.states.get(key) == "done":
            out.rows[key], out.metas[key], out.states[key] = known.rows[key], known.metas[key], "done"
            continue
        path = store.cell_path(key)
        if path.exists():
            try:
                out.rows[key], out.metas[key] = store.read_cell(path)
                out.states[key] = "done"
            except IntegrityError as e:
                out.states[key], out.errors[key] = "corrupt", e.message
        elif store.failure_path(key).exists():
            out.states[key] = "failed"
            try:
                out.errors[key] = json.loads(store.failure_path(key).read_text()).get("error", "failed")
            except (OSError, json.JSONDecodeError):
                out.errors[key] = "failed (unreadable failure record)"
        else:
            out.states[key] = "missing"
    return out


def cell_states(plan: Plan, results: Path) -> dict[str, str]:
    """Key → done | missing | failed | corrupt, for every planned cell (reads and verifies files)."""
    return read_cells(plan.keys, results).states


def execute(
    plan: Plan,
    results: Path,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    threads: int | None = None,
    executor=None,
    retries: int = 1,
    options: dict[str, Any] | None = None,
    deterministic: bool = False,
) -> dict[str, Any]:
    """Run every job with missing cells through the ordinary runner; then the analyses.

    All jobs' fit groups go to one executor together (``bench paper --jobs N`` / ``--executor
    ray`` runs groups of different jobs side by side); None runs them here, one after another.
    """
    from bench.runner import run_many

    stored = read_cells(plan.keys, results)
    states = stored.states
    todo = [j for j in plan.jobs if any(states[k] != "done" for k in j.keys)]
    n_missing = sum(1 for s in states.values() if s != "done")
    log(f"{len(states)} cells planned — {len(states) - n_missing} cached, {n_missing} to run in {len(todo)} jobs")
    # `stored` lets rendering reuse what was read here instead of reading every cell again
    summary = {"ran": 0, "failed": [], "interrupted": False, "jobs": len(todo), "analyses": [], "stored": stored}
    cfgs = []
    for job in todo:
        cfg = job.run_config(results, device, threads)
        cfg.options = dict(options or {})
        cfg.deterministic = deterministic
        cfgs.append(cfg)
    if cfgs:
        s = run_many(cfgs, progress=progress, log=log, executor=executor, retries=retries)
        summary["ran"] += s.ran
        summary["failed"].extend(s.failed)
        summary["elsewhere"] = s.elsewhere
        if s.interrupted:
            summary["interrupted"] = True
            return summary
    if plan.analyses:
        from bench.analysis import run_selection_bias

        for a in plan.analyses:
            res = run_selection_bias(a, results, log=log, progress=progress, device=device, threads=threads)
            summary["analyses"].append(res)
    return summary
