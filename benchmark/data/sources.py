"""Getting raw files: resumable, checksummed downloads, archive extraction, and checks of a local folder against a
dataset's official list.

Every downloaded file gets a ``<file>.source.json`` beside it: where it came from, its size and SHA-256, and when.
A file whose expected checksum is known is verified; one whose publisher gives none is recorded, and a later fetch
of the same file must match the recorded digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from benchmark.logs import bar, progress_enabled

LOG = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The raw data cannot be obtained or is incomplete; the message says what to do."""


class NotAvailable(SourceError):
    """The server does not have the file (HTTP 404/410): a missing clip, not a broken download."""


CHUNK = 1 << 20
BAR_BYTES = 64 << 20  # a download shows a bar from this size on


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _record(dest: Path) -> Path:
    return dest.with_name(dest.name + ".source.json")


def fetch(
    url: str, dest: Path, sha256: str | None = None, log: Callable[[str], None] = LOG.info, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request, and verify the
    SHA-256 (the expected one, else the one recorded by an earlier fetch). A complete, verified ``dest`` is kept."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    record = _record(dest)
    expected = sha256 or (json.loads(record.read_text())["sha256"] if record.exists() else None)
    if dest.exists() and (expected is None or sha256_of(dest) == expected):
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            if have and not resumed:
                log(f"[fetch] {url}: the server ignored the resume request; starting over")
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            done, last = (have if resumed else 0), time.monotonic()
            # a bar on a terminal for a large file (not for each of many small ones), else a line every 10 s
            shown = progress_enabled() and total > BAR_BYTES
            with (
                part.open("ab" if resumed else "wb") as f,
                bar(total, dest.name, "B", initial=done, unit_scale=True, show=shown) as downloaded,
            ):
                while block := response.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    downloaded.update(len(block))
                    if not shown and time.monotonic() - last > 10:
                        log(f"[fetch] {dest.name}: {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""))
                        last = time.monotonic()
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            raise NotAvailable(f"{url}: the server does not have this file (HTTP {err.code})") from err
        raise SourceError(
            f"cannot download {url} ({err}); {part.name} keeps what arrived and the next run resumes. "
            f"Or fetch it yourself and set the dataset's source.path"
        ) from err
    except OSError as err:  # URLError and timeouts are OSErrors
        raise SourceError(
            f"cannot download {url} ({err}); {part.name} keeps what arrived and the next run resumes. "
            f"Or fetch it yourself and set the dataset's source.path"
        ) from err
    digest = sha256_of(part)
    if expected and digest != expected:
        part.unlink()
        raise SourceError(f"{url}: SHA-256 {digest} does not match the expected {expected}; the download was removed")
    part.replace(dest)
    record.write_text(
        json.dumps(
            {
                "url": url,
                "bytes": dest.stat().st_size,
                "sha256": digest,
                "verified_against": "expected"
                if sha256
                else ("earlier fetch" if expected else "nothing (first fetch)"),
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=1,
        )
        + "\n"
    )
    log(f"[fetch] {dest} <- {url} ({dest.stat().st_size >> 20} MiB, sha256 {digest[:12]}…)")
    return dest


def extract(archive: Path, into: Path, log: Callable[[str], None] = LOG.info) -> None:
    """Unpack a .zip or .tar(.gz) archive with Python; .rar and .7z need an external tool (unrar, 7z or bsdtar)."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    else:
        for tool, args in (
            ("unrar", ["x", "-o+", str(archive), str(into) + "/"]),
            ("7z", ["x", "-y", f"-o{into}", str(archive)]),
            ("bsdtar", ["-xf", str(archive), "-C", str(into)]),
        ):
            if shutil.which(tool):
                subprocess.run([tool, *args], check=True, capture_output=True)
                break
        else:
            raise SourceError(
                f"{archive} needs unrar, 7z or bsdtar to unpack (none is on PATH); unpack it yourself into "
                f"{into} (or anywhere, and set the dataset's source.path to that folder)"
            )
    log(f"[extract] {archive.name} -> {into}")


def check_complete(
    found: Iterable[str],
    official: Iterable[str],
    max_missing_fraction: float,
    missing_file: Path,
    where: str,
    log: Callable[[str], None] = LOG.info,
) -> list[str]:
    """Compare the clips found locally with the official list; write the missing ones to ``missing_file`` and stop
    when more than ``max_missing_fraction`` of the list is missing. Returns the official ids that are present."""
    found, official = set(found), list(dict.fromkeys(official))
    missing = [clip for clip in official if clip not in found]
    missing_file.parent.mkdir(parents=True, exist_ok=True)
    missing_file.write_text("".join(f"{clip}\n" for clip in missing))
    log(
        f"[source] {where}: {len(official) - len(missing)} of {len(official)} listed clips present, {len(missing)} "
        "missing "
        f"(listed in {missing_file})"
    )
    if official and len(missing) > max_missing_fraction * len(official):
        raise SourceError(
            f"{len(missing)} of {len(official)} clips of the official list ({100 * len(missing) / len(official):.1f}%) "
            f"are missing from {where}, more than source.max_missing_fraction={max_missing_fraction}; "
            f"the missing ones are listed in {missing_file} (first: {missing[0]})"
        )
    return [clip for clip in official if clip in found]
