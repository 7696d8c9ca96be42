"""build_backend - the PEP 517 build backend of the normstat Python package.

It needs nothing but the Python standard library (tomllib, Python >= 3.11;
older Pythons ask the installer for tomli), so `pip install client/python`
works in a fresh virtual environment without a package index, and it never
writes into the source tree: no build/ or *.egg-info directories. The
package is pure Python; the wheel holds every .py file of the package
directory named by [project] name, the metadata of [project] in
pyproject.toml (core metadata 2.1) and the licence.

Also a command for the Makefile (no pip needed):
    python3 backend/build_backend.py wheel OUTDIR     prints the wheel's path
"""
import base64
import hashlib
import io
import os
import sys
import tarfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)  # client/python: pyproject.toml, README.md, LICENSE, normstat/
WHEEL_TAG = "py3-none-any"
SKIP_DIRS = {"__pycache__"}

# ---------------------------------------------------------------- metadata


def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11: get_requires_* asked the installer for tomli
        import tomli as tomllib
    return tomllib


def project():
    with open(os.path.join(PROJECT, "pyproject.toml"), "rb") as f:
        return _toml().load(f)["project"]


def _dist_name(p):
    return p["name"].replace("-", "_")


def metadata(p):
    """Core metadata 2.1 (the METADATA / PKG-INFO file) of [project] p."""
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}"]
    if "description" in p:
        lines.append(f"Summary: {p['description']}")
    lic = p.get("license", {})
    if "text" in lic:
        lines.append(f"License: {lic['text']}")
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    if "requires-python" in p:
        lines.append(f"Requires-Python: {p['requires-python']}")
    for d in p.get("dependencies", []):
        lines.append(f"Requires-Dist: {d}")
    for extra, deps in p.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for d in deps:
            lines.append(f'Requires-Dist: {d}; extra == "{extra}"')
    for label, url in p.get("urls", {}).items():
        lines.append(f"Project-URL: {label}, {url}")
    lines.append("License-File: LICENSE")
    body = ""
    readme = p.get("readme")
    if readme:
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(PROJECT, readme), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _read(rel):
    with open(os.path.join(PROJECT, rel), "rb") as f:
        return f.read()


def package_files(p):
    """Relative paths of the package's modules, sorted (the wheel is reproducible)."""
    top = p["name"]
    out = []
    for root, dirs, files in os.walk(os.path.join(PROJECT, top)):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        out += [os.path.relpath(os.path.join(root, f), PROJECT) for f in files
                if f.endswith(".py") or f == "py.typed"]
    return sorted(out)


# ---------------------------------------------------------------- archives


def _date_time():
    """SOURCE_DATE_EPOCH (reproducible builds) or a fixed date."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01, zip's minimum
    return time.gmtime(max(epoch, 315532800))[:6]


class _Wheel:
    """A wheel being written: every file is recorded in RECORD with its hash."""

    def __init__(self, path):
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.records = []

    def add(self, name, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        info = zipfile.ZipInfo(name, _date_time())
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        self.records.append(f"{name},sha256={digest.decode()},{len(data)}")

    def close(self, record_name):
        self.zip.writestr(zipfile.ZipInfo(record_name, _date_time()),
                          "\n".join(self.records + [f"{record_name},,"]) + "\n")
        self.zip.close()


def _dist_info(p):
    return f"{_dist_name(p)}-{p['version']}.dist-info"


def _write_dist_info(whl, p):
    info = _dist_info(p)
    whl.add(f"{info}/METADATA", metadata(p))
    whl.add(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: normstat build_backend\n"
                             f"Root-Is-Purelib: true\nTag: {WHEEL_TAG}\n")
    whl.add(f"{info}/LICENSE", _read("LICENSE"))
    whl.add(f"{info}/top_level.txt", p["name"] + "\n")
    return info


# ---------------------------------------------------------------- PEP 517 hooks


def get_requires_for_build_wheel(config_settings=None):
    return [] if sys.version_info >= (3, 11) else ["tomli>=1.1"]


get_requires_for_build_sdist = get_requires_for_build_wheel
get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    p = project()
    name = f"{_dist_name(p)}-{p['version']}-{WHEEL_TAG}.whl"
    os.makedirs(wheel_directory, exist_ok=True)
    tmp = os.path.join(wheel_directory, name + ".part")
    whl = _Wheel(tmp)
    for rel in package_files(p):
        whl.add(rel.replace(os.sep, "/"), _read(rel))
    whl.close(f"{_write_dist_info(whl, p)}/RECORD")
    os.replace(tmp, os.path.join(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """A wheel whose .pth puts the source directory on sys.path (pip install -e)."""
    p = project()
    name = f"{_dist_name(p)}-{p['version']}-{WHEEL_TAG}.whl"
    os.makedirs(wheel_directory, exist_ok=True)
    whl = _Wheel(os.path.join(wheel_directory, name))
    whl.add(f"__editable__.{_dist_name(p)}.pth", PROJECT + "\n")
    whl.close(f"{_write_dist_info(whl, p)}/RECORD")
    return name


def build_sdist(sdist_directory, config_settings=None):
    p = project()
    base = f"{_dist_name(p)}-{p['version']}"
    files = ["pyproject.toml", "LICENSE", p.get("readme", "README.md"),
             os.path.relpath(os.path.abspath(__file__), PROJECT)] + package_files(p)
    os.makedirs(sdist_directory, exist_ok=True)
    mtime = time.mktime(_date_time() + (0, 0, -1))

    def add(tar, name, data):
        info = tarfile.TarInfo(f"{base}/{name}")
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(os.path.join(sdist_directory, base + ".tar.gz"), "w:gz",
                      format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(set(files)):
            add(tar, rel.replace(os.sep, "/"), _read(rel))
        add(tar, "PKG-INFO", metadata(p).encode("utf-8"))
    return base + ".tar.gz"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("wheel", "sdist"):
        sys.exit("usage: build_backend.py wheel|sdist OUTDIR")
    out = os.path.abspath(sys.argv[2])
    build = build_wheel if sys.argv[1] == "wheel" else build_sdist
    print(os.path.join(out, build(out)))
