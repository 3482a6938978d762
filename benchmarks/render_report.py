"""Render a graftkit report.html in headless Chromium with the network cut off, check it, screenshot it.

    python benchmarks/render_report.py REPORT_HTML OUT_PNG [--width 1280] [--max-height 7000]

Checks, then exits 1 if any fails:
  * every <img> loaded (complete, with a natural width), counted in the page itself;
  * no network request was attempted: Chromium runs with a dead proxy and a resolver that maps every
    host to nothing, and its NetLog (every URL request the browser made) must hold no http(s), ws(s)
    or ftp URL; the page's own resource-timing list must hold nothing but data: URIs.
Then writes a full-page screenshot (a palette PNG under --max-bytes, downscaled if needed).

Chromium: `apt-get install -y chromium` (Debian). The checks run on a temporary copy of the report
with one inline script appended; the report itself has no script.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                     .map(function (i) { return i.alt || i.src.slice(0, 80); });
  var resources = performance.getEntriesByType('resource').map(function (e) { return e.name; })
                             .filter(function (n) { return n.indexOf('data:') !== 0; });
  var pre = document.createElement('pre');
  pre.id = 'render-check';
  pre.textContent = JSON.stringify({images: images.length, broken: broken, resources: resources,
    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>"""
NETWORK_SCHEMES = re.compile(r"^(https?|wss?|ftp)://", re.I)


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    sys.exit("error: no Chromium found. Install it with: apt-get install -y chromium (or pass --chromium PATH)")


def chromium_flags(profile: Path, netlog: Path | None) -> list[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-breakpad",
             "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--mute-audio",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}"]
    if netlog is not None:
        flags += [f"--log-net-log={netlog}", "--net-log-capture-mode=Default"]
    return flags


def network_urls(netlog: Path) -> tuple[list[str], list[str]]:
    """``(requests the page made, requests the browser made on its own)``: every http(s)/ws(s)/ftp URL
    whose job started, from the NetLog. The page's requests carry the file:// page as their
    network-isolation site (or an initiator); Chromium's own (clock, updater, accounts) carry
    neither. Both kinds fail at the dead proxy; only the page's fail the check."""
    try:
        log = json.loads(netlog.read_text(errors="replace"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"<NetLog unreadable ({exc}): cannot verify>"], []
    start_job = log.get("constants", {}).get("logEventTypes", {}).get("URL_REQUEST_START_JOB")
    page, browser = set(), set()
    for event in log.get("events", []):
        params = event.get("params") or {}
        url = params.get("url")
        if event.get("type") != start_job or not isinstance(url, str) or not NETWORK_SCHEMES.match(url):
            continue
        from_page = "file://" in str(params.get("network_isolation_key", "")) or \
            params.get("initiator", "not an origin") != "not an origin"
        (page if from_page else browser).add(url)
    return sorted(page), sorted(browser)


def check(chromium: str, report: Path, work: Path) -> dict:
    page = work / "check.html"
    text = report.read_text()
    page.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>", 1) if "</body>" in text else text + CHECK_SCRIPT)
    netlog = work / "netlog.json"
    done = subprocess.run([chromium, *chromium_flags(work / "profile-check", netlog), "--virtual-time-budget=15000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    if not match:
        sys.exit(f"error: the page did not finish loading in Chromium (exit {done.returncode}): "
                 f"{done.stderr.strip()[-500:]}")
    import html

    result = json.loads(html.unescape(match.group(1)))
    result["network_urls"], result["browser_urls"] = network_urls(netlog)
    return result


def screenshot(chromium: str, report: Path, out: Path, width: int, height: int, work: Path, max_bytes: int) -> None:
    from PIL import Image

    raw = work / "shot.png"
    subprocess.run([chromium, *chromium_flags(work / "profile-shot", None), f"--window-size={width},{height}",
                    f"--screenshot={raw}", report.resolve().as_uri()], capture_output=True, text=True, timeout=180,
                   check=False)
    if not raw.is_file():
        sys.exit("error: Chromium wrote no screenshot")
    image = Image.open(raw).convert("RGB")
    import numpy as np

    pixels = np.asarray(image)
    background = pixels[-1, -1]
    used = np.nonzero((np.abs(pixels.astype(int) - background).sum(axis=2) > 12).any(axis=1))[0]
    if len(used):  # drop the empty page background below the footer
        image = image.crop((0, 0, image.width, min(image.height, int(used[-1]) + 24)))
    scale = 1.0
    while True:
        shown = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)),
                                                        Image.LANCZOS)
        shown.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
        if out.stat().st_size <= max_bytes or scale < 0.3:
            break
        scale *= 0.85


def self_test(chromium: str) -> None:
    """The checks must catch a page that loads an external image and a broken one."""
    with tempfile.TemporaryDirectory(prefix="graftkit-render-selftest-") as tmp:
        bad = Path(tmp) / "bad.html"
        bad.write_text('<!DOCTYPE html><html><body><img src="http://example.com/x.png" alt="external">'
                       '<img src="data:image/png;base64,AAAA" alt="broken"></body></html>')
        result = check(chromium, bad, Path(tmp))
        assert "http://example.com/x.png" in result["network_urls"], result
        assert "external" in result["broken"] and "broken" in result["broken"], result
    print("self-test: an external image and a broken data URI are both caught")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-height", type=int, default=7000, help="Longest screenshot in pixels.")
    parser.add_argument("--max-bytes", type=int, default=500_000, help="Largest PNG written.")
    parser.add_argument("--chromium", help="Browser binary (default: chromium on PATH).")
    parser.add_argument("--self-test", action="store_true", help="First check that the checks catch a bad page.")
    args = parser.parse_args()
    if not args.report.is_file():
        sys.exit(f"error: no report at '{args.report}'")
    chromium = find_chromium(args.chromium)
    if args.self_test:
        self_test(chromium)
    with tempfile.TemporaryDirectory(prefix="graftkit-render-") as tmp:
        work = Path(tmp)
        result = check(chromium, args.report, work)
        problems = []
        if result["broken"]:
            problems.append(f"{len(result['broken'])} of {result['images']} images did not load: {result['broken'][:5]}")
        if result["resources"]:
            problems.append(f"the page requested {result['resources'][:5]}")
        if result["network_urls"]:
            problems.append(f"Chromium attempted network requests: {result['network_urls'][:5]}")
        height = max(600, min(int(result.get("height") or 3000) + 20, args.max_height))
        args.out_png.parent.mkdir(parents=True, exist_ok=True)
        screenshot(chromium, args.report, args.out_png, args.width, height, work, args.max_bytes)
    print(f"{args.report}: {result['images']} images, all loaded: {not result['broken']}; network requests "
          f"by the page: {len(result['network_urls']) + len(result['resources'])} (the browser's own background "
          f"requests, all blocked: {len(result['browser_urls'])}); screenshot {args.out_png} "
          f"({args.out_png.stat().st_size // 1024} KB, page height {result.get('height')} px)")
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
