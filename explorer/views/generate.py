"""Generate page: new weights for a chosen architecture, sampled from the backbone's latent space.

The run is ``explorer.jobs.start_sample`` (``weightatlas sample`` in a background process writing a
progress file); a fragment polls it every second, so the page never freezes, a rerun finds the
run again through the session state, and Cancel ends it. Results: per-layer distributions of
the generated models against their prompts, zero-shot accuracy, and a zip download of each
Hugging Face-format directory. The app never writes into the atlas: models go to the user's
workspace (``explorer.jobs.generated_dir``; ``$WEIGHTATLAS_WORKSPACE`` overrides where).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.atlas import Atlas, GeneratedCard
from core.catalog import model_state_dict, tokenized_ids, zip_dir, zoo_sizes
from core.collection.specs import spec_label
from core.embeddings.table import token_scheme
from core.errors import USER_ERRORS
from core.generation.config import DEFAULT_SAMPLE_PRESET, SAMPLE_PRESETS
from core.generation.estimate import estimate_sample
from core.generation.prompts import (
    NO_TASK,
    atlas_prompts,
    input_adaptation,
    resolve_target,
    task_fits,
)
from core.generation.targets import TIMM_SUGGESTED, timm_fit, timm_search
from core.models.families import FAMILIES
from core.models.io import read_config, read_state_dict
from core.models.registry import library_of
from core.zoos.tasks import TASKS, get_task
from explorer.common import (
    current_atlas,
    display_path,
    escape_md,
    stamp,
    user_error,
    wait_for_imports,
)
from explorer.figures import generated_layer_figure
from explorer.jobs import (
    WORKSPACE_ENV,
    Job,
    SampleRequest,
    generated_dir,
    start_sample,
    startup_seconds,
)

JOB_KEY = "generate_job"
RESULT_KEY = "generate_result"


@st.cache_data(show_spinner=False, max_entries=64)
def cached_candidates(
    root: str, stamp_: float, spec: str, task: str | None, size: tuple[int, int] | None
) -> dict[str, Any]:
    """Resolve ``spec`` for ``task`` (at ``size`` = width, depth) and list atlas models with its
    exact layer table."""

    a = Atlas.open(root)
    scheme, token_size = token_scheme(a)
    width, depth = size if size is not None else (None, None)
    target = resolve_target(spec, scheme, token_size, task=task, width=width, depth=depth)
    return {
        "task": target.task,
        "own_task": target.arch.task,
        "label": spec_label(spec),
        "adapted": input_adaptation(target.arch.build(0), target),
        "family": target.arch.family,
        "library": target.arch.library,
        "n_tokens": int(len(target.positions)),
        "n_layers": len(target.layers),
        "candidates": atlas_prompts(a, target, limit=10_000),
    }


@st.cache_data(show_spinner=False)
def registry() -> dict[str, Any]:
    """Zoo families and tasks known to the registry, and which tasks are images."""

    return {
        "families": {k: f.default_task for k, f in FAMILIES.items()},
        "tasks": list(TASKS),
        "image_tasks": [t for t in TASKS if get_task(t).info.kind == "image"],
    }


@st.cache_data(show_spinner=False, max_entries=8)
def cached_family_counts(root: str, stamp_: float) -> dict[str, int]:
    """Accepted atlas models per zoo family name (timm's as ``timm-<family>``, as the registry)."""
    counts: dict[str, int] = {}
    for r in Atlas.open(root).accepted():
        fam = str(r.get("family") or "")
        name = f"timm-{fam}" if r.get("library") == "timm" else fam
        counts[name] = counts.get(name, 0) + 1
    return counts


@st.cache_data(show_spinner=False, max_entries=512)
def cached_timm_fit(name: str, task: str) -> dict[str, Any]:
    """core.generation.targets.timm_fit: parameters and whether ``name`` runs on ``task`` (meta device)."""
    return timm_fit(name, task)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_timm_search(query: str) -> list[str]:
    """core.generation.targets.timm_search: registry names containing ``query``."""
    return timm_search(query)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_zoo_sizes(root: str, stamp_: float, family: str, task: str) -> list[tuple[int, int]]:
    """core.catalog.zoo_sizes: (width, depth) of the atlas' models of a zoo family and task."""
    return zoo_sizes(root, family, task)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_hf_dirs(root: str, stamp_: float) -> dict[str, str]:
    """transformers model directories in the atlas (with weights): model dir -> model id."""

    a = Atlas.open(root)
    out: dict[str, str] = {}
    for row in a.accepted():
        if row.get("library") != "transformers" or not row.get("path"):
            continue
        d = Path(row["path"])
        d = d if d.is_absolute() else a.root / d
        try:
            if library_of(read_config(d)) == "transformers":
                out[str(d)] = str(row["id"])
        except (*USER_ERRORS, OSError, ValueError):
            continue
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def info_label(spec: str) -> str:
    """An architecture spec as the page names it (an HF-cache folder by its repo id)."""
    return spec_label(spec).removeprefix("hf:") if spec.startswith("hf:") else spec


def size_text(params: int | None) -> str:
    """``11.2 M parameters`` / ``578 k parameters``."""
    if params is None:
        return "size unknown"
    return (
        f"{params / 1e6:.1f} M parameters" if params >= 1e6 else f"{params / 1e3:.0f} k parameters"
    )


@st.cache_data(show_spinner=False, max_entries=32)
def cached_task_fits(root: str, stamp_: float, spec: str) -> dict[str, str | None]:
    """core.generation.prompts.task_fits: task -> None where the model runs on it, else why not."""
    scheme, token_size = token_scheme(Atlas.open(root))
    return task_fits(spec, scheme, token_size)


def task_label(task: str) -> str:
    """A task as the Task box shows it (``none``: generated unscored)."""
    return "none: generated unscored" if task == NO_TASK else task


def hf_ui(root: Path, stamp_: float) -> tuple[str, str | None, tuple[int, int] | None, bool]:
    """A transformers model folder and the task it is generated for (or none: unscored).

    Only the tasks the model runs on are offered (inputs resized and grey <-> RGB converted
    where its config asks for it); the model's own task first where it is one of them, else
    none. The caption says which, and how the task's inputs are adapted.
    """
    c1, c2 = st.columns(2)
    dirs = cached_hf_dirs(str(root), stamp_)
    typed = c1.text_input(
        "A model of your own: its folder, or a repo id in your Hugging Face cache",
        key="gen_hf_own",
        placeholder="e.g. ~/models/my-vit or org/name",
        help="A Hub-format directory (config.json + safetensors weights); a repo id is looked "
        "up in your local Hugging Face cache (no download). Empty: the atlas' models below.",
    ).strip()
    folder = c1.selectbox(
        "Model folder (the atlas' transformers models)",
        list(dirs),
        format_func=lambda d: dirs.get(d) or display_path(d),
        key="gen_hf_dir",
        disabled=bool(typed),
        help="Its config is built with random initialisation and filled with generated weights.",
    )
    if typed:
        p = Path(typed).expanduser()
        folder = str(p.resolve()) if p.is_dir() else typed
    if not folder:
        st.info("This atlas has no transformers model with weights; type a model folder.")
        return "", None, None, False
    spec = f"hf:{folder}"
    name = dirs.get(folder) or spec_label(spec).removeprefix("hf:")
    try:
        with st.spinner(f"Trying {name} on the tasks…"):
            fits = cached_task_fits(str(root), stamp_, spec)
            own = cached_candidates(str(root), stamp_, spec, NO_TASK, None)["own_task"]
    except (*USER_ERRORS, RuntimeError, ValueError, KeyError, TypeError, OSError) as e:
        st.error(f"Cannot use the model {quote(name)}: {plain(e)}", icon=":material/error:")
        return spec, None, None, False
    takes = [t for t, why in fits.items() if why is None]
    options = [NO_TASK, *takes]
    task = c2.selectbox(
        "Task",
        options,
        index=options.index(own) if own in takes else 0,
        format_func=task_label,
        key=f"gen_task_hf_{folder}",
        help="The tasks this model runs on (a forward pass on two of each task's inputs), and "
        "none: generated unscored, without accuracy or batch-norm conditioning."
        + (f" Its own task is {own}." if own else ""),
    )
    if not takes:
        st.caption(
            f"{escape_md(name)} runs on none of the atlas' tasks, so it is generated unscored: "
            + escape_md(why_no_task(fits))
        )
    elif task == NO_TASK:
        st.caption(
            f"Generated unscored: no accuracy, no batch-norm conditioning. It runs on "
            f"{len(takes)} task(s): {escape_md(', '.join(takes))}."
        )
    else:
        how = cached_candidates(str(root), stamp_, spec, task, None)["adapted"]
        st.caption(
            f"Generated for {escape_md(task)} and scored on its test split; the task's inputs "
            + (f"adapted: {escape_md(how)}." if how else "are taken as they are.")
        )
    return spec, task, None, True


def why_no_task(fits: dict[str, str | None]) -> str:
    """One reason a model takes none of the tasks, in the app's words: no classification head,
    else the first task's failure (without the advice meant for the command line)."""
    reasons = [r for r in fits.values() if r]
    head = next((r for r in reasons if "no classification head" in r), None)
    if head is not None:
        return (
            "it has no classification head"
            + head.split("no classification head", 1)[1].split(", so", 1)[0]
        )
    first = next(iter(fits.items()), ("", ""))
    return f"on {first[0]}: {str(first[1]).split('): ', 1)[-1].split('; choose', 1)[0]}"


def quote(text: Any) -> str:
    """``text`` shown as typed inside a sentence (a code span; backticks in it dropped)."""
    return "`" + str(text).replace("`", "'") + "`"


def plain(e: BaseException) -> str:
    """An error message in the app's words (escaped markdown; CLI flag advice removed)."""
    text = str(e) or type(e).__name__
    return escape_md(text.replace("pass --task with", "choose"))


def arch_ui(root: Path, stamp_: float) -> tuple[str, str | None, tuple[int, int] | None, bool]:
    """Target architecture (registry spec), task and zoo size.

    Returns:
        ``(spec, task, size, ok)``; ``ok`` is False when the choice cannot be built here.
    """
    reg = registry()
    kind = st.segmented_control(
        "Architecture from",
        ["Zoo family", "timm name", "transformers config"],
        default="Zoo family",
        key="gen_kind",
    )
    if kind == "timm name":
        c1, c2, c3 = st.columns([1.2, 1.4, 1])
        query = c1.text_input(
            "Search timm models",
            key="gen_timm_search",
            placeholder="e.g. resnet, mobilenet, efficientnet",
            help="Empty: small CNNs that build and train on the zoo's image tasks here. "
            "Any name in the timm registry can be searched; it is sized and test-run on the "
            "task's input (on PyTorch's meta device, no memory used) before anything is built.",
        )
        names = cached_timm_search(query) if query.strip() else list(TIMM_SUGGESTED)
        if not names:
            st.warning("No timm model name contains that text.")
            return "", None, None, False
        name = c2.selectbox("timm model", names, key="gen_timm_name")
        task = c3.selectbox("Task", reg["image_tasks"], key="gen_task_timm")
        fit = cached_timm_fit(name, task)
        if fit["ok"]:
            st.caption(f"`{name}` for {task}: {size_text(fit['params'])}; builds and runs here.")
        else:
            st.error(f"`{name}` cannot be generated here: {fit['reason']}", icon=":material/block:")
        return f"timm:{name}", task, None, bool(fit["ok"])
    if kind == "transformers config":
        return hf_ui(root, stamp_)
    c1, c2 = st.columns(2)
    counts = cached_family_counts(str(root), stamp_)
    families = sorted(reg["families"], key=lambda f: (-counts.get(f, 0), f))
    fam = c1.selectbox(
        "Zoo family",
        families,
        key="gen_family",
        format_func=lambda f: f"{f} ({counts[f]} in the atlas)" if counts.get(f) else f,
        help="The atlas' own families first (most models first): their models can be prompts.",
    )
    tasks = reg["tasks"]
    default = reg["families"].get(fam)
    task = c2.selectbox(
        "Task", tasks, index=tasks.index(default) if default in tasks else 0, key=f"gen_task_{fam}"
    )
    sizes = cached_zoo_sizes(str(root), stamp_, fam, task)
    size = st.selectbox(
        "Size (width x depth)",
        [*sizes, None],
        format_func=lambda s: "registry default" if s is None else f"{s[0]} x {s[1]}",
        key=f"gen_size_{fam}_{task}",
        help="Sizes of this family's models in the atlas (most common first): a target of "
        "the same size can take them as prompts.",
    )
    return f"zoo:{fam}", task, size, True


@st.cache_data(show_spinner=False, max_entries=64, ttl=600)
def cached_estimate(
    root: str,
    stamp_: float,
    spec: str,
    task: str | None,
    size: tuple[int, int] | None,
    n: int,
    keep: int,
    seed: int,
    prompts: tuple[str, ...],
) -> dict[str, Any]:
    """What the run would do and how long it would take here now (issue 17's estimate: it
    times a few backbone windows and one forward batch, 1-10 s; kept ten minutes)."""
    width, depth = size if size is not None else (None, None)
    est = estimate_sample(
        root,
        spec,
        task,
        overrides={"n": n, "keep": keep, "seed": seed},
        width=width,
        depth=depth,
        prompts=list(prompts) or None,
        startup_seconds=cached_startup_seconds(task if task != NO_TASK else None),
    )
    return {k: v for k, v in est.items() if k != "rates"}  # JSON-safe: passed to the job


@st.cache_resource(show_spinner=False, ttl=1800)
def cached_startup_seconds(task: str | None) -> dict[str, float]:
    """explorer.jobs.startup_seconds, measured once per task and half hour: the job's
    start-up."""
    return startup_seconds(task)


def estimate_ui(
    root: Path, stamp_: float, request: SampleRequest, size: Any
) -> dict[str, Any] | None:
    """The expected time of ``request`` before it runs (a warning line if it cannot be told);
    returns the estimate, which the run then reports as its own."""
    try:
        with st.spinner("Estimating the run time on this machine…"):
            est = cached_estimate(
                str(root),
                stamp_,
                request.arch,
                request.task,
                size,
                request.n,
                request.keep,
                request.seed,
                tuple(request.prompts),
            )
    except (*USER_ERRORS, RuntimeError, ValueError, KeyError, TypeError) as e:
        st.caption(f"No time estimate: {escape_md(e)}")
        return None
    st.info(escape_md(est["text"]), icon=":material/timer:")
    return est


def settings_ui(candidates: list[str], spec: str) -> dict[str, Any]:
    """Prompts, K, M and seed; returns them."""
    preset = SAMPLE_PRESETS[DEFAULT_SAMPLE_PRESET]  # what `weightatlas sample` does by default
    prompts = st.multiselect(
        "Prompt examples",
        candidates,
        default=candidates[: preset["max_prompts"]],
        key=f"gen_prompts_{spec}",
        help="Atlas models with exactly this layer table and task, best validation accuracy "
        "first. Empty: freshly trained instances are used.",
    )
    c1, c2, c3 = st.columns(3)
    k = c1.number_input("K draws", 1, 200, preset["n"], key="gen_k")
    m = c2.number_input("M kept", 1, 50, preset["keep"], key="gen_m")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="gen_seed")
    return {"prompts": prompts, "n": int(k), "keep": int(m), "seed": int(seed)}


@st.fragment(run_every=1.0)
def progress_fragment() -> None:
    """Poll the running job; on completion store the result and rerun the whole page."""
    job: Job | None = st.session_state.get(JOB_KEY)
    if job is None:
        return
    state = job.status()
    with st.status(f"Generating… {state['message']}", expanded=True) as box:
        st.progress(min(max(float(state["fraction"]), 0.0), 1.0), text=state["message"])
        st.caption(f"{state['seconds']:.0f} s · pid {job.pid}")
        if st.button("Cancel", key="gen_cancel", icon=":material/cancel:"):
            job.cancel()
            state = job.status()
        if state["done"]:
            box.update(state="error" if state["error"] else "complete")
            job.reap()
            out = st.session_state.pop(JOB_KEY + "_out", None)
            st.session_state[RESULT_KEY] = {**state, "cmd": job.cmd, "out": out}
            del st.session_state[JOB_KEY]
            st.rerun()


def accuracy_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Zero-shot accuracy of generated models next to their prompts."""
    fig = go.Figure(
        go.Bar(
            x=[r["name"] for r in rows],
            y=[r["accuracy"] for r in rows],
            marker_color=["#d62728" if r["kind"] == "generated" else "#1f77b4" for r in rows],
            text=[f"{r['accuracy']:.3f}" for r in rows],
            textposition="outside",
        )
    )
    fig.update_layout(
        height=320,
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis=dict(range=[0, 1.05], title="accuracy"),
        title="Zero-shot accuracy (red: generated, test split; blue: prompts)",
    )
    return fig


def results_ui(root: Path, result: dict[str, Any]) -> None:
    """Show a finished run: errors, or distributions, accuracy and downloads."""
    if result.get("error") == "cancelled":
        st.warning("Generation cancelled.", icon=":material/cancel:")
        return
    if result.get("error"):
        st.error(f"Generation failed: {plain(result['error'])}", icon=":material/error:")
        return
    gen_root = Path(result.get("out") or generated_dir(root)).resolve()
    outputs = [
        Path(p)
        for p in result.get("outputs", [])
        if Path(p).resolve().is_relative_to(gen_root) and Path(p).is_dir()
    ]
    if not outputs:
        st.warning("The run finished without writing models.")
        return
    st.success(
        f"Wrote {len(outputs)} model(s) to `{display_path(gen_root)}` (your workspace; set "
        f"`{WORKSPACE_ENV}` to write elsewhere).",
        icon=":material/check:",
    )
    cards = {p.name: GeneratedCard(p).block() for p in outputs}
    first = next(iter(cards.values()), {})
    if first.get("note"):  # e.g. a target without a task the atlas knows: not scored
        st.info(str(first["note"]), icon=":material/info:")
    _card_warnings_ui(cards)
    prompt_ids = _accuracy_ui(cards)
    _layers_ui(root, outputs, prompt_ids)
    _downloads_ui(outputs)


def _card_warnings_ui(cards: dict[str, dict[str, Any]]) -> None:
    """Kept models at chance level, and each model's distance from the atlas (issue 16)."""
    first = next(iter(cards.values()), {})
    at_chance = [n for n, c in cards.items() if c.get("at_chance") is True]
    if at_chance:
        chance = first.get("chance_accuracy")
        st.warning(
            f"{len(at_chance)} of {len(cards)} kept model(s) score at chance level"
            + (f" ({chance:.3f})" if isinstance(chance, int | float) else "")
            + " on the test split.",
            icon=":material/warning:",
        )
    for n, c in cards.items():  # issue 16: how far each generated model is from the atlas
        if isinstance(c.get("atlas_distance"), int | float):
            st.text(
                f"{n}: atlas distance {c['atlas_distance']:.3f}, percentile "
                f"{c.get('atlas_percentile', float('nan')):.1f} of the atlas models' own: "
                f"{'outside' if c.get('outside_atlas') else 'inside'} the atlas"
                + (
                    ""
                    if c.get("architecture_in_atlas", True)
                    else "; architecture not in the atlas"
                )
            )
            if c.get("outside_atlas"):
                st.warning(
                    escape_md(f"{n}: {c.get('atlas_distance_meaning', '')}"),
                    icon=":material/explore_off:",
                )
            if c.get("architecture_in_atlas") is False:
                st.warning(
                    escape_md(f"{n}: {c.get('architecture_note', '')}"),
                    icon=":material/explore_off:",
                )


def _accuracy_ui(cards: dict[str, dict[str, Any]]) -> list[str]:
    """Test accuracy of the kept models beside their prompts' scores; returns the prompt ids."""
    prompt_ids = next((c.get("prompts") for c in cards.values() if c.get("prompts")), []) or []
    rows = [
        {"name": n, "kind": "generated", "accuracy": float(c["test_accuracy"])}
        for n, c in cards.items()
        if isinstance(c.get("test_accuracy"), int | float)
    ]
    scores = next((c.get("prompt_scores") for c in cards.values() if c.get("prompt_scores")), [])
    for pid, s in zip(prompt_ids, scores or []):
        if isinstance(s, int | float) and np.isfinite(s):
            rows.append({"name": pid.split("/")[-1], "kind": "prompt", "accuracy": float(s)})
    if rows:
        st.plotly_chart(accuracy_figure(rows), key="gen_acc", width="stretch")
    return prompt_ids


def _layers_ui(root: Path, outputs: list[Path], prompt_ids: list[str]) -> None:
    """One layer's value histogram: the generated models against (up to three) prompts."""
    try:
        gen_sd = {p.name: read_state_dict(p) for p in outputs}
        prompt_sd = {}
        known = set(tokenized_ids(root))
        for pid in prompt_ids[:3]:
            if pid in known:
                prompt_sd[pid] = model_state_dict(root, pid)
    except (*USER_ERRORS, OSError) as e:
        user_error(e)
        gen_sd, prompt_sd = {}, {}
    if gen_sd:
        first = next(iter(gen_sd.values()))
        layers = [k for k, v in first.items() if v.is_floating_point() and v.numel() > 1]
        layer = st.selectbox("Layer", layers, key="gen_layer")
        if layer:
            st.plotly_chart(
                generated_layer_figure(gen_sd, prompt_sd, layer), key="gen_hist", width="stretch"
            )


def _downloads_ui(outputs: list[Path]) -> None:
    """A zip download per generated model folder."""
    st.markdown("**Download** (Hugging Face-format directories)")
    cols = st.columns(min(len(outputs), 4))
    for j, p in enumerate(outputs):
        cols[j % len(cols)].download_button(
            f"{p.name}.zip",
            data=zip_dir(p),
            file_name=f"{p.name}.zip",
            mime="application/zip",
            key=f"gen_zip_{p.name}",
            icon=":material/download:",
        )


def workspace_ui(root: Path) -> Path | None:
    """The folder generated models go to, or None after one line saying why the workspace
    cannot be used (read-only, under a file, under /proc) and a field to choose another.

    The folder chosen there becomes ``$WEIGHTATLAS_WORKSPACE`` of this app process (and of the
    jobs it starts), as if the app had been started with it.
    """
    try:
        return generated_dir(root)
    except (*USER_ERRORS, OSError) as e:
        st.error(f"Generated models cannot be written: {plain(e)}.", icon=":material/error:")
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    folder = c1.text_input(
        "Another workspace folder",
        key="gen_workspace",
        placeholder="/path/to/a/writable/folder",
        help=f"Used instead of `{WORKSPACE_ENV}` while the app runs.",
    )
    if c2.button("Use it", key="gen_workspace_use", disabled=not folder.strip()):
        previous = os.environ.get(WORKSPACE_ENV)
        os.environ[WORKSPACE_ENV] = folder.strip()
        try:
            generated_dir(root)
        except (*USER_ERRORS, OSError) as e:
            if previous is None:
                os.environ.pop(WORKSPACE_ENV, None)
            else:
                os.environ[WORKSPACE_ENV] = previous
            st.error(f"`{folder.strip()}` cannot be used either: {plain(e)}.")
            return None
        st.rerun()
    return None


def page() -> None:
    """Render the Generate page."""
    root = current_atlas()
    wait_for_imports()
    a = Atlas(root)
    st.title("Generate", help="Sample new weights for an architecture from the latent space.")
    if not a.tokens.exists() or not a.backbone.weights_path.exists():
        where = display_path(root)
        st.warning(
            f"Generation needs a token store and a trained backbone in `{where}` "
            f"(`weightatlas tokenize {where}` and `weightatlas train {where}`).",
            icon=":material/warning:",
        )
        return
    stamp_ = a.tokens.stamp() + stamp(a.manifest_path)
    spec, task, size, ok = arch_ui(root, stamp_)
    if not ok:
        return
    try:
        with st.spinner(f"Resolving {info_label(spec)}…"):
            info = cached_candidates(str(root), stamp_, spec, task, size)
    except (*USER_ERRORS, RuntimeError, ValueError, KeyError, TypeError) as e:
        st.error(f"Cannot build {quote(info_label(spec))}: {plain(e)}", icon=":material/error:")
        return
    st.caption(
        f"{quote(info_label(spec))} · {info['library']} · family `{info['family']}` · "
        + (f"task `{info['task']}` · " if info["task"] else "no task (unscored) · ")
        + f"{info['n_layers']} layers · {info['n_tokens']:,} tokens · "
        f"{len(info['candidates'])} atlas model(s) with this layer table"
    )
    settings = settings_ui(info["candidates"], f"{spec}:{task}:{size}")
    running = st.session_state.get(JOB_KEY) is not None
    if settings["keep"] > settings["n"]:
        st.warning("M kept must not exceed K draws.")
    request = SampleRequest(
        arch=spec,
        n=settings["n"],
        keep=settings["keep"],
        seed=settings["seed"],
        task=str(info["task"]) if info["task"] else (NO_TASK if task == NO_TASK else None),
        width=size[0] if size is not None else None,
        depth=size[1] if size is not None else None,
        prompts=tuple(settings["prompts"]),
    )
    est = None
    if settings["keep"] <= settings["n"] and not running:
        est = estimate_ui(root, stamp_, request, size)
    out = workspace_ui(root)
    if out is None:
        return
    c1, c2 = st.columns([1, 4], vertical_alignment="center")
    go_ = c1.button(
        "Generate",
        type="primary",
        icon=":material/auto_awesome:",
        disabled=running or settings["keep"] > settings["n"],
        key="gen_go",
    )
    c2.caption(
        f"Writes to `{display_path(out)}`: your workspace, never the atlas (set "
        f"`{WORKSPACE_ENV}` to change it)."
    )
    if go_ and not running:
        st.session_state.pop(RESULT_KEY, None)
        try:
            st.session_state[JOB_KEY] = start_sample(root, request, out, estimate=est)
            st.session_state[JOB_KEY + "_out"] = str(out)
        except (*USER_ERRORS, OSError, ValueError) as e:
            user_error(e)
    if st.session_state.get(JOB_KEY) is not None:
        progress_fragment()
    result = st.session_state.get(RESULT_KEY)
    if result is not None:
        results_ui(root, result)


page()
