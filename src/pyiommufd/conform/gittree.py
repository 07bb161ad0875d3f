"""Export a kernel source tree from a git mirror at one commit, for ``conform --kernel-source``.

``git archive`` aborts on a missing blob, and the partial mirrors this project can fetch lack some
(both 6.6 mirrors miss 29 drivers/gpu/drm/amd headers, SPEC.md 11).  This writes every blob that
is there (modes and symlinks kept) and reports the paths that are not, so the caller can check
they are outside what the conformance kernel builds.

    python -m pyiommufd.conform.gittree GIT_DIR COMMIT DEST [--revert COMMIT ...]

``--revert C``: afterwards, undo commit C's changes (``git diff C C^`` applied to DEST), for mirrors
whose history adds local commits on top of a release.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def _git(git_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, **kw)


def export(git_dir: Path | str, commit: str, dest: Path | str) -> list[str]:
    """Write the tree of *commit* to *dest* (which must not exist); return the missing paths."""
    git_dir, dest = Path(git_dir), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists")
    tmp = dest.with_name(dest.name + ".tmp")
    listing = _git(git_dir, "ls-tree", "-r", "-z", "--full-tree", commit).stdout.split(b"\0")
    entries = []
    for rec in listing:
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, sha = meta.split()
        if kind == b"blob":
            entries.append((mode.decode(), sha.decode(), path.decode()))
    missing = []
    proc = subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for mode, sha, path in entries:
            proc.stdin.write(sha.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) < 3 or header[1] == b"missing":
                missing.append(path)
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)   # the newline after the object
            out = tmp / path
            out.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                os.symlink(data.decode(), out)
            else:
                out.write_bytes(data)
                if mode == "100755":
                    out.chmod(0o755)
    finally:
        proc.stdin.close()
        proc.wait()
    tmp.rename(dest)
    return missing


def revert(git_dir: Path | str, commit: str, dest: Path | str) -> None:
    """Undo *commit*'s changes in the exported tree *dest*."""
    diff = _git(Path(git_dir), "diff", "--binary", commit, f"{commit}^").stdout
    subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], input=diff, cwd=dest, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyiommufd.conform.gittree", description=__doc__.split("\n\n")[0])
    ap.add_argument("git_dir", type=Path)
    ap.add_argument("commit")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--revert", action="append", default=[], metavar="COMMIT",
                    help="undo this commit's changes afterwards (repeatable; newest first)")
    args = ap.parse_args(argv)
    try:
        missing = export(args.git_dir, args.commit, args.dest)
        for c in args.revert:
            revert(args.git_dir, c, args.dest)
    except (subprocess.CalledProcessError, FileExistsError) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"error: {e} {err.decode(errors='replace')}", file=sys.stderr)
        return 2
    print(f"{args.dest}: {len(missing)} blob(s) missing from the mirror"
          + "".join(f"\n  {p}" for p in missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
