"""Trees for the benchmarks: copies of bootstrap/cached.sh's cached root file systems."""
import os, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def debian_copy(scratch, name="tree"):
    """Copies the cached Debian bookworm tree to SCRATCH/NAME and returns its path. /dev's
    entries are left out: every launcher mounts a /dev of its own."""
    src = subprocess.run([os.path.join(ROOT, "bootstrap/cached.sh"), "debian", "bookworm"],
                         check=True, capture_output=True, text=True).stdout.strip()
    tree = os.path.join(scratch, name)
    os.mkdir(tree)
    subprocess.run(f"tar -C {src} --exclude=./dev/* -cf - . | tar -C {tree} -xf -", shell=True, check=True)
    return tree
