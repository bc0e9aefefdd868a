"""``tadsr serve``: the Gradio page around ``tadsr.web.jobs`` (the optional ``tadsr[web]`` extra).

The page: an image drop zone (drag-and-drop, paste, file picker), the model (only those the server was started
with: the page sends back a label, never a path), steps, seed, tile, output scale and colour fix; an Upscale and a
Cancel button; a per-tile progress bar; a before/after slider; the full-resolution PNG to download; the time and
the output size. The same function is the API endpoint ``/upscale`` (``gradio_client``; README).

Serving: one job at a time on the device (Gradio's queue with a concurrency limit of 1 and a bounded size, and
the model cache's lock); models are loaded on first use and kept. Uploads and results live in a folder of this
server's (``GRADIO_TEMP_DIR``), a session's files are deleted when its page is closed, everything older than an
hour every ten minutes, and the folder itself when the server stops.
"""

# No ``from __future__ import annotations`` here: Gradio finds the gr.Request and gr.Progress parameters of the
# handlers by their annotations, which must be real classes, not strings.
import asyncio
import math
import os
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tadsr.backends import OWN_PRECISION
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, max_file_bytes
from tadsr.devices import resolve_device
from tadsr.diffusion.samplers import SAMPLERS
from tadsr.errors import ConfigError, MissingExtraError, TadsrError
from tadsr.inference.color import COLOR_FIXES
from tadsr.web.jobs import MAX_AGE_SECONDS, JobSettings, ModelCache, model_catalogue, remove_tree, sweep, upscale_file

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SWEEP_SECONDS = 600
DEFAULT_QUEUE_SIZE = 16
PAGE_TILE = 256  # LR pixels: a 256x256 photo in one call (the CLI's 128 is for large images on small GPUs)


def import_gradio() -> Any:
    """The gradio module, or a one-line MissingExtraError saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio
    except ImportError:
        raise MissingExtraError("tadsr serve needs Gradio, an optional extra: pip install 'tadsr[web]'") from None
    return gradio


class Sessions:
    """Per page session (Gradio's session hash): its uploads, its results folder, the cancel flags of its jobs."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.Lock()
        self._uploads: dict[str, set[Path]] = {}
        self._running: dict[str, set[threading.Event]] = {}
        self._jobs = 0

    def start_job(self, session: str, upload: Path) -> tuple[Path, threading.Event]:
        """A new job of ``session`` on ``upload``: its own results folder and its cancel flag."""
        with self._lock:
            self._jobs += 1
            self._uploads.setdefault(session, set()).add(upload)
            flag = threading.Event()
            self._running.setdefault(session, set()).add(flag)
            return self.root / "results" / _safe(session) / str(self._jobs), flag

    def add_upload(self, session: str, upload: Path) -> None:
        with self._lock:
            self._uploads.setdefault(session, set()).add(upload)

    def end_job(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            self._running.get(session, set()).discard(flag)

    def close(self, session: str) -> None:
        """The page was closed: cancel its jobs, delete its uploads and results. (Gradio keeps one copy of
        identical uploads: another page's job on the very same file then fails with a one-line message.)"""
        with self._lock:
            uploads = self._uploads.pop(session, set())
            flags = self._running.pop(session, set())
        for flag in flags:
            flag.set()
        for path in uploads:
            path.unlink(missing_ok=True)
        remove_tree(self.root / "results" / _safe(session))


def check_port(host: str, port: int) -> None:
    """ConfigError in one line if ``host:port`` cannot be bound (in use, not this machine's, not allowed)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}:{port} ({err.strerror or err}): choose another --port or "
                          "--host") from None


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: stop as Ctrl+C does; a second SIGTERM (a supervisor's repeat) does not cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _safe(session: str) -> str:
    return "".join(c for c in session if c.isalnum() or c in "-_") or "anonymous"


def _number(value: Any, name: str, integer: bool = True) -> Any:
    """A Number box's raw value (None when emptied) as int/float, or a one-line ConfigError."""
    if value is None or value == "":
        raise ConfigError(f"{name} is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if integer:
        if number != int(number):
            raise ConfigError(f"{name} must be a whole number, got {value}")
        return int(number)
    return number


def _steps_control(models: ModelCache, label: str) -> dict[str, Any]:
    """The steps control of a model: 1 for a student (fixed); T (the default) or 1 for a teacher."""
    entry = models.entry(label)
    choices = [(f"{n} (the schedule's T)" if n == entry.num_steps and n > 1 else str(n), n)
               for n in entry.step_choices]
    return dict(choices=choices, value=entry.step_choices[0], interactive=len(choices) > 1)


def _upscale_handler(gr: Any, models: ModelCache, sessions: Sessions, max_pixels: int) -> Any:
    """The page's Upscale handler (Gradio reads its signature: the inputs, then the request and progress)."""

    async def run(image: dict | None, model: str, steps: Any, seed: Any, tile: Any, outscale: Any, color_fix: str,
                  sampler: str | None, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> tuple[Any, str, str]:  # noqa: B008
        """Upscale the dropped image; returns ((before, after) previews, the full-resolution PNG, a summary).

        The job runs in a worker thread; when Gradio cancels this task (the Cancel button, an API client's
        cancel, a closed page) the job's flag is set and the job stops at its next tile, freeing the device."""
        if not image or not image.get("path"):
            raise gr.Error("drop, paste or choose an image first", print_exception=False)
        session = request.session_hash or "anonymous"
        source = Path(image["path"])
        name = Path(image.get("orig_name") or source.name).name
        try:
            scale = _number(outscale, "output scale", integer=False)
            if not 0 < scale <= 16:
                raise ConfigError(f"output scale must be in (0, 16], got {scale:g}")
            settings = JobSettings(model=model, steps=None if steps in (None, "") else _number(steps, "steps"),
                                   seed=_number(seed, "seed"), tile=_number(tile, "tile"),
                                   outscale=scale, color_fix=color_fix, sampler=sampler or "deterministic")
        except TadsrError as err:
            raise gr.Error(str(err), print_exception=False) from None
        job_dir, flag = sessions.start_job(session, source)
        progress((0, None), desc="waiting for the device" if models.lock.locked() else "starting")

        def work() -> Any:
            return upscale_file(source, name, settings, models, job_dir, max_pixels, cancelled=flag.is_set,
                                progress=lambda done, total: progress((done, total), desc="tiles", unit="tile"))

        try:
            result = await asyncio.get_running_loop().run_in_executor(None, work)
        except asyncio.CancelledError:
            flag.set()
            raise
        except TadsrError as err:
            raise gr.Error(str(err), print_exception=False) from None
        finally:
            sessions.end_job(session, flag)
        return (str(result.before), str(result.after)), str(result.output), result.summary

    return run


def build_page(models: ModelCache, sessions: Sessions, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """The gr.Blocks of the page (not launched). ``models`` holds the catalogue and the device."""
    gr = import_gradio()
    catalogue = models.catalogue
    first = next(iter(catalogue.values()))

    def steps_of(label: str) -> dict[str, Any]:
        return _steps_control(models, label)

    def on_model(label: str) -> tuple[Any, Any]:
        return gr.Dropdown(**steps_of(label)), gr.Number(value=models.entry(label).scale)

    run = _upscale_handler(gr, models, sessions, max_pixels)

    def uploaded(image: dict | None, request: gr.Request) -> None:
        """Note the session's upload as it arrives, so that closing the page deletes it even if never upscaled."""
        if image and image.get("path"):
            sessions.add_upload(request.session_hash or "anonymous", Path(image["path"]))

    def closed(request: gr.Request) -> None:
        sessions.close(request.session_hash or "anonymous")

    with gr.Blocks(title="tadsr: one-step diffusion super-resolution", analytics_enabled=False) as page:
        limit = f" Inputs up to {max_pixels:,} pixels." if max_pixels else ""
        gr.Markdown("## tadsr: one-step diffusion super-resolution (TAD-SR)\n"
                    "Drop, paste or choose an image, then **Upscale**. The student runs one network call per tile, "
                    "the teacher its T steps. The download is the full-resolution PNG (16-bit and alpha kept)."
                    + limit)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="input image", type="filepath", image_mode=None, height=300,
                                 sources=["upload", "clipboard"], elem_id="tadsr-input")
                model = gr.Dropdown(choices=list(catalogue), value=first.label, label="model", elem_id="tadsr-model")
                with gr.Row():
                    steps = gr.Dropdown(label="steps", elem_id="tadsr-steps", **steps_of(first.label))
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                with gr.Row():
                    tile = gr.Number(value=PAGE_TILE, precision=0, minimum=0, label="tile (LR px; 0: whole image)")
                    outscale = gr.Number(value=first.scale, minimum=0.25, maximum=16, step=0.5,
                                         label="output scale")
                with gr.Row():
                    color_fix = gr.Dropdown(choices=list(COLOR_FIXES), value="none", label="colour fix")
                    sampler = gr.Dropdown(choices=list(SAMPLERS), value="deterministic", label="sampler (T steps)",
                                          elem_id="tadsr-sampler")
                with gr.Row():
                    go = gr.Button("Upscale", variant="primary", elem_id="tadsr-upscale")
                    stop = gr.Button("Cancel", variant="stop", elem_id="tadsr-cancel")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="before (bicubic) / after", type="filepath", image_mode=None,
                                        interactive=False, elem_id="tadsr-slider", max_height=560)
                summary = gr.Textbox(label="result", interactive=False, elem_id="tadsr-summary")
                download = gr.File(label="full-resolution PNG", interactive=False, elem_id="tadsr-download")
        model.change(on_model, inputs=model, outputs=[steps, outscale], api_name=False)
        job = go.click(run, inputs=[image, model, steps, seed, tile, outscale, color_fix, sampler],
                       outputs=[slider, download, summary], api_name="upscale", preprocess=False,
                       concurrency_limit=1, concurrency_id="device")
        stop.click(None, cancels=[job], api_name=False)
        image.upload(uploaded, inputs=image, outputs=None, preprocess=False, queue=False, api_name=False)
        page.unload(closed)
    return page


def serve(model_paths: Sequence[str | os.PathLike] = (), models_dir: str | os.PathLike | None = None,
          host: str = "127.0.0.1", port: int = 7860, device: str = "auto", dtype: torch.dtype | None = None,
          max_pixels: int = DEFAULT_MAX_PIXELS, queue_size: int = DEFAULT_QUEUE_SIZE, share: bool = False,
          report: Callable[[str], None] | None = None) -> None:
    """Serve the page until interrupted. Gradio prints the URL; ``report`` (default: a RuntimeWarning) gets a line
    for a host other than the local machine's (anyone who reaches it can run jobs) and for each file in
    ``models_dir`` that is not a tadsr model; a share link is made only with ``share``."""
    gr = import_gradio()
    check_port(host, port)
    report = report or (lambda line: warnings.warn(line, RuntimeWarning, stacklevel=3))
    catalogue = model_catalogue(model_paths, models_dir, report=report)
    if host not in LOCAL_HOSTS:
        report(f"serving on {host}: anyone who can reach this machine's port {port} can upload images and run "
               "jobs on it")
    as_they_are = [entry.label for entry in catalogue.values() if entry.kind not in OWN_PRECISION]
    if dtype not in (None, torch.float32) and as_they_are:  # said, not silently dropped
        report(f"{', '.join(as_they_are)}: one-step files run in float32 (or an ONNX file's own precision); "
               f"{dtype} applies to the tadsr models only")
    models = ModelCache(catalogue, resolve_device(device), dtype)
    models.backend(next(iter(catalogue)))  # the default model, so that the first job does not wait for it
    root = Path(tempfile.mkdtemp(prefix="tadsr-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root)  # Gradio's uploads and caches, read when the page is built
    sessions = Sessions(root)
    stop = threading.Event()

    def janitor() -> None:
        while not stop.wait(SWEEP_SECONDS):
            sweep(root, MAX_AGE_SECONDS)

    if threading.current_thread() is threading.main_thread():  # SIGTERM stops the server as Ctrl+C does
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        page = build_page(models, sessions, max_pixels)
        page.queue(max_size=queue_size, default_concurrency_limit=1)
        threading.Thread(target=janitor, name="tadsr-serve-janitor", daemon=True).start()
        print(f"tadsr: {len(catalogue)} models on {models.device}; uploads and results in {root} "
              "(deleted when the page is closed, after an hour, and when the server stops)", flush=True)
        page.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_bytes(max_pixels) or None,
                    theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),
                    footer_links=["api"], run_history=False, ssr_mode=False, mcp_server=False)
    finally:
        stop.set()
        remove_tree(root)
