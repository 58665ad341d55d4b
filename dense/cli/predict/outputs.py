"""predict.py's output folder: which of its files predict.py wrote (its record and journal there; it
replaces only those), and the names of a run's result files (layouts, stems)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from dense.core.errors import ConfigError
from dense.core.io import atomic_path

# The output folder's record of the result files predict.py wrote in it: a hidden JSON file of plain
# file names. A rerun may replace exactly these; every other file there is the user's.
RECORD = ".dense-predict.json"
RECORD_FORMAT = "dense predict.py results v2"
RECORD_MAX_BYTES = 64 * 2**20  # a million names; anything larger is not a record of ours
RESULT_SUFFIXES = (".png", ".npy", ".json")
# Kept current while a run writes: one JSON line per result file (its name and identity), appended just
# before the file appears under its name (dense.core.io.announcing_writes). Folded into the record when a
# run starts and ends; a run killed in between (SIGKILL, power loss) leaves it, so the rerun still
# knows every file it wrote.
JOURNAL = ".dense-predict.journal"


def check_output_path(output: Path) -> None:
    """An output folder that cannot be one (a file, or under a file), refused before anything is built."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={output} is a file, not a folder; choose a folder for the results")
    under = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
    if under is not None:
        raise ConfigError(
            f"output={output} lies under {under}, which is a file; choose a folder for the results"
        )


def prepare_output(output: Path) -> list[str]:
    """Create the output folder and make sure files can be created in it, before any image is read;
    returns the names of what it holds."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".tmp-", dir=output)
        os.close(handle)
        os.remove(probe)
        return os.listdir(output)
    except OSError as error:
        raise ConfigError(
            f"cannot write in the output folder {output} ({error.strerror or error}); make it writable or "
            "choose another output"
        ) from None


def is_plain_file(path: Path) -> bool:
    """A regular file, not a link (never followed) or a folder."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_result_name(name) -> bool:
    """A name predict.py may have written: a plain .png/.npy file name, no folder part, not hidden."""
    return (
        isinstance(name, str)
        and name == os.path.basename(name)
        and "\\" not in name
        and "\0" not in name
        and not name.startswith(".")
        and name.endswith(RESULT_SUFFIXES)
    )


def file_identity(path: Path) -> list[int] | None:
    """What a rewrite or replacement of a plain file changes: size, mtime, inode. None: not a plain file."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ino] if stat.S_ISREG(info.st_mode) else None


def read_record(output: Path) -> set[str]:
    """The files of the output folder that predict.py wrote on earlier runs (its record there, and the
    journal of a run that was killed) and that are still exactly as it left them (same size, mtime and
    inode: a file someone rewrote or put there under that name is theirs). Record and journal are data
    anyone could have prepared: only plain result file names in this folder are taken from them; nothing
    they name elsewhere is looked at."""
    entries, ignored = {}, 0
    record = read_own_file(output / RECORD)
    if record is not None:
        data = parse_json(record, output / RECORD)
        if not (
            isinstance(data, dict)
            and data.get("format") == RECORD_FORMAT
            and isinstance(data.get("files"), dict)
        ):
            raise not_our_record(
                output / RECORD, f'does not hold {{"format": "{RECORD_FORMAT}", "files": {{name: identity}}}}'
            )
        entries.update(data["files"])
    journal = read_own_file(output / JOURNAL)
    for line in (journal or b"").splitlines():
        try:
            entry = json.loads(line)
            entries[entry["name"]] = entry["identity"]
        except (ValueError, RecursionError, TypeError, KeyError):
            ignored += 1  # e.g. the last line, cut short by the kill
    ours = {name: identity for name, identity in entries.items() if is_result_name(name)}
    ignored += len(entries) - len(ours)
    if ignored:
        print(
            f"note: {output / RECORD}: ignored {ignored} entries that are not plain result file names "
            f"({' '.join(RESULT_SUFFIXES)} files in that folder)",
            file=sys.stderr,
        )
    return {name for name, identity in ours.items() if identity == file_identity(output / name)}


def not_our_record(path: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"{path} {reason}, so it is not predict.py's record of the results it wrote there; move it "
        "away or choose another output folder"
    )


def read_own_file(path: Path) -> bytes | None:
    """The bytes of predict.py's record or journal (None: there is none), only from a plain file of at
    most RECORD_MAX_BYTES."""
    if not os.path.lexists(path):
        return None
    if not is_plain_file(path):
        raise not_our_record(path, "is not a plain file")
    if os.path.getsize(path) > RECORD_MAX_BYTES:
        raise not_our_record(path, f"is larger than {RECORD_MAX_BYTES} bytes")
    try:
        return path.read_bytes()
    except OSError as error:
        raise not_our_record(path, f"cannot be read ({error.strerror or error})") from None


def parse_json(data: bytes, path: Path):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise not_our_record(path, f"cannot be read as JSON ({' '.join(str(error).split())[:120]})") from None


def write_record(output: Path, names: set[str]) -> None:
    """Record `names` as predict.py's files in `output`, each with its identity now (atomically); names
    that are not plain files there are left out; none left: no record. The journal, now folded in, is
    removed."""
    path = output / RECORD
    files = {
        name: identity for name in sorted(names) if (identity := file_identity(output / name)) is not None
    }
    if not files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    else:
        record = {
            "format": RECORD_FORMAT,
            "about": "the result files predict.py wrote in this folder, with [size, mtime_ns, inode] as it left "
            "them: a rerun may replace these, and only while they are unchanged",
            "files": files,
        }
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    with contextlib.suppress(FileNotFoundError):
        os.remove(output / JOURNAL)


class Journal:
    """The run's journal in `output` (JOURNAL), told by dense.core.io.announcing_writes of every file about to
    appear: a file of the output folder gets a line with its name and identity, in one append."""

    def __init__(self, output: Path):
        self.folder = os.path.realpath(output)
        self.fd: int | None = None

    def __call__(self, path: str, tmp: str) -> None:
        if os.path.realpath(os.path.dirname(os.path.abspath(path))) != self.folder:
            return
        if self.fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            self.fd = os.open(os.path.join(self.folder, JOURNAL), flags, 0o666)
        line = json.dumps({"name": os.path.basename(path), "identity": file_identity(Path(tmp))})
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def without_own_results(paths: list[Path], source: str, output: Path, ours: set[str]) -> list[Path]:
    """The images of list_images(source) but predict.py's own results, when the input folder is the
    output folder (a rerun over the folder does not predict its earlier results)."""
    folder = Path(source).expanduser()
    if not ours or not folder.is_dir() or folder.resolve() != output.resolve():
        return paths
    inputs = [path for path in paths if path.name not in ours]
    if len(inputs) < len(paths):
        print(
            f"note: {len(paths) - len(inputs)} image files in {folder} are predict.py's own results (listed in "
            f"{RECORD}) and are not read as inputs",
            file=sys.stderr,
        )
    return inputs


def depth_png_suffix(depth_scale: float) -> str:
    """What the 16-bit depth file is called after its stem: its unit (millimetres by default), since
    a 16-bit PNG of depths looks black in any image viewer and must not pass for a picture."""
    return "_depth_mm.png" if float(depth_scale) == 1000 else f"_depth_x{float(depth_scale):g}.png"


# A relative model's 16-bit map: normalised per image, no unit (write_relative_depth).
RELATIVE_SUFFIX = "_relative.png"


@dataclass(frozen=True)
class Layout:
    """The files of a run: per image (names(stem)) and once per run (run_files: the segmentation legend
    and class names)."""

    task: str
    save_npy: bool = True
    depth_suffix: str = "_depth_mm.png"  # depth_png_suffix(depth_scale)
    run_files: tuple[str, ...] = ()
    relative: bool = False  # a relative-depth model: maps normalised per image, no colour bar

    def names(self, stem: str) -> list[str]:
        if self.task == "depth" and self.relative:
            npy = [f"{stem}.npy"] if self.save_npy else []
            return [f"{stem}_color.png", f"{stem}{RELATIVE_SUFFIX}", *npy]
        if self.task == "depth":
            npy = [f"{stem}.npy"] if self.save_npy else []
            return [f"{stem}_color.png", f"{stem}{self.depth_suffix}", *npy]
        return [f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"]


@dataclass(frozen=True)
class MultiLayout:
    """The files of a multi-head run: each head's Layout under the stem <stem>_<head> (run files
    <head>_legend.png, <head>_classes.json), all from one backbone pass per image."""

    parts: tuple[tuple[str, Layout], ...]
    task: str = "multi"

    @property
    def run_files(self) -> tuple[str, ...]:
        return tuple(f"{name}_{file}" for name, layout in self.parts for file in layout.run_files)

    def names(self, stem: str) -> list[str]:
        return [file for name, layout in self.parts for file in layout.names(f"{stem}_{name}")]


def run_layout(cfg: DictConfig, task: str, relative: bool = False) -> Layout:
    if relative:
        return Layout(task, bool(cfg.save_npy), relative=True)
    if task == "depth":
        return Layout(task, bool(cfg.save_npy), depth_png_suffix(cfg.depth_scale))
    return Layout(task, run_files=("legend.png", "classes.json"))


def assign_stems(
    paths: list[Path], output: Path, existing: list[str], ours: set[str], layout: Layout
) -> tuple[list[str], list[str], dict[str, str]]:
    """Each input's output stem, a note for each input whose stem is not its file's stem, and the name
    each of the run's own files (layout.run_files) gets.

    The run's files come first: NAME.EXT, or the first free NAME_1.EXT, NAME_2.EXT, … Then the documented
    rule for the inputs: the file's stem, or its full name (a.jpg → a_jpg) when inputs share a
    stem. Then, in input order, the first of NAME, NAME_1, NAME_2, … none of whose files (layout.names)
    is a file of the run, an earlier input's result, an input image, or a file in the output folder that
    predict.py did not write (anything `existing` there but `ours`). Names are compared regardless of
    case, so the result is the same on disks that ignore it (macOS, Windows).
    """
    key = str.casefold
    taken: dict[str, str] = {}  # casefolded file name → why it may not be written
    for name in existing:
        if name not in ours:
            taken[key(name)] = f"{name} in {output} was not written by predict.py"
    here = output.resolve()
    for path in paths:
        if path.resolve().parent == here:
            taken[key(path.resolve().name)] = f"{path.resolve().name} is an input image"
    run_names = {}
    for name in layout.run_files:
        base, suffix = os.path.splitext(name)
        free, n = name, 0
        while key(free) in taken:
            n += 1
            free = f"{base}_{n}{suffix}"
        taken[key(free)] = f"{free} is a file of this run"
        run_names[name] = free
    stem_count = Counter(key(path.stem) for path in paths)
    stems, notes = [], []
    for path in paths:
        base = path.name.replace(".", "_") if stem_count[key(path.stem)] > 1 else path.stem
        stem, reason, n = base, None, 0
        while clash := next((taken[key(f)] for f in layout.names(stem) if key(f) in taken), None):
            reason = reason or clash
            n += 1
            stem = f"{base}_{n}"
        for name in layout.names(stem):
            taken[key(name)] = f"{name} is {path.name}'s result"
        stems.append(stem)
        if stem != path.stem:
            why = reason or f"another input has the stem {path.stem}"
            notes.append(f"note: the results of {path.name} are named {stem}.* ({why})")
    return stems, notes, run_names
