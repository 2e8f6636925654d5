"""One writer at a time: a second process given the same output folder or teacher cache is refused in one line, and a
killed holder leaves no lock behind (issue #33)."""

import subprocess
import sys
import time

import pytest

from pvdal_ns.utils.errors import BadInputError
from pvdal_ns.utils.files import exclusive

HOLD = """
import sys, time
from pathlib import Path
from pvdal_ns.utils.files import exclusive
with exclusive(Path(sys.argv[1]), "it"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path):
    """Another process holding ``path``'s lock until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_folder_or_a_cache_another_process_writes_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path,
                                                                                                   tiny_teacher):
    from pvdal_ns.scripts.distill import main
    from pvdal_ns.teachers.cache import write_cache

    out, cache = tmp_path / "out", tmp_path / "cache"
    holders = [_holder(out), _holder(tmp_path / ".cache.lock")]
    try:
        with pytest.raises(BadInputError, match="another process is writing it"):
            with exclusive(out, "it"):
                pass
        with pytest.raises(BadInputError, match=f"another process is writing the teacher cache {cache}"):
            write_cache(cache, None, [], {}, 1 << 20)  # refused before anything is read or written
        assert not cache.exists()
        started = time.perf_counter()
        code = main(["run", "--teacher", str(tiny_teacher[0]), "--student", "hash", "--output-dir", str(out)])
        assert code == 2 and time.perf_counter() - started < 60 and not any(out.iterdir())
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    with exclusive(out, "it"):  # the kernel dropped the killed holder's lock
        pass
