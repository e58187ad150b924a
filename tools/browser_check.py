"""Run notebooks in JupyterLab in headless Chromium and check that they run clean and their widgets redraw.

Part of ``make test`` when a browser is present (``make browser-check`` alone). Needs, besides the course venv:

    apt-get install -y chromium          # the real binary, /usr/lib/chromium/chromium, is what Playwright drives
    .venv/bin/pip install playwright     # do NOT run `playwright install`: it downloads a browser of its own

Usage: ``.venv/bin/python tools/browser_check.py [NOTEBOOK ...] --out DIR [--full] [--allow-errors] [--jobs N]``
(default: every notebook in solutions/; ``--jobs N`` checks N notebooks at a time, each shard in a JupyterLab and a
browser of its own, and merges their reports). The notebooks are copied to a temp folder with ``FAST=True`` injected
after their ``parameters`` cell (unless --full) and opened in a JupyterLab server of their own, started on a free
port and killed at the end. For each notebook: run all cells; fail on an error output (with --allow-errors, meant for
labs/, NotImplementedError from unsolved exercises is allowed and every cell still runs; today's labs/ need no
such allowance, since their check cells catch NotImplementedError themselves); each live widget must
show a slider or dropdown and an image; a slider moved with the keyboard (and a dropdown, if any) must change the
image; every picture in the markdown (the drawn diagrams) must load; an error in the browser console fails the
notebook, except the few an offline machine always shows (``ALLOWED_CONSOLE``). A screenshot of each notebook's top,
and of each widget cell before and after, go to --out, with report.json and jupyter-lab.log. With ``--html DIR`` it
also opens the static copy (``make html``): the index and one page, whose pictures must load.
Prints ``NAME: ok (N widgets, M interactions)`` or ``NAME: FAIL <reason>`` per notebook; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/lib/chromium/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
ALLOWED_ERRORS = {"NotImplementedError"}  # what --allow-errors tolerates: unsolved exercises in labs/
# Console errors that say nothing about the notebook, each with why it is harmless (an offline machine shows them all):
ALLOWED_CONSOLE = {
    # JupyterLab's markdown renderer first sets an <img> to the raw "attachment:NAME" URL, then to the resolved data
    # URL; Chromium logs the first, unfetchable scheme. The pictures themselves are checked to load below.
    r"net::ERR_UNKNOWN_URL_SCHEME \[attachment:": "markdown attachments before they resolve",
    # The static HTML (nbconvert's lab template) loads MathJax and require.js from a CDN: offline, that fails.
    r"cdnjs\.cloudflare\.com|net::ERR_NAME_NOT_RESOLVED|net::ERR_INTERNET_DISCONNECTED": "CDN scripts, offline",
}


def console_failures(messages: list[str]) -> list[str]:
    """The console errors not explained by ALLOWED_CONSOLE."""
    return [m for m in dict.fromkeys(messages) if not any(re.search(p, m) for p in ALLOWED_CONSOLE)]


JS_BROKEN_IMAGES = """(selector) => Array.from(document.querySelectorAll(selector))
    .filter(i => i.complete && i.naturalWidth === 0).map(i => (i.alt || i.src).slice(0, 80))"""
SETTINGS = {  # user settings of the throw-away server: no news toast over screenshots, every cell in the DOM
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "recordTiming": True},
}
NB = "window.jupyterapp.shell.currentWidget"
JS_RUN_ALL = """async (ms) => {
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`run-all took over ${ms} ms`)), ms));
  await Promise.race([window.jupyterapp.commands.execute('notebook:run-all-cells'), timeout]);
}"""
JS_IDLE = f"() => {NB}.sessionContext.session?.kernel?.status === 'idle'"
JS_OUTPUTS = f"""() => {{
  const cells = {NB}.content.model.cells, found = [];
  for (let i = 0; i < cells.length; i++) {{
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    found.push({{index: i, source: c.sharedModel.getSource(), count: c.executionCount,
                 outputs: c.outputs.toJSON(), execution: c.getMetadata('execution') ?? null}});
  }}
  return found;
}}"""


@dataclass
class Result:
    name: str
    failures: list[str] = field(default_factory=list)
    widgets: int = 0
    interactions: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, reason: str) -> None:
        self.failures.append(reason)

    def line(self) -> str:
        if self.ok:
            return f"{self.name}: ok ({self.widgets} widgets, {self.interactions} interactions)"
        more = f" (+{len(self.failures) - 1} more, see -v)" if len(self.failures) > 1 else ""
        return f"{self.name}: FAIL {self.failures[0]}{more}"


def prepare(notebook: Path, workdir: Path, full: bool, allow_errors: bool) -> Path:
    """Copy ``notebook`` under ``workdir`` (keeping its folder, labs/ vs solutions/) with ``FAST=True`` injected after
    its parameters cell by papermill, as ``make notebooks`` does (unless ``full``); with ``allow_errors`` every code
    cell is tagged raises-exception, so run-all goes on past a failing cell."""
    import nbformat
    import papermill

    dest = workdir / notebook.resolve().parent.name / notebook.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if full:
        nb = nbformat.read(notebook, as_version=4)
    else:
        papermill.execute_notebook(str(notebook), str(dest), parameters={"FAST": True}, prepare_only=True,
                                   kernel_name="python3", progress_bar=False)
        nb = nbformat.read(dest, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if allow_errors and cell.cell_type == "code" and "raises-exception" not in tags:
            tags.append("raises-exception")
    nbformat.write(nb, dest)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, tmp: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """jupyter-lab itself (not the `jupyter lab` launcher, so the PID is the server), no token, on a free port."""
    for key, value in SETTINGS.items():
        path = tmp / "settings" / f"{key}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DSLAB_HEADLESS", "MPLBACKEND", "TQDM_DISABLE"}}
    cmd = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True", "--expose-app-in-browser", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    server = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter-lab exited with {server.returncode}; see {log}")
        try:
            urllib.request.urlopen(url + "/api/status", timeout=2)
            return server, url
        except OSError:
            time.sleep(0.25)
    stop_lab(server)
    raise RuntimeError(f"jupyter-lab did not answer on {url} within 60 s; see {log}")


def stop_lab(server: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down), then SIGKILL its process group if it lingers."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # its own session (start_new_session): the server and its kernels
    except ProcessLookupError:
        pass
    server.wait()


def wait_idle(page, timeout_s: float, settle_s: float = 1.0) -> None:
    """Wait until the kernel has been idle for ``settle_s`` seconds in a row."""
    deadline, since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if page.evaluate(JS_IDLE):
            since = since or time.monotonic()
            if time.monotonic() - since >= settle_s:
                return
        else:
            since = None
        time.sleep(0.2)
    raise TimeoutError(f"kernel not idle after {timeout_s:.0f} s")


def img_src(cell) -> str | None:
    img = cell.locator(".widget-output img")
    return img.first.get_attribute("src") if img.count() else None


def wait_redraw(page, cell, before: str | None, timeout_s: float) -> bool:
    """True once the kernel is idle and the widget's image differs from ``before``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        src = img_src(cell)
        if src and src != before and page.evaluate(JS_IDLE):
            time.sleep(0.5)  # let a queued redraw land before the screenshot
            return True
        time.sleep(0.2)
    return False


def cell_seconds(cells: list[dict]) -> list[tuple[float, int]]:
    """(seconds, index) per executed cell, from the timing JupyterLab records (recordTiming)."""
    from datetime import datetime

    found = []
    for c in cells:
        ex = c.get("execution") or {}
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if start and end:
            seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                       - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            found.append((seconds, c["index"]))
    return found


def check_errors(cells: list[dict], res: Result, allow_errors: bool) -> None:
    for cell in cells:
        for out in cell["outputs"]:
            where = f"cell {cell['index']}"
            if out.get("output_type") == "error":
                msg = f"{where}: {out.get('ename')}: {out.get('evalue', '')[:160]}"
                if allow_errors and out.get("ename") in ALLOWED_ERRORS:
                    res.notes.append("allowed error, " + msg)
                else:
                    res.fail("error in " + msg)
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", "")).strip()
                res.notes.append(f"stderr in {where}: {text[:300]}")
                if "Traceback" in text:
                    res.fail(f"traceback printed in {where}")
        if cell["count"] is None and cell["source"].strip():
            res.fail(f"cell {cell['index']} was not executed")


def check_widget(page, cell, tag: str, out: Path, res: Result, timeout_s: float) -> None:
    """One widget cell: controls and image present, slider (keyboard) and dropdown each redraw the image."""
    try:
        cell.locator(".widget-output img").first.wait_for(state="visible", timeout=30_000)
    except Exception:  # noqa: BLE001 - reported as a failure below
        pass
    sliders, dropdowns = cell.locator(".widget-slider"), cell.locator(".widget-dropdown select")
    n_img = cell.locator(".widget-output img").count()
    errs = cell.locator(".jp-OutputArea-output", has_text=re.compile("Error displaying widget|Loading widget"))
    if errs.count():
        res.fail(f"{tag}: {errs.first.inner_text()[:120]!r}")
        return
    if not sliders.count() and not dropdowns.count():
        res.fail(f"{tag}: no slider or dropdown rendered")
        return
    if not n_img:
        res.fail(f"{tag}: no image in the widget output")
        return
    img = cell.locator(".widget-output img").first
    size = img.evaluate("i => [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]")
    overflow = cell.locator(".jp-OutputArea-output").first.evaluate("e => e.scrollWidth - e.clientWidth")
    res.notes.append(f"{tag}: {sliders.count()} sliders, {dropdowns.count()} dropdowns, {n_img} image(s); "
                     f"png {size[0]}x{size[1]} shown {size[2]}x{size[3]}, horizontal overflow {overflow}px")
    shot = out / f"{tag}_before.png"
    cell.screenshot(path=str(shot))
    res.screenshots.append(str(shot))

    if sliders.count():
        slider = sliders.first
        label = slider.locator(".widget-label").first.inner_text()
        readout = slider.locator(".widget-readout").first
        value0, before = readout.inner_text(), img_src(cell)
        slider.locator(".noUi-handle").first.focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
            time.sleep(0.15)
        value1 = readout.inner_text()
        if value1 == value0:
            res.fail(f"{tag}: slider {label!r} did not move with ArrowRight (readout {value0})")
        elif not wait_redraw(page, cell, before, timeout_s):
            res.fail(f"{tag}: image unchanged after slider {label!r} {value0} -> {value1}")
        else:
            res.interactions += 1
            res.notes.append(f"{tag}: slider {label!r} {value0} -> {value1}, image redrawn")
    if dropdowns.count():
        select = dropdowns.first
        label = select.evaluate("s => s.closest('.widget-dropdown').querySelector('.widget-label')?.innerText")
        options, current = select.locator("option").all_inner_texts(), select.evaluate("s => s.selectedIndex")
        target = current - 1 if current == len(options) - 1 else current + 1
        before = img_src(cell)
        select.select_option(index=target)
        if not wait_redraw(page, cell, before, timeout_s):
            res.fail(f"{tag}: image unchanged after dropdown {label!r} {options[current]} -> {options[target]}")
        else:
            res.interactions += 1
            res.notes.append(f"{tag}: dropdown {label!r} {options[current]} -> {options[target]}, image redrawn")
    shot = out / f"{tag}_after.png"
    cell.screenshot(path=str(shot))
    res.screenshots.append(str(shot))


def check_notebook(browser, url: str, rel: str, name: str, out: Path, allow_errors: bool, timeout_s: float) -> Result:
    res, t0 = Result(name), time.monotonic()
    stem = name.replace("/", "_").removesuffix(".ipynb")
    (out / f"{stem}_FAIL.png").unlink(missing_ok=True)  # from an earlier run
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.text} [{m.location.get('url', '')[:60]}]")
            if m.type == "error" else None)
    try:
        page.goto(f"{url}/lab/tree/{rel}?reset")
        page.wait_for_function(f"window.jupyterapp && {NB} && {NB}.sessionContext && {NB}.content?.model",
                               timeout=90_000)
        page.evaluate(f"async () => {{ await {NB}.sessionContext.ready; }}")
        page.evaluate(JS_RUN_ALL, int(timeout_s * 1000))
        wait_idle(page, timeout_s)
        cells = page.evaluate(JS_OUTPUTS)
        check_errors(cells, res, allow_errors)
        res.notes += [f"slow cell {i}: {t:.1f} s" for t, i in sorted(cell_seconds(cells), reverse=True)[:3] if t > 5]
        live = [c["index"] for c in cells if any(WIDGET_MIME in o.get("data", {}) for o in c["outputs"])]
        for c in cells:
            if re.search(r"\w+_widget\(\)\s*$", c["source"]) and c["index"] not in live:
                res.fail(f"cell {c['index']} calls {c['source'].split()[-1]} but shows no live widget")
        dom = page.locator(".jp-Notebook .jp-CodeCell")
        for index in live:
            cell = dom.nth([c["index"] for c in cells].index(index))
            if not cell.locator(".jp-OutputArea-output .jupyter-widgets").count():
                res.fail(f"cell {index}: widget output in the model but no widget view in the page")
                continue
            if not cell.locator(".widget-output, .widget-slider, .widget-dropdown").count():
                bars = cell.locator(".widget-hprogress, .widget-vprogress").count()
                kind = "progress bar" if bars else "widget without controls"
                res.notes.append(f"cell {index}: {kind}, not checked")
                continue
            res.widgets += 1
            check_widget(page, cell, f"{stem}_cell{index}", out, res, timeout_s=30)
        broken = page.evaluate(JS_BROKEN_IMAGES, ".jp-MarkdownCell img")
        if broken:
            res.fail(f"pictures that did not load: {broken}")
        shot = out / f"{stem}.png"
        page.evaluate("() => document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')"
                      ".forEach(e => e.scrollTo(0, 0))")
        time.sleep(0.5)
        page.screenshot(path=str(shot))
        res.screenshots.append(str(shot))
        res.notes += [f"browser console error (allowed): {m[:200]}" for m in dict.fromkeys(console)
                      if m not in console_failures(console)]
        for m in console_failures(console):
            res.fail(f"browser console error: {m[:200]}")
    except Exception as exc:  # noqa: BLE001 - any failure of the run is this notebook's FAIL line
        res.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if not res.ok:
        page.screenshot(path=str(out / f"{stem}_FAIL.png"))
    try:  # one kernel at a time: shut this one down before the next notebook starts its own
        page.evaluate(f"async () => {{ await {NB}.sessionContext.shutdown(); }}")
    except Exception:  # noqa: BLE001 - the server's own shutdown stops it anyway
        pass
    page.close()
    res.seconds = round(time.monotonic() - t0, 1)
    return res


def check_html(browser, folder: Path, out: Path) -> Result:
    """The static copy: the index lists every lab, links open, and a page's pictures load (file:// URLs, no server)."""
    res = Result(f"{folder}/index.html")
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    try:
        page.goto((folder / "index.html").resolve().as_uri())
        links = page.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        expected = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
        if sorted(link.removesuffix(".html") for link in links) != expected:
            res.fail(f"index links {links} do not match solutions/ {expected}")
        page.screenshot(path=str(out / "html_index.png"))
        page.locator("a").first.click()
        page.wait_for_load_state("load")
        broken = page.evaluate(JS_BROKEN_IMAGES, "img")
        if broken:
            res.fail(f"pictures that did not load in {page.url}: {broken}")
        if not page.locator("img").count():
            res.fail(f"no pictures at all in {page.url}")
        page.screenshot(path=str(out / "html_page.png"))
        for m in console_failures(console):
            res.fail(f"browser console error: {m[:200]}")
    except Exception as exc:  # noqa: BLE001
        res.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    page.close()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: solutions/*.ipynb")
    ap.add_argument("--out", type=Path, required=True, help="screenshots, report.json and the server log")
    ap.add_argument("--full", action="store_true", help="keep FAST = False (full runs take minutes each)")
    ap.add_argument("--allow-errors", action="store_true",
                    help="tolerate NotImplementedError outputs (labs/) and run every cell past them")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to run one notebook")
    ap.add_argument("--chromium", default=CHROMIUM, help="the browser binary (default: %(default)s)")
    ap.add_argument("--html", type=Path, help="also open the static copy in this folder (make html): index and a page")
    ap.add_argument("-v", "--verbose", action="store_true", help="print notes (stderr, sizes, values) per notebook")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks checked at once, each shard in its own server")
    ap.add_argument("--shard", default="", help=argparse.SUPPRESS)  # set by --jobs: names this shard's files
    args = ap.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("needs playwright: .venv/bin/pip install playwright (no `playwright install`)")
    if not Path(args.chromium).is_file():
        sys.exit(f"no browser at {args.chromium}: apt-get install -y chromium, or pass --chromium PATH")

    notebooks = args.notebooks or sorted((ROOT / "solutions").glob("*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and len(notebooks) > 1:
        return run_shards(notebooks, args)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="browser_check_") as tmp:
        work = Path(tmp) / "nb"
        copies = {}
        for nb in notebooks:
            name = f"{nb.resolve().parent.name}/{nb.name}"
            try:
                copies[name] = prepare(nb, work, args.full, args.allow_errors)
            except (OSError, ValueError) as exc:
                results.append(Result(name, failures=[str(exc)]))
        t0 = time.monotonic()
        server, url = start_lab(work, Path(tmp), args.out / f"jupyter-lab{args.shard}.log")
        try:
            print(f"jupyter-lab pid {server.pid} at {url} ({time.monotonic() - t0:.1f} s to start)", file=sys.stderr)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
                for name, copy in copies.items():
                    res = check_notebook(browser, url, copy.relative_to(work).as_posix(), name, args.out,
                                         args.allow_errors, args.timeout)
                    results.append(res)
                    print(res.line(), flush=True)
                    if args.verbose:
                        print(f"  {res.seconds} s", *[f"  FAIL {f}" for f in res.failures[1:]],
                              *[f"  {n}" for n in res.notes], sep="\n", file=sys.stderr)
                if args.html:
                    res = check_html(browser, args.html, args.out)
                    results.append(res)
                    print(res.line(), flush=True)
                browser.close()
        finally:
            stop_lab(server)
    report = [{**asdict(r), "ok": r.ok} for r in results]
    (args.out / f"report{args.shard}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for r in results:
        if not r.ok and r.name not in copies:
            print(r.line())
    return 0 if all(r.ok for r in results) else 1


def run_shards(notebooks: list[Path], args: argparse.Namespace) -> int:
    """Check the notebooks in ``args.jobs`` shards side by side (this script again, one process per shard, each with
    its own JupyterLab, kernel and browser, one intra-op thread per kernel so the shards do not fight over cores);
    print their lines and merge their reports into report.json. The static copy is checked by the first shard."""
    procs = []
    for i in range(args.jobs):
        mine = notebooks[i::args.jobs]
        if not mine:
            continue
        cmd = [sys.executable, __file__, *map(str, mine), "--out", str(args.out), "--timeout", str(args.timeout),
               "--chromium", args.chromium, "--shard", f"-{i}", *(["--full"] if args.full else []),
               *(["--allow-errors"] if args.allow_errors else []), *(["-v"] if args.verbose else []),
               *(["--html", str(args.html)] if args.html and i == 0 else [])]
        procs.append((i, subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})))
    codes = [p.wait() for _, p in procs]
    report = []
    for i, _ in procs:
        path = args.out / f"report-{i}.json"
        report += json.loads(path.read_text()) if path.exists() else [{"name": f"shard {i}", "ok": False}]
    (args.out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0 if not any(codes) and all(r["ok"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
