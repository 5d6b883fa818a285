# %%
# RSNA Intracranial Aneurysm Detection: submission kernel, built by the kit's build_kernel.py.
# Runs offline (internet off): the runtime package, the weights and the wheels come from the bundle dataset.
# (This file is the notebook's template: each "# %%" block becomes one cell; the build fills in the two names.)
import glob
import logging
import os
import subprocess
import sys
import time

# Every action sits under `if __name__ == "__main__"`, as in any script that may start worker processes: a worker
# started by multiprocessing's spawn or forkserver re-imports the script (the runtime's own decoding workers are
# started by fork+exec and never do), and an unguarded script would rerun the whole kernel inside it.
log = logging.getLogger("kernel")
DATASET_SLUG = "__DATASET_SLUG__"  # the bundle dataset's slug, filled in by the build
MARKER = "__BUNDLE_MARKER__"  # the file that marks the bundle's root, filled in by the build


def find_bundle() -> str:
    """The bundle dataset folder: $RSNA_BUNDLE_DIR, else the folder under /kaggle/input holding the marker file."""
    if os.environ.get("RSNA_BUNDLE_DIR"):
        return os.environ["RSNA_BUNDLE_DIR"]
    hits = []
    for depth in range(1, 5):
        hits += sorted(glob.glob("/kaggle/input/" + "*/" * depth + MARKER))
    if not hits:
        raise FileNotFoundError(f"no {MARKER} under /kaggle/input: attach the bundle dataset {DATASET_SLUG}")
    hits.sort(key=lambda p: ("/" + DATASET_SLUG + "/") not in p)
    return os.path.dirname(hits[0])


def unpack_archives(bundle: str) -> str:
    """Folders uploaded with `kaggle datasets create --dir-mode zip|tar` may stay archives: unpack them into a
    writable copy of the bundle (the other files are linked)."""
    import shutil
    import tarfile
    import zipfile

    packed: dict[str, str] = {}
    for name in ("inference", "weights", "wheels", "vendor"):
        for ext in (".zip", ".tar"):
            path = os.path.join(bundle, name + ext)
            if not os.path.isdir(os.path.join(bundle, name)) and os.path.isfile(path):
                packed[name] = path
    if not packed:
        return bundle
    target = os.environ.get("RSNA_UNPACK_DIR", "/tmp/rsna_bundle")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for name, path in packed.items():
        opener = zipfile.ZipFile if path.endswith(".zip") else tarfile.open
        with opener(path) as archive:
            archive.extractall(os.path.join(target, name))
        log.info("unpacked %s", path)
    for name in os.listdir(bundle):
        if name.rsplit(".", 1)[0] not in packed and not os.path.exists(os.path.join(target, name)):
            os.symlink(os.path.join(bundle, name), os.path.join(target, name))
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    BUNDLE = unpack_archives(find_bundle())
    log.info("bundle: %s", BUNDLE)

# %%
def install_wheels(bundle: str) -> None:
    """pip install the bundled wheels offline (--no-index): nothing comes from the network."""
    wheel_dir = os.path.join(bundle, "wheels")
    requirements = os.path.join(wheel_dir, "requirements.txt")
    if os.environ.get("RSNA_SKIP_WHEELS") or not os.path.isfile(requirements):
        log.info("no bundled wheels to install: using the image's packages")
        return
    if glob.glob(os.path.join(wheel_dir, "onnxruntime_gpu-*.whl")):
        from importlib import metadata
        try:  # the CPU and GPU builds share the onnxruntime module: keep only the GPU one
            metadata.version("onnxruntime")
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=False)
        except metadata.PackageNotFoundError:
            pass
    start = time.time()
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheel_dir, "-q", "-r",
           requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log.error("!!! offline wheel install failed (exit %s); going on with the image's packages !!!\n%s",
                  proc.returncode, proc.stderr[-4000:])
    else:
        log.info("bundled wheels installed in %.1f s", time.time() - start)


if __name__ == "__main__":
    install_wheels(BUNDLE)

# %%
def run_kernel(bundle: str) -> None:
    """Put the bundled runtime package on sys.path and run its kernel entry (evaluation server or gateway)."""
    package = sorted(glob.glob(os.path.join(bundle, "inference", "kernel.py"))
                     + glob.glob(os.path.join(bundle, "*", "inference", "kernel.py")))
    if not package:
        raise FileNotFoundError(f"no inference/kernel.py in the bundle {bundle}")
    root = os.path.dirname(os.path.dirname(package[0]))
    sys.path.insert(0, root)
    if os.path.isdir(os.path.join(root, "vendor")):  # pure-Python libraries the image may lack (pebble, loky)
        sys.path.insert(1, os.path.join(root, "vendor"))
    if not os.environ.get("RSNA_WEIGHTS_DIR"):  # one model (manifest.json) or a blend of several (bundle.json)
        found = sorted(glob.glob(os.path.join(bundle, "weights", "bundle.json"))
                       + glob.glob(os.path.join(bundle, "*", "weights", "bundle.json")))
        found = found or sorted(glob.glob(os.path.join(bundle, "weights", "manifest.json"))
                                + glob.glob(os.path.join(bundle, "*", "weights", "manifest.json")))
        if found:
            os.environ["RSNA_WEIGHTS_DIR"] = os.path.dirname(found[0])

    import inference
    from inference.kernel import main as kernel_main

    log.info("runtime package: %s", os.path.dirname(inference.__file__))
    status = kernel_main([])
    if status != 0:
        raise RuntimeError(f"the kernel failed with status {status}: see the log above")


if __name__ == "__main__":
    run_kernel(BUNDLE)
