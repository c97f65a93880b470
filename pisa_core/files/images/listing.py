"""Input lists: files, folders and glob patterns expanded into image files, and the entries left
out with their reason (special files, other formats)."""

from __future__ import annotations

import errno
import functools
import glob
import os
import stat
from pathlib import Path

from ...errors import PiSAError

#: File extensions picked up from folders and glob patterns by list_inputs.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")

_GLOB_CHARS = frozenset("*?[")


def special_file_kind(path: Path) -> str | None:
    """What a path that exists but is no regular file is ("a folder", "a named pipe (FIFO)", ...),
    from its status alone: a FIFO is never opened (opening one blocks until a writer comes). A path
    whose status cannot be read is "a symbolic link loop", "a broken symbolic link" or "not
    accessible (<reason>)". None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return "a broken symbolic link"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        return f"not accessible ({exc.strerror or exc})"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def file_system_errors(reader):
    """Decorate a reader of `path` (its first argument): an error the operating system raises
    while the file is opened or read (no permission, removed meanwhile, a failing disk) becomes a
    PiSAError naming the file. Parsers' own errors are handled where they arise."""

    @functools.wraps(reader)
    def read(path, *args, **kwargs):
        try:
            return reader(path, *args, **kwargs)
        except OSError as exc:
            raise PiSAError(f"Cannot read {str(path)!r}: {exc.strerror or exc}.") from exc

    return read


def _check_file(path: Path) -> None:
    kind = special_file_kind(path)
    if kind is not None:
        raise PiSAError(f"Image path {str(path)!r} is {kind}, not an image file.")
    if not os.path.isfile(path):
        raise PiSAError(f"Image file {str(path)!r} does not exist.")


def _is_image_file(path: Path) -> bool:
    # os.path.isfile, not Path.is_file: it answers False for every status it cannot read (a
    # permission error included), where Path.is_file raises some of them
    return os.path.isfile(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def skip_reason(path: Path) -> str:
    """Why list_inputs leaves a folder entry or a glob match out (it is not an _is_image_file)."""
    kind = special_file_kind(path)
    if kind is not None:
        return f"{kind}, not an image file"
    if not os.path.lexists(path):
        return "removed while the folder was listed"
    return f"unsupported format {path.suffix.lower() or '(no extension)'}"


def _split_images(paths) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(other entry, why it is skipped)]), both sorted; subfolders are not entered
    and not reported (folders are not searched recursively)."""
    images, skipped = [], []
    for path in sorted(paths, key=str):
        if _is_image_file(path):
            images.append(path)
        elif not os.path.isdir(path):
            skipped.append((path, skip_reason(path)))
    return images, skipped


def _folder_entries(folder: Path) -> list[Path]:
    """The entries of a folder, hidden ones left out (OSError when it cannot be listed)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def folder_images(folder) -> list[Path]:
    """The image files of a folder (by extension, not recursive, hidden files skipped), sorted;
    PiSAError naming the folder when it cannot be listed."""
    try:
        return _split_images(_folder_entries(Path(folder)))[0]
    except OSError as exc:
        raise PiSAError(f"Cannot list the folder {str(folder)!r}: {exc.strerror or exc}.") from None


def list_inputs(patterns) -> list[Path]:
    """The image files of list_inputs_and_skipped, without the skipped entries."""
    return list_inputs_and_skipped(patterns)[0]


def list_inputs_and_skipped(patterns) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files, folders and glob patterns into (a sorted-per-pattern, deduplicated file
    list, the entries left out with the reason: [(path, reason)]).

    A file, or a special file (a FIFO, a device), is taken as given (read_image judges it). A
    folder gives its image files (by extension, not recursive, hidden files skipped), sorted; its
    other files are skipped, with the reason (an unsupported format such as .gif, a FIFO). A glob
    pattern (* ? [ ], ** for recursion) gives the matching image files, sorted, and skips the
    other matching files the same way. A pattern that matches no image raises PiSAError. A folder
    that cannot be listed (no permission) is skipped with its reason; a symbolic link loop or a
    broken link is taken as given or skipped like any other special file.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if os.path.isdir(path):
            try:
                matches, left = _split_images(_folder_entries(path))
            except OSError as exc:  # this input's problem alone: the others go on
                skipped.append((path, f"a folder that cannot be listed ({exc.strerror or exc})"))
                continue
            if not matches:
                raise PiSAError(f"Input folder {text!r} has no image files "
                                f"(expected {', '.join(IMAGE_EXTENSIONS)}).")
        elif os.path.isfile(path) or special_file_kind(path) is not None:
            matches, left = [path], []
        elif _GLOB_CHARS & set(text):
            matches, left = _split_images(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise PiSAError(f"Input pattern {text!r} matches no image files.")
        else:
            raise PiSAError(f"Input {text!r} does not exist (expected an image file, a folder "
                            f"or a glob pattern).")
        for match, reason in [(m, None) for m in matches] + left:
            key = os.path.realpath(match)  # unlike Path.resolve, never raises (a link loop stays as it is)
            if key in seen:
                continue
            seen.add(key)
            if reason is None:
                found.append(match)
            else:
                skipped.append((match, reason))
    if not found:
        left = "; ".join(f"{str(path)!r} ({reason})" for path, reason in skipped[:3])
        raise PiSAError("No input images were given" + (f"; skipped: {left}." if left else "."))
    return found, skipped


