"""The e2e guest: a Debian kernel with the real v4l2loopback module, booted under QEMU.

This machine's kernel (and CI's) has neither V4L2 nor module loading, so the tests that need
the real device boot a throwaway VM: the Debian kernel package, v4l2loopback built against
its headers, and a busybox initramfs (init.sh) that shares the host's root file system over
9p, so the guest runs the host's venv, ffmpeg and systemd. The downloads are unpacked, used
and dropped; what is kept (the kernel, a few modules, the initramfs) is cached under
build/e2e/, keyed by the kernel version.

    python tests/e2e/guest.py    # build (or find) the cached guest and print where it is
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
CACHE_ROOT = Path(os.environ.get("THC_E2E_CACHE") or REPO / "build" / "e2e")
LOOPBACK_CONF = REPO / "systemd" / "v4l2loopback.conf"
REQUIRED_ENV = "THC_E2E_REQUIRED"  # set (CI, `make e2e`): a guest that cannot be built fails

QEMU = "qemu-system-x86_64"
ACCEL = os.environ.get("THC_E2E_ACCEL", "tcg,thread=multi")  # no KVM on CI machines
MEMORY_MB = 3072
# The kernel's modules the initramfs loads (with their dependencies): virtio transport and
# 9p for the shared folders, overlay for a writable root, videodev for v4l2loopback.
KERNEL_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "videodev")
# Tools the guest needs (it uses the host's ffmpeg and v4l2-ctl), and tools that build its
# kernel cache once; each with its Debian package.
RUN_TOOLS = {
    QEMU: "qemu-system-x86",
    "busybox": "busybox-static",
    "ffmpeg": "ffmpeg",
    "v4l2-ctl": "v4l-utils",
}
BUILD_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "make": "make",
    "gcc-12": "gcc-12",  # the compiler Debian 12's kernel headers ask for
}

Mode = Literal["script", "systemd"]


class GuestUnavailable(Exception):
    """The guest cannot be built or booted here; the message says what to install or fix."""


# ---------------------------------------------------------------- prerequisites


def missing_tools(tools: dict[str, str] = RUN_TOOLS) -> list[str]:
    """Tools that are not on PATH, as `tool (package)`."""
    return [f"{tool} ({package})" for tool, package in tools.items() if not shutil.which(tool)]


def is_static_elf(path: Path) -> bool:
    """True when the ELF file asks for no program interpreter (a static busybox runs in an
    initramfs that has no libc)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:5] != b"\x7fELF\x02":
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack("<I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True


def static_busybox() -> Path:
    found = shutil.which("busybox")
    if found is None or not is_static_elf(Path(found)):
        raise GuestUnavailable("a static busybox is needed: apt-get install busybox-static")
    return Path(found)


# ---------------------------------------------------------------- the kernel and its modules


def run(argv: list[str], cwd: Path | None = None, timeout_s: float = 600) -> str:
    """Run a build step; a failure names the command and the end of its output."""
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestUnavailable(f"{shlex.join(argv)}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-1500:]
        raise GuestUnavailable(f"{shlex.join(argv)} failed ({done.returncode}):\n{tail}")
    return done.stdout


def package_version(package: str) -> str:
    text = run(["apt-cache", "show", "--no-all-versions", package])
    match = re.search(r"^Version: (\S+)", text, re.M)
    if match is None:
        raise GuestUnavailable(f"apt knows no version of {package}; run apt-get update")
    return match.group(1)


def package_depends(package: str, prefix: str) -> list[str]:
    text = run(["apt-cache", "depends", package])
    return re.findall(rf"^\s+Depends: ({re.escape(prefix)}\S*)$", text, re.M)


@dataclass(frozen=True)
class KernelSpec:
    """One Debian kernel build: its ABI name (`6.1.0-56-amd64`) and package version."""

    abi: str
    version: str

    @property
    def key(self) -> str:
        return f"linux-{self.abi}_{self.version}"

    def packages(self) -> list[str]:
        headers = f"linux-headers-{self.abi}"
        return [
            f"linux-image-{self.abi}",
            headers,
            *package_depends(headers, "linux-headers-"),  # -common
            *package_depends(headers, "linux-kbuild-"),
            "v4l2loopback-dkms",
        ]


def current_kernel() -> KernelSpec:
    """The kernel Debian's linux-image-amd64 points at now (THC_E2E_KERNEL: another ABI)."""
    abi = os.environ.get("THC_E2E_KERNEL")
    if not abi:
        images = package_depends("linux-image-amd64", "linux-image-")
        if not images:
            raise GuestUnavailable("apt has no linux-image-amd64 (a Debian host is needed)")
        abi = images[0].removeprefix("linux-image-")
    return KernelSpec(abi, package_version(f"linux-image-{abi}"))


@dataclass(frozen=True)
class KernelBuild:
    """The cached kernel: vmlinuz and the modules to load, in load order."""

    path: Path
    abi: str
    modules: tuple[str, ...]  # file names in path/modules, dependencies first
    loopback_version: str  # v4l2loopback's own version (0.12.7 has the stuck-after-close bug)

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @classmethod
    def load(cls, path: Path) -> KernelBuild | None:
        """The build in `path`, or None when there is none (or an incomplete one)."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            modules, version = tuple(manifest["modules"]), manifest["loopback_version"]
            return cls(path, manifest["abi"], modules, version)
        except (OSError, ValueError, KeyError):
            return None


def modinfo(path: Path) -> dict[str, str]:
    """The `.modinfo` section of a kernel module (name, depends, vermagic, ...)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        data = lzma.decompress(data)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:  # name offset, file offset, size
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if data[names_at + name :].startswith(b".modinfo\0"):
            fields = data[offset : offset + size].split(b"\0")
            pairs = (f.decode(errors="replace").split("=", 1) for f in fields if b"=" in f)
            return dict(pairs)
    return {}


def module_name(path: Path) -> str:
    """The name the kernel knows a module file by (`9pnet_virtio.ko.xz` → `9pnet_virtio`)."""
    return path.name.split(".ko")[0].replace("-", "_")


def module_load_order(wanted: Iterable[str], modules: Iterable[Path]) -> list[Path]:
    """The `wanted` modules and all they depend on, dependencies first."""
    by_name = {module_name(p): p for p in modules if p.name.endswith((".ko", ".ko.xz"))}
    order: list[Path] = []

    def visit(path: Path) -> None:
        if path in order:
            return
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            if dep not in by_name:
                raise GuestUnavailable(f"{path.name} needs {dep}, which the kernel lacks")
            visit(by_name[dep])
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestUnavailable(f"the kernel has no module {name}")
        visit(by_name[name])
    return order


def build_kernel(spec: KernelSpec, dest: Path) -> KernelBuild:
    """Download the kernel, headers and v4l2loopback source, build the module, and keep
    vmlinuz plus the modules the guest loads in `dest` (written atomically)."""
    missing = missing_tools(BUILD_TOOLS)
    if missing:
        raise GuestUnavailable(f"to build the guest, install: {', '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="building-", dir=dest.parent) as tmp:
        work = Path(tmp)
        debs, root, staged = work / "debs", work / "root", work / "staged"
        debs.mkdir()
        apt_get = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
        run([*apt_get, *spec.packages()], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(root)])
        loopback, loopback_version = build_loopback(root, spec.abi, work / "v4l2loopback")
        tree = root / "lib" / "modules" / spec.abi / "kernel"
        names = stage_modules([*tree.rglob("*.ko*"), loopback], staged / "modules")
        shutil.copy(root / "boot" / f"vmlinuz-{spec.abi}", staged / "vmlinuz")
        manifest = {
            "abi": spec.abi,
            "version": spec.version,
            "loopback_version": loopback_version,
            "modules": names,
        }
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)
    build = KernelBuild.load(dest)
    assert build is not None
    return build


def stage_modules(modules: list[Path], dest: Path) -> list[str]:
    """Copy the modules the guest loads (uncompressed: busybox insmod takes plain .ko) to
    `dest`; returns their file names in load order."""
    dest.mkdir(parents=True)
    names = []
    for module in module_load_order([*KERNEL_MODULES, "v4l2loopback"], modules):
        data = module.read_bytes()
        if module.suffix == ".xz":
            data = lzma.decompress(data)
        name = module.name.removesuffix(".xz")
        (dest / name).write_bytes(data)
        names.append(name)
    return names


def build_loopback(root: Path, abi: str, src: Path) -> tuple[Path, str]:
    """v4l2loopback.ko built against the unpacked headers with kbuild (no dkms), and the
    version of its source."""
    sources = sorted((root / "usr" / "src").glob("v4l2loopback-*"))
    if not sources:
        raise GuestUnavailable("v4l2loopback-dkms has no /usr/src/v4l2loopback-* source")
    shutil.copytree(sources[-1], src)
    headers = root / "usr" / "src" / f"linux-headers-{abi}"
    makefile = headers / "Makefile"  # `include /usr/src/...-common/Makefile`: point it here
    usr_src = f"{root / 'usr' / 'src'}/"
    makefile.write_text(makefile.read_text().replace("/usr/src/", usr_src))
    run(["make", "-C", str(headers), f"M={src}", f"-j{os.cpu_count() or 1}", "modules"])
    return src / "v4l2loopback.ko", sources[-1].name.removeprefix("v4l2loopback-")


def cached_kernel(cache_root: Path = CACHE_ROOT) -> KernelBuild:
    """The current kernel, built once; offline, the newest build already in the cache."""
    try:
        spec = current_kernel()
    except GuestUnavailable:
        builds = sorted(cache_root.glob("linux-*"), key=lambda p: p.stat().st_mtime)
        found = [b for b in map(KernelBuild.load, builds) if b is not None]
        if found:
            return found[-1]
        raise
    return KernelBuild.load(cache_root / spec.key) or build_kernel(spec, cache_root / spec.key)


# ---------------------------------------------------------------- the initramfs


def loopback_options(conf: Path = LOOPBACK_CONF) -> list[str]:
    """The module options of the shipped modprobe config (so the guest tests that file)."""
    for line in conf.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["options", "v4l2loopback"]:
            return words[2:]
    raise GuestUnavailable(f"{conf} has no 'options v4l2loopback' line")


def insmod_argument(option: str) -> str:
    """One option as the kernel parses it (quotes around a value with spaces), quoted again
    for the `eval` in init.sh."""
    key, _, value = option.partition("=")
    return shlex.quote(f'{key}="{value}"' if " " in value else option)


def cpio_newc(entries: Iterable[tuple[str, int, bytes, int]]) -> bytes:
    """An initramfs archive of (name, mode, data, rdev) entries, timestamps zeroed."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF)
        out += b"070701" + b"".join(b"%08x" % f for f in fields)
        out += b"%08x%08x" % (len(encoded), 0) + encoded
        out += b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def initramfs_entries(kernel: KernelBuild, busybox: Path) -> Iterator[tuple[str, int, bytes, int]]:
    directory, file, program, char = 0o040755, 0o100644, 0o100755, 0o020600
    for name in ("bin", "dev", "proc", "sys", "modules"):
        yield name, directory, b"", 0
    yield "dev/console", char, b"", (5 << 8) | 1  # the kernel opens it before /init runs
    yield "init", program, (E2E_DIR / "init.sh").read_bytes(), 0
    yield "bin/busybox", program, busybox.read_bytes(), 0
    options = " ".join(insmod_argument(o) for o in loopback_options())
    lines = [f"{name} {options}" if name == "v4l2loopback.ko" else name for name in kernel.modules]
    yield "modules/load.list", file, ("\n".join(lines) + "\n").encode(), 0
    for name in kernel.modules:
        yield f"modules/{name}", file, (kernel.path / "modules" / name).read_bytes(), 0


def cached_initramfs(kernel: KernelBuild, cache_root: Path = CACHE_ROOT) -> Path:
    """The initramfs for `kernel` with the current init.sh and module options."""
    archive = cpio_newc(initramfs_entries(kernel, static_busybox()))
    digest = hashlib.sha256(archive).hexdigest()[:16]
    path = kernel.path / f"initrd-{digest}.gz"
    if not path.exists():
        for old in kernel.path.glob("initrd-*.gz"):
            old.unlink()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
        tmp.rename(path)
    return path


# ---------------------------------------------------------------- booting


@dataclass(frozen=True)
class BootResult:
    """How one boot went; the console (kernel, init.sh, systemd) is in `console_log`."""

    timed_out: bool
    wall_s: float
    console_log: Path

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console log)"

    def failure(self, share: Path, finished: Path) -> str | None:
        """Why the guest's job gave no results (`finished`: the file it writes last), with
        the console's and the job log's tails; None when it finished."""
        if not self.timed_out and finished.exists():
            return None
        job_log = share / "job.log"
        log_tail = job_log.read_text()[-3000:] if job_log.exists() else ""
        return (
            f"the guest {'timed out' if self.timed_out else 'did not finish'}:\n"
            f"{self.console_tail()}\n--- job.log ---\n{log_tail}"
        )


@dataclass(frozen=True)
class Guest:
    kernel: KernelBuild
    initrd: Path

    def command(self, share: Path, mode: Mode) -> list[str]:
        append = f"console=ttyS0 panic=-1 quiet thc.mode={mode}"
        if mode == "systemd":
            append += " systemd.unit=e2e.target systemd.show_status=error"
        p9 = "security_model=none,multidevs=remap"
        share_path = str(share).replace(",", ",,")  # QEMU's option syntax
        return [
            QEMU,
            *("-accel", ACCEL, "-cpu", "max", "-smp", "2", "-m", str(MEMORY_MB)),
            *("-nographic", "-no-reboot", "-nic", "none"),
            *("-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initrd)),
            *("-append", append),
            *("-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{p9}"),
            *("-virtfs", f"local,path={share_path},mount_tag=e2e,{p9}"),
        ]

    def boot(self, share: Path, mode: Mode, job: list[str], timeout_s: float) -> BootResult:
        """Boot once: the guest runs `job` (argv, inside the guest) with `share` mounted at
        /e2e, then powers off. Bounded by `timeout_s` (the VM is killed then)."""
        (share / "job").write_text(shlex.join(job) + "\n")
        console = share / "console.log"
        started = time.monotonic()
        with console.open("wb") as out:
            proc = subprocess.Popen(
                self.command(share, mode),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                timed_out = True
        return BootResult(timed_out, time.monotonic() - started, console)


@functools.cache
def prepare_guest() -> Guest:
    """The cached guest, built on first use; raises GuestUnavailable saying why not."""
    if sys.platform != "linux":
        raise GuestUnavailable("the e2e guest needs a Linux host")
    missing = missing_tools()
    if missing:
        raise GuestUnavailable(f"install: {', '.join(missing)}")
    kernel = cached_kernel()
    return Guest(kernel, cached_initramfs(kernel))


def guest_or_skip(needs: dict[str, str] | None = None) -> Guest:
    """The guest for a test: skipped with the reason when it cannot be had here, failed
    instead when THC_E2E_REQUIRED=1 (CI and `make e2e` must not skip silently). `needs`:
    more host tools the test's guest runs (the guest shares the host's root), each with its
    Debian package."""
    import pytest

    try:
        missing = missing_tools(needs or {})
        if missing:
            raise GuestUnavailable(f"install: {', '.join(missing)}")
        return prepare_guest()
    except GuestUnavailable as exc:
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"e2e guest unavailable ({REQUIRED_ENV}=1): {exc}")
        pytest.skip(f"e2e guest unavailable: {exc}")


if __name__ == "__main__":
    started = time.monotonic()
    guest = prepare_guest()
    print(f"{guest.kernel.vmlinuz}\n{guest.initrd}\n({time.monotonic() - started:.1f} s)")
